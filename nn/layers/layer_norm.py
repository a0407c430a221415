"""Layer normalisation over the last axis (Ba et al.): per sample (and time step),

    xhat = (x - mean(x)) / sqrt(var(x) + eps),   out = gamma * xhat + beta

params: {"gamma": (D,) starting at 1, "beta": (D,) starting at 0}. x: (N, ..., D) -> same shape.
"""
import math

import numpy as np

from .. import fields as f
from .base import Cost, Layer, Params, Shape


def forward(x: np.ndarray, params: Params, eps: float = 1e-5) -> tuple[np.ndarray, tuple]:
    xc = x - x.mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xhat = xc * inv
    return xhat * params["gamma"] + params["beta"], (xhat, inv, params["gamma"])


def backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, Params]:
    xhat, inv, gamma = cache
    axes = tuple(range(dout.ndim - 1))
    grads = {"gamma": (dout * xhat).sum(axis=axes), "beta": dout.sum(axis=axes)}
    g = dout * gamma                                 # dL/dxhat
    # d xhat_j / d x_i = inv (delta_ij - 1/D - xhat_i xhat_j / D)
    dx = inv * (g - g.mean(axis=-1, keepdims=True)
                - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, grads


def cost(n: int, d: int) -> Cost:
    """n values per sample in rows of d: xhat, out and inv (one per row) kept; backward
    dout, g, and four temporaries of the derivative's terms. Eval: the input, x - mean,
    its square, xhat, gamma xhat and out."""
    return Cost(0, 2 * n + n // d, 6 * n + 2 * (n // d), 35, 6 * n)


class LayerNorm(Layer):
    kind = "layer_norm"
    DEFAULTS = {"eps": 1e-5}
    weight_keys = ("gamma",)
    decay_keys = ()                                  # never decay the gain towards 0

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "LayerNorm":
        eps = f.number(spec, "eps", path, cls.DEFAULTS["eps"], lo=0, hi=1, lo_open=True)
        return cls({"type": cls.kind, "eps": eps}, in_shape, in_shape)

    def param_shapes(self) -> dict[str, Shape]:
        return {"gamma": (self.in_shape[-1],), "beta": (self.in_shape[-1],)}

    def cost(self) -> Cost:
        return cost(math.prod(self.in_shape), self.in_shape[-1])

    def init(self, rng, dtype):
        d = self.in_shape[-1]
        return {"gamma": np.ones(d, dtype=dtype), "beta": np.zeros(d, dtype=dtype)}

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params, self.spec["eps"])

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache)
