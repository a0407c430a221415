"""Activation functions a = f(z): the one table, with every form an engine needs.

Each entry has the layers' `forward` (z -> a) and `backward` ((da, z, a) -> dz = f'(z) da,
written with the saved output a where it can be, so a layer keeps what it already computed),
the dense engine's in-place `forward_into` and `grad_into` (over any axis layout: softmax
reduces over `axis`), and the `code` that names it in the compiled kernel
(nn/engines/kernel.py). ``step`` is the perceptron's threshold unit: its derivative is zero
almost everywhere, so it has no backward and backprop rejects it at build.
"""
from typing import NamedTuple
from collections.abc import Callable

import numpy as np


class Activation(NamedTuple):
    forward: Callable[[np.ndarray], np.ndarray]                               # z -> a
    backward: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None  # (da, z, a) -> dz
    # (z, out, scratch, mask, axis) -> out = f(z); scratch like z, mask bool like z
    forward_into: Callable | None = None
    # (da, z, a, scratch, mask, axis) -> da = f'(z) da, in place
    grad_into: Callable | None = None
    code: int = -1                             # the compiled kernel's name for it (-1: none)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z): full relative precision for z << 0 (where (1 + tanh(z/2)) / 2
    cancels), down to where the result leaves the normal numbers and e^-z overflows to
    inf, giving 0."""
    out = np.negative(z)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    return np.divide(1.0, out, out=out)


def _sigmoid_into(z, out, scratch, mask, axis):
    np.negative(z, out=out)                        # sigmoid()'s arithmetic, in place
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    return np.divide(1.0, out, out=out)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """z: (..., C) -> positive and summing to 1 over the last axis (shifted by the max for
    stability); (N, C) rows, or (N, T, C) one distribution per time step."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax(z), as z - max - log sum exp(z - max): finite where softmax underflows to
    0 (a beam's score adds these)."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _softmax_into(z, out, scratch, mask, axis):
    top = np.maximum.reduce(z, axis=axis, keepdims=True)
    np.subtract(z, top, out=out)
    np.exp(out, out=out)
    out /= np.add.reduce(out, axis=axis, keepdims=True)
    return out


def step(z: np.ndarray) -> np.ndarray:
    """The threshold unit: 1 where z >= 0, else 0 (the boundary w.x + b = 0 belongs to class 1)."""
    return (z >= 0).astype(z.dtype)


def _sigmoid_backward(da, z, a):
    return da * a * (1.0 - a)                      # d sigmoid = a (1 - a)


def _sigmoid_grad_into(da, z, a, scratch, mask, axis):
    np.multiply(da, a, out=da)
    np.subtract(1.0, a, out=scratch)
    return np.multiply(da, scratch, out=da)


def _tanh_backward(da, z, a):
    return da * (1.0 - a * a)                      # d tanh = 1 - a^2


def _tanh_grad_into(da, z, a, scratch, mask, axis):
    np.multiply(a, a, out=scratch)
    np.subtract(1.0, scratch, out=scratch)
    return np.multiply(da, scratch, out=da)


def _relu(z):
    return np.maximum(z, 0.0)                      # keeps NaN


def _relu_backward(da, z, a):
    return da * (z > 0)                            # d relu = 1 where z > 0, else 0


def _relu_grad_into(da, z, a, scratch, mask, axis):
    np.greater(z, 0, out=mask)
    return np.multiply(da, mask, out=da)


def _linear_backward(da, z, a):
    return da                                      # d z = 1


def _copy_into(z, out, scratch, mask, axis):
    np.copyto(out, z)
    return out


def _softmax_backward(da, z, a, axis=-1):
    # Jacobian-vector product: dz_j = a_j (da_j - sum_k da_k a_k)
    return a * (da - (da * a).sum(axis=axis, keepdims=True))


def _softmax_grad_into(da, z, a, scratch, mask, axis):
    da[...] = _softmax_backward(da, z, a, axis)
    return da


ACTIVATIONS: dict[str, Activation] = {
    "step": Activation(step, None),
    "linear": Activation(lambda z: z, _linear_backward, _copy_into,
                         lambda da, z, a, scratch, mask, axis: da, 0),
    "sigmoid": Activation(sigmoid, _sigmoid_backward, _sigmoid_into, _sigmoid_grad_into, 1),
    "tanh": Activation(np.tanh, _tanh_backward,
                       lambda z, out, scratch, mask, axis: np.tanh(z, out=out),
                       _tanh_grad_into, 2),
    "relu": Activation(_relu, _relu_backward,
                       lambda z, out, scratch, mask, axis: np.maximum(z, 0.0, out=out),
                       _relu_grad_into, 3),
    "softmax": Activation(softmax, _softmax_backward, _softmax_into, _softmax_grad_into, 4),
}
