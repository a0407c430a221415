"""The Transformer decoder block (nn/layers/transformer_decoder.py) and the attention's key
padding masks and cross form (nn/layers/self_attention.py): every gradient against centred
finite differences in float64 (dmemory too, the encoder's gradient through cross-attention),
the masks' zero weights, and step() against forward."""
import tracemalloc

import numpy as np
import pytest

from nn.errors import SpecError
from nn.gradcheck import numerical_gradient_array, rel_error
from nn.layers import LAYERS, self_attention
from nn.layers import transformer_decoder as td

TOL = 1e-6
# the real tokens of 3 samples; the third sample's source is all PAD (a row with no key)
SRC_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
TGT_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=bool)


def decoder(norm="pre", T=4, D=4, T_src=5, D_m=4, heads=2, ff=6, activation="relu"):
    spec = {"type": "transformer_decoder", "heads": heads, "ff_units": ff, "norm": norm,
            "activation": activation}
    return LAYERS["transformer_decoder"].parse(spec, (T, D), "network.decoder.layers[2]",
                                               memory_shape=(T_src, D_m))


def setup(layer, seed=0, dtype=np.float64, n=3):
    """Parameters moved off their initial values (gamma 1, beta 0), x and memory."""
    rng = np.random.default_rng(seed)
    params = {k: (v + rng.normal(0, 0.3, v.shape)).astype(dtype)
              for k, v in layer.init(rng, np.float64).items()}
    x = rng.normal(size=(n, *layer.in_shape)).astype(dtype)
    memory = rng.normal(size=(n, *layer.memory_shape)).astype(dtype)
    return rng, params, x, memory


@pytest.mark.parametrize("norm,D_m,activation", [("pre", 4, "relu"), ("post", 4, "tanh"),
                                                 ("pre", 6, "sigmoid"), ("post", 6, "relu")])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_against_finite_differences(norm, D_m, activation, masked):
    layer = decoder(norm, D_m=D_m, activation=activation)
    rng, params, x, memory = setup(layer)
    masks = {"src_mask": SRC_MASK, "tgt_mask": TGT_MASK} if masked else {}
    f = lambda: layer.forward(x, params, train=False, memory=memory, **masks)[0]
    out, cache = layer.forward(x, params, train=False, memory=memory, **masks)
    dout = rng.normal(size=out.shape)
    dx, dmemory, grads = layer.backward(dout, cache)
    assert grads.keys() == params.keys() == layer.param_shapes().keys()
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    assert rel_error(dmemory, numerical_gradient_array(f, memory, dout)) < TOL
    for key in params:
        num = numerical_gradient_array(f, params[key], dout)
        # the attentions' bk have gradient 0 (softmax ignores the shift q.bk of a row)
        ok = rel_error(grads[key], num) < TOL or np.abs(grads[key] - num).max() < 1e-9
        assert ok, (key, rel_error(grads[key], num))
    if masked:                          # PAD source positions pass the encoder no gradient
        assert not dmemory[~SRC_MASK].any()


