"""Optimiser updates against hand computations, and the statistics' definitions."""
import numpy as np
import pytest

from nn.driver import metrics
from nn.optim import FLUSH_EVERY, learning_rate, make_optimizer
from nn.stats import activation_stats
from tests.nn.conftest import step


def run(optimizer: dict, grads: list[np.ndarray], weight_decay: float = 0.0, lr: float = 0.1):
    opt = make_optimizer({"optimizer": optimizer, "weight_decay": weight_decay})
    params = [{"W": np.array([1.0, -2.0]), "b": np.array([0.5])}]
    for g in grads:
        step(opt, params, [{"W": g.copy(), "b": g[:1].copy()}], lr)
    return params[0], opt


G = [np.array([0.5, -1.0]), np.array([0.2, 0.4])]


def test_plain_sgd_is_the_textbook_rule():
    p, _ = run({"type": "sgd", "momentum": 0.0, "nesterov": False}, G)
    assert np.allclose(p["W"], np.array([1.0, -2.0]) - 0.1 * (G[0] + G[1]))


def test_momentum_and_nesterov():
    p, _ = run({"type": "sgd", "momentum": 0.9, "nesterov": False}, G)
    v1 = G[0]
    v2 = 0.9 * v1 + G[1]
    assert np.allclose(p["W"], np.array([1.0, -2.0]) - 0.1 * v1 - 0.1 * v2)
    p, _ = run({"type": "sgd", "momentum": 0.9, "nesterov": True}, G)
    step1 = G[0] + 0.9 * v1
    step2 = G[1] + 0.9 * v2
    assert np.allclose(p["W"], np.array([1.0, -2.0]) - 0.1 * step1 - 0.1 * step2)


def test_adam():
    b1, b2, eps = 0.9, 0.999, 1e-8
    p, opt = run({"type": "adam", "beta1": b1, "beta2": b2, "eps": eps}, G)
    w = np.array([1.0, -2.0])
    m = v = np.zeros(2)
    for t, g in enumerate(G, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - 0.1 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    assert np.allclose(p["W"], w)
    assert opt.state()["t"] == 2 and "slot.m.0.W" in opt.state()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_in_place_is_bit_for_bit_the_expressions(dtype):
    """Adam's update runs in place (big nets: no seven temporaries of the model's size per
    step); the numbers are exactly those of the textbook expressions, weight decay included."""
    rng = np.random.default_rng(0)
    opt = make_optimizer({"optimizer": {"type": "adam", "beta1": 0.9, "beta2": 0.999,
                                        "eps": 1e-8}, "weight_decay": 0.01})
    w = rng.standard_normal((5, 7)).astype(dtype)
    params, ref_w = [{"W": w}], w.copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 60):
        g = (rng.standard_normal((5, 7)) * (t % 7 != 0)).astype(dtype)
        step(opt, params, [{"W": g.copy()}], 0.01)
        g = g + 0.01 * ref_w
        m = 0.9 * m + (1.0 - 0.9) * g
        v = 0.999 * v + (1.0 - 0.999) * (g * g)
        ref_w = ref_w - 0.01 * (m / (1.0 - 0.9 ** t)) / (np.sqrt(v / (1.0 - 0.999 ** t))
                                                        + 1e-8)
        assert np.array_equal(params[0]["W"], ref_w)
        assert np.array_equal(opt.slots["m.0.W"], m) and np.array_equal(opt.slots["v.0.W"], v)


