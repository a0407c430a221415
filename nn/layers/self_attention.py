"""Multi-head scaled dot-product attention (Vaswani et al.), self or cross:

    Q = x Wq + bq, K = m Wk + bk, V = m Wv + bv, each split into `heads` heads of d = D / heads
    A_h = softmax(Q_h K_h^T / sqrt(d) [+ masks]),  out = concat_h(A_h V_h) Wo + bo

m = x (self-attention), or the cross form's memory (N, T_k, D_m) (a decoder's queries over an
encoder's output; backward also returns dmemory). params: {"Wq", "Wo": (D, D), "Wk", "Wv":
(D_m, D), "bq", "bk", "bv", "bo": (D,)}. x: (N, T, D) -> (N, T, D). causal: position t
attends to positions <= t only (scores above the diagonal are -inf, so their weights are
exactly 0), which a next-token model needs. key_mask (N, T_k) bool, False = padding: those
keys get weight exactly 0 the same way. A query whose every key is masked (a sample with no
real token) gets all-zero weights, so its output is bo: an empty weighted sum, finite, which
reads nothing from the padding and passes it no gradient (a uniform average of PAD keys, or
softmax's NaN, would).
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
    k: np.ndarray            # (N, h, T_k, d)
    v: np.ndarray
    a: np.ndarray            # (N, h, T, T_k) attention weights
    ctx: np.ndarray          # (N, T, D) the heads' outputs, concatenated
    params: Params
    memory: np.ndarray | None = None     # (N, T_k, D_m) in the cross form; None: x


def _split(m: np.ndarray, heads: int) -> np.ndarray:
    """(N, T, D) -> (N, h, T, d)."""
    n, T, D = m.shape
    return m.reshape(n, T, heads, D // heads).transpose(0, 2, 1, 3)


def _merge(m: np.ndarray) -> np.ndarray:
    """(N, h, T, d) -> (N, T, h d)."""
    n, h, T, d = m.shape
    return m.transpose(0, 2, 1, 3).reshape(n, T, h * d)


def _project(m: np.ndarray, params: Params, c: str, heads: int) -> np.ndarray:
    return _split(m @ params[f"W{c}"] + params[f"b{c}"], heads)


def keys_values(m: np.ndarray, params: Params, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """The heads' keys and values (N, h, T_k, d) of m (N, T_k, D_m): what an incremental
    decoder computes once per source, or once per new target position, and keeps."""
    return _project(m, params, "k", heads), _project(m, params, "v", heads)


def _keep(T: int, T_k: int, causal: bool, key_mask: np.ndarray | None) -> np.ndarray | None:
    """Which scores count: None (all), or a bool array broadcasting to (N, h, T, T_k)."""
    keep = None
    if causal:
        if T != T_k:
            raise ValueError(f"a causal mask needs as many keys as queries, not {T_k} and {T}")
        keep = np.tri(T, dtype=bool)                       # keys j <= query i
    if key_mask is not None:
        keys = np.asarray(key_mask, dtype=bool)[:, None, None, :]
        keep = keys if keep is None else keep & keys
    return keep


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, params: Params,
            keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries (N, h, T, d) over keys and values (N, h, T_k, d) -> (out (N, T, D), the
    weights (N, h, T, T_k), ctx (N, T, D))."""
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])   # (N, h, T, T_k)
    if keep is None:
        a = softmax(s)
    else:
        s = np.where(keep, s, -np.inf)
        live = keep.any(axis=-1, keepdims=True)
        if live.all():
            a = softmax(s)
        else:                       # a row of only -inf: 0 weights, not softmax's NaN
            a = np.where(live, softmax(np.where(live, s, 0)), 0).astype(s.dtype, copy=False)
    ctx = _merge(a @ v)
    return ctx @ params["Wo"] + params["bo"], a, ctx


def forward(x: np.ndarray, params: Params, heads: int = 1, causal: bool = False,
            key_mask: np.ndarray | None = None, memory: np.ndarray | None = None
            ) -> tuple[np.ndarray, AttentionCache]:
    """x: (N, T, D) -> (N, T, D); keys and values from memory (N, T_k, D_m) when given."""
    src = x if memory is None else memory
    q = _project(x, params, "q", heads)
    k, v = keys_values(src, params, heads)
    out, a, ctx = _attend(q, k, v, params, _keep(x.shape[1], src.shape[1], causal, key_mask))
    return out, AttentionCache(x, q, k, v, a, ctx, params, memory)


