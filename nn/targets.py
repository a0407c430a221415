"""How class labels become training targets, and how outputs become labels and probabilities.

Targets (y: (N,) class indices; lo = -1 for a tanh output, else 0; hi = 1):
- cross_entropy: the indices themselves (N,).
- binary_cross_entropy: (N, 1), 1.0 for classes[1], 0.0 for classes[0].
- squared_error (and the perceptron), one output unit and 2 classes: (N, 1), hi for
  classes[1], lo for classes[0]; k output units and k classes: one-hot rows of hi / lo.

Outputs a: (N, K) -> labels and probabilities (columns in classes order; outputs per time
step (N, T, K) the same at every step):
- one output unit, 2 classes: p1 = clip((a - lo) / (hi - lo), 0, 1), so a sigmoid output is
  p1 itself; probabilities [1 - p1, p1]; label classes[1] iff p1 >= 0.5 (sigmoid output >= 0.5,
  tanh output >= 0, step output 1).
- k output units: label = argmax a. softmax: probabilities = a. Any other activation:
  probabilities = clip((a - lo) / (hi - lo), 0, 1) normalised to sum 1 (uniform if all 0).
"""
import numpy as np


def low_high(activation: str) -> tuple[float, float]:
    return (-1.0 if activation == "tanh" else 0.0), 1.0


def encode(y: np.ndarray, n_classes: int, units: int, activation: str, loss: str,
           dtype) -> np.ndarray:
    """y: (N,) int class indices (or (N, T) with cross_entropy) -> the targets `loss` trains
    against."""
    if loss == "cross_entropy":
        return y.astype(np.int64)
    lo, hi = low_high("sigmoid" if loss == "binary_cross_entropy" else activation)
    if units == 1:
        return np.where(y == 1, hi, lo).astype(dtype)[:, None]
    t = np.full((len(y), n_classes), lo, dtype=dtype)
    t[np.arange(len(y)), y] = hi
    return t


def labels(a: np.ndarray, activation: str) -> np.ndarray:
    """decode()'s labels alone (the metrics' accuracy): (N, K) -> (N,) class indices (a
    bool for one output unit: classes[1] or not); (N, T, K) -> (N, T)."""
    if a.shape[-1] == 1:
        lo, hi = low_high(activation)                 # p1 >= 0.5, clipping aside
        return (a[..., 0] - lo) / (hi - lo) >= 0.5
    return a.argmax(axis=-1)


def decode(a: np.ndarray, activation: str) -> tuple[np.ndarray, np.ndarray]:
    """a: (N, K) outputs -> (labels: (N,) class indices, probabilities: (N, max(K, 2))).
    Outputs per time step (N, T, K) -> labels (N, T), probabilities (N, T, max(K, 2))."""
    lo, hi = low_high(activation)
    if a.shape[-1] == 1:
        p1 = np.clip((a[..., 0] - lo) / (hi - lo), 0.0, 1.0)
        return (p1 >= 0.5).astype(np.int64), np.stack([1.0 - p1, p1], axis=-1)
    labels = a.argmax(axis=-1)
    if activation == "softmax":
        return labels, a
    p = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    s = p.sum(axis=-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / a.shape[-1])
    return labels, p
