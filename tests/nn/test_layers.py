"""The deep structures' layers: every backward against centred finite differences (float64),
and the fast forward passes of convolution, pooling and attention against naive loops. One
file for the package nn/layers/, whose layers share its helpers."""
import math
import tracemalloc

import numpy as np
import pytest

from nn import network
from nn.gradcheck import numerical_gradient, numerical_gradient_array, rel_error
from nn.layers import avgpool2d, conv2d, maxpool2d, self_attention
from nn.layers.positional_encoding import sinusoid
from nn.losses import LOSSES
from nn.spec import parse_network

TOL = 1e-6


def bound(spec: dict, in_shape: tuple):
    """The layer `spec` parsed for per-sample inputs of in_shape."""
    _, layers = parse_network({"layers": [spec, {"type": "flatten"},
                                          {"type": "dense", "units": 1}]}, in_shape)
    return layers[0]


def check_layer(spec: dict, in_shape: tuple, x: np.ndarray | None = None, seed: int = 0):
    """backward(dout) against numerical gradients for x and every parameter."""
    rng = np.random.default_rng(seed)
    layer = bound(spec, in_shape)
    params = {k: v + rng.normal(0, 0.3, v.shape) for k, v in layer.init(rng, np.float64).items()}
    x = rng.normal(size=(3, *in_shape)) if x is None else x
    f = lambda: layer.forward(x, params, train=False)[0]
    out, cache = layer.forward(x, params, train=False)
    assert out.shape == (len(x), *layer.out_shape)
    dout = rng.normal(size=out.shape)
    dx, grads = layer.backward(dout, cache)
    assert grads.keys() == params.keys()
    if dx is not None:
        assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    for key in params:
        num = numerical_gradient_array(f, params[key], dout)
        # attention's bk has gradient exactly 0 (softmax ignores the shift q.bk of a row)
        ok = rel_error(grads[key], num) < TOL or np.abs(grads[key] - num).max() < 1e-9
        assert ok, (key, rel_error(grads[key], num))
    return layer


@pytest.mark.parametrize("spec,in_shape", [
    ({"type": "conv2d", "filters": 3, "kernel_size": 3, "stride": 2, "padding": 1,
      "activation": "tanh"}, (2, 7, 6)),
    ({"type": "conv2d", "filters": 2, "kernel_size": [2, 3], "stride": [1, 2],
      "activation": "sigmoid"}, (5, 6)),
    ({"type": "maxpool2d", "pool_size": 2}, (2, 5, 6)),
    ({"type": "maxpool2d", "pool_size": 3, "stride": 2}, (6, 7)),
    ({"type": "avgpool2d", "pool_size": 2}, (2, 4, 6)),
    ({"type": "avgpool2d", "pool_size": [2, 3], "stride": 1}, (5, 5)),
    ({"type": "flatten"}, (2, 3, 4)),
    ({"type": "rnn", "units": 4}, (5, 3)),
    ({"type": "rnn", "units": 4, "return_sequences": True, "activation": "sigmoid"}, (5, 3)),
    ({"type": "lstm", "units": 4}, (5, 3)),
    ({"type": "lstm", "units": 3, "return_sequences": True}, (4, 2)),
    ({"type": "sequence_pool", "mode": "last"}, (5, 3)),
    ({"type": "sequence_pool", "mode": "mean"}, (5, 3)),
    ({"type": "sequence_pool", "mode": "max"}, (5, 3)),
    ({"type": "self_attention", "heads": 1}, (4, 3)),
    ({"type": "self_attention", "heads": 2}, (5, 4)),
    ({"type": "self_attention", "heads": 2, "causal": True}, (5, 4)),
    ({"type": "layer_norm"}, (5, 4)),
    ({"type": "positional_encoding"}, (5, 4)),
    ({"type": "positional_encoding", "mode": "learned"}, (5, 4)),
    ({"type": "transformer_encoder", "heads": 2, "ff_units": 6}, (5, 4)),
    ({"type": "transformer_encoder", "heads": 2, "ff_units": 6, "norm": "post", "causal": True,
      "activation": "tanh"}, (5, 4)),
    ({"type": "dense", "units": 3, "activation": "tanh"}, (5, 4)),          # per time step
    ({"type": "dropout", "drop_prob": 0.5}, (2, 3, 3)),                      # eval mode
])
def test_layer_backward(spec, in_shape):
    check_layer(spec, in_shape)


