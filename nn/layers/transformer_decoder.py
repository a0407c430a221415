"""A Transformer decoder block (Vaswani et al.): masked self-attention over the target so far,
cross-attention over the encoder's output (the memory), a position-wise feed-forward; each a
residual sub-layer, pre-norm or post-norm as nn/layers/transformer_encoder.py:

    pre:   x1 = x + MHA(LN1(x)),    x2 = x1 + XA(LN2(x1), m),    out = x2 + FFN(LN3(x2))
    post:  x1 = LN1(x + MHA(x)),    x2 = LN2(x1 + XA(x1, m)),    out = LN3(x2 + FFN(x2))

MHA is causal self-attention with the target's padding mask (tgt_mask), XA attention with
queries from the target and keys and values from the memory m with the source's (src_mask),
both nn/layers/self_attention.py. params: the self-attention's {"Wq", "bq", ..., "bo"}, the
cross-attention's the same with a "c" in front ({"cWq", "cbq", ..., "cbo"}; cWk, cWv are
(D_m, D)), {"ln1_gamma", "ln1_beta", ..., "ln3_beta": (D,)}, the feed-forward's {"W1": (D, F),
"b1": (F,), "W2": (F, D), "b2": (D,)}. x: (N, T, D), memory (N, T_src, D_m) -> (N, T, D);
backward also returns dmemory, the gradient that flows back into the encoder.

step() runs one target position at a time for decoding: it keeps the self-attention's keys
and values of the positions before (so each step costs O(t), not O(t^2)) and the memory's
keys and values, computed once at t = 0; its outputs are forward's rows to rounding.
"""
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..errors import SpecError
from . import dense, layer_norm, self_attention
from .base import Cost, Layer, Params, Shape, bias, matrix
from .transformer_encoder import block_spec

CROSS = "c"                                          # the cross-attention's key prefix


class DecoderCache(NamedTuple):
    norm: str
    self_attn: tuple         # (layer norm cache, attention cache) of each sub-layer
    cross_attn: tuple
    ffn: tuple


def _ln(params: Params, tag: str) -> Params:
    return {"gamma": params[f"{tag}_gamma"], "beta": params[f"{tag}_beta"]}


def _attn(params: Params, prefix: str = "") -> Params:
    return {k: params[prefix + k] for k in self_attention.KEYS}


def _sublayer(x: np.ndarray, fn: Callable, ln: Params, norm: str, eps: float
              ) -> tuple[np.ndarray, tuple]:
    """pre: x + fn(LN(x)); post: LN(x + fn(x)). fn: u -> (y, its cache)."""
    if norm == "pre":
        h, c_ln = layer_norm.forward(x, ln, eps)
        y, c_fn = fn(h)
        return x + y, (c_ln, c_fn)
    y, c_fn = fn(x)
    out, c_ln = layer_norm.forward(x + y, ln, eps)
    return out, (c_ln, c_fn)


def _sublayer_backward(dout: np.ndarray, cache: tuple, fn_backward: Callable, norm: str
                       ) -> tuple[np.ndarray, Params, tuple]:
    """-> (dx, the layer norm's grads, what fn_backward returns beyond its dx)."""
    c_ln, c_fn = cache
    if norm == "pre":
        dh, *rest = fn_backward(dout, c_fn)
        dx, g_ln = layer_norm.backward(dh, c_ln)
        return dx + dout, g_ln, rest                 # + the residual path
    dr, g_ln = layer_norm.backward(dout, c_ln)
    dx, *rest = fn_backward(dr, c_fn)
    return dx + dr, g_ln, rest


def _ffn(u: np.ndarray, params: Params, activation: str) -> tuple[np.ndarray, tuple]:
    z, c1 = dense.forward(u, {"W": params["W1"], "b": params["b1"]}, activation)
    y, c2 = dense.forward(z, {"W": params["W2"], "b": params["b2"]}, "linear")
    return y, (c1, c2)


def _ffn_backward(dy: np.ndarray, cache: tuple) -> tuple[np.ndarray, Params]:
    c1, c2 = cache
    dz, g2 = dense.backward(dy, c2)
    du, g1 = dense.backward(dz, c1)
    return du, {"W1": g1["W"], "b1": g1["b"], "W2": g2["W"], "b2": g2["b"]}


