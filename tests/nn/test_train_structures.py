"""Training the deep structures through the public API: bit-identical resume (pretraining
included), Model npz and weights JSON round trips, predictions per time step, statistics."""
import json
import math

import numpy as np
import pytest

import nn
from tests.nn.conftest import dense, step
from tests.nn.test_train import same

GLYPHS = nn.generate("glyphs", 120, 15, seed=0)
PARITY = nn.generate("parity", 80, 5, seed=0, length=5)
NEXT = nn.generate("next_token", 60, 10, seed=0, length=6, vocab_size=8)
POSITION = nn.generate("max_position", 80, 0, seed=0, length=5)

STRUCTURES = {
    "cnn": (GLYPHS, None, [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1},
        {"type": "maxpool2d"}, {"type": "conv2d", "filters": 4, "kernel_size": 2, "stride": 2},
        {"type": "avgpool2d", "pool_size": 1}, {"type": "flatten"},
        {"type": "dropout", "drop_prob": 0.2}, dense(10, "softmax")]),
    "rnn": (PARITY, None, [
        {"type": "rnn", "units": 4, "return_sequences": True},
        {"type": "dropout", "drop_prob": 0.1},
        {"type": "lstm", "units": 3}, dense(2, "softmax")]),
    "transformer": (NEXT, "classification", [
        {"type": "embedding", "vocab_size": 8, "dim": 4},
        {"type": "positional_encoding", "mode": "learned"},
        {"type": "transformer_encoder", "heads": 2, "ff_units": 6, "causal": True},
        {"type": "layer_norm"}, dense(8, "softmax")]),
    "attention": (POSITION, None, [
        {"type": "dense", "units": 4, "activation": "linear"}, {"type": "positional_encoding"},
        {"type": "self_attention", "heads": 2}, {"type": "sequence_pool", "mode": "max"},
        dense(5, "softmax")]),
}
TRAINING = {"loss": "cross_entropy", "batch_size": 16, "epochs": 6, "seed": 7,
            "validation_fraction": 0.25, "early_stopping": {"patience": 50},
            "optimizer": {"type": "adam", "learning_rate": 0.01}, "weight_decay": 1e-4,
            "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}}


def plan_of(name: str, **training) -> tuple[nn.Plan, np.ndarray, np.ndarray]:
    (X, y), task, layers = STRUCTURES[name]
    return nn.build({"layers": layers}, {**TRAINING, **training}, nn.describe(X, y, task)), X, y


def without_duration(reports) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "duration_s"} for r in reports]


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_resume_is_bit_identical(name):
    plan, X, y = plan_of(name)
    straight_reports, saved = [], {}
    straight = nn.train(plan, X, y, on_epoch=straight_reports.append, checkpoint_every=2,
                        on_checkpoint=saved.__setitem__)
    assert sorted(saved) == [2, 4, 6] and nn.checkpoint_position(saved[4]) == ("train", 4)
    reports = []
    resumed = nn.train(plan, X, y, resume=saved[2], on_epoch=reports.append)
    assert same(resumed.weights, straight.weights)
    assert same(resumed.best_weights, straight.best_weights)
    assert resumed.metrics == straight.metrics
    assert without_duration(reports) == without_duration(straight_reports[2:])


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_model_npz_and_weights_json_round_trips(name):
    plan, X, y = plan_of(name, epochs=2)
    r = nn.train(plan, X, y)
    m = nn.Model.from_npz(r.model.to_npz())
    assert m.network == plan.network and m.meta == r.model.meta
    assert same(m.weights, r.weights)
    assert m.predict(X[:5]) == r.model.predict(X[:5])
    obj = json.loads(json.dumps(nn.weights_to_json(r.weights)))
    assert same(nn.weights_from_json(obj, plan), r.weights)
    again = nn.train(plan, X, y, initial_weights=nn.weights_from_json(obj, plan))
    assert again.metrics["epochs_completed"] == 2