def test_embedding_backward_wrt_its_table():
    ids = np.array([[0, 3, 3, 6], [6, 6, 1, 0], [2, 3, 4, 5]], dtype=float)   # repeats add up
    layer = check_layer({"type": "embedding", "vocab_size": 7, "dim": 3}, (4,), x=ids)
    out, _ = layer.forward(ids, {"E": np.arange(21.0).reshape(7, 3)}, train=False)
    assert np.array_equal(out[1, 0], [18, 19, 20])                          # row E[6]


def test_dropout_on_sequences_with_randomness_on():
    layer = bound({"type": "dropout", "drop_prob": 0.4}, (4, 3))
    x = np.random.default_rng(3).normal(size=(5, 4, 3))
    dout = np.random.default_rng(4).normal(size=x.shape)
    f = lambda: layer.forward(x, {}, train=True, rng=np.random.default_rng(7))[0]
    _, mask = layer.forward(x, {}, train=True, rng=np.random.default_rng(7))
    assert 0 < mask.sum() < mask.size
    dx, _ = layer.backward(dout, mask)
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL


def test_cross_entropy_per_time_step():
    rng = np.random.default_rng(5)
    z, t = rng.normal(0, 2, (4, 6, 5)), rng.integers(0, 5, (4, 6))
    ce = LOSSES["cross_entropy"]
    loss, dz = ce.fn(z, t)
    assert rel_error(dz, numerical_gradient(lambda: ce.fn(z, t)[0], z)) < TOL
    per_step = [ce.fn(z[n, s][None], t[n, s][None])[0] for n in range(4) for s in range(6)]
    assert loss == pytest.approx(np.mean(per_step))    # the mean over samples and steps
    fast = ce.grad(z, np.exp(z) / np.exp(z).sum(-1, keepdims=True), t)
    assert rel_error(fast, dz) < 1e-12


@pytest.mark.parametrize("layers,x_shape,t", [
    ([{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1, "activation": "relu"},
      {"type": "maxpool2d"}, {"type": "conv2d", "filters": 3, "kernel_size": 2},
      {"type": "flatten"}, {"type": "dropout", "drop_prob": 0.3},
      {"type": "dense", "units": 3, "activation": "softmax"}], (6, 6), (4,)),
    ([{"type": "embedding", "vocab_size": 6, "dim": 4},
      {"type": "positional_encoding"},
      {"type": "transformer_encoder", "heads": 2, "ff_units": 5, "causal": True},
      {"type": "layer_norm"}, {"type": "dense", "units": 6, "activation": "softmax"}],
     (5,), (4, 5)),
    ([{"type": "lstm", "units": 3, "return_sequences": True},
      {"type": "rnn", "units": 3, "return_sequences": True},
      {"type": "self_attention", "heads": 3}, {"type": "sequence_pool", "mode": "last"},
      {"type": "dense", "units": 3, "activation": "softmax"}], (4, 2), (4,)),
])
def test_whole_networks_with_fused_cross_entropy(layers, x_shape, t):
    """forward -> cross-entropy (per sample or per time step) -> backward through the net."""
    rng = np.random.default_rng(8)
    _, net = parse_network({"layers": layers}, x_shape)
    params = network.init_params(net, rng, np.float64)
    x = (rng.integers(0, 6, (4, *x_shape)).astype(float) if net[0].kind == "embedding"
         else rng.normal(size=(4, *x_shape)))
    target = rng.integers(0, net[-1].out_shape[-1], t)
    fn = LOSSES["cross_entropy"].fn

    def loss():
        _, caches = network.forward(net, params, x, train=True, rng=np.random.default_rng(1))
        return fn(network.output_z(caches), target)[0]

    _, caches = network.forward(net, params, x, train=True, rng=np.random.default_rng(1))
    _, dz = fn(network.output_z(caches), target)
    grads = network.backward(net, dz, caches, wrt_z=True)
    for i, (p, g) in enumerate(zip(params, grads)):
        for key in p:
            num = numerical_gradient(loss, p[key])
            assert rel_error(g[key], num) < TOL or np.abs(g[key] - num).max() < 1e-9, (i, key)


# ---- naive-loop references ---------------------------------------------------------------

def conv_reference(x, W, b, stride, padding):
    n, c, h, w = x.shape
    F, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, F, ho, wo))
    for s in range(n):
        for f in range(F):
            for i in range(ho):
                for j in range(wo):
                    out[s, f, i, j] = np.sum(W[f] * xp[s, :, i * sh:i * sh + kh,
                                                        j * sw:j * sw + kw]) + b[f]
    return out


def pool_reference(x, size, stride, reduce):
    n, c, h, w = x.shape
    ho, wo = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
    out = np.zeros((n, c, ho, wo))
    for s in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    r, q = i * stride[0], j * stride[1]
                    out[s, ch, i, j] = reduce(x[s, ch, r:r + size[0], q:q + size[1]])
    return out


