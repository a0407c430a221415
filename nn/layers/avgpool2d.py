"""Average pooling: out[n, c, i, j] = mean of the pool_size window at (i sh, j sw) of channel c.
x: (N, C, H, W) -> (N, C, Ho, Wo); no parameters.
"""
import math

import numpy as np

from .base import Cost
from .windows import Pool, add_windows, windows


def forward(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]
            ) -> tuple[np.ndarray, tuple]:
    """x: (N, C, H, W) -> out: (N, C, Ho, Wo)."""
    return windows(x, size, stride).mean(axis=(4, 5)), (x.shape, tuple(size), tuple(stride))


def backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, dict]:
    """Each input of a window gets 1 / (kh kw) of the window's gradient."""
    x_shape, size, stride = cache
    share = dout / (size[0] * size[1])
    return add_windows(np.broadcast_to(share, (*size, *dout.shape)), x_shape, stride), {}


class AvgPool2D(Pool):
    kind = "avgpool2d"

    def cost(self) -> Cost:
        """out kept; backward dout, its share, and add_windows' tiles (k Qo) and dx. Eval:
        the input and its contiguous copy, and out."""
        k, q, n = math.prod(self.size), math.prod(self.out_shape), math.prod(self.in_shape)
        return Cost(0, q, 2 * q + k * q + n, 18, 2 * n + q)

    def forward(self, x, params, *, train, rng=None):
        out, cache = forward(self.images(x), self.size, self.stride)
        return out.reshape(len(out), *self.out_shape), cache

    def backward(self, dout, cache, need_dx=True):
        x_shape = cache[0]
        dx, _ = backward(dout.reshape(x_shape[0], x_shape[1], *dout.shape[-2:]), cache)
        return dx.reshape(len(dx), *self.in_shape), {}
