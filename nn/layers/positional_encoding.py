"""Positional encoding: out = x + P, P (T, D) one vector per position, so that attention (which
is blind to order) can tell positions apart.

mode "sinusoidal" (Vaswani et al., no parameters): P[t, 2k] = sin(t / 10000^(2k/D)),
P[t, 2k+1] = cos(t / 10000^(2k/D)), t = 0..T-1. mode "learned": params {"P": (T, D)},
P ~ U(-0.1, 0.1) at the start. x: (N, T, D) -> (N, T, D).
"""
import numpy as np

from .. import fields as f
from .base import Cost, Layer, Params, Shape, plain_infer, sequence_shape

MODES = ("sinusoidal", "learned")


def sinusoid(T: int, D: int) -> np.ndarray:
    """(T, D): pairs of columns (2k, 2k+1) share the frequency 1 / 10000^(2k/D)."""
    t = np.arange(T)[:, None]
    j = np.arange(D)[None, :]
    angle = t / 10000.0 ** ((j - j % 2) / D)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


def forward(x: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, None]:
    return x + P, None


def backward(dout: np.ndarray, learned: bool) -> tuple[np.ndarray, Params]:
    """out = x + P: dx = dout; dP = the sum of dout over the batch."""
    return dout, ({"P": dout.sum(axis=0)} if learned else {})


class PositionalEncoding(Layer):
    kind = "positional_encoding"
    DEFAULTS = {"mode": "sinusoidal"}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "PositionalEncoding":
        sequence_shape(in_shape, cls.kind, path)
        mode = f.choice(spec, "mode", path, MODES, cls.DEFAULTS["mode"])
        return cls({"type": cls.kind, "mode": mode}, in_shape, in_shape)

    def __init__(self, spec: dict, in_shape: Shape, out_shape: Shape) -> None:
        super().__init__(spec, in_shape, out_shape)
        self.learned = spec["mode"] == "learned"
        self.table = None if self.learned else sinusoid(*in_shape)

    @property
    def weight_keys(self) -> tuple[str, ...]:
        return ("P",) if self.learned else ()

    def param_shapes(self) -> dict[str, Shape]:
        return {"P": self.in_shape} if self.learned else {}

    def init(self, rng, dtype):
        return {"P": rng.uniform(-0.1, 0.1, self.in_shape).astype(dtype)} if self.learned else {}

    def cost(self) -> Cost:
        """out kept; backward passes dout on as dx."""
        n = self.in_shape[0] * self.in_shape[1]
        return Cost(0, n, n, 1, plain_infer(self))

    def forward(self, x, params, *, train, rng=None):
        P = params["P"] if self.learned else self.table.astype(x.dtype, copy=False)
        return forward(x, P)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, self.learned)