def attention_reference(x, p, heads, causal):
    n, T, D = x.shape
    d = D // heads
    q, k, v = x @ p["Wq"] + p["bq"], x @ p["Wk"] + p["bk"], x @ p["Wv"] + p["bv"]
    ctx = np.zeros((n, T, D))
    for s in range(n):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(T):
                keys = range(i + 1) if causal else range(T)
                scores = np.array([q[s, i, cols] @ k[s, j, cols] / math.sqrt(d) for j in keys])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                ctx[s, i, cols] = sum(wj * v[s, j, cols] for wj, j in zip(weights, keys))
    return ctx @ p["Wo"] + p["bo"]


@pytest.mark.parametrize("stride,padding", [((1, 1), (0, 0)), ((2, 2), (1, 1)), ((1, 2), (2, 0))])
def test_conv2d_matches_naive_loops(stride, padding):
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(2, 3, 7, 8)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    out, _ = conv2d.forward(x, {"W": W, "b": b}, stride, padding, "linear")
    assert np.allclose(out, conv_reference(x, W, b, stride, padding))


@pytest.mark.parametrize("size,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2))])
def test_pools_match_naive_loops(size, stride):
    x = np.random.default_rng(1).normal(size=(2, 3, 7, 8))
    assert np.allclose(maxpool2d.forward(x, size, stride)[0],
                       pool_reference(x, size, stride, np.max))
    assert np.allclose(avgpool2d.forward(x, size, stride)[0],
                       pool_reference(x, size, stride, np.mean))


@pytest.mark.parametrize("size,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 1))])
def test_max_pool_gradient_goes_to_the_first_maximum(size, stride):
    """With ties (ReLU zeros, repeated values) each window passes its gradient to its first
    maximal input in row-major order, as argmax picks it; overlapping windows add up."""
    rng = np.random.default_rng(2)
    x = np.maximum(rng.integers(-2, 3, size=(2, 3, 7, 6)), 0).astype(float)
    out, cache = maxpool2d.forward(x, size, stride)
    dout = rng.normal(size=out.shape)
    expected = np.zeros_like(x)
    for s, c, i, j in np.ndindex(*out.shape):
        r, q = i * stride[0], j * stride[1]
        window = x[s, c, r:r + size[0], q:q + size[1]]
        u, v = np.unravel_index(np.argmax(window), size)
        expected[s, c, r + u, q + v] += dout[s, c, i, j]
    assert np.allclose(maxpool2d.backward(dout, cache)[0], expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("heads,causal", [(1, False), (2, False), (2, True), (4, True)])
def test_attention_matches_naive_loops(heads, causal):
    rng = np.random.default_rng(2)
    D = 8
    p = self_attention.init_attention(D, {"type": "uniform", "scale": 0.5}, rng, np.float64)
    x = rng.normal(size=(2, 5, D))
    out, cache = self_attention.forward(x, p, heads, causal)
    assert np.allclose(out, attention_reference(x, p, heads, causal))
    assert np.allclose(cache.a.sum(axis=-1), 1.0)
    if causal:
        assert not np.triu(cache.a[0, 0], k=1).any()       # no weight on future positions


def test_causal_outputs_ignore_the_future():
    layer = bound({"type": "transformer_encoder", "heads": 2, "causal": True}, (6, 4))
    rng = np.random.default_rng(3)
    p = layer.init(rng, np.float64)
    x = rng.normal(size=(1, 6, 4))
    y = x.copy()
    y[0, 4:] += 5.0                                         # change steps 4 and 5 only
    a, b = layer.forward(x, p, train=False)[0], layer.forward(y, p, train=False)[0]
    assert np.allclose(a[0, :4], b[0, :4]) and not np.allclose(a[0, 4:], b[0, 4:])


def test_sinusoidal_encoding_formula():
    P = sinusoid(7, 6)
    t, k = 5, 1                                              # columns 2k, 2k+1
    assert P[t, 2 * k] == pytest.approx(math.sin(t / 10000 ** (2 * k / 6)))
    assert P[t, 2 * k + 1] == pytest.approx(math.cos(t / 10000 ** (2 * k / 6)))
    assert np.allclose(P[0], [0, 1] * 3)


def test_lstm_gates_and_forget_bias():
    layer = bound({"type": "lstm", "units": 2}, (3, 1))
    p = layer.init(np.random.default_rng(0), np.float64)
    assert p["Wx"].shape == (1, 8) and p["Wh"].shape == (2, 8)
    assert p["b"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]                # i, f, g, o
    x = np.random.default_rng(1).normal(size=(2, 3, 1))
    sig = lambda z: 1 / (1 + np.exp(-z))
    h = c = np.zeros((2, 2))
    for t in range(3):                                        # the textbook equations
        a = x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"]
        i, f, g, o = sig(a[:, :2]), sig(a[:, 2:4]), np.tanh(a[:, 4:6]), sig(a[:, 6:])
        c = f * c + i * g
        h = o * np.tanh(c)
    assert np.allclose(layer.forward(x, p, train=False)[0], h)


def test_rnn_is_the_elman_recurrence():
    layer = bound({"type": "rnn", "units": 3, "return_sequences": True}, (4, 2))
    p = layer.init(np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).normal(size=(2, 4, 2))
    h, hs = np.zeros((2, 3)), []
    for t in range(4):
        h = np.tanh(x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"])
        hs.append(h)
    assert np.allclose(layer.forward(x, p, train=False)[0], np.stack(hs, axis=1))


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_grad_norm_by_time_is_the_norm_of_dL_dh_t(kind):
    """h_T gets dout itself; h_{T-1} what step T sends back (rnn: dz_T Wh^T,
    dz_T = dout (1 - h_T^2))."""
    layer = bound({"type": kind, "units": 3}, (5, 2))
    rng = np.random.default_rng(0)
    p = layer.init(rng, np.float64)
    x = rng.normal(size=(3, 5, 2))
    out, cache = layer.forward(x, p, train=False)
    dout = rng.normal(size=out.shape)
    dx, grads, trace = layer.backward_traced(dout, cache)
    norms = trace["grad_norm_by_time"]
    assert len(norms) == 5 and norms[-1] == pytest.approx(np.linalg.norm(dout))
    if kind == "rnn":
        dh = (dout * (1 - out ** 2)) @ p["Wh"].T
        assert norms[-2] == pytest.approx(np.linalg.norm(dh))
    assert np.allclose(layer.backward(dout, cache)[0], dx)


@pytest.mark.parametrize("spec,in_shape", [
    ({"type": "dense", "units": 64, "activation": "sigmoid"}, (32,)),
    ({"type": "dense", "units": 64, "activation": "tanh"}, (10, 32)),
    ({"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1}, (3, 32, 32)),
    ({"type": "conv2d", "filters": 64, "kernel_size": 5, "stride": 2, "activation": "sigmoid"},
     (32, 32)),
    ({"type": "maxpool2d", "pool_size": 3, "stride": 1}, (8, 32, 32)),
    ({"type": "avgpool2d", "pool_size": 2}, (8, 32, 32)),
    ({"type": "flatten"}, (8, 16, 16)),
    ({"type": "dropout"}, (256,)),
    ({"type": "rnn", "units": 32}, (20, 8)),
    ({"type": "lstm", "units": 32, "return_sequences": True}, (20, 8)),
    ({"type": "embedding", "vocab_size": 50, "dim": 32}, (20,)),
    ({"type": "layer_norm"}, (20, 32)),
    ({"type": "positional_encoding"}, (20, 32)),
    ({"type": "sequence_pool", "mode": "max"}, (20, 32)),
    ({"type": "self_attention", "heads": 4}, (40, 16)),
    ({"type": "self_attention", "heads": 2, "causal": True}, (40, 16)),
    ({"type": "transformer_encoder", "heads": 2}, (40, 16)),
    ({"type": "transformer_encoder", "heads": 4, "causal": True, "norm": "post"}, (40, 16)),
])
@pytest.mark.parametrize("contiguous", [True, False])
def test_cost_infer_bounds_the_memory_an_eval_forward_pass_takes(spec, in_shape, contiguous):
    """Measured (numpy's allocations are traced) on 64 samples, an input as a layer gets it
    from the one before (a conv2d's output is a transposed view)."""
    layer, n = bound(spec, in_shape), 64
    rng = np.random.default_rng(0)
    params = layer.init(rng, np.float64)
    x = (rng.integers(0, 50, (n, *in_shape)).astype(float) if layer.kind == "embedding"
         else rng.normal(size=(n, *in_shape)))
    if not contiguous:
        x = np.ascontiguousarray(np.moveaxis(x, 0, -1)).transpose(-1, *range(len(in_shape)))
    tracemalloc.start()
    try:
        out, cache = layer.forward(x, params, train=False)
        del out, cache
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = peak + x.nbytes                              # the input was there before
    estimate = layer.cost().infer * n * 8
    assert held <= estimate + 16384                     # a few small arrays of any size
    assert estimate <= 5 * held                         # and not far off