def query_step(x_t: np.ndarray, params: Params, heads: int, k: np.ndarray, v: np.ndarray,
               key_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One query position x_t (N, D) over kept keys and values (N, h, T_k, d) (keys_values)
    -> (out_t (N, D), its weights (N, h, T_k)): forward's row for that query, to rounding."""
    q = _project(x_t[:, None, :], params, "q", heads)
    out, a, _ = _attend(q, k, v, params, _keep(1, k.shape[2], False, key_mask))
    return out[:, 0], a[:, :, 0]


def _backward(dout: np.ndarray, cache: AttentionCache, need_dx: bool
              ) -> tuple[np.ndarray | None, np.ndarray | None, Params]:
    x, q, k, v, a, ctx, params, memory = cache
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
    m2 = x2 if memory is None else memory.reshape(-1, memory.shape[-1])
    dx = None if not need_dx else np.zeros_like(x)
    dmem = None if memory is None else np.zeros_like(memory)
    for c, dm in zip("qkv", (dq, dk, dv)):
        dm = _merge(dm)
        grads[f"W{c}"] = (x2 if c == "q" else m2).T @ dm.reshape(-1, D)
        grads[f"b{c}"] = dm.sum(axis=(0, 1))
        if c != "q" and dmem is not None:
            dmem += dm @ params[f"W{c}"].T
        elif need_dx:
            dx += dm @ params[f"W{c}"].T
    return dx, dmem, {key: grads[key] for key in KEYS}


def backward(dout: np.ndarray, cache: AttentionCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, Params]:
    """The self form's (dx, grads)."""
    if cache.memory is not None:
        raise ValueError("a cross-attention cache: use cross_backward (it returns dmemory)")
    dx, _, grads = _backward(dout, cache, need_dx)
    return dx, grads


def cross_backward(dout: np.ndarray, cache: AttentionCache, need_dx: bool = True
                   ) -> tuple[np.ndarray | None, np.ndarray, Params]:
    """The cross form's (dx, dmemory, grads)."""
    if cache.memory is None:
        raise ValueError("a self-attention cache: use backward")
    return _backward(dout, cache, need_dx)


def cost(T: int, D: int, heads: int, T_k: int | None = None, D_m: int | None = None) -> Cost:
    """Per sample: the (T, D) x (D, D) projections of queries and output, the (T_k, D_m) x
    (D_m, D) ones of keys and values, and, per head, the T x T_k scores and their weighted sum
    of values (2 T T_k D in all). q, ctx, out (T D each), k, v (T_k D each) and the weights a
    (h T T_k) kept; backward the scores' gradient and two temporaries of its size, and eight
    (T, D) arrays (dout, dctx, dv, dq, dk, dx, a merged head gradient and its product; in the
    cross form three of them are (T_k, D): dv, dk, dmemory). Eval: the input, q, k, v, a
    temporary, ctx and out (7 T D; the cross form's k, v and memory are (T_k, D) each), and
    the scores, their mask or softmax temporary and the weights (3 h T T_k). T_k, D_m: the
    cross form's memory (T_k, D_m); self-attention without."""
    cross = T_k is not None
    T_k, D_m = T_k or T, D_m or D
    return Cost(2 * T * D * D + 2 * T_k * D_m * D + 2 * T * T_k * D,
                3 * T * D + 2 * T_k * D + heads * T * T_k,
                3 * heads * T * T_k + 5 * T * D + 2 * T_k * D + T_k * D_m,
                72 + (6 if cross else 0),
                5 * T * D + 2 * T_k * D + (T_k * D_m if cross else 0) + 3 * heads * T * T_k)


def check_heads(heads: int, dim: int, path: str) -> None:
    if dim % heads:
        raise SpecError(f"{path}.heads", f"{heads} heads do not divide the input dimension "
                                         f"{dim} (each head gets D / heads features)")


def init_attention(D: int, init: dict, rng: np.random.Generator, dtype, D_m: int | None = None
                   ) -> Params:
    """Wq, bq, Wk, bk, Wv, bv, Wo, bo in that order of draws; Wk, Wv (D_m, D) in the cross
    form over a memory of D_m features."""
    out = {}
    for c in "qkvo":
        out[f"W{c}"] = matrix(((D_m or D) if c in "kv" else D, D), init, rng, dtype)
        out[f"b{c}"] = bias(D, init, rng, dtype)
    return out


class SelfAttention(Layer):
    kind = "self_attention"
    DEFAULTS = {"heads": 1, "causal": False, "init": {"type": "glorot"}}
    weight_keys = ("Wq", "Wk", "Wv", "Wo")
    masks_keys = True

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

    def forward(self, x, params, *, train, rng=None, key_mask=None):
        return forward(x, params, self.spec["heads"], self.spec["causal"], key_mask)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache, need_dx)