def test_weights_name_their_arrays():
    shapes = {name: [{k: v.shape for k, v in w.items()} for w in
                     nn.train(plan_of(name, epochs=0)[0], *plan_of(name)[1:]).weights]
              for name in STRUCTURES}
    assert shapes["cnn"][0] == {"W": (4, 1, 3, 3), "b": (4,)} and shapes["cnn"][1] == {}
    assert shapes["rnn"][0] == {"Wx": (1, 4), "Wh": (4, 4), "b": (4,)}
    assert shapes["rnn"][2] == {"Wx": (4, 12), "Wh": (3, 12), "b": (12,)}
    assert shapes["transformer"][0] == {"E": (8, 4)} and shapes["transformer"][1] == {"P": (6, 4)}
    assert shapes["transformer"][2] == {
        "Wq": (4, 4), "bq": (4,), "Wk": (4, 4), "bk": (4,), "Wv": (4, 4), "bv": (4,),
        "Wo": (4, 4), "bo": (4,), "ln1_gamma": (4,), "ln1_beta": (4,), "W1": (4, 6),
        "b1": (6,), "W2": (6, 4), "b2": (4,), "ln2_gamma": (4,), "ln2_beta": (4,)}
    assert shapes["transformer"][3] == {"gamma": (4,), "beta": (4,)}


def test_bad_weights_name_the_array():
    plan, X, y = plan_of("cnn", epochs=0)
    obj = nn.weights_to_json(nn.train(plan, X, y).weights)
    obj["layers"][0]["W"] = np.zeros((4, 3, 3)).tolist()
    with pytest.raises(nn.SpecError) as e:
        nn.weights_from_json(obj, plan)
    assert e.value.path == "initial_weights.layers[0].W" and "(4, 1, 3, 3)" in e.value.message


def test_predict_per_time_step_and_token_checks():
    plan, X, y = plan_of("transformer", epochs=1)
    model = nn.train(plan, X, y).model
    p = model.predict(X[:3])
    assert np.array(p["outputs"]).shape == (3, 6, 8)
    assert np.array(p["labels"]).shape == (3, 6) and isinstance(p["labels"][0][0], int)
    assert np.allclose(np.sum(p["probabilities"], axis=-1), 1)
    for bad in (X[:2] + 0.5, np.full((2, 6), 8.0), -np.ones((2, 6)), np.zeros((2, 5))):
        with pytest.raises(nn.SpecError) as e:
            model.predict(bad)
        assert e.value.path == "inputs"
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, X + 0.5, y)
    assert e.value.path == "inputs"
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, X, y[:, :5])
    assert e.value.path == "targets"


def test_predict_images_checks_their_shape():
    plan, X, y = plan_of("cnn", epochs=0)
    model = nn.train(plan, X, y).model
    assert len(model.predict(X[:2])["labels"]) == 2
    with pytest.raises(nn.SpecError, match="the plan expects"):
        model.predict(X[:2, :7])


def test_predict_sequences_of_one_feature_without_their_last_axis():
    plan, X, y = plan_of("rnn", epochs=1)
    assert X.shape[2:] == (1,)
    model = nn.train(plan, X, y).model
    assert model.predict(X[:3, :, 0]) == model.predict(X[:3])
    with pytest.raises(nn.SpecError, match="the plan expects") as e:
        model.predict(X[:3, :-1, 0])
    assert e.value.path == "inputs"


