"""Activation functions a = f(z) and their backward passes dz = f'(z) * da.

Every backward is written in terms of the saved output ``a`` (and ``z`` where needed), so a
layer keeps what it already computed. ``step`` is the threshold unit of the perceptron: its
derivative is zero almost everywhere, so it has no backward and backprop rejects it at build.
"""
from typing import Callable, NamedTuple

import numpy as np


class Activation(NamedTuple):
    forward: Callable[[np.ndarray], np.ndarray]                               # z -> a
    backward: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None  # (da, z, a) -> dz


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), computed as (1 + tanh(z/2)) / 2, which never overflows."""
    a = np.tanh(z * 0.5)
    a += 1.0
    a *= 0.5
    return a


def softmax(z: np.ndarray) -> np.ndarray:
    """z: (..., C) -> positive and summing to 1 over the last axis (shifted by the max for
    stability); (N, C) rows, or (N, T, C) one distribution per time step."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def step(z: np.ndarray) -> np.ndarray:
    """The threshold unit: 1 where z >= 0, else 0 (the boundary w.x + b = 0 belongs to class 1)."""
    return (z >= 0).astype(z.dtype)


def _sigmoid_backward(da, z, a):
    return da * a * (1.0 - a)                      # d sigmoid = a (1 - a)


def _tanh_backward(da, z, a):
    return da * (1.0 - a * a)                      # d tanh = 1 - a^2


def _relu_backward(da, z, a):
    return da * (z > 0)                            # d relu = 1 where z > 0, else 0


def _linear_backward(da, z, a):
    return da                                      # d z = 1


def _softmax_backward(da, z, a):
    # Jacobian-vector product: dz_j = a_j (da_j - sum_k da_k a_k)
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


ACTIVATIONS: dict[str, Activation] = {
    "step": Activation(step, None),
    "sigmoid": Activation(sigmoid, _sigmoid_backward),
    "tanh": Activation(np.tanh, _tanh_backward),
    "relu": Activation(lambda z: np.maximum(z, 0.0), _relu_backward),
    "linear": Activation(lambda z: z, _linear_backward),
    "softmax": Activation(softmax, _softmax_backward),
}
