"""nn/optim.py: optimiser updates and learning-rate schedules against hand computations."""
import numpy as np
import pytest

from nn.optim import FLUSH_EVERY, learning_rate, make_optimizer
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
