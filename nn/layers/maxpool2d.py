"""Max pooling: out[n, c, i, j] = max of the pool_size window at (i sh, j sw) of channel c.
x: (N, C, H, W) -> (N, C, Ho, Wo); no parameters.

The windows are copied once offset-major, (kh kw, N, C, Ho, Wo), so that the max and the
choice of the first maximal offset are reductions and scans along the short first axis,
vectorised over every window. (Window-major with an argmax along a last axis of kh kw values
runs its inner loop once per window, which for a 2 x 2 pool cost more than the convolution
before it.)
"""
import math

import numpy as np

from .base import Cost
from .windows import Pool, add_windows, windows


def forward(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]
            ) -> tuple[np.ndarray, tuple]:
    """x: (N, C, H, W) -> out: (N, C, Ho, Wo); the cache keeps the windows and out."""
    win = windows(x, size, stride)                           # (N, C, Ho, Wo, kh, kw) view
    cols = win.transpose(4, 5, 0, 1, 2, 3).reshape(size[0] * size[1], *win.shape[:4])
    out = np.maximum.reduce(cols, axis=0)
    return out, (x.shape, cols, out, tuple(size), tuple(stride))


def backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, dict]:
    """The max passes its gradient to the one input it took, the first maximal one of its
    window (in row-major order, as argmax); overlapping windows add up."""
    x_shape, cols, out, size, stride = cache
    took = cols == out                                       # every maximal offset ...
    seen = took[0].copy()
    for k in range(1, len(took)):                            # ... but the first only
        np.greater(took[k], seen, out=took[k])               # took and not seen before
        seen |= took[k]
    dwin = np.multiply(took, dout)
    dwin += 0.0                                              # -0.0 (dout < 0, not taken) -> 0
    return add_windows(dwin.reshape(*size, *dout.shape), x_shape, stride), {}


class MaxPool2D(Pool):
    kind = "maxpool2d"

    def cost(self) -> Cost:
        """k = kh kw offsets of Qo outputs: the windows' copy and out kept; backward dout,
        took and dwin (k Qo each), seen, and add_windows' tiles and dx. Eval: the input and
        its contiguous copy, the windows' copy and out."""
        k, q, n = math.prod(self.size), math.prod(self.out_shape), math.prod(self.in_shape)
        return Cost(0, k * q + q, 3 * k * q + 2 * q + n, 23, 2 * n + k * q + q)

    def forward(self, x, params, *, train, rng=None):
        out, cache = forward(self.images(x), self.size, self.stride)
        return out.reshape(len(out), *self.out_shape), cache

    def backward(self, dout, cache, need_dx=True):
        dx, _ = backward(dout.reshape(cache[1].shape[1:]), cache)
        return dx.reshape(len(dx), *self.in_shape), {}
