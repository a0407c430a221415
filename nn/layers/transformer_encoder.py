"""A Transformer encoder block, pre-norm (as GPT-2 and most current models; it trains without
learning-rate warm-up) or post-norm (the original paper's):

    pre:   x1 = x + MHA(LN1(x)),    out = x1 + FFN(LN2(x1))
    post:  x1 = LN1(x + MHA(x)),    out = LN2(x1 + FFN(x1))
    FFN(u) = f(u W1 + b1) W2 + b2   (position-wise: the same weights at every time step)

MHA is nn/layers/self_attention.py (heads, optional causal mask), LN nn/layers/layer_norm.py.
params: the attention's {"Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo"}, {"ln1_gamma",
"ln1_beta", "ln2_gamma", "ln2_beta": (D,)}, {"W1": (D, F), "b1": (F,), "W2": (F, D),
"b2": (D,)}, F = ff_units. x: (N, T, D) -> (N, T, D).
"""
import numpy as np

from .. import fields as f
from ..activations import ACTIVATIONS
from . import dense, layer_norm, self_attention
from .base import MAX_UNITS, Cost, Layer, Params, Shape, bias, init_spec, matrix, sequence_shape

NORMS = ("pre", "post")
FF_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a not in ("step", "softmax"))


def _ln(params: Params, tag: str) -> Params:
    return {"gamma": params[f"{tag}_gamma"], "beta": params[f"{tag}_beta"]}


