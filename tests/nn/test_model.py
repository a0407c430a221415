"""Model: predict, npz round trip, weights JSON."""
import io
import json

import numpy as np
import pytest

import nn
from tests.nn.conftest import dense, plan_for


@pytest.fixture
def trained(blobs):
    X, y = blobs
    plan = plan_for([dense(8, "tanh"), {"type": "dropout", "drop_prob": 0.2},
                     dense(3, "softmax")],
                    {"loss": "cross_entropy", "epochs": 3, "seed": 0, "standardize": True},
                    X, y)
    return plan, nn.train(plan, X, y), X


def test_npz_round_trip_is_bit_identical(trained):
    plan, r, X = trained
    b = r.model.to_npz()
    m = nn.Model.from_npz(b)
    assert m.network == plan.network and m.meta == r.model.meta
    assert m.predict(X) == r.model.predict(X)
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        assert z["meta"].dtype == np.uint8
        assert json.loads(z["meta"].tobytes())["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("blob", [b"", b"not a zip", np.zeros(3).tobytes()])
def test_from_npz_rejects_junk(blob):
    with pytest.raises(ValueError):
        nn.Model.from_npz(blob)


def test_from_npz_lets_running_out_of_memory_through(trained, monkeypatch):
    """Not junk: the worker fails the run with out_of_memory, not invalid data."""
    blob = trained[1].model.to_npz()

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("Unable to allocate 1.00 GiB")

    monkeypatch.setattr(np, "load", out_of_memory)
    with pytest.raises(MemoryError):
        nn.Model.from_npz(blob)


def test_from_npz_rejects_wrong_shapes(trained):
    _, r, _ = trained
    m = r.model
    bad = nn.Model.__new__(nn.Model)
    bad.network, bad.meta = m.network, m.meta
    bad.weights = [{"W": np.zeros((3, 8)), "b": np.zeros(8)}, {}, m.weights[2]]
    with pytest.raises(ValueError):
        nn.Model.from_npz(bad.to_npz())


def test_predict_softmax(trained):
    _, r, X = trained
    p = r.model.predict(X[:4])
    assert np.array(p["outputs"]).shape == (4, 3)
    assert p["probabilities"] == p["outputs"]
    assert p["labels"] == [["a", "b", "c"][i] for i in np.argmax(p["outputs"], axis=1)]


def test_predict_arrays_is_predict_as_arrays(trained):
    """Label indices into the classes, outputs and probabilities as arrays: what predict
    answers as lists."""
    _, r, X = trained
    arrays, lists = r.model.predict_arrays(X[:5]), r.model.predict(X[:5])
    assert arrays["labels"].dtype == np.int64
    assert [["a", "b", "c"][i] for i in arrays["labels"]] == lists["labels"]
    assert arrays["outputs"].tolist() == lists["outputs"]
    assert arrays["probabilities"].tolist() == lists["probabilities"]


@pytest.mark.parametrize("inputs", [[[1.0, 2.0, 3.0]], [1.0, 2.0], [[np.nan, 1.0]],
                                    [["x", "y"]]])
def test_predict_rejects_bad_inputs(trained, inputs):
    with pytest.raises(nn.SpecError) as e:
        trained[1].model.predict(inputs)
    assert e.value.path == "inputs"


def test_predict_is_eval_mode_and_deterministic(trained):
    _, r, X = trained
    assert r.model.predict(X) == r.model.predict(X)


@pytest.mark.parametrize("activation,outputs,labels,p1", [
    ("sigmoid", [0.2, 0.5, 0.9], [0, 1, 1], [0.2, 0.5, 0.9]),
    ("tanh", [-0.6, 0.0, 0.8], [0, 1, 1], [0.2, 0.5, 0.9]),
    ("linear", [-0.3, 0.49, 1.7], [0, 0, 1], [0.0, 0.49, 1.0]),
])
def test_single_unit_label_mapping(activation, outputs, labels, p1):
    from nn.targets import decode
    idx, probs = decode(np.array(outputs)[:, None], activation)
    assert idx.tolist() == labels
    assert np.allclose(probs[:, 1], p1) and np.allclose(probs.sum(1), 1)


def test_multi_unit_squared_error_label_mapping():
    from nn.targets import decode, encode
    idx, probs = decode(np.array([[0.2, 0.6, 0.2], [-0.5, -0.1, -0.2], [0, 0, 0]]), "sigmoid")
    assert idx.tolist() == [1, 1, 0]
    assert np.allclose(probs, [[0.2, 0.6, 0.2], [1 / 3] * 3, [1 / 3] * 3])
    t = encode(np.array([2, 0]), 3, 3, "tanh", "squared_error", np.float64)
    assert t.tolist() == [[-1, -1, 1], [1, -1, -1]]
    assert encode(np.array([1, 0]), 2, 1, "sigmoid", "squared_error",
                  np.float64).tolist() == [[1.0], [0.0]]


def test_weights_json_round_trip(trained):
    plan, r, _ = trained
    obj = nn.weights_to_json(r.weights)
    assert json.loads(json.dumps(obj)) == obj
    assert obj["layers"][1] == {}
    assert np.array(obj["layers"][0]["W"]).shape == (2, 8)          # (inputs, units)
    back = nn.weights_from_json(obj, plan)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(back, r.weights) for k in a)