def forward(x: np.ndarray, memory: np.ndarray, params: Params, heads: int = 1,
            activation: str = "relu", norm: str = "pre", eps: float = 1e-5,
            src_mask: np.ndarray | None = None, tgt_mask: np.ndarray | None = None
            ) -> tuple[np.ndarray, DecoderCache]:
    """x (N, T, D), memory (N, T_src, D_m) -> (N, T, D). src_mask (N, T_src), tgt_mask
    (N, T) bool, False = PAD: masked out of the cross- and the self-attention's keys."""
    self_p, cross_p = _attn(params), _attn(params, CROSS)
    x1, c1 = _sublayer(x, lambda u: self_attention.forward(u, self_p, heads, True, tgt_mask),
                       _ln(params, "ln1"), norm, eps)
    x2, c2 = _sublayer(x1, lambda u: self_attention.forward(u, cross_p, heads, False, src_mask,
                                                            memory),
                       _ln(params, "ln2"), norm, eps)
    out, c3 = _sublayer(x2, lambda u: _ffn(u, params, activation), _ln(params, "ln3"), norm, eps)
    return out, DecoderCache(norm, c1, c2, c3)


def backward(dout: np.ndarray, cache: DecoderCache
             ) -> tuple[np.ndarray, np.ndarray, Params]:
    """-> (dx, dmemory, grads)."""
    norm = cache.norm
    dx2, gl3, (gf,) = _sublayer_backward(dout, cache.ffn, _ffn_backward, norm)
    dx1, gl2, (dmemory, gc) = _sublayer_backward(dx2, cache.cross_attn,
                                                 self_attention.cross_backward, norm)
    dx, gl1, (ga,) = _sublayer_backward(dx1, cache.self_attn, self_attention.backward, norm)
    grads = {**ga, **{CROSS + k: v for k, v in gc.items()}, **gf}
    for tag, g in (("ln1", gl1), ("ln2", gl2), ("ln3", gl3)):
        grads[f"{tag}_gamma"], grads[f"{tag}_beta"] = g["gamma"], g["beta"]
    return dx, dmemory, grads


def cross_weights(cache: DecoderCache) -> np.ndarray:
    """forward's cross-attention weights (N, heads, T, T_src); rows sum to 1 over the
    unmasked source positions."""
    return cache.cross_attn[1].a


