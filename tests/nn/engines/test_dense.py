"""The dense engine (nn/engines/dense.py: its compiled kernel and its buffers) against the
reference (nn/engines/reference.py), to rounding; resume, stopping, pretraining and the
statistics through them."""
import io

import numpy as np
import pytest

import nn
from nn import engines, network
from nn.driver import measure
from nn.engines.dense import DenseStack
from nn.engines.reference import Reference
from nn.gradcheck import numerical_gradient
from nn.optim import make_optimizer
from nn.prepare import prepare
from nn.stats import LayerStats
from tests.nn.conftest import dense, plan_for
from tests.nn.test_train import same

SGD = {"type": "sgd", "learning_rate": 0.3}
MOMENTUM = {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}
ADAM = {"type": "adam", "learning_rate": 0.01}
UNIFORM = {"type": "uniform"}       # where the figures below were measured with it


def regression_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5))
    return X, X[:, :2] @ np.array([[1.0, -2.0], [0.5, 1.0]]) + 0.1 * X[:, 2:4]


def run(engine: str, layers, training, X, y, **kwargs):
    """nn.train with training.engine = engine -> (result, per-epoch reports)."""
    reports = []
    result = nn.train(plan_for(layers, {**training, "engine": engine}, X, y), X, y,
                      on_epoch=reports.append, **kwargs)
    return result, reports


def metrics(reports) -> list[tuple]:
    return [(r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy) for r in reports]