def test_stats_rows_for_every_layer_with_parameters():
    plan, X, y = plan_of("rnn", epochs=1)
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append)
    rows = reports[0].layer_stats
    assert [(row["layer"], row["name"]) for row in rows] == [(0, "rnn_0"), (2, "lstm_2"),
                                                             (3, "dense_3")]
    legacy = {"layer", "name", "grad_mean_abs", "grad_norm", "grad_max_abs", "grad_std",
              "weight_mean_abs", "weight_norm", "weight_max_abs", "weight_std", "act_mean",
              "act_saturated_fraction", "act_dead_fraction"}
    for row in rows:
        assert legacy <= set(row)
        assert [p["param"] for p in row["params"]] == list(r.weights[row["layer"]])
        for p in row["params"]:
            assert set(p) == {"param"} | {k for k in legacy if k[:4] in ("grad", "weig")}
            w = r.weights[row["layer"]][p["param"]]
            assert p["weight_norm"] == pytest.approx(np.linalg.norm(w))
    rnn, lstm, out = rows
    w0 = r.weights[0]                                     # the row: Wx and Wh together
    assert rnn["weight_norm"] == pytest.approx(math.hypot(np.linalg.norm(w0["Wx"]),
                                                          np.linalg.norm(w0["Wh"])))
    assert len(rnn["grad_norm_by_time"]) == len(lstm["grad_norm_by_time"]) == 5
    assert "grad_norm_by_time" not in out
    assert rnn["act_saturated_fraction"] is not None and out["act_saturated_fraction"] is None
    json.dumps(reports[0].to_dict())
    for row in rows:
        assert all(type(v) in (int, float, str, list, type(None)) for v in row.values())


def test_rnn_gradient_vanishes_back_through_time():
    """The probe's dL/dh_t of a tanh rnn that reads its last state shrinks towards t = 1."""
    X, y = nn.generate("parity", 200, 0, seed=1, length=20)
    plan = nn.build({"layers": [{"type": "rnn", "units": 8,
                                 "init": {"type": "uniform", "scale": 0.3}},
                                dense(2, "softmax")]},
                    {"loss": "cross_entropy", "epochs": 1, "seed": 0}, nn.describe(X, y))
    reports = []
    nn.train(plan, X, y, on_epoch=reports.append)
    norms = reports[0].layer_stats[0]["grad_norm_by_time"]
    assert norms[0] < 1e-3 * norms[-1]
    assert all(a <= b for a, b in zip(norms, norms[1:]))


def test_weight_decay_skips_biases_and_layer_norm():
    from nn.optim import make_optimizer
    plan, _, _ = plan_of("transformer")
    decayed = [set(l.decayed()) for l in plan.layers]
    assert decayed == [{"E"}, {"P"}, {"Wq", "Wk", "Wv", "Wo", "W1", "W2"}, set(), {"W"}]
    opt = make_optimizer({"optimizer": {"type": "sgd", "momentum": 0.0, "nesterov": False},
                          "weight_decay": 0.5}, [("W",), ()])
    params = [{"W": np.ones(2), "b": np.ones(1)}, {"gamma": np.ones(2)}]
    step(opt, params, [{"W": np.zeros(2), "b": np.zeros(1)}, {"gamma": np.zeros(2)}], 0.1)
    assert params[0]["W"].tolist() == [0.95, 0.95] and params[0]["b"][0] == 1.0
    assert params[1]["gamma"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_float32(name):
    plan, X, y = plan_of(name, epochs=2, dtype="float32")
    r = nn.train(plan, X, y)
    assert all(v.dtype == np.float32 for w in r.weights for v in w.values())
    assert math.isfinite(r.metrics["train_loss"])


def test_standardize_images_per_pixel():
    plan, X, y = plan_of("cnn", epochs=1, standardize=True)
    r = nn.train(plan, X, y)
    assert np.array(r.model.meta["standardize"]["mean"]).shape == (8, 8)
    assert r.model.predict(X[:3]) == nn.Model.from_npz(r.model.to_npz()).predict(X[:3])


# ---- pretraining ---------------------------------------------------------------------------

STACK = {"layers": [dense(4), {"type": "dropout", "drop_prob": 0.2}, dense(3), dense(1)]}
PRETRAIN = {"epochs": 6, "seed": 3, "batch_size": 4, "validation_fraction": 0.2,
            "pretrain": {"epochs": 3, "optimizer": {"type": "adam", "learning_rate": 0.01}}}


@pytest.fixture(scope="module")
def gaussian():
    return nn.generate("gaussian", 120, 30, seed=0)


def test_pretraining_reports_and_weights(gaussian):
    X, y = gaussian
    plan = nn.build(STACK, PRETRAIN, nn.describe(X, y))
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append)
    assert [(x.phase, x.epoch, x.layer) for x in reports[:7]] == [
        ("pretrain", 1, 0), ("pretrain", 2, 0), ("pretrain", 3, 0),
        ("pretrain", 4, 2), ("pretrain", 5, 2), ("pretrain", 6, 2), ("train", 1, None)]
    pre = reports[:6]
    assert all(x.train_accuracy is None and x.val_accuracy is None for x in pre)
    assert all(x.val_loss > 0 and x.learning_rate == 0.01 for x in pre)
    assert pre[2].train_loss < pre[0].train_loss                   # it reconstructs better
    assert [row["name"] for x in pre for row in x.layer_stats] == ["dense_0"] * 3 + \
        ["dense_2"] * 3
    assert r.epochs_completed == 6 and r.metrics["epochs_completed"] == 6
    only = nn.train(nn.build(STACK, {**PRETRAIN, "epochs": 0}, plan.data), X, y)
    init = nn.train(nn.build(STACK, {k: v for k, v in PRETRAIN.items() if k != "pretrain"}
                             | {"epochs": 0}, plan.data), X, y)
    assert not np.array_equal(only.weights[0]["W"], init.weights[0]["W"])   # pretrained
    assert np.array_equal(only.weights[3]["W"], init.weights[3]["W"])       # output: not


