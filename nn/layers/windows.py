"""Sliding windows over images, shared by conv2d and the pools: im2col as a strided view of the
input (no copy), and its adjoint, which adds each window's
gradient back onto the pixels it covers (a loop over the kh x kw kernel offsets, never over
pixels: each offset is one strided slice of the image). Also the spec parser both pools share.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import SpecError
from .base import Layer, Shape, image_shape, pair


def out_size(n: int, k: int, stride: int, pad: int = 0) -> int:
    """Windows of size k, step stride, along n (+ 2 pad) values."""
    return (n + 2 * pad - k) // stride + 1


def windows(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """x: (N, C, H, W) -> a read-only view (N, C, Ho, Wo, kh, kw); window (i, j) starts at
    pixel (i sh, j sw). (sliding_window_view makes the same view at three times the cost,
    which shows in small convolutions.)"""
    (kh, kw), (sh, sw) = size, stride
    n, c, h, w = x.shape
    s0, s1, s2, s3 = x.strides
    shape = (n, c, out_size(h, kh, sh), out_size(w, kw, sw), kh, kw)
    strides = (s0, s1, s2 * sh, s3 * sw, s2, s3)
    if not x.flags.c_contiguous:
        return as_strided(x, shape, strides, writeable=False)
    view = np.ndarray(shape, x.dtype, x, 0, strides)      # the same view, a fifth of the
    view.flags.writeable = False                          # cost of as_strided's
    return view


def add_windows(dwin: np.ndarray, shape: tuple[int, ...], stride: tuple[int, int]
                ) -> np.ndarray:
    """The adjoint of windows(), offset-major: dwin (kh, kw, A, B, Ho, Wo), the gradient of
    the value at offset (u, v) of window (i, j) -> dx of `shape` (A, B, H, W), each window's
    gradient added onto the pixels it covers (overlaps add up). (A, B) is (N, C) for the
    pools, (C, N) for conv2d: whatever keeps dwin[u, v] contiguous."""
    kh, kw, a, b, ho, wo = dwin.shape
    sh, sw = stride
    if (sh, sw) == (kh, kw):                  # the windows tile the image (pools): no adds,
        tiles = dwin.transpose(2, 3, 4, 0, 5, 1).reshape(a, b, ho * kh, wo * kw)   # one copy
        if tiles.shape == tuple(shape):
            return tiles
        dx = np.zeros(shape, dtype=dwin.dtype)            # the rows and columns no window
        dx[:, :, :ho * kh, :wo * kw] = tiles              # covers get no gradient
        return dx
    dx = np.zeros(shape, dtype=dwin.dtype)
    for u in range(kh):
        for v in range(kw):
            dx[:, :, u:u + sh * ho:sh, v:v + sw * wo:sw] += dwin[u, v]
    return dx


class Pool(Layer):
    """The shared parser of maxpool2d and avgpool2d: windows of pool_size, step stride (null:
    pool_size), no padding; (C, H, W) -> (C, Ho, Wo), (H, W) -> (Ho, Wo)."""
    DEFAULTS = {"pool_size": 2, "stride": None}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Pool":
        _, h, w = image_shape(in_shape, cls.kind, path)
        size = pair(spec, "pool_size", path, cls.DEFAULTS["pool_size"])
        stride = size if spec.get("stride") is None else pair(spec, "stride", path)
        if size[0] > h or size[1] > w:
            raise SpecError(f"{path}.pool_size", f"the window {tuple(size)} is larger than the "
                                                 f"input image {(h, w)}")
        out = (out_size(h, size[0], stride[0]), out_size(w, size[1], stride[1]))
        normal = {"type": cls.kind, "pool_size": size, "stride": stride}
        return cls(normal, in_shape, (*in_shape[:-2], *out))

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.spec["pool_size"])

    @property
    def stride(self) -> tuple[int, int]:
        return tuple(self.spec["stride"])

    def images(self, x: np.ndarray) -> np.ndarray:
        """(N, *in_shape) -> (N, C, H, W)."""
        return x.reshape(len(x), *image_shape(self.in_shape, self.kind, ""))

