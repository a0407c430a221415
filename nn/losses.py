"""Losses. A batch's loss is the MEAN over its N samples of the per-sample loss, so with
batch_size 1 one SGD step is exactly the textbook's step on J_p.

- squared_error: J_p = 1/2 sum_i (g_i - b_i)^2 (the textbook's J, no division by the number
  of outputs). Works on the outputs a = g. t: (N, K) float targets.
- cross_entropy: J_p = -log softmax(z)_y, from the output layer's pre-activation z with a
  log-sum-exp, so it never takes log(0). t: (N,) int class indices. With a label per time
  step (z: (N, T, C), t: (N, T)) a sample's J_p is the mean over its T steps, so the batch
  loss is the mean over every (sample, step).
- binary_cross_entropy: J_p = -t log s(z) - (1 - t) log(1 - s(z)) = softplus(z) - t z, from z.
  t: (N, 1) float in {0, 1}.

The two cross-entropies are fused with their output activation: their gradient is dL/dz
(softmax(z) - onehot, sigmoid(z) - t), which is exact and stable; squared_error's is dL/da.
Each function returns (loss, grad), CS231n style. The training loop's hot path calls the
`grad` of each Loss instead, which takes the output layer's (z, a) and skips the loss value
(a = softmax(z) or sigmoid(z) is already computed by the layer, so the fused gradient is
a - onehot or a - t without another exp).
"""
from typing import NamedTuple
from collections.abc import Callable

import numpy as np

from .activations import sigmoid, softmax


def _squared_error_value(a: np.ndarray, t: np.ndarray) -> float:
    diff = a - t
    return 0.5 * float(np.vdot(diff, diff)) / len(a)


def squared_error(a: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """a, t: (N, K) -> mean_n 1/2 sum_k (a - t)^2, and dL/da = (a - t) / N."""
    diff = a - t
    diff /= len(a)
    return _squared_error_value(a, t), diff


def cross_entropy_hits(z: np.ndarray, t: np.ndarray) -> tuple[float, int | None]:
    """(the mean cross-entropy, the number of rows whose argmax z is t, or None when some row
    has tied maxima: then ask argmax). The loss is the mean of log sum_c exp(z_c - max z) -
    (z_t - max z) over the rows, computed on a (C, rows) copy: reductions over a short last
    axis run their inner loop once per row, which over a whole epoch's outputs cost ten times
    more than the arithmetic (argmax too: the hits come from the shifted copy instead, where
    z_t is a maximum iff z_t - max z == 0, and exactly one 0 per row means no ties)."""
    zt = z.reshape(-1, z.shape[-1]).T.copy()                          # (C, rows), C order
    n = zt.shape[1]
    zt -= np.maximum.reduce(zt, axis=0)                                 # shifted
    picked = zt[t.reshape(-1), np.arange(n)]
    hits = int(np.count_nonzero(picked == 0)) if np.count_nonzero(zt == 0) == n else None
    np.exp(zt, out=zt)
    log_sum = np.log(np.add.reduce(zt, axis=0))
    return float(np.add.reduce(log_sum - picked)) / n, hits


def _cross_entropy_value(z: np.ndarray, t: np.ndarray) -> float:
    return cross_entropy_hits(z, t)[0]


def cross_entropy(z: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """z: (N, C) logits, t: (N,) class indices (or z: (N, T, C), t: (N, T)) -> the mean of
    -log softmax(z)_t over every row (with a log-sum-exp), and dL/dz."""
    z2, t2 = z.reshape(-1, z.shape[-1]), t.reshape(-1)
    dz = softmax(z2)                               # d(-log softmax_t)/dz = softmax - onehot(t)
    dz[np.arange(len(z2)), t2] -= 1.0
    dz /= len(z2)
    return _cross_entropy_value(z, t), dz.reshape(z.shape)


def _binary_cross_entropy_value(z: np.ndarray, t: np.ndarray) -> float:
    per_sample = np.maximum(z, 0.0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return float(per_sample.sum()) / len(z)


def binary_cross_entropy(z: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    """z: (N, 1) logit, t: (N, 1) in {0, 1} -> mean softplus(z) - t z, and dL/dz."""
    dz = sigmoid(z)                                # d(softplus(z) - t z)/dz = sigmoid(z) - t
    dz -= t
    dz /= len(z)
    return _binary_cross_entropy_value(z, t), dz


def _squared_error_grad(z, a, t):
    d = a - t
    d *= 1.0 / len(a)
    return d


def _cross_entropy_grad(z, a, t):
    d = a.copy()                                   # a = softmax(z)
    d2 = d.reshape(-1, d.shape[-1])
    d2[np.arange(len(d2)), t.reshape(-1)] -= 1.0
    d *= 1.0 / len(d2)
    return d


def _binary_cross_entropy_grad(z, a, t):
    d = a - t                                      # a = sigmoid(z)
    d *= 1.0 / len(a)
    return d


class Loss(NamedTuple):
    fn: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]
    fused: bool            # True: fn takes z, grads are dL/dz; False: fn takes a, grads dL/da
    grad: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]   # (z, a, t) -> grad
    value: Callable[[np.ndarray, np.ndarray], float]    # fn's loss without its gradient


LOSSES: dict[str, Loss] = {
    "squared_error": Loss(squared_error, False, _squared_error_grad, _squared_error_value),
    "cross_entropy": Loss(cross_entropy, True, _cross_entropy_grad, _cross_entropy_value),
    "binary_cross_entropy": Loss(binary_cross_entropy, True, _binary_cross_entropy_grad,
                                 _binary_cross_entropy_value),
}


def evaluate(name: str, z: np.ndarray, a: np.ndarray, t: np.ndarray) -> float:
    """The loss `name` of an output layer with pre-activation z and output a (the metrics:
    no gradient)."""
    loss = LOSSES[name]
    return loss.value(z if loss.fused else a, t)