def forward(x: np.ndarray, params: Params, heads: int = 1, causal: bool = False,
            activation: str = "relu", norm: str = "pre", eps: float = 1e-5,
            key_mask: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
    """x: (N, T, D) -> (N, T, D); key_mask (N, T) False = padding, masked out of the
    attention's keys (self_attention.py)."""
    attn = {k: params[k] for k in self_attention.KEYS}
    ff1, ff2 = {"W": params["W1"], "b": params["b1"]}, {"W": params["W2"], "b": params["b2"]}
    if norm == "pre":
        h1, c_ln1 = layer_norm.forward(x, _ln(params, "ln1"), eps)
        a, c_att = self_attention.forward(h1, attn, heads, causal, key_mask)
        x1 = x + a
        h2, c_ln2 = layer_norm.forward(x1, _ln(params, "ln2"), eps)
        u, c_ff1 = dense.forward(h2, ff1, activation)
        y, c_ff2 = dense.forward(u, ff2, "linear")
        out = x1 + y
    else:
        a, c_att = self_attention.forward(x, attn, heads, causal, key_mask)
        x1, c_ln1 = layer_norm.forward(x + a, _ln(params, "ln1"), eps)
        u, c_ff1 = dense.forward(x1, ff1, activation)
        y, c_ff2 = dense.forward(u, ff2, "linear")
        out, c_ln2 = layer_norm.forward(x1 + y, _ln(params, "ln2"), eps)
    return out, (norm, c_ln1, c_att, c_ln2, c_ff1, c_ff2)


def backward(dout: np.ndarray, cache: tuple, need_dx: bool = True
             ) -> tuple[np.ndarray, Params]:
    norm, c_ln1, c_att, c_ln2, c_ff1, c_ff2 = cache
    if norm == "pre":
        du, g2 = dense.backward(dout, c_ff2)         # out = x1 + FFN(LN2(x1))
        dh2, g1 = dense.backward(du, c_ff1)
        dx1, gl2 = layer_norm.backward(dh2, c_ln2)
        dx1 = dx1 + dout                             # the residual path
        dh1, ga = self_attention.backward(dx1, c_att)   # x1 = x + MHA(LN1(x))
        dx, gl1 = layer_norm.backward(dh1, c_ln1)
        dx = dx + dx1
    else:
        dr2, gl2 = layer_norm.backward(dout, c_ln2)  # out = LN2(x1 + FFN(x1))
        du, g2 = dense.backward(dr2, c_ff2)
        dx1, g1 = dense.backward(du, c_ff1)
        dx1 = dx1 + dr2
        dr1, gl1 = layer_norm.backward(dx1, c_ln1)   # x1 = LN1(x + MHA(x))
        dxa, ga = self_attention.backward(dr1, c_att)
        dx = dxa + dr1
    grads = {**ga, "ln1_gamma": gl1["gamma"], "ln1_beta": gl1["beta"],
             "W1": g1["W"], "b1": g1["b"], "W2": g2["W"], "b2": g2["b"],
             "ln2_gamma": gl2["gamma"], "ln2_beta": gl2["beta"]}
    return dx, grads


def block_spec(cls: type[Layer], spec: dict, in_shape: Shape, path: str, **between) -> dict:
    """The normal spec of a Transformer block (this one, transformer_decoder): type, heads,
    ff_units, activation, the fields `between`, norm, init."""
    _, D = sequence_shape(in_shape, cls.kind, path)
    heads = f.integer(spec, "heads", path, cls.DEFAULTS["heads"], lo=1, hi=D)
    self_attention.check_heads(heads, D, path)
    ff = f.integer(spec, "ff_units", path, None, lo=1, hi=MAX_UNITS, nullable=True)
    return {"type": cls.kind, "heads": heads, "ff_units": ff or 4 * D,
            "activation": f.choice(spec, "activation", path, FF_ACTIVATIONS,
                                   cls.DEFAULTS["activation"]),
            **between,
            "norm": f.choice(spec, "norm", path, NORMS, cls.DEFAULTS["norm"]),
            "init": init_spec(spec, path, cls.DEFAULTS["init"])}


class TransformerEncoder(Layer):
    kind = "transformer_encoder"
    DEFAULTS = {"heads": 1, "ff_units": None, "activation": "relu", "causal": False,
                "norm": "pre", "init": {"type": "glorot"}}
    weight_keys = ("Wq", "Wk", "Wv", "Wo", "W1", "W2")
    masks_keys = True
    EPS = 1e-5

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "TransformerEncoder":
        causal = f.boolean(spec, "causal", path, cls.DEFAULTS["causal"])
        return cls(block_spec(cls, spec, in_shape, path, causal=causal), in_shape, in_shape)

    @property
    def stat_activation(self) -> None:
        return None                                  # the output is a residual sum

    def param_shapes(self) -> dict[str, Shape]:
        D, F = self.in_shape[-1], self.spec["ff_units"]
        attn = {k: ((D, D) if k[0] == "W" else (D,)) for k in self_attention.KEYS}
        return {**attn, "ln1_gamma": (D,), "ln1_beta": (D,), "W1": (D, F), "b1": (F,),
                "W2": (F, D), "b2": (D,), "ln2_gamma": (D,), "ln2_beta": (D,)}

    def cost(self) -> Cost:
        """The attention's, two layer norms', and the feed-forward's 2 T D F multiply-adds;
        kept besides theirs: x1, u and its z (T F each), y, out. Backward carries dout and
        the residual's gradient beside the largest of its stages (the feed-forward's dx, the
        activation's temporaries and dz, T F each), and a sum. Eval: the attention's peak
        (its input included), and what the block keeps beside it until it returns: two
        layer norms' outputs and caches, x1, the feed-forward's z, a and a temporary (3 T F)
        and its second layer's (10 T D in all besides attention)."""
        (T, D), F = self.in_shape, self.spec["ff_units"]
        attn = self_attention.cost(T, D, self.spec["heads"])
        norm = layer_norm.cost(T * D, D)
        return Cost(attn.macs + 2 * T * D * F, attn.kept + 2 * norm.kept + 3 * T * D + 2 * T * F,
                    3 * T * D + max(4 * T * F + T * D, attn.scratch, norm.scratch),
                    attn.calls + 2 * norm.calls + 40, attn.infer + 10 * T * D + 3 * T * F)

    def init(self, rng, dtype):
        D, F = self.in_shape[-1], self.spec["ff_units"]
        init = self.spec["init"]
        p = self_attention.init_attention(D, init, rng, dtype)
        p["W1"], p["b1"] = matrix((D, F), init, rng, dtype), bias(F, init, rng, dtype)
        p["W2"], p["b2"] = matrix((F, D), init, rng, dtype), bias(D, init, rng, dtype)
        for tag in ("ln1", "ln2"):
            p[f"{tag}_gamma"], p[f"{tag}_beta"] = np.ones(D, dtype), np.zeros(D, dtype)
        return {k: p[k] for k in self.param_shapes()}

    def forward(self, x, params, *, train, rng=None, key_mask=None):
        s = self.spec
        return forward(x, params, s["heads"], s["causal"], s["activation"], s["norm"], self.EPS,
                       key_mask)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache, need_dx)
