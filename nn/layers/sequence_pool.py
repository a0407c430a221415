"""Sequence pooling: (N, T, D) -> (N, D), one vector per sequence for a classifier on top.
mode "last": h_T (after a causal stack, the only position that has seen every token);
"mean": the mean over time; "max": the max over time per feature. No parameters.
"""
import numpy as np

from .. import fields as f
from .base import Cost, Layer, Shape, sequence_shape

MODES = ("mean", "last", "max")


def forward(x: np.ndarray, mode: str) -> tuple[np.ndarray, tuple]:
    """x: (N, T, D) -> (N, D)."""
    if mode == "last":
        return x[:, -1], (x.shape, mode, None)
    if mode == "mean":
        return x.mean(axis=1), (x.shape, mode, None)
    idx = x.argmax(axis=1)                                  # (N, D)
    return np.take_along_axis(x, idx[:, None], axis=1)[:, 0], (x.shape, mode, idx)


def backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, dict]:
    """last: all to step T; mean: 1/T to every step; max: all to the step that was the max."""
    shape, mode, idx = cache
    if mode == "mean":
        return np.broadcast_to(dout[:, None] / shape[1], shape).copy(), {}
    dx = np.zeros(shape, dtype=dout.dtype)
    if mode == "last":
        dx[:, -1] = dout
    else:
        np.put_along_axis(dx, idx[:, None], dout[:, None], axis=1)
    return dx, {}


class SequencePool(Layer):
    kind = "sequence_pool"
    DEFAULTS = {"mode": "mean"}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "SequencePool":
        _, d = sequence_shape(in_shape, cls.kind, path)
        mode = f.choice(spec, "mode", path, MODES, cls.DEFAULTS["mode"])
        return cls({"type": cls.kind, "mode": mode}, in_shape, (d,))

    def cost(self) -> Cost:
        """out and (max) its indices kept (int64: two values of float32); backward dout, dx
        (T D), and a scaled copy (mean) or put_along_axis' index arrays (max). Eval: the
        input and a copy (argmax over the time axis copies it), the indices and out."""
        T, d = self.in_shape
        return Cost(0, 3 * d, T * d + 8 * d, 10, 2 * T * d + 2 * d)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, self.spec["mode"])

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache)
