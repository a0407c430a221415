"""Flatten: (N, d1, d2, ...) -> (N, d1 d2 ...), e.g. a CNN's feature maps (F, H, W) into the
vector a dense layer takes. No parameters; backward reshapes the gradient back.
"""
import math

import numpy as np

from .base import Cost, Layer, Shape, plain_infer


def forward(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x.reshape(len(x), math.prod(x.shape[1:])), x.shape


def backward(dout: np.ndarray, cache: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    return dout.reshape(cache), {}


class Flatten(Layer):
    kind = "flatten"

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Flatten":
        return cls({"type": cls.kind}, in_shape, (math.prod(in_shape),))

    def cost(self) -> Cost:
        """A copy when its input is a transposed view (conv2d's output), else none; backward
        reshapes dout."""
        n = math.prod(self.in_shape)
        return Cost(0, n, n, 1, plain_infer(self))

    def forward(self, x, params, *, train, rng=None):
        return forward(x)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache)
