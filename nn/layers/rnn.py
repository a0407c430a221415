"""The Elman recurrent layer, unrolled in time:

    h_t = f(x_t Wx + h_{t-1} Wh + b),  h_0 = 0,  f = tanh (default), sigmoid, relu or linear

params: {"Wx": (D, H), "Wh": (H, H), "b": (H,)}. x: (N, T, D) -> every state (N, T, H) with
return_sequences, else the last one h_T (N, H). Backpropagation through time walks t = T..1:
dL/dh_t is the gradient from the output at t plus the one flowing back from h_{t+1}; its norm
per time step is what the statistics report as grad_norm_by_time (the vanishing gradient).
"""
from typing import NamedTuple

import numpy as np

from .. import fields as f
from ..activations import ACTIVATIONS
from .base import (Cost, Layer, Params, Shape, activation, bias, init_spec, matrix,
                   sequence_shape, units)

ACTIVATIONS_RNN = ("tanh", "sigmoid", "relu", "linear")


class RNNCache(NamedTuple):
    x: np.ndarray                # (N, T, D)
    Wx: np.ndarray
    Wh: np.ndarray
    zs: np.ndarray               # (N, T, H) pre-activations
    hs: np.ndarray               # (N, T, H) states h_1..h_T
    activation: str
    return_sequences: bool


def forward(x: np.ndarray, params: Params, activation: str = "tanh",
            return_sequences: bool = False) -> tuple[np.ndarray, RNNCache]:
    """x: (N, T, D) -> (N, T, H) or (N, H)."""
    Wh = params["Wh"]
    act = ACTIVATIONS[activation].forward
    zs = x @ params["Wx"] + params["b"]            # the input part of every z_t at once
    hs = np.empty_like(zs)
    h = np.zeros_like(zs[:, 0])
    for t in range(x.shape[1]):
        zs[:, t] += h @ Wh
        h = hs[:, t] = act(zs[:, t])
    out = hs if return_sequences else hs[:, -1]
    return out, RNNCache(x, params["Wx"], Wh, zs, hs, activation, return_sequences)


def bptt(dout: np.ndarray, cache: RNNCache, need_dx: bool = True
         ) -> tuple[np.ndarray | None, Params, np.ndarray]:
    """-> dx (N, T, D), grads, and ||dL/dh_t|| for t = 1..T (over the batch and units)."""
    x, Wx, Wh, zs, hs, act, seq = cache
    n, T, H = hs.shape
    dhs = dout if seq else np.zeros_like(hs)
    if not seq:
        dhs[:, -1] = dout
    backward_act = ACTIVATIONS[act].backward
    dzs = np.empty_like(zs)
    norms = np.empty(T)
    dh_next = np.zeros_like(hs[:, 0])
    for t in range(T - 1, -1, -1):
        dh = dhs[:, t] + dh_next                   # dL/dh_t: the output at t, and h_{t+1}
        norms[t] = np.sqrt(np.vdot(dh, dh))
        dzs[:, t] = backward_act(dh, zs[:, t], hs[:, t])
        dh_next = dzs[:, t] @ Wh.T                 # z_{t+1} = ... + h_t Wh
    h_prev = np.concatenate([np.zeros_like(hs[:, :1]), hs[:, :-1]], axis=1)
    dz2 = dzs.reshape(-1, H)
    grads = {"Wx": x.reshape(n * T, -1).T @ dz2, "Wh": h_prev.reshape(-1, H).T @ dz2,
             "b": dz2.sum(axis=0)}
    return (dzs @ Wx.T if need_dx else None), grads, norms


def backward(dout: np.ndarray, cache: RNNCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, Params]:
    dx, grads, _ = bptt(dout, cache, need_dx)
    return dx, grads


class Recurrent(Layer):
    """What rnn and lstm share: (T, D) -> (T, H) or (H,); statistics with grad_norm_by_time."""
    REQUIRED = ("units",)
    weight_keys = ("Wx", "Wh")
    GATES = 1

    @classmethod
    def _parse(cls, spec: dict, in_shape: Shape, path: str, extra: dict) -> "Recurrent":
        T, _ = sequence_shape(in_shape, cls.kind, path)
        n = units(spec, path)
        seq = f.boolean(spec, "return_sequences", path, cls.DEFAULTS["return_sequences"])
        init = init_spec(spec, path, cls.DEFAULTS["init"])
        normal = {"type": cls.kind, "units": n, **extra, "return_sequences": seq, "init": init}
        return cls(normal, in_shape, (T, n) if seq else (n,))

    def param_shapes(self) -> dict[str, Shape]:
        d, h = self.in_shape[-1], self.spec["units"]
        return {"Wx": (d, self.GATES * h), "Wh": (h, self.GATES * h), "b": (self.GATES * h,)}

    def init(self, rng: np.random.Generator, dtype) -> Params:
        shapes = self.param_shapes()
        init = self.spec["init"]
        return {"Wx": matrix(shapes["Wx"], init, rng, dtype),
                "Wh": matrix(shapes["Wh"], init, rng, dtype),
                "b": bias(shapes["b"][0], init, rng, dtype)}

    def macs(self) -> int:
        """x_t Wx + h_{t-1} Wh at each of the T steps."""
        (T, d), h = self.in_shape, self.spec["units"]
        return T * (d + h) * self.GATES * h

    def _bptt(self, dout, cache, need_dx: bool) -> tuple[np.ndarray | None, Params, np.ndarray]:
        """-> dx, grads, ||dL/dh_t|| per step: the module's bptt()."""
        raise NotImplementedError

    def backward_traced(self, dout, cache, need_dx=True):
        dx, grads, norms = self._bptt(dout, cache, need_dx)
        return dx, grads, {"grad_norm_by_time": [float(v) for v in norms]}

    def backward(self, dout, cache, need_dx=True):
        dx, grads, _ = self._bptt(dout, cache, need_dx)
        return dx, grads

    def act_values(self, out, cache):
        return cache.hs


class RNN(Recurrent):
    kind = "rnn"
    DEFAULTS = {"activation": "tanh", "return_sequences": False, "init": {"type": "glorot"}}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "RNN":
        act = activation(spec, path, cls.DEFAULTS["activation"], ACTIVATIONS_RNN)
        return cls._parse(spec, in_shape, path, {"activation": act})

    def cost(self) -> Cost:
        """zs and hs kept; backward dout, dhs, dzs, h_prev (T H each), dx (T D) and a few
        arrays of one step; some 11 calls a step, forward and backward. Eval: the input,
        and x Wx and x Wx + b for every step at once and hs, rounded up to 5 T H."""
        (T, d), h = self.in_shape, self.spec["units"]
        return Cost(self.macs(), 2 * T * h, 4 * T * h + T * d + 6 * h, 24 + 11 * T,
                    T * d + 5 * T * h)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params, self.activation, self.spec["return_sequences"])

    def _bptt(self, dout, cache, need_dx):
        return bptt(dout, cache, need_dx)