@pytest.mark.parametrize("mutate,path", [
    (lambda o: o["layers"][0].pop("b"), "initial_weights.layers[0]"),
    (lambda o: o["layers"][0].update(W=[[1.0] * 8]), "initial_weights.layers[0].W"),
    (lambda o: o["layers"][0].update(W=[[1.0] * 8, [1.0] * 7]), "initial_weights.layers[0].W"),
    (lambda o: o["layers"][2].update(b=[0.0, "x", 1.0]), "initial_weights.layers[2].b"),
    (lambda o: o["layers"][2].update(b=[0.0, float("nan"), 1.0]),
     "initial_weights.layers[2].b"),
    (lambda o: o["layers"][1].update(W=[[1.0]]), "initial_weights.layers[1]"),
    (lambda o: o["layers"][2].update(b=[True, False, True]), "initial_weights.layers[2].b"),
    (lambda o: o["layers"].pop(), "initial_weights.layers"),
    (lambda o: o.update(extra=1), "initial_weights"),
])
def test_weights_from_json_errors(trained, mutate, path):
    plan, r, _ = trained
    obj = nn.weights_to_json(r.weights)
    mutate(obj)
    with pytest.raises(nn.SpecError) as e:
        nn.weights_from_json(obj, plan)
    assert e.value.path == path


def test_bool_and_int_classes_round_trip():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    for y in ([True, False, True, False], [10, 20, 10, 20]):
        plan = plan_for([dense(1)], {"epochs": 1, "seed": 0}, X, y)
        m = nn.Model.from_npz(nn.train(plan, X, y).model.to_npz())
        assert set(m.predict(X)["labels"]) <= set(y)
        assert json.dumps(m.predict(X))


@pytest.mark.parametrize("layers,x_shape", [
    ([{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1}, {"type": "maxpool2d"},
      {"type": "flatten"}, dense(3, "softmax")], (8, 8)),
    ([{"type": "lstm", "units": 4, "return_sequences": True}, dense(3, "softmax")], (5, 2)),
])
def test_predict_in_batches_and_what_it_costs(layers, x_shape):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, *x_shape)), rng.integers(0, 3, 30)
    if len(x_shape) == 2 and x_shape[0] == 5:
        y = rng.integers(0, 3, (30, 5))                 # a label per time step
    plan = plan_for(layers, {"loss": "cross_entropy", "epochs": 1, "seed": 0}, X, y,
                    "classification")
    model = nn.train(plan, X, y).model
    whole = model.predict(X)
    for batch_size in (1, 7, 30, 100):
        batched = model.predict(X, batch_size=batch_size)
        assert batched.keys() == whole.keys() and batched["labels"] == whole["labels"]
        assert np.allclose(batched["outputs"], whole["outputs"], rtol=1e-12, atol=0)
    per_sample = np.array(whole["outputs"][0]).size + np.array(whole["labels"][0]).size \
        + np.array(whole["probabilities"][0]).size
    assert model.result_values == per_sample
    largest = max(layer.cost().infer for layer in model.layers)
    assert model.sample_bytes >= largest * 8 > 0


def test_snapshot_of_a_checkpoint_predicts_as_the_model_of_that_epoch(blobs):
    """The model a checkpoint holds (with the standardisation training fitted) is the model
    training had then; the validation rows are the ones training measured val_* on."""
    X, y = blobs
    spec = ([dense(8, "tanh"), dense(3, "softmax")],
            {"loss": "cross_entropy", "seed": 0, "standardize": True,
             "validation_fraction": 0.25})
    plan = plan_for(*spec[:1], {**spec[1], "epochs": 4}, X, y)
    states: dict[int, bytes] = {}
    final = nn.train(plan, X, y, checkpoint_every=2,
                     on_checkpoint=lambda e, b: states.__setitem__(e, b))
    at_2 = nn.train(plan_for(*spec[:1], {**spec[1], "epochs": 2}, X, y), X, y)
    assert nn.snapshot(plan, X, y, states[4]).model.predict(X) == final.model.predict(X)
    assert nn.snapshot(plan, X, y, states[2]).model.predict(X) == at_2.model.predict(X)

    validation = nn.snapshot(plan, X, y).validation
    before = nn.train(plan_for(*spec[:1], {**spec[1], "epochs": 0}, X, y), X, y)
    assert nn.snapshot(plan, X, y).model.predict(X) == before.model.predict(X)  # the seed's
    assert len(set(validation.tolist())) == len(validation) == round(0.25 * len(X))
    labels = np.array(final.model.predict(X[validation])["labels"])
    assert np.mean(labels == y[validation]) == final.metrics["val_accuracy"]
    with pytest.raises(ValueError):
        nn.snapshot(plan_for(*spec[:1], {**spec[1], "epochs": 4, "seed": 1}, X, y), X, y,
                    states[4])
