"""2-D convolution with an activation (cross-correlation, as every framework computes it):

    z[n, f, i, j] = b[f] + sum_{c, u, v} W[f, c, u, v] xp[n, c, i sh + u, j sw + v],  a = f(z)

with xp the input zero-padded by (ph, pw) on each side. params: {"W": (F, C, kh, kw),
"b": (F,)}. x: (N, C, H, W) -> a: (N, F, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1 (Wo alike).
im2col: the windows are a strided view of xp, copied once into a (kh kw C, N Ho Wo) matrix
that one matmul multiplies with W; backward reuses it, and col2im adds the windows'
gradients back (nn/layers/windows.py).
"""
from typing import NamedTuple

import numpy as np

from .. import fields as f
from ..activations import ACTIVATIONS
from ..errors import SpecError
from ..init import default_init, init_weights
from .base import (MAX_UNITS, Cost, Layer, Params, Shape, activation, bias, image_shape,
                   init_spec, pair)
from .windows import add_windows, out_size, windows


class ConvCache(NamedTuple):
    cols: np.ndarray                 # (kh kw C, N Ho Wo) im2col of the padded input
    xp_shape: tuple[int, ...]        # (N, C, H + 2 ph, W + 2 pw)
    W: np.ndarray                    # (F, C, kh, kw)
    z: np.ndarray                    # (N, F, Ho, Wo)
    a: np.ndarray                    # (N, F, Ho, Wo)
    stride: tuple[int, int]
    padding: tuple[int, int]
    activation: str


def _matrix(W: np.ndarray) -> np.ndarray:
    """W (F, C, kh, kw) -> (F, kh kw C), columns in the order of im2col's rows."""
    return W.transpose(0, 2, 3, 1).reshape(len(W), -1)


def forward(x: np.ndarray, params: Params, stride: tuple[int, int], padding: tuple[int, int],
            activation: str) -> tuple[np.ndarray, ConvCache]:
    """x: (N, C, H, W) -> a: (N, F, Ho, Wo)."""
    W = params["W"]
    F, C, kh, kw = W.shape
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    win = windows(xp, (kh, kw), stride)                       # (N, C, Ho, Wo, kh, kw) view
    n, _, ho, wo = win.shape[:4]
    cols = win.transpose(4, 5, 1, 0, 2, 3).reshape(kh * kw * C, n * ho * wo)   # the copy
    z = _matrix(W) @ cols                                     # (F, N Ho Wo)
    z += params["b"][:, None]
    if activation != "softmax":                               # element-wise: on z as it lies
        a = ACTIVATIONS[activation].forward(z).reshape(F, n, ho, wo).transpose(1, 0, 2, 3)
    z = z.reshape(F, n, ho, wo).transpose(1, 0, 2, 3)
    if activation == "softmax":
        a = ACTIVATIONS[activation].forward(z)
    return a, ConvCache(cols, xp.shape, W, z, a, tuple(stride), (ph, pw), activation)


def backward(da: np.ndarray, cache: ConvCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, Params]:
    """da: (N, F, Ho, Wo) -> dx: (N, C, H, W), grads {"W", "b"}."""
    W = cache.W
    F, C, kh, kw = W.shape
    dz = ACTIVATIONS[cache.activation].backward(da, cache.z, cache.a)
    n, _, ho, wo = dz.shape
    dz2 = dz.transpose(1, 0, 2, 3).reshape(F, -1)             # (F, N Ho Wo)
    # z = W cols + b: dW = dz cols^T, db = sum dz, dcols = W^T dz
    dW = (dz2 @ cache.cols.T).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    grads = {"W": np.ascontiguousarray(dW), "b": dz2.sum(axis=1)}
    if not need_dx:
        return None, grads
    dcols = (_matrix(W).T @ dz2).reshape(kh, kw, C, n, ho, wo)
    _, _, hp, wp = cache.xp_shape
    dxp = add_windows(dcols, (C, n, hp, wp), cache.stride)   # (C, N, Hp, Wp)
    ph, pw = cache.padding
    return dxp[:, :, ph:hp - ph, pw:wp - pw].transpose(1, 0, 2, 3), grads


