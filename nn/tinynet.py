"""Per-sample SGD on tiny dense nets in plain Python floats (nn/engines/dense.py says when).

A 2-4-1 net has 17 weights: a NumPy call costs more than the arithmetic it does, and a step
of the general path makes about fifty of them. Here an epoch converts the weights and the
samples to lists once, runs the textbook's loop sample by sample (forward, deltas, update),
and writes the weights, the output pre-activations (for the on-the-fly metrics) and the
optimizer's step count back at the end.

Every element-wise operation is the general path's, in the same order (float64 arithmetic
is the same in Python and NumPy): sigmoid = e / (1 + e) with e = exp(-|z|), the squared error's
(a - t) a (1 - a), w <- w - (x d) lr. Two things round differently: the dot products sum in
order, where OpenBLAS's kernels use fused multiply-adds and their own order for most shapes,
and math.tanh is libm's, which differs from NumPy's SIMD tanh by up to 3 ulps on about a
quarter of the inputs. So results agree to rounding, not bit for bit (~1e-13 relative after
an epoch or two, tests/nn/engines/test_dense.py); where training is unstable, last-bit
differences grow, as between any two BLAS builds.
Plain SGD only (no momentum, no weight decay): the textbook's rule; other optimizers use the
NumPy-buffer engine, as does the statistics' probe pass (all its samples at once).
"""
from math import exp, tanh
from operator import mul
from typing import Callable

import numpy as np

from .layers import Layer
from .network import Weights


def _sigmoid(z):
    return [1.0 / (1.0 + exp(-v)) if v >= 0.0 else exp(v) / (1.0 + exp(v)) for v in z]


def _relu(z):
    return [0.0 if v < 0.0 else v for v in z]        # keeps NaN, as np.maximum does


def _tanh(z):
    return [tanh(v) for v in z]


def _linear(z):
    return z


def _softmax(z):
    m = max(z)
    e = [exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


# dL/dz from dL/da and the output a, as nn/activations.py's backward passes
def _sigmoid_back(da, a):
    return [g * v * (1.0 - v) for g, v in zip(da, a)]


def _relu_back(da, a):
    return [g * (v > 0.0) for g, v in zip(da, a)]   # a > 0 iff z > 0; g * False = 0.0


def _tanh_back(da, a):
    return [g * (1.0 - v * v) for g, v in zip(da, a)]


def _linear_back(da, a):
    return da


def _softmax_back(da, a):
    s = sum(map(mul, da, a))
    return [v * (g - s) for g, v in zip(da, a)]


FORWARD = {"sigmoid": _sigmoid, "relu": _relu, "tanh": _tanh, "linear": _linear,
           "softmax": _softmax}
BACKWARD = {"sigmoid": _sigmoid_back, "relu": _relu_back, "tanh": _tanh_back,
            "linear": _linear_back, "softmax": _softmax_back}


class TinyNet:
    """The engine for one run: the layers' activations and the loss, fixed."""

    @staticmethod
    def applies(layers: list[Layer], optimizer, dtype) -> bool:
        """Float64 (Python's floats), plain SGD, activations it knows."""
        spec = optimizer.spec
        return (np.dtype(dtype) == np.float64 and spec["type"] == "sgd"
                and not spec["momentum"] and not optimizer.weight_decay
                and all(l.activation in FORWARD for l in layers))

    def __init__(self, layers: list[Layer], loss: str) -> None:
        self.forward = [FORWARD[l.activation] for l in layers]
        self.backward = [BACKWARD[l.activation] for l in layers]
        self.loss = loss

    def epoch(self, params: Weights, opt, xs: np.ndarray, ts: np.ndarray,
              batch_size: int | None, lr: float, zbuf: np.ndarray,
              poll: Callable[[], bool]) -> bool:
        """backprop_epoch's contract with batch_size 1. -> False when poll() asked to stop
        (the weights are then left as they were: the caller rolls the epoch back anyway)."""
        cols = [p["W"].T.tolist() for p in params]     # cols[l][j]: the weights into unit j
        bias = [p["b"].tolist() for p in params]
        forward, backward = self.forward, self.backward
        last = len(params) - 1
        out_back = backward[last]
        loss = self.loss
        zs = []
        for k, (a, t) in enumerate(zip(xs.tolist(), ts.tolist())):
            acts = [a]
            for l in range(last + 1):
                z = [sum(map(mul, c, a)) + bj for c, bj in zip(cols[l], bias[l])]
                a = forward[l](z)
                acts.append(a)
            zs.append(z)
            # dL/dz of the output (batch of one: the 1/n is 1)
            if loss == "squared_error":
                d = out_back([v - u for v, u in zip(a, t)], a)
            elif loss == "cross_entropy":
                d = a[:]                                # softmax - onehot(t)
                d[t] -= 1.0
            else:
                d = [v - u for v, u in zip(a, t)]       # sigmoid - t
            for l in range(last, -1, -1):
                c, b, x = cols[l], bias[l], acts[l]
                if l:
                    dx = [sum(map(mul, row, d)) for row in zip(*c)]   # W d, before the update
                for j, dj in enumerate(d):
                    c[j] = [w - xi * dj * lr for w, xi in zip(c[j], x)]   # w - (x d) lr
                    b[j] -= dj * lr
                if l:
                    d = backward[l - 1](dx, x)
            if k & 15 == 15 and poll():
                return False
        for p, c, b in zip(params, cols, bias):
            p["W"][...] = np.array(c).T
            p["b"][...] = b
        zbuf[...] = zs
        opt.t += len(zs)
        return True
