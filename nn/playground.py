"""TensorFlow Playground data sets (src/dataset.ts), with a seeded numpy Generator.

`noise` is the Playground's slider value 0..50; the Playground passes noise/100 = n to its
generators, and so do we. Labels are class indices: the Playground's +1 is class 1, -1 is 0.
As in the Playground, the points are shuffled after generation. Formulas:
- xor: x, y ~ U(-5, 5), each pushed 0.3 away from 0 (padding); the label is that of the
  point jittered by U(-5, 5) * n per coordinate: 1 iff x' y' >= 0 (the point itself stays).
- circle: half the points with r ~ U(0, 2.5), half with r ~ U(3.5, 5), angle ~ U(0, 2 pi),
  (x, y) = (r sin t, r cos t); label 1 iff the point jittered by U(-5, 5) * n lies within 2.5.
- gaussian: two Gaussians with variance 0.5 + 7 n (d3 scale [0, .5] -> [.5, 4]) around (2, 2)
  (class 1) and (-2, -2) (class 0).
- spiral: two arms of N/2 points: r = 5 i / (N/2), t = 1.75 * 2 pi i / (N/2) + delta,
  (x, y) = (r sin t, r cos t) + U(-1, 1) * n; delta 0 is class 1, delta pi class 0.
With an odd n_samples the first class gets the extra point (so exactly n_samples come back).
"""
import math

import numpy as np


KINDS = ("xor", "circle", "gaussian", "spiral")
MAX_SAMPLES = 100_000


def _xor(rng, n_samples, n):
    p = rng.uniform(-5, 5, (n_samples, 2))
    p += np.where(p > 0, 0.3, -0.3)
    jittered = p + rng.uniform(-5, 5, (n_samples, 2)) * n
    return p, (jittered[:, 0] * jittered[:, 1] >= 0)


def _circle(rng, n_samples, n):
    n_in = (n_samples + 1) // 2
    r = np.concatenate([rng.uniform(0, 2.5, n_in), rng.uniform(3.5, 5, n_samples - n_in)])
    t = rng.uniform(0, 2 * math.pi, n_samples)
    p = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
    jittered = p + rng.uniform(-5, 5, (n_samples, 2)) * n
    return p, np.hypot(jittered[:, 0], jittered[:, 1]) < 2.5


def _gaussian(rng, n_samples, n):
    n_pos = (n_samples + 1) // 2
    sd = math.sqrt(0.5 + 7.0 * n)
    centre = np.where(np.arange(n_samples) < n_pos, 2.0, -2.0)[:, None]
    return centre + sd * rng.standard_normal((n_samples, 2)), np.arange(n_samples) < n_pos


def _spiral(rng, n_samples, n):
    half = n_samples / 2
    n_pos = (n_samples + 1) // 2
    i = np.concatenate([np.arange(n_pos), np.arange(n_samples - n_pos)]).astype(float)
    delta = np.where(np.arange(n_samples) < n_pos, 0.0, math.pi)
    r = i / half * 5
    t = 1.75 * i / half * 2 * math.pi + delta
    p = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
    return p + rng.uniform(-1, 1, (n_samples, 2)) * n, np.arange(n_samples) < n_pos


_GENERATORS = {"xor": _xor, "circle": _circle, "gaussian": _gaussian, "spiral": _spiral}


def playground(kind: str, rng: np.random.Generator, n_samples: int, n: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """-> X: (N, 2) float64, y: (N,) int64 in {0, 1}; n = noise / 100. nn.generate (in
    nn/generators.py) checks the arguments."""
    X, positive = _GENERATORS[kind](rng, n_samples, n)
    order = rng.permutation(n_samples)
    return X[order].astype(np.float64), positive[order].astype(np.int64)