def test_weights_are_zero_on_padding_and_rows_sum_to_one():
    layer = decoder()
    _, params, x, memory = setup(layer)
    with np.errstate(all="raise"):                  # no NaN or inf on the way
        out, cache = layer.forward(x, params, train=False, memory=memory, src_mask=SRC_MASK,
                                   tgt_mask=TGT_MASK)
    a = td.cross_weights(cache)                     # (N, heads, T, T_src)
    assert a.shape == (3, 2, 4, 5) and np.isfinite(out).all()
    keys = np.broadcast_to(SRC_MASK[:, None, None, :], a.shape)
    assert not a[~keys].any()                       # exactly 0
    assert np.allclose(a[:2].sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    assert not a[2].any()                           # no real source token: no weight at all
    selfa = cache.self_attn[1].a                    # (N, heads, T, T): causal and tgt_mask
    allowed = np.tri(4, dtype=bool) & TGT_MASK[:, None, None, :]
    assert not selfa[~np.broadcast_to(allowed, selfa.shape)].any()
    assert np.allclose(selfa.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padding_does_not_change_real_outputs(norm):
    """Whatever the PAD positions hold (embeddings of 0, garbage), the outputs at real
    target positions are the same, bit for bit: their weights are exactly 0."""
    layer = decoder(norm)
    rng, params, x, memory = setup(layer)
    masks = {"src_mask": SRC_MASK, "tgt_mask": TGT_MASK}
    out = layer.forward(x, params, train=False, memory=memory, **masks)[0]
    x2, memory2 = x.copy(), memory.copy()
    x2[~TGT_MASK] += rng.normal(0, 5, x2[~TGT_MASK].shape)
    memory2[~SRC_MASK] += rng.normal(0, 5, memory2[~SRC_MASK].shape)
    out2 = layer.forward(x2, params, train=False, memory=memory2, **masks)[0]
    assert np.array_equal(out[TGT_MASK], out2[TGT_MASK])
    # and without the masks they would differ
    out3 = layer.forward(x2, params, train=False, memory=memory2)[0]
    assert not np.allclose(out[TGT_MASK], out3[TGT_MASK])


def test_outputs_ignore_the_future():
    layer = decoder(T=6)
    _, params, x, memory = setup(layer, n=1)
    y = x.copy()
    y[0, 4:] += 5.0                                 # change target steps 4 and 5 only
    a = layer.forward(x, params, train=False, memory=memory)[0]
    b = layer.forward(y, params, train=False, memory=memory)[0]
    assert np.allclose(a[0, :4], b[0, :4]) and not np.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize("norm,D_m", [("pre", 8), ("post", 8), ("pre", 6)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_step_reproduces_forward(norm, D_m, dtype, tol):
    T = 7
    layer = decoder(norm, T=T, D=8, T_src=5, D_m=D_m, heads=4, ff=12)
    _, params, x, memory = setup(layer, seed=1, dtype=dtype)
    out, cache = layer.forward(x, params, train=False, memory=memory, src_mask=SRC_MASK)
    state = None
    for t in range(T):
        out_t, state, a_t = layer.step(x[:, t], params, state, memory, src_mask=SRC_MASK)
        assert out_t.dtype == a_t.dtype == dtype and a_t.shape == (3, 4, 5)
        assert np.abs(out_t - out[:, t]).max() < tol, t
        assert np.abs(a_t - td.cross_weights(cache)[:, :, t]).max() < tol
        assert state["k"].shape == state["v"].shape == (3, 4, t + 1, 2)
    assert state["memory_k"].shape == (3, 4, 5, 2)


def test_step_state_reorders_by_sample():
    """Beam search keeps some samples' states and repeats others: indexing every array of
    the state by rows gives the state of those rows' decodes."""
    layer = decoder(T=3)
    _, params, x, memory = setup(layer)
    state = None
    for t in range(2):
        _, state, _ = layer.step(x[:, t], params, state, memory, src_mask=SRC_MASK)
    rows = np.array([1, 1, 0])
    picked = {k: a[rows] for k, a in state.items()}
    out_t = layer.step(x[rows, 2], params, picked, memory[rows], src_mask=SRC_MASK[rows])[0]
    out = layer.forward(x[rows], params, train=False, memory=memory[rows],
                        src_mask=SRC_MASK[rows])[0]
    assert np.abs(out_t - out[:, 2]).max() < 1e-12


def test_float32_in_float32_out():
    layer = decoder("post", D_m=6)
    rng, params, x, memory = setup(layer, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in layer.init(rng, np.float32).values())
    out, cache = layer.forward(x, params, train=False, memory=memory, src_mask=SRC_MASK,
                               tgt_mask=TGT_MASK)
    dx, dmemory, grads = layer.backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dmemory.dtype == td.cross_weights(cache).dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    assert np.isfinite(out).all() and np.isfinite(dmemory).all()


def test_spec():
    layer = decoder()
    assert layer.spec == {"type": "transformer_decoder", "heads": 2, "ff_units": 6,
                          "activation": "relu", "norm": "pre", "init": {"type": "glorot"}}
    assert layer.takes_memory and not LAYERS["transformer_encoder"].takes_memory
    assert layer.param_shapes()["cWk"] == (4, 4)
    assert decoder(D_m=6).param_shapes()["cWv"] == (6, 4)
    assert "causal" not in layer.fields()
    with pytest.raises(SpecError) as e:             # in a plain network or an encoder
        LAYERS["transformer_decoder"].parse({"heads": 2}, (4, 4), "network.layers[1]")
    assert e.value.path == "network.layers[1].type"
    with pytest.raises(SpecError) as e:
        decoder(heads=3)
    assert e.value.path == "network.decoder.layers[2].heads"


def test_cost_counts_both_attentions():
    small, large = decoder(T=4, T_src=5).cost(), decoder(T=4, T_src=50).cost()
    # the cross scores and weighted sum grow with T_src: 2 T T_src D multiply-adds
    assert large.macs - small.macs == 2 * 4 * 45 * 4 + 2 * 45 * 4 * 4
    assert large.kept - small.kept == 2 * 45 * 4 + 2 * 4 * 45


@pytest.mark.parametrize("norm,T,T_src", [("pre", 40, 30), ("post", 20, 60)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_cost_infer_bounds_the_memory_an_eval_forward_pass_takes(norm, T, T_src, contiguous):
    """As tests/nn/test_layers.py's: measured on 64 samples, the memory counted as an
    input (the encoder's output is alive while the decoder runs)."""
    layer, n = decoder(norm, T=T, D=16, T_src=T_src, D_m=16, heads=4, ff=64), 64
    rng = np.random.default_rng(0)
    params = layer.init(rng, np.float64)
    x, memory = rng.normal(size=(n, T, 16)), rng.normal(size=(n, T_src, 16))
    mask = np.ones((n, T_src), dtype=bool)
    mask[::2, T_src // 2:] = False
    if not contiguous:
        x = np.ascontiguousarray(np.moveaxis(x, 0, -1)).transpose(2, 0, 1)
    tracemalloc.start()
    try:
        out, cache = layer.forward(x, params, train=False, memory=memory, src_mask=mask,
                                   tgt_mask=np.ones((n, T), dtype=bool))
        del out, cache
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = peak + x.nbytes + memory.nbytes
    estimate = layer.cost().infer * n * 8
    assert held <= estimate + 16384
    assert estimate <= 5 * held


# self_attention.py's masks and cross form, on their own

def test_cross_form_over_x_itself_is_self_attention():
    rng = np.random.default_rng(4)
    p = self_attention.init_attention(6, {"type": "glorot"}, rng, np.float64)
    x = rng.normal(size=(2, 5, 6))
    out, cache = self_attention.forward(x, p, 3)
    out2, cache2 = self_attention.forward(x, p, 3, memory=x)
    assert np.array_equal(out, out2)
    dout = rng.normal(size=out.shape)
    dx, grads = self_attention.backward(dout, cache)
    dxq, dmemory, grads2 = self_attention.cross_backward(dout, cache2)
    assert np.allclose(dx, dxq + dmemory, rtol=0, atol=1e-13)
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)
    with pytest.raises(ValueError):
        self_attention.backward(dout, cache2)       # it would drop dmemory


@pytest.mark.parametrize("causal", [False, True])
def test_key_mask_gradients_and_a_query_with_no_keys(causal):
    """A query whose keys are all PAD gets weight 0 everywhere and out = bo, with no NaN
    forward or backward; masked keys' weights are exactly 0; finite differences agree."""
    rng = np.random.default_rng(5)
    p = {k: v + rng.normal(0, 0.3, v.shape) for k, v in
         self_attention.init_attention(4, {"type": "glorot"}, rng, np.float64).items()}
    x = rng.normal(size=(3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=bool)
    f = lambda: self_attention.forward(x, p, 2, causal, mask)[0]
    with np.errstate(all="raise"):
        out, cache = self_attention.forward(x, p, 2, causal, mask)
        dout = rng.normal(size=out.shape)
        dx, grads = self_attention.backward(dout, cache)
    assert not cache.a[np.broadcast_to(~mask[:, None, None, :], cache.a.shape)].any()
    if causal:                                      # sample 2's first two queries see PAD only
        assert not cache.a[2, :, :2].any() and np.array_equal(out[2, :2], np.tile(p["bo"], (2, 1)))
        assert np.allclose(cache.a[2, :, 2:].sum(axis=-1), 1.0)
    else:
        assert np.allclose(cache.a.sum(axis=-1), 1.0)
    assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL
    for key in p:
        num = numerical_gradient_array(f, p[key], dout)
        assert rel_error(grads[key], num) < TOL or np.abs(grads[key] - num).max() < 1e-9, key


def test_layers_take_key_masks():
    """The self_attention and transformer_encoder layers pass key_mask= on (an encoder
    masks its source's PAD), and their gradients with it agree with finite differences."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)
    for kind in ("self_attention", "transformer_encoder"):
        layer = LAYERS[kind].parse({"heads": 2}, (5, 4), "network.encoder.layers[0]")
        assert layer.masks_keys
        p = layer.init(rng, np.float64)
        out = layer.forward(x, p, train=False, key_mask=mask)[0]
        y = x.copy()
        y[1, 3:] = 7.0
        out2 = layer.forward(y, p, train=False, key_mask=mask)[0]
        assert np.array_equal(out[mask], out2[mask]), kind
        everything = layer.forward(x, p, train=False, key_mask=np.ones_like(mask))[0]
        assert np.array_equal(layer.forward(x, p, train=False)[0], everything)
        f = lambda layer=layer, p=p: layer.forward(x, p, train=False, key_mask=mask)[0]
        out, cache = layer.forward(x, p, train=False, key_mask=mask)
        dout = rng.normal(size=out.shape)
        dx, grads = layer.backward(dout, cache)
        assert rel_error(dx, numerical_gradient_array(f, x, dout)) < TOL
        for key in p:
            num = numerical_gradient_array(f, p[key], dout)
            assert rel_error(grads[key], num) < TOL or np.abs(grads[key] - num).max() < 1e-9


@pytest.mark.parametrize("heads", [1, 2])
def test_cross_attention_matches_naive_loops(heads):
    """Queries from x, keys and values from memory (D_m != D), PAD keys skipped."""
    rng = np.random.default_rng(7)
    D, D_m = 4, 6
    p = self_attention.init_attention(D, {"type": "uniform", "scale": 0.5}, rng, np.float64, D_m)
    x, memory = rng.normal(size=(3, 4, D)), rng.normal(size=(3, 5, D_m))
    out = self_attention.forward(x, p, heads, key_mask=SRC_MASK, memory=memory)[0]
    q, k, v = x @ p["Wq"] + p["bq"], memory @ p["Wk"] + p["bk"], memory @ p["Wv"] + p["bv"]
    d = D // heads
    ctx = np.zeros_like(x)
    for s, h, i in np.ndindex(3, heads, 4):
        cols, keys = slice(h * d, (h + 1) * d), np.flatnonzero(SRC_MASK[s])
        if len(keys):                                   # no real key: an empty sum, 0
            scores = np.array([q[s, i, cols] @ k[s, j, cols] / np.sqrt(d) for j in keys])
            weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            ctx[s, i, cols] = sum(wj * v[s, j, cols] for wj, j in zip(weights, keys))
    assert np.allclose(out, ctx @ p["Wo"] + p["bo"], rtol=0, atol=1e-12)
