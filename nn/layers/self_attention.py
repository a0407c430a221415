"""Multi-head scaled dot-product self-attention (Vaswani et al.):

    Q = x Wq + bq, K = x Wk + bk, V = x Wv + bv, each split into `heads` heads of d = D / heads
    A_h = softmax(Q_h K_h^T / sqrt(d) [+ causal mask]),  out = concat_h(A_h V_h) Wo + bo

params: {"Wq", "Wk", "Wv", "Wo": (D, D), "bq", "bk", "bv", "bo": (D,)}. x: (N, T, D) ->
(N, T, D). causal: position t attends to positions <= t only (scores above the diagonal are
-inf, so their weights are exactly 0), which a next-token model needs.
"""
import math
from typing import NamedTuple

import numpy as np

from .. import fields as f
from ..activations import softmax
from ..errors import SpecError
from .base import Cost, Layer, Params, Shape, bias, init_spec, matrix, sequence_shape

KEYS = ("Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo")


class AttentionCache(NamedTuple):
    x: np.ndarray            # (N, T, D)
    q: np.ndarray            # (N, h, T, d)
    k: np.ndarray
    v: np.ndarray
    a: np.ndarray            # (N, h, T, T) attention weights
    ctx: np.ndarray          # (N, T, D) the heads' outputs, concatenated
    params: Params


def _split(m: np.ndarray, heads: int) -> np.ndarray:
    """(N, T, D) -> (N, h, T, d)."""
    n, T, D = m.shape
    return m.reshape(n, T, heads, D // heads).transpose(0, 2, 1, 3)


def _merge(m: np.ndarray) -> np.ndarray:
    """(N, h, T, d) -> (N, T, h d)."""
    n, h, T, d = m.shape
    return m.transpose(0, 2, 1, 3).reshape(n, T, h * d)


def forward(x: np.ndarray, params: Params, heads: int = 1, causal: bool = False
            ) -> tuple[np.ndarray, AttentionCache]:
    """x: (N, T, D) -> (N, T, D)."""
    q, k, v = (_split(x @ params[f"W{c}"] + params[f"b{c}"], heads) for c in "qkv")
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])   # (N, h, T, T)
    if causal:
        T = x.shape[1]
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)          # keys j <= query i
    a = softmax(s)
    ctx = _merge(a @ v)
    out = ctx @ params["Wo"] + params["bo"]
    return out, AttentionCache(x, q, k, v, a, ctx, params)


def backward(dout: np.ndarray, cache: AttentionCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, Params]:
    x, q, k, v, a, ctx, params = cache
    heads, d = q.shape[1], q.shape[-1]
    D = x.shape[-1]
    grads = {"Wo": ctx.reshape(-1, D).T @ dout.reshape(-1, D), "bo": dout.sum(axis=(0, 1))}
    dctx = _split(dout @ params["Wo"].T, heads)                 # (N, h, T, d)
    da = dctx @ v.transpose(0, 1, 3, 2)                          # ctx = a v
    dv = a.transpose(0, 1, 3, 2) @ dctx
    # softmax: ds_j = a_j (da_j - sum_k da_k a_k); masked scores have a = 0, so ds = 0
    ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) / math.sqrt(d)
    dq = ds @ k                                                  # s = q k^T / sqrt(d)
    dk = ds.transpose(0, 1, 3, 2) @ q
    x2 = x.reshape(-1, D)
    dx = None if not need_dx else np.zeros_like(x)
    for c, dm in zip("qkv", (dq, dk, dv)):
        dm = _merge(dm)
        grads[f"W{c}"] = x2.T @ dm.reshape(-1, D)
        grads[f"b{c}"] = dm.sum(axis=(0, 1))
        if need_dx:
            dx += dm @ params[f"W{c}"].T
    return dx, {key: grads[key] for key in KEYS}


def cost(T: int, D: int, heads: int) -> Cost:
    """Per sample: the four (T, D) x (D, D) projections and, per head, the T x T scores and
    their weighted sum of values (2 T^2 D in all). q, k, v, ctx, out (T D each) and the
    weights a (h T T) kept; backward the scores' gradient and two temporaries of its size,
    and eight (T, D) arrays (dout, dctx, dv, dq, dk, dx, a merged head gradient and its
    product). Eval: the input, q, k, v, a temporary, ctx and out (7 T D), and the scores,
    their mask or softmax temporary and the weights (3 h T^2)."""
    return Cost(4 * T * D * D + 2 * T * T * D, 5 * T * D + heads * T * T,
                3 * heads * T * T + 8 * T * D, 72, 7 * T * D + 3 * heads * T * T)


def check_heads(heads: int, dim: int, path: str) -> None:
    if dim % heads:
        raise SpecError(f"{path}.heads", f"{heads} heads do not divide the input dimension "
                                         f"{dim} (each head gets D / heads features)")


def init_attention(D: int, init: dict, rng: np.random.Generator, dtype) -> Params:
    """Wq, bq, Wk, bk, Wv, bv, Wo, bo in that order of draws."""
    out = {}
    for c in "qkvo":
        out[f"W{c}"] = matrix((D, D), init, rng, dtype)
        out[f"b{c}"] = bias(D, init, rng, dtype)
    return out


class SelfAttention(Layer):
    kind = "self_attention"
    DEFAULTS = {"heads": 1, "causal": False, "init": {"type": "glorot"}}
    weight_keys = ("Wq", "Wk", "Wv", "Wo")

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "SelfAttention":
        _, D = sequence_shape(in_shape, cls.kind, path)
        heads = f.integer(spec, "heads", path, cls.DEFAULTS["heads"], lo=1, hi=D)
        check_heads(heads, D, path)
        causal = f.boolean(spec, "causal", path, cls.DEFAULTS["causal"])
        init = init_spec(spec, path, cls.DEFAULTS["init"])
        normal = {"type": cls.kind, "heads": heads, "causal": causal, "init": init}
        return cls(normal, in_shape, in_shape)

    def param_shapes(self) -> dict[str, Shape]:
        D = self.in_shape[-1]
        return {key: ((D, D) if key[0] == "W" else (D,)) for key in KEYS}

    def cost(self) -> Cost:
        return cost(*self.in_shape, self.spec["heads"])

    def init(self, rng, dtype):
        return init_attention(self.in_shape[-1], self.spec["init"], rng, dtype)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params, self.spec["heads"], self.spec["causal"])

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache, need_dx)