@pytest.mark.parametrize("optimizer", [
    {"type": "sgd", "momentum": 0.9, "nesterov": False},
    {"type": "sgd", "momentum": 0.99, "nesterov": True},
    {"type": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decaying_slots_never_linger_as_subnormal_numbers(optimizer, dtype):
    """A gradient that stops (a dead unit): its slots decay toward 0, but are set to 0
    before they would spend more than FLUSH_EVERY steps among the subnormal numbers (35x
    slower to multiply on x86); slots of ordinary size are untouched."""
    opt = make_optimizer({"optimizer": optimizer, "weight_decay": 0.0})
    tiny = np.finfo(dtype).tiny
    w = np.array([1.0, 0.5], dtype)
    params = [{"W": w}]
    g0 = np.array([1e-3, tiny * 2.0 ** 34], dtype)       # one ordinary, one near the flush
    step(opt, params, [{"W": g0.copy()}], 0.01)
    first_slot = "m.0.W" if optimizer["type"] == "adam" else "v.0.W"   # decays by mu
    subnormal_steps, v_big = 0, []
    for _ in range(FLUSH_EVERY * 40):
        step(opt, params, [{"W": np.zeros(2, dtype)}], 0.01)
        for s in opt.slots.values():
            assert s.dtype == dtype
            subnormal_steps += int(np.count_nonzero((s != 0) & (np.abs(s) < tiny)))
        v_big.append(float(opt.slots[first_slot][0]))
    assert subnormal_steps <= 2 * FLUSH_EVERY
    assert opt.slots[first_slot][1] == 0.0
    mu = optimizer.get("momentum", optimizer.get("beta1"))
    first = v_big[0]
    assert np.allclose(v_big[:40], first * mu ** np.arange(40), rtol=1e-5)   # as computed


def test_weight_decay_applies_to_W_only():
    p, _ = run({"type": "sgd", "momentum": 0.0, "nesterov": False}, [np.zeros(2)],
               weight_decay=0.5)
    assert np.allclose(p["W"], np.array([1.0, -2.0]) * (1 - 0.1 * 0.5))
    assert p["b"][0] == 0.5


def test_learning_rate_schedules():
    base = {"optimizer": {"learning_rate": 1.0}}
    step = {**base, "lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}}
    assert [learning_rate(step, e) for e in range(1, 6)] == [1, 1, 0.5, 0.5, 0.25]
    exp = {**base, "lr_schedule": {"type": "exponential", "gamma": 0.5}}
    assert [learning_rate(exp, e) for e in (1, 2, 3)] == [1, 0.5, 0.25]
    assert learning_rate({**base, "lr_schedule": None}, 7) == 1.0


def test_activation_statistics_definitions():
    sig = activation_stats(np.array([[0.005, 0.5, 0.995, 0.98]]), "sigmoid")
    assert sig == {"act_mean": pytest.approx(0.62), "act_saturated_fraction": 0.5,
                   "act_dead_fraction": None}
    tanh = activation_stats(np.array([[-0.995, 0.0, 0.5, 0.999]]), "tanh")
    assert tanh["act_saturated_fraction"] == 0.5 and tanh["act_dead_fraction"] is None
    relu = activation_stats(np.array([[0.0, 0.0, 1e-9, 2.0]]), "relu")
    assert relu["act_dead_fraction"] == 0.5 and relu["act_saturated_fraction"] is None
    lin = activation_stats(np.array([[-1.0, 1.0]]), "linear")
    assert lin == {"act_mean": 0.0, "act_saturated_fraction": None, "act_dead_fraction": None}


def test_initialisers():
    from nn.init import init_dense
    rng = np.random.default_rng(0)
    u = init_dense(300, 200, {"type": "uniform", "scale": 0.1}, rng, np.float64)
    assert np.abs(u["W"]).max() <= 0.1 and np.abs(u["b"]).max() <= 0.1
    assert u["W"].std() == pytest.approx(0.1 / np.sqrt(3), rel=0.02)      # U(-s, s)
    g = init_dense(300, 200, {"type": "glorot"}, rng, np.float64)
    limit = np.sqrt(6 / 500)
    assert np.abs(g["W"]).max() <= limit and np.abs(g["W"]).max() > 0.99 * limit
    assert not g["b"].any()
    h = init_dense(300, 200, {"type": "he", "distribution": "normal"}, rng, np.float32)
    assert h["W"].dtype == np.float32
    assert h["W"].std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
    hu = init_dense(300, 200, {"type": "he", "distribution": "uniform"}, rng, np.float64)
    assert np.abs(hu["W"]).max() <= np.sqrt(6 / 300)
    assert hu["W"].std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)


def _direct(x: np.ndarray) -> list[float]:
    x = x.astype(np.float64).ravel()
    return [np.abs(x).mean(), np.linalg.norm(x), np.abs(x).max(), x.std()]


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_stats_match_numpy_on_each_array(dtype, one_pass, monkeypatch):
    """The vectorised statistics step against numpy, array by array and row by row: a row of
    several weight arrays (attention's Wq, Wk, Wv, Wo together), a constant array (std exactly
    0), one whose mean dwarfs its spread (where sum x^2 - n mean^2 cancels), one number; with
    the two-pass std of small nets and the one-pass std of large ones."""
    import nn
    import nn.stats
    from nn.stats import GRAD_KEYS, PARAM_FIELDS, WEIGHT_KEYS, LayerStats
    monkeypatch.setattr(nn.stats, "ONE_PASS", 0 if one_pass else 1 << 30)
    plan = nn.build({"layers": [{"type": "self_attention"}, {"type": "sequence_pool"},
                                {"type": "dense", "units": 1}]},
                    {"loss": "squared_error"},
                    nn.DataInfo((3, 4), 10, "classification", [0, 1], 1))
    layers = list(plan.layers)
    rng = np.random.default_rng(0)
    params = nn.network.init_params(layers, rng, dtype)
    params[0]["bq"][:] = 5.0
    params[2]["W"] += dtype(1e4)
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in p.items()} for p in params]
    outputs = [rng.normal(size=(6, 3, 4)).astype(dtype), None, rng.random((6, 1)).astype(dtype)]
    stats = LayerStats(layers)
    for _ in range(2):                                  # the buffers are reused
        rows = stats(params, grads, outputs, [None] * 3)
    attention, dense = rows
    assert [attention["name"], dense["name"]] == ["self_attention_0", "dense_2"]
    together = lambda p, keys: np.concatenate([p[k].ravel() for k in keys])
    keys = ("Wq", "Wk", "Wv", "Wo")
    for row, i, expect_w, expect_g in ((attention, 0, together(params[0], keys),
                                        together(grads[0], keys)),
                                       (dense, 2, params[2]["W"], grads[2]["W"])):
        assert [row[k] for k in WEIGHT_KEYS] == pytest.approx(_direct(expect_w), rel=1e-12)
        assert [row[k] for k in GRAD_KEYS] == pytest.approx(_direct(expect_g), rel=1e-12)
        assert [p["param"] for p in row["params"]] == list(params[i])
        for entry in row["params"]:
            assert tuple(entry) == PARAM_FIELDS
            key = entry["param"]
            assert [entry[k] for k in WEIGHT_KEYS] == pytest.approx(_direct(params[i][key]),
                                                                    rel=1e-12)
            assert [entry[k] for k in GRAD_KEYS] == pytest.approx(_direct(grads[i][key]),
                                                                  rel=1e-12)
        assert row["act_mean"] == pytest.approx(float(outputs[i].astype(float).mean()))
    assert {p["param"]: p for p in attention["params"]}["bq"]["weight_std"] == 0
    assert dense["params"][1]["weight_std"] == 0                       # b: one number
    perceptron = stats(params, None, outputs, [None] * 3)
    assert perceptron[1]["grad_norm"] is None
    assert perceptron[1]["weight_std"] == dense["weight_std"]


@pytest.mark.parametrize("shape", [(300, 10), (40, 7, 5), (50, 2)])
def test_cross_entropy_metrics_in_one_pass_match_argmax(shape):
    """The epoch's loss and accuracy from one shifted copy of z equal log-sum-exp and argmax
    (first of tied maxima) on the same numbers: ties, NaN rows and labels per step too."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[-1], shape[:-1])
    flat = z.reshape(-1, shape[-1])
    for cut in (None, "ties", "nan"):
        if cut == "ties":
            flat[::3] = np.round(flat[::3])               # many rows with two equal maxima
            flat[1::7] = 0.0
        if cut == "nan":
            flat[5, 1] = np.nan
        loss, acc = metrics("cross_entropy", "softmax", z, t, t)
        zs = flat - flat.max(axis=1, keepdims=True)
        ref = np.mean(np.log(np.exp(zs).sum(axis=1)) - zs[np.arange(len(zs)), t.reshape(-1)])
        assert loss == pytest.approx(float(ref), rel=1e-6, nan_ok=True)
        assert acc == np.count_nonzero(z.argmax(axis=-1) == t) / t.size
