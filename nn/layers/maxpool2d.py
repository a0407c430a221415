"""Max pooling: out[n, c, i, j] = max of the pool_size window at (i sh, j sw) of channel c.
x: (N, C, H, W) -> (N, C, Ho, Wo); no parameters.
"""
import numpy as np

from .windows import Pool, add_windows, windows


def forward(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]
            ) -> tuple[np.ndarray, tuple]:
    """x: (N, C, H, W) -> out: (N, C, Ho, Wo); the cache keeps which input each max took."""
    win = windows(x, size, stride)
    flat = win.reshape(*win.shape[:4], size[0] * size[1])    # (N, C, Ho, Wo, kh kw), a copy
    idx = flat.argmax(axis=-1)
    out = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
    return out, (x.shape, idx, tuple(size), tuple(stride))


def backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, dict]:
    """The max passes its gradient to the one input it took (the first one on ties)."""
    x_shape, idx, size, stride = cache
    dwin = np.zeros((size[0] * size[1], *idx.shape), dtype=dout.dtype)   # offset-major
    np.put_along_axis(dwin, idx[None], dout[None], axis=0)
    return add_windows(dwin.reshape(*size, *idx.shape), x_shape, stride), {}


class MaxPool2D(Pool):
    kind = "maxpool2d"

    def forward(self, x, params, *, train, rng=None):
        out, cache = forward(self.images(x), self.size, self.stride)
        return out.reshape(len(out), *self.out_shape), cache

    def backward(self, dout, cache, need_dx=True):
        dx, _ = backward(dout.reshape(cache[1].shape), cache)
        return dx.reshape(len(dx), *self.in_shape), {}