def assert_agree(fast, fast_reports, general, general_reports, rel: float) -> None:
    """Two runs' weights within rel of each array's largest, their losses within rel, the
    same accuracies."""
    for a, b in zip(fast.weights, general.weights, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            assert np.abs(a[k] - b[k]).max() <= rel * np.abs(b[k]).max(), k
    assert len(fast_reports) == len(general_reports)
    for mine, theirs in zip(metrics(fast_reports), metrics(general_reports)):
        assert mine[0] == pytest.approx(theirs[0], rel=rel)                # train loss
        assert mine[1] == theirs[1]                                        # train accuracy
        assert mine[2] == (None if theirs[2] is None else                 # val loss
                           pytest.approx(theirs[2], rel=rel))
        assert mine[3] == theirs[3]


# (layers, training, data): every loss and activation, each optimizer, batch sizes that do
# and do not divide the data, full batch, float32, validation, weight decay, lr schedules
BUFFER_CASES = {
    "squared error, per sample": ([dense(6, "tanh"), dense(1)], {"optimizer": SGD}, "xor"),
    "cross-entropy, momentum": ([dense(8, "relu"), dense(4, "tanh", init=UNIFORM),
                                 dense(2, "softmax", init=UNIFORM)],
                                {"loss": "cross_entropy", "optimizer": MOMENTUM,
                                 "batch_size": 7, "weight_decay": 1e-3,
                                 "validation_fraction": 0.2}, "xor"),
    "binary cross-entropy, adam, float32": ([dense(8, "relu"), dense(1)],
                                            {"loss": "binary_cross_entropy", "optimizer": ADAM,
                                             "batch_size": 16, "dtype": "float32"}, "xor"),
    "softmax with squared error, full batch": ([dense(5, "sigmoid"), dense(2, "softmax")],
                                               {"batch_size": None, "optimizer": SGD}, "xor"),
    "regression, linear output, schedule": ([dense(6, "tanh"), dense(2, "linear")],
                                            {"batch_size": 4, "optimizer":
                                             {"type": "sgd", "learning_rate": 0.02,
                                              "momentum": 0.5},
                                             "lr_schedule": {"type": "exponential",
                                                             "gamma": 0.9}}, "regression"),
}


def assert_stats_agree(fast, general, layers: int, training) -> None:
    """Two runs' per-epoch statistics, a row for each of `layers` layers, equal up to
    rounding (float32: its precision), their params in the same order."""
    rel = 1e-4 if training.get("dtype") == "float32" else 1e-9
    for a, b in zip(fast, general, strict=True):
        assert len(a.layer_stats) == len(b.layer_stats) == layers
        for ra, rb in zip(a.layer_stats, b.layer_stats, strict=True):
            assert ra.keys() == rb.keys()
            for key, value in ra.items():
                if key == "params":
                    for pa, pb in zip(value, rb[key], strict=True):
                        assert pa.pop("param") == pb.pop("param")
                        assert pa == pytest.approx(pb, rel=rel, abs=1e-12), key
                elif isinstance(value, float):
                    assert value == pytest.approx(rb[key], rel=rel, abs=1e-12), key
                else:
                    assert value == rb[key], key


def data(kind, xor_data):
    return xor_data if kind == "xor" else regression_data()


@pytest.mark.parametrize("case", list(BUFFER_CASES))
def test_buffer_engine_matches_the_general_path_to_rounding(case, xor_data):
    """The engine adds the biases inside its products ([W; b]^T [x^T; 1]) and sums the bias
    gradients there too, in BLAS's order, where the general path adds b to the product and
    reduces with NumPy: the same arithmetic up to rounding. Over two epochs, as for the
    pure-Python engine: later a ReLU input within rounding of 0 amplifies the last bits
    (cross-entropy, momentum: 8e-15 after one epoch, 3e-10 after three, 4e-8 after eight)."""
    layers, training, kind = BUFFER_CASES[case]
    X, y = data(kind, xor_data)
    training = {"epochs": 2, "seed": 5, **training}
    general, general_reports = run("reference", layers, training, X, y)
    fast, fast_reports = run("auto", layers, training, X, y)
    rel = 1e-5 if training.get("dtype") == "float32" else 1e-12
    assert_agree(fast, fast_reports, general, general_reports, rel)
    assert fast.epochs_completed == general.epochs_completed == 2


def test_buffer_engine_keeps_the_optimizer_state_of_the_general_path(xor_data):
    """The optimizer's slots (momentum, Adam's moments) and step count, as checkpointed."""
    X, y = xor_data
    for optimizer in (MOMENTUM, ADAM):
        training = {"epochs": 3, "seed": 2, "batch_size": 8, "optimizer": optimizer}
        states = []
        for mode in ("reference", "auto"):
            saved = {}
            run(mode, [dense(5, "relu"), dense(1)], training, X, y,
                checkpoint_every=3, on_checkpoint=saved.__setitem__)
            with np.load(io.BytesIO(saved[3])) as z:
                states.append({k: z[k] for k in z.files if k.startswith("opt.")})
        assert states[0].keys() == states[1].keys() and len(states[0]) > 1
        for k, general in states[0].items():                  # to rounding, as the weights
            assert np.abs(states[1][k] - general).max() <= 1e-12 * np.abs(general).max(), k


def path(layers, X, y, **training) -> str | None:
    """Which engine, and which way through the dense one, the plan's training takes."""
    plan = plan_for(layers, {"epochs": 1, **training}, X, y)
    engine = engines.choose(plan.training, list(plan.layers), plan.training["loss"],
                            make_optimizer(plan.training), plan.training["dtype"])
    if not isinstance(engine, DenseStack):
        return "reference" if isinstance(engine, Reference) else None
    return "kernel" if engine.kernel is not None else "buffers"


# (layers, training): every activation and loss the kernel claims, plain SGD with and
# without weight decay, per sample and in batches that do and do not divide the data,
# float32, validation
KERNEL_CASES = {
    "2-4-1 sigmoid, squared error": ([dense(4), dense(1)], {}),
    "tanh, relu, binary cross-entropy": ([dense(4, "tanh"), dense(3, "relu"), dense(1)],
                                         {"loss": "binary_cross_entropy"}),
    "softmax cross-entropy, batch 7, weight decay": (
        [dense(5, "relu"), dense(2, "softmax")],
        {"loss": "cross_entropy", "batch_size": 7, "weight_decay": 1e-3}),
    "softmax, squared error, validation": ([dense(3, "tanh"), dense(2, "softmax")],
                                           {"validation_fraction": 0.25}),
    "linear output, batch 16": ([dense(6, "sigmoid"), dense(1, "linear")],
                                  {"batch_size": 16}),
    "float32, batch 4": ([dense(6, "relu"), dense(3, "tanh"), dense(1)],
                         {"batch_size": 4, "dtype": "float32"}),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_matches_the_reference_to_rounding(case, xor_data):
    """Its dot products sum in order where BLAS's kernels use fused multiply-adds and
    blocks, and libm's tanh and exp are not NumPy's SIMD ones: the engines agree to about
    1e-13 after an epoch or two (later a ReLU input within rounding of 0 can amplify the
    last bits, as between any two BLAS builds), so the comparison is over two epochs."""
    layers, training = KERNEL_CASES[case]
    X, y = xor_data
    training = {"epochs": 2, "seed": 1, "optimizer": SGD, **training}
    assert path(layers, X, y, **training) == "kernel"             # it is the one tested
    general, general_reports = run("reference", layers, training, X, y)
    fast, fast_reports = run("auto", layers, training, X, y)
    rel = 1e-5 if training.get("dtype") == "float32" else 1e-11
    assert_agree(fast, fast_reports, general, general_reports, rel)


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_statistics_match_the_reference_probe(case, xor_data):
    layers, training = KERNEL_CASES[case]
    X, y = xor_data
    training = {"epochs": 2, "seed": 1, "optimizer": SGD, **training}
    _, general = run("reference", layers, training, X, y)
    _, fast = run("auto", layers, training, X, y)
    assert_stats_agree(fast, general, len(layers), training)


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_gradients_pass_a_finite_difference_check(case, xor_data):
    """The kernel's backward (the probe's gradient of the mean loss) against centred finite
    differences in float64."""
    layers, training = KERNEL_CASES[case]
    X, y = xor_data
    plan = plan_for(layers, {**training, "dtype": "float64", "seed": 4}, X, y)
    data_ = prepare(plan, X, y)
    net, loss = list(plan.layers), plan.training["loss"]
    x, t = data_.x[:9], data_.t[:9]
    params = network.init_params(net, np.random.default_rng(1), np.float64)
    engine = DenseStack(net, loss, compiled=True)
    flat = engine._adopt(params)
    engine.kernel.stats(flat, x, t, LayerStats(net).kernel_layout(flat))
    for p, g in zip(params, engine.flat.grads):
        for key in ("W", "b"):
            numeric = numerical_gradient(
                lambda: measure(net, loss, params, x, t, None, len(x))[0], p[key])
            scale = np.abs(numeric).max()
            assert np.abs(g[key] - numeric).max() <= 1e-7 * scale + 1e-10, (case, key)


def test_pretraining_through_the_kernel(xor_data):
    """Autoencoder pretraining with batch_size 1 and plain SGD runs in the kernel too
    (scaled inputs and a small rate keep this short run stable, so rounding stays rounding)."""
    X, y = xor_data
    X = X / 5
    layers = [dense(4, "tanh"), dense(3), dense(1)]
    training = {"epochs": 1, "seed": 3, "optimizer": {"type": "sgd", "learning_rate": 0.05},
                "pretrain": {"epochs": 1}}
    general, general_reports = run("reference", layers, training, X, y)
    fast, fast_reports = run("auto", layers, training, X, y)
    for a, b in zip(fast.weights, general.weights):
        for k in a:
            assert np.abs(a[k] - b[k]).max() <= 1e-12 * np.abs(b[k]).max(), k
    assert [r.phase for r in fast_reports] == ["pretrain", "pretrain", "train"]
    for mine, theirs in zip(fast_reports, general_reports):
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-12)


def test_textbook_step_in_the_kernel():
    """One sample, one step, by hand: the kernel's arithmetic is the slides'."""
    X, y = np.array([[0.2, -0.4]]), np.array([1])
    X, y = np.vstack([X, [[1.0, 1.0]]]), np.array([1, 0])
    training = {"epochs": 1, "seed": 0, "shuffle": False, "optimizer": {
        "type": "sgd", "learning_rate": 0.5}}
    layers = [dense(2), dense(1)]
    assert path(layers, X, y, **training) == "kernel"
    w0 = nn.train(plan_for(layers, {**training, "epochs": 0}, X, y), X, y).weights
    (W1, b1), (W2, b2) = [(p["W"].copy(), p["b"].copy()) for p in w0]
    sig = lambda h: 1 / (1 + np.exp(-h))
    for x, t in zip(X, y):
        g1 = sig(x @ W1 + b1)
        g2 = sig(g1 @ W2 + b2)
        e2 = (g2 - t) * g2 * (1 - g2)
        e1 = (e2 @ W2.T) * g1 * (1 - g1)
        W2 -= 0.5 * np.outer(g1, e2)
        b2 -= 0.5 * e2
        W1 -= 0.5 * np.outer(x, e1)
        b1 -= 0.5 * e1
    r, _ = run("auto", layers, training, X, y)
    assert np.allclose(r.weights[0]["W"], W1, rtol=1e-12) and np.allclose(r.weights[1]["W"], W2)
    assert np.allclose(r.weights[0]["b"], b1) and np.allclose(r.weights[1]["b"], b2)


def test_which_engine():
    X, y = nn.generate("xor", 50, 0, seed=0)
    assert path([dense(4), dense(1)], X, y) == "kernel"
    assert path([dense(4), dense(1)], X, y, batch_size=8) == "kernel"            # small
    assert path([dense(4), dense(1)], X, y, dtype="float32") == "kernel"
    assert path([dense(4), dense(1)], X, y, weight_decay=0.01) == "kernel"
    assert path([dense(4), dense(1)], X, y, optimizer=MOMENTUM) == "buffers"
    assert path([dense(4), dense(1)], X, y, optimizer=ADAM) == "buffers"
    assert path([dense(64), dense(64), dense(1)], X, y) == "kernel"             # per sample
    assert path([dense(64), dense(64), dense(1)], X, y, batch_size=32) == "buffers"
    assert path([dense(4), {"type": "dropout"}, dense(1)], X, y) == "reference"
    assert path([dense(4), dense(1)], X, y, engine="reference") == "reference"
    assert path([dense(1, "step")], X, y, algorithm="perceptron") is None       # the rule


@pytest.mark.parametrize("engine", ["auto", "reference"])
@pytest.mark.parametrize("optimizer,batch", [(SGD, 1), (MOMENTUM, 1), (ADAM, 5)])
def test_resume_is_bit_identical_under_each_engine(engine, optimizer, batch, xor_data):
    X, y = xor_data
    plan = plan_for([dense(4, "tanh"), dense(1)],
                    {"epochs": 6, "seed": 4, "batch_size": batch, "optimizer": optimizer,
                     "validation_fraction": 0.2, "early_stopping": {"patience": 20},
                     "engine": engine}, X, y)
    straight_reports, saved = [], {}
    straight = nn.train(plan, X, y, on_epoch=straight_reports.append, checkpoint_every=2,
                        on_checkpoint=saved.__setitem__)
    reports = []
    resumed = nn.train(plan, X, y, resume=saved[2], on_epoch=reports.append)
    assert same(resumed.weights, straight.weights)
    assert same(resumed.best_weights, straight.best_weights)
    assert metrics(reports) == metrics(straight_reports[2:])
    assert [r.layer_stats for r in reports] == [r.layer_stats for r in straight_reports[2:]]


@pytest.mark.parametrize("batch", [1, 8])
def test_stopping_within_an_epoch_rolls_it_back(batch, monkeypatch):
    monkeypatch.setattr(nn.driver, "POLL_INTERVAL_S", 0.0)
    X, y = nn.generate("xor", 10_000, 0, seed=0)      # polled several times an epoch
    training = {"epochs": 3, "seed": 0, "batch_size": batch}
    for mode in ("auto", "reference"):
        calls = []
        r, reports = run(mode, [dense(4), dense(1)], training, X, y,
                         should_stop=lambda: calls.append(1) or
                         ("deadline" if len(calls) > 3 else None))
        assert r.stop_reason == "deadline" and r.epochs_completed == 0 and reports == []
        assert len(calls) == 4                             # polled within the first epoch
        init = nn.train(plan_for([dense(4), dense(1)], {**training, "epochs": 0}, X, y), X, y)
        assert same(r.weights, init.weights)


def test_pretraining_through_the_buffer_engine():
    X, y = regression_data()
    layers = [dense(6, "tanh"), dense(3, "relu"), dense(2, "linear")]
    training = {"epochs": 2, "seed": 3, "batch_size": 10, "optimizer": MOMENTUM,
                "pretrain": {"epochs": 2, "optimizer": ADAM}}
    general, general_reports = run("reference", layers, training, X, y)
    fast, fast_reports = run("auto", layers, training, X, y)
    assert_agree(fast, fast_reports, general, general_reports, 1e-12)
    assert [r.phase for r in fast_reports] == ["pretrain"] * 4 + ["train"] * 2


def test_statistics_from_the_engine_match_the_general_probe(xor_data):
    """The probe pass through the engine's buffers reports what the layer-by-layer pass does
    (to rounding: the loss gradient is scaled by 1/n instead of divided by n)."""
    X, y = xor_data
    layers = [dense(6, "relu"), dense(4, "tanh"), dense(1)]
    training = {"epochs": 2, "seed": 0, "batch_size": 16, "validation_fraction": 0.2}
    _, general = run("reference", layers, training, X, y)
    _, fast = run("auto", layers, training, X, y)
    for a, b in zip(fast, general):
        assert [row["name"] for row in a.layer_stats] == [row["name"] for row in b.layer_stats]
        for ra, rb in zip(a.layer_stats, b.layer_stats):
            assert ra.keys() == rb.keys()
            for key, value in ra.items():
                if isinstance(value, float):
                    assert value == pytest.approx(rb[key], rel=1e-9, abs=1e-15), key
            assert [p["param"] for p in ra["params"]] == ["W", "b"]


@pytest.mark.parametrize("case", list(BUFFER_CASES))
def test_statistics_of_the_engine_probe_for_every_loss_and_activation(case, xor_data):
    """The engine's own probe pass (transposed, biases folded into the products) against the
    layer-by-layer one, for every output and loss of the bit-identity cases: the same
    weights, so the same statistics up to rounding (float32: its precision)."""
    layers, training, kind = BUFFER_CASES[case]
    X, y = data(kind, xor_data)
    training = {"epochs": 2, "seed": 5, **training}
    _, general = run("reference", layers, training, X, y)
    _, fast = run("auto", layers, training, X, y)
    assert_stats_agree(fast, general, len(layers), training)


@pytest.mark.parametrize("layers", [[dense(8, "relu"), dense(2, "softmax")],
                                    [dense(8, "relu"), {"type": "dropout", "drop_prob": 0.3},
                                     dense(2, "softmax")]])
@pytest.mark.parametrize("shuffle", [True, False])
def test_rows_taken_batch_by_batch_train_as_the_shuffled_copy(layers, shuffle, xor_data,
                                                               monkeypatch):
    """Large data is not copied in each epoch (in its order, or beside the engine's column
    of ones); its batches take their rows (the fast path into a buffer, the general path
    by indexing), with the same weights bit for bit."""
    X, y = xor_data
    training = {"epochs": 3, "seed": 7, "batch_size": 16, "loss": "cross_entropy",
                "optimizer": MOMENTUM, "shuffle": shuffle}
    copied, copied_reports = run("auto", layers, training, X, y)
    monkeypatch.setattr(nn.engines, "COPY_BYTES", 0)
    taken, taken_reports = run("auto", layers, training, X, y)
    assert same(taken.weights, copied.weights)
    assert metrics(taken_reports) == metrics(copied_reports)


def test_weights_stay_plain_arrays_for_the_caller(xor_data):
    """The engine keeps parameters as views of one flat vector; the caller's weights still
    behave as independent arrays (a Model copy, JSON, a second run from them)."""
    X, y = xor_data
    plan = plan_for([dense(5, "relu"), dense(1)],
                    {"epochs": 2, "seed": 0, "batch_size": 8, "optimizer": MOMENTUM}, X, y)
    r = nn.train(plan, X, y)
    before = [{k: v.copy() for k, v in p.items()} for p in r.weights]
    again = nn.train(plan, X, y, initial_weights=r.weights)
    assert same(r.weights, before)                       # not trained in place
    assert not same(again.weights, before)
    assert same(nn.Model.from_npz(r.model.to_npz()).weights, before)


@pytest.mark.parametrize("case", list(BUFFER_CASES))
def test_engine_gradients_pass_a_finite_difference_check(case, xor_data):
    """The engine's own backward pass (transposed, biases folded into the products) against
    centred finite differences of the mean loss, in float64, for every loss and activation
    of the cases above. Measured against each array's largest gradient: an element near 0
    has a relative error of finite differences' noise (~1e-11) over itself."""
    layers, training, kind = BUFFER_CASES[case]
    X, y = data(kind, xor_data)
    training = {**training, "dtype": "float64", "seed": 4}
    plan = plan_for(layers, training, X, y)
    data_ = prepare(plan, X, y)
    net, loss = list(plan.layers), plan.training["loss"]
    x, t = data_.x[:9], data_.t[:9]
    params = network.init_params(net, np.random.default_rng(1), np.float64)
    engine = DenseStack(net, loss)
    _, grads, _ = engine.probe(params, x, t)
    for p, g in zip(params, grads):
        for key in ("W", "b"):
            numeric = numerical_gradient(lambda: measure(net, loss, params, x, t, None, len(x))[0],
                                         p[key])
            scale = np.abs(numeric).max()
            assert np.abs(g[key] - numeric).max() <= 1e-7 * scale + 1e-10, (case, key)