class Conv2D(Layer):
    kind = "conv2d"
    REQUIRED = ("filters", "kernel_size")
    DEFAULTS = {"stride": 1, "padding": 0, "activation": "relu",
                "init": None}                                # None: by the activation
    weight_keys = ("W",)

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Conv2D":
        c, h, w = image_shape(in_shape, cls.kind, path)
        filters = f.integer(spec, "filters", path, lo=1, hi=MAX_UNITS)
        k = pair(spec, "kernel_size", path)
        s = pair(spec, "stride", path, cls.DEFAULTS["stride"])
        p = pair(spec, "padding", path, cls.DEFAULTS["padding"], lo=0)
        if p[0] >= k[0] or p[1] >= k[1]:
            raise SpecError(f"{path}.padding", f"padding {tuple(p)} must be smaller than the "
                                               f"kernel {tuple(k)}")
        padded = (h + 2 * p[0], w + 2 * p[1])
        if k[0] > padded[0] or k[1] > padded[1]:
            raise SpecError(f"{path}.kernel_size", f"the kernel {tuple(k)} is larger than the "
                                                   f"padded input image {padded}")
        act = activation(spec, path, cls.DEFAULTS["activation"])
        init = init_spec(spec, path, default_init(act))
        normal = {"type": cls.kind, "filters": filters, "kernel_size": k, "stride": s,
                  "padding": p, "activation": act, "init": init}
        out = (filters, out_size(h, k[0], s[0], p[0]), out_size(w, k[1], s[1], p[1]))
        return cls(normal, in_shape, out)

    def param_shapes(self) -> dict[str, Shape]:
        c = image_shape(self.in_shape, self.kind, "")[0]
        return {"W": (self.spec["filters"], c, *self.spec["kernel_size"]),
                "b": (self.spec["filters"],)}

    def cost(self) -> Cost:
        """Q = Ho Wo output positions, each a product over K = kh kw C inputs: cols, z and a
        kept; backward the incoming da, the derivative's two temporaries, dz and its (F, N Q)
        copy, dcols, the padded dxp and the dx copied out of it (forward's padded input is
        smaller than those). Some 55 calls, and padding's. Eval: the input and its contiguous
        copy, the padded input, cols, and z, a and a temporary of (F, Ho, Wo)."""
        c, h, w = image_shape(self.in_shape, self.kind, "")
        f, ho, wo = self.out_shape
        (kh, kw), (ph, pw) = self.spec["kernel_size"], self.spec["padding"]
        k, q = kh * kw * c, ho * wo
        padded = c * (h + 2 * ph) * (w + 2 * pw) if ph or pw else 0
        return Cost(f * k * q, k * q + 2 * f * q,
                    5 * f * q + k * q + c * (h + 2 * ph) * (w + 2 * pw) + c * h * w,
                    55 + (45 if ph or pw else 0),        # np.pad costs as much as 45
                    2 * c * h * w + padded + k * q + 3 * f * q)

    def init(self, rng: np.random.Generator, dtype) -> Params:
        shape = self.param_shapes()["W"]
        area = shape[2] * shape[3]
        init = self.spec["init"]
        W = init_weights(shape, shape[1] * area, shape[0] * area, init, rng).astype(dtype)
        return {"W": W, "b": bias(shape[0], init, rng, dtype)}

    def forward(self, x, params, *, train, rng=None):
        x = x.reshape(len(x), *image_shape(self.in_shape, self.kind, ""))
        return forward(x, params, self.spec["stride"], self.spec["padding"], self.activation)

    def backward(self, dout, cache, need_dx=True):
        dx, grads = backward(dout, cache, need_dx)
        return (None if dx is None else dx.reshape(len(dx), *self.in_shape)), grads
