"""Dropout as the textbook shows it (non-inverted): while training each unit is kept with
probability keep = 1 - drop_prob and dropped (set to 0) otherwise; when recognising (eval
mode) nothing is dropped and every activation is scaled by keep, so its expected value matches
training. Works on any shape (each value its own unit). No parameters: params and grads are {}.
"""
import math

import numpy as np

from .. import fields as f
from .base import Cost, Layer, Shape, plain_infer


def forward(x: np.ndarray, drop_prob: float, *, train: bool,
            rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray | float]:
    """x: (N, ...) -> out: same shape. The cache is the 0/1 mask (train) or the scale keep
    (eval)."""
    keep = 1.0 - drop_prob
    if not train:
        return x * keep, keep
    if rng is None:
        raise ValueError("dropout in train mode needs a random generator")
    mask = (rng.random(x.shape) >= drop_prob).astype(x.dtype)
    return x * mask, mask


def backward(dout: np.ndarray, cache: np.ndarray | float) -> tuple[np.ndarray, dict]:
    """out = x * mask (or x * keep): dx = dout * mask (or dout * keep)."""
    return dout * cache, {}


class Dropout(Layer):
    kind = "dropout"
    DEFAULTS = {"drop_prob": 0.5}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Dropout":
        prob = f.number(spec, "drop_prob", path, cls.DEFAULTS["drop_prob"],
                        lo=0, hi=1, hi_open=True)
        return cls({"type": cls.kind, "drop_prob": prob}, in_shape, in_shape)

    def cost(self) -> Cost:
        """mask and out kept; forward's float64 draws (two values of float32) and their
        comparison; backward dout and dx."""
        n = math.prod(self.in_shape)
        return Cost(0, 2 * n, 3 * n, 4, plain_infer(self))

    def forward(self, x, params, *, train, rng=None):
        return forward(x, self.spec["drop_prob"], train=train, rng=rng)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache)
