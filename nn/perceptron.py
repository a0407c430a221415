"""The perceptron rule for one dense layer of step units (the textbook's threshold units).

Per sample x with targets t (0/1 per unit) and outputs y = step(x W + b):
W <- W + rho x^T (t - y), b <- b + rho (t - y); nothing changes when y == t. Training has
converged when an epoch makes no mistake, which happens iff the data is linearly separable.
"""
from collections.abc import Callable

import numpy as np

from . import network
from .network import Weights


def perceptron_epoch(params: Weights, xs: np.ndarray, ts: np.ndarray, lr: float,
                     zbuf: np.ndarray, poll: Callable[[], bool]) -> bool:
    """xs: (N, D), ts: (N, K) in {0, 1}; writes each sample's z (before its update) to zbuf.
    -> False when poll() asked to stop mid-epoch."""
    W, b = params[0]["W"], params[0]["b"]
    for i in range(len(xs)):
        x = xs[i]
        z = x @ W + b                                  # (K,)
        zbuf[i] = z
        err = ts[i] - (z >= 0)                         # t - y, in {-1, 0, 1}
        if err.any():
            W += lr * np.outer(x, err)
            b += lr * err
        if i & 255 == 255 and poll():
            return False
    return True


def count_errors(zbuf: np.ndarray, ts: np.ndarray) -> int:
    """Samples with at least one unit on the wrong side of its threshold."""
    return int(np.count_nonzero(np.any((zbuf >= 0) != (ts > 0.5), axis=1)))


class Perceptron:
    """The perceptron rule as an engine (nn/engines/__init__.py's contract)."""

    def __init__(self, layers) -> None:
        self.layers = layers

    def epoch(self, params: Weights, opt, x: np.ndarray, ts: np.ndarray,
              order: np.ndarray | None, batch_size, lr: float, zbuf: np.ndarray, rng,
              poll: Callable[[], bool]) -> bool:
        return perceptron_epoch(params, x if order is None else x[order], ts, lr, zbuf, poll)

    def finite(self, params: Weights) -> bool:
        return bool(np.isfinite(params[0]["W"]).all() and np.isfinite(params[0]["b"]).all())

    def stats(self, reporter, params: Weights, x: np.ndarray, t: np.ndarray) -> list[dict]:
        """Weights and activations: the rule has no gradient."""
        outputs: list = []
        _, caches = network.forward(self.layers, params, x, train=False, outputs=outputs)
        return reporter(params, None, outputs, caches)
