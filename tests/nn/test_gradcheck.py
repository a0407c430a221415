"""Every backward pass against centred finite differences in float64 (nn/gradcheck.py):
activations, dense and dropout layers, losses, whole networks. Named for the check, since it
spans modules; the deep structures' layers are checked in test_layers.py."""
import numpy as np
import pytest

from nn import network
from nn.activations import ACTIVATIONS
from nn.gradcheck import numerical_gradient, numerical_gradient_array, rel_error
from nn.layers import dense, dropout
from nn.losses import LOSSES
from nn.spec import parse_network

TOL = 1e-6
SMOOTH = ["sigmoid", "tanh", "relu", "linear", "softmax"]


@pytest.mark.parametrize("name", SMOOTH)
def test_activation_backward(name):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (4, 5))
    z[np.abs(z) < 1e-3] = 0.5                     # keep relu away from its kink
    act = ACTIVATIONS[name]
    da = rng.normal(size=z.shape)
    a = act.forward(z)
    dz = act.backward(da, z, a)
    num = numerical_gradient_array(lambda: act.forward(z), z, da)
    assert rel_error(dz, num) < TOL


def test_step_has_no_backward():
    assert ACTIVATIONS["step"].backward is None


@pytest.mark.parametrize("activation", SMOOTH)
def test_dense_backward(activation):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3))
    p = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    dout = rng.normal(size=(5, 4))
    _, cache = dense.forward(x, p, activation)
    dx, grads = dense.backward(dout, cache)
    f = lambda: dense.forward(x, p, activation)[0]
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    for key in ("W", "b"):
        assert rel_error(grads[key], numerical_gradient_array(f, p[key], dout)) < TOL


def test_dropout_backward_with_randomness_on():
    x = np.random.default_rng(3).normal(size=(6, 5))
    dout = np.random.default_rng(4).normal(size=(6, 5))
    f = lambda: dropout.forward(x, 0.4, train=True, rng=np.random.default_rng(7))[0]
    out, mask = dropout.forward(x, 0.4, train=True, rng=np.random.default_rng(7))
    assert 0 < mask.sum() < mask.size             # some units dropped, some kept
    dx, grads = dropout.backward(dout, mask)
    assert grads == {}
    assert np.array_equal(dx == 0, mask == 0)     # the mask is applied backwards
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL


def test_dropout_eval_scales_by_keep_probability():
    x = np.ones((2, 3))
    out, cache = dropout.forward(x, 0.25, train=False, rng=None)
    assert np.allclose(out, 0.75)
    assert np.allclose(dropout.backward(np.ones((2, 3)), cache)[0], 0.75)


@pytest.mark.parametrize("name,activation,k", [
    ("squared_error", "sigmoid", 3), ("cross_entropy", "softmax", 4),
    ("binary_cross_entropy", "sigmoid", 1)])
def test_loss_gradient(name, activation, k):
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, (6, k))
    if name == "cross_entropy":
        t = rng.integers(0, k, 6)
    elif name == "binary_cross_entropy":
        t = rng.integers(0, 2, (6, 1)).astype(float)
    else:
        t = rng.normal(size=(6, k))
    loss = LOSSES[name]
    x = z if loss.fused else ACTIVATIONS[activation].forward(z)
    _, d = loss.fn(x, t)
    assert rel_error(d, numerical_gradient(lambda: loss.fn(x, t)[0], x)) < TOL
    fast = loss.grad(z, ACTIVATIONS[activation].forward(z), t)      # the hot path's gradient
    assert rel_error(fast, d) < 1e-12


def test_squared_error_is_the_textbooks_per_sample_J():
    g = np.array([[0.8, 0.3]])
    b = np.array([[1.0, 0.0]])
    loss, d = LOSSES["squared_error"].fn(g, b)
    assert loss == pytest.approx(0.5 * (0.2 ** 2 + 0.3 ** 2))
    assert np.allclose(d, g - b)                  # dJ/dg = g - b for one sample


def test_batch_loss_is_the_mean_of_per_sample_losses():
    rng = np.random.default_rng(6)
    z, t = rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    fn = LOSSES["cross_entropy"].fn
    assert fn(z, t)[0] == pytest.approx(np.mean([fn(z[i:i + 1], t[i:i + 1])[0]
                                                 for i in range(5)]))


def test_fused_losses_are_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 0.0]])
    loss, d = LOSSES["cross_entropy"].fn(z, np.array([1]))
    assert loss == pytest.approx(2000.0) and np.isfinite(d).all()
    loss, d = LOSSES["binary_cross_entropy"].fn(np.array([[-800.0]]), np.array([[1.0]]))
    assert loss == pytest.approx(800.0) and np.isfinite(d).all()


@pytest.mark.parametrize("loss,out_act,units", [
    ("squared_error", "sigmoid", 2), ("squared_error", "softmax", 3),
    ("cross_entropy", "softmax", 3), ("binary_cross_entropy", "sigmoid", 1),
    ("squared_error", "linear", 2)])
def test_whole_network_with_dropout(loss, out_act, units):
    """dense(tanh) -> dropout -> dense(relu) -> dropout -> dense(sigmoid) -> output, masks fixed."""
    rng = np.random.default_rng(8)
    glorot = {"type": "glorot"}
    _, layers = parse_network({"layers": [
        {"type": "dense", "units": 5, "activation": "tanh", "init": glorot},
        {"type": "dropout", "drop_prob": 0.3},
        {"type": "dense", "units": 4, "activation": "relu", "init": glorot},
        {"type": "dropout", "drop_prob": 0.5},
        {"type": "dense", "units": 4, "activation": "sigmoid",
         "init": {"type": "uniform", "scale": 2.0}},
        {"type": "dense", "units": units, "activation": out_act, "init": glorot}]}, (3,))
    params = network.init_params(layers, rng, np.float64)
    x = rng.normal(size=(7, 3))
    if loss == "cross_entropy":
        t = rng.integers(0, units, 7)
    elif loss == "binary_cross_entropy":
        t = rng.integers(0, 2, (7, 1)).astype(float)
    else:
        t = rng.normal(size=(7, units))
    fn, fused = LOSSES[loss].fn, LOSSES[loss].fused

    def f():
        out, caches = network.forward(layers, params, x, train=True,
                                      rng=np.random.default_rng(11))
        return fn(caches[-1].z if fused else out, t)

    out, caches = network.forward(layers, params, x, train=True, rng=np.random.default_rng(11))
    assert 0 < np.count_nonzero(caches[1]) < caches[1].size      # dropout really dropped
    _, d = fn(caches[-1].z if fused else out, t)
    grads = network.backward(layers, d, caches, wrt_z=fused)
    for p, g in zip(params, grads):
        for key in p:
            assert rel_error(g[key], numerical_gradient(lambda: f()[0], p[key])) < TOL, key