def test_resume_during_and_after_pretraining_is_bit_identical(gaussian):
    X, y = gaussian
    plan = nn.build(STACK, PRETRAIN, nn.describe(X, y))
    straight_reports = []
    straight = nn.train(plan, X, y, on_epoch=straight_reports.append)
    saved = []
    nn.train(plan, X, y, checkpoint_every=2,
             on_checkpoint=lambda e, b: saved.append((e, nn.checkpoint_position(b), b)))
    assert [(e, pos) for e, pos, _ in saved] == [
        (0, ("pretrain", 2)), (0, ("pretrain", 4)), (0, ("pretrain", 6)),
        (2, ("train", 2)), (4, ("train", 4)), (6, ("train", 6))]
    for _, (phase, epoch), b in saved[:4]:          # mid-layer, layer boundary, end, training
        reports = []
        r = nn.train(plan, X, y, resume=b, on_epoch=reports.append)
        assert same(r.weights, straight.weights) and r.metrics == straight.metrics
        done = epoch if phase == "pretrain" else 6 + epoch
        assert without_duration(reports) == without_duration(straight_reports[done:])


def test_should_stop_during_pretraining_keeps_the_completed_epochs(gaussian):
    X, y = gaussian
    plan = nn.build(STACK, PRETRAIN, nn.describe(X, y))
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append,
                 should_stop=lambda: "cancelled" if len(reports) >= 4 else None)
    assert r.stop_reason == "cancelled" and r.epochs_completed == 0 and len(reports) == 4
    full = nn.train(nn.build(STACK, {**PRETRAIN, "epochs": 0}, plan.data), X, y).weights
    assert np.array_equal(r.weights[0]["W"], full[0]["W"])      # layer 0: its 3 epochs done
    assert not np.array_equal(r.weights[2]["W"], full[2]["W"])  # layer 2: 1 epoch of 3


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_predict_no_rows(name):
    plan, X, y = plan_of(name, epochs=0)
    model = nn.train(plan, X, y).model
    assert model.predict(np.zeros((0, *plan.data.input_shape))) == {
        "outputs": [], "labels": [], "probabilities": []}