def step(x_t: np.ndarray, memory: np.ndarray, params: Params, state: dict | None,
         heads: int = 1, activation: str = "relu", norm: str = "pre", eps: float = 1e-5,
         src_mask: np.ndarray | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """Target position t's x_t (N, D) -> (out_t (N, D), the new state, the cross-attention
    weights (N, heads, T_src)): forward's row t, given the positions 0..t-1 through state
    (None at t = 0). state: {"k", "v": (N, heads, t, d) the self-attention's keys and values
    so far, "memory_k", "memory_v": (N, heads, T_src, d) the memory's}; every array's first
    axis is the sample's, so a beam search reorders or repeats samples with
    {k: a[rows] for k, a in state.items()}."""
    self_p, cross_p = _attn(params), _attn(params, CROSS)
    if state is None:
        mk, mv = self_attention.keys_values(memory, cross_p, heads)
        empty = mk[:, :, :0]
        state = {"k": empty, "v": empty, "memory_k": mk, "memory_v": mv}
    new = dict(state)

    def attend_self(u):
        k_t, v_t = self_attention.keys_values(u[:, None], self_p, heads)
        new["k"] = np.concatenate([state["k"], k_t], axis=2)
        new["v"] = np.concatenate([state["v"], v_t], axis=2)
        return self_attention.query_step(u, self_p, heads, new["k"], new["v"])

    x1, _ = _sublayer(x_t, attend_self, _ln(params, "ln1"), norm, eps)
    x2, (_, a) = _sublayer(x1, lambda u: self_attention.query_step(
        u, cross_p, heads, state["memory_k"], state["memory_v"], src_mask),
        _ln(params, "ln2"), norm, eps)
    out, _ = _sublayer(x2, lambda u: _ffn(u, params, activation), _ln(params, "ln3"), norm, eps)
    return out, new, a


class TransformerDecoder(Layer):
    kind = "transformer_decoder"
    DEFAULTS = {"heads": 1, "ff_units": None, "activation": "relu", "norm": "pre",
                "init": {"type": "glorot"}}
    weight_keys = ("Wq", "Wk", "Wv", "Wo", "cWq", "cWk", "cWv", "cWo", "W1", "W2")
    takes_memory = True
    EPS = 1e-5

    def __init__(self, spec: dict, in_shape: Shape, out_shape: Shape, memory_shape: Shape
                 ) -> None:
        super().__init__(spec, in_shape, out_shape)
        self.memory_shape = tuple(memory_shape)      # (T_src, D_m): the encoder's output

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str,
              memory_shape: Shape | None = None) -> "TransformerDecoder":
        if memory_shape is None:
            raise SpecError(f"{path}.type", f"{cls.kind} attends over an encoder's output: it "
                                            "belongs in network.decoder.layers")
        if len(memory_shape) != 2:
            raise SpecError(path, f"{cls.kind} needs the encoder's output as (T_src, D) but "
                                  f"it is {tuple(memory_shape)}")
        return cls(block_spec(cls, spec, in_shape, path), in_shape, in_shape, memory_shape)

    @property
    def stat_activation(self) -> None:
        return None                                  # the output is a residual sum

    def param_shapes(self) -> dict[str, Shape]:
        D, D_m, F = self.in_shape[-1], self.memory_shape[-1], self.spec["ff_units"]
        attn = {k: ((D, D) if k[0] == "W" else (D,)) for k in self_attention.KEYS}
        cross = {CROSS + k: ((D_m, D) if k in ("Wk", "Wv") else s) for k, s in attn.items()}
        return {**attn, "ln1_gamma": (D,), "ln1_beta": (D,),
                **cross, "ln2_gamma": (D,), "ln2_beta": (D,),
                "W1": (D, F), "b1": (F,), "W2": (F, D), "b2": (D,),
                "ln3_gamma": (D,), "ln3_beta": (D,)}

    def cost(self) -> Cost:
        """The T x T self-attention's, the T x T_src cross-attention's, three layer norms',
        and the feed-forward's 2 T D F multiply-adds; kept besides theirs: x1, x2, y, out
        and the feed-forward's u and z (T F each). Backward carries dout and the residual's
        gradient beside the largest of its stages, a sum, and dmemory (T_src D_m) from the
        cross-attention's backward on. Eval: the larger attention's peak (its inputs
        included), and what the block keeps beside it: three layer norms' outputs and
        caches, x1, x2, the feed-forward's z, a and a temporary (3 T F). Calls: a pass over
        one sample with both masks took 2.2x the encoder's 182 calls' time (bench/budget.py's
        layer_seconds): 400 calls; the masks, sub-layers and gradients' dicts add to the
        attentions' and norms'."""
        (T, D), (T_s, D_m), F = self.in_shape, self.memory_shape, self.spec["ff_units"]
        heads = self.spec["heads"]
        attn = self_attention.cost(T, D, heads)
        cross = self_attention.cost(T, D, heads, T_s, D_m)
        norm = layer_norm.cost(T * D, D)
        return Cost(attn.macs + cross.macs + 2 * T * D * F,
                    attn.kept + cross.kept + 3 * norm.kept + 4 * T * D + 2 * T * F,
                    3 * T * D + T_s * D_m
                    + max(4 * T * F + T * D, attn.scratch, cross.scratch, norm.scratch),
                    attn.calls + cross.calls + 3 * norm.calls + 145,
                    max(attn.infer + T_s * D_m, cross.infer) + 14 * T * D + 3 * T * F)

    def init(self, rng, dtype):
        D, D_m, F = self.in_shape[-1], self.memory_shape[-1], self.spec["ff_units"]
        init = self.spec["init"]
        p = self_attention.init_attention(D, init, rng, dtype)
        p.update({CROSS + k: v for k, v in
                  self_attention.init_attention(D, init, rng, dtype, D_m).items()})
        p["W1"], p["b1"] = matrix((D, F), init, rng, dtype), bias(F, init, rng, dtype)
        p["W2"], p["b2"] = matrix((F, D), init, rng, dtype), bias(D, init, rng, dtype)
        for tag in ("ln1", "ln2", "ln3"):
            p[f"{tag}_gamma"], p[f"{tag}_beta"] = np.ones(D, dtype), np.zeros(D, dtype)
        return {k: p[k] for k in self.param_shapes()}

    def forward(self, x, params, *, train, rng=None, memory=None, src_mask=None,
                tgt_mask=None):
        if memory is None:
            raise ValueError(f"{self.kind} needs memory=, the encoder's output")
        s = self.spec
        return forward(x, memory, params, s["heads"], s["activation"], s["norm"], self.EPS,
                       src_mask, tgt_mask)

    def backward(self, dout, cache, need_dx=True):
        """-> (dx, dmemory, grads) (dx even without need_dx: it is never a first layer)."""
        return backward(dout, cache)

    def backward_traced(self, dout, cache, need_dx=True):
        return (*backward(dout, cache), {})

    def step(self, x_t, params, state, memory, src_mask=None):
        """module step(): (out_t (N, D), state, cross weights (N, heads, T_src))."""
        s = self.spec
        return step(x_t, memory, params, state, s["heads"], s["activation"], s["norm"],
                    self.EPS, src_mask)
