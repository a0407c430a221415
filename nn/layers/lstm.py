"""Long short-term memory, unrolled in time (gates i, f, g, o, as in Hochreiter & Schmidhuber
with the forget gate of Gers et al.):

    [a_i, a_f, a_g, a_o] = x_t Wx + h_{t-1} Wh + b
    i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
    c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t),   h_0 = c_0 = 0

params: {"Wx": (D, 4H), "Wh": (H, 4H), "b": (4H,)}, the columns in gate order i, f, g, o
(b's forget-gate block starts at 1, as is customary, so the cell remembers from the start).
x: (N, T, D) -> (N, T, H) with return_sequences, else h_T (N, H).
"""
from typing import NamedTuple

import numpy as np

from ..activations import sigmoid
from .base import Cost, Params, Shape
from .rnn import Recurrent


class LSTMCache(NamedTuple):
    x: np.ndarray                # (N, T, D)
    Wx: np.ndarray
    Wh: np.ndarray
    gates: np.ndarray            # (N, T, 4H): i, f, g, o after their activations
    cs: np.ndarray               # (N, T, H) cells c_1..c_T
    tcs: np.ndarray              # (N, T, H) tanh(c_t)
    hs: np.ndarray               # (N, T, H) states h_1..h_T
    return_sequences: bool


def forward(x: np.ndarray, params: Params, return_sequences: bool = False
            ) -> tuple[np.ndarray, LSTMCache]:
    """x: (N, T, D) -> (N, T, H) or (N, H)."""
    Wh = params["Wh"]
    H = Wh.shape[0]
    gates = x @ params["Wx"] + params["b"]          # the input part of every step at once
    n, T, _ = gates.shape
    cs, tcs, hs = (np.empty((n, T, H), dtype=gates.dtype) for _ in range(3))
    h = c = np.zeros((n, H), dtype=gates.dtype)
    for t in range(T):
        a = gates[:, t]
        a += h @ Wh
        a[:, :2 * H] = sigmoid(a[:, :2 * H])        # i, f
        a[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
        a[:, 3 * H:] = sigmoid(a[:, 3 * H:])        # o
        i, fg, g, o = np.split(a, 4, axis=1)
        c = cs[:, t] = fg * c + i * g
        tc = tcs[:, t] = np.tanh(c)
        h = hs[:, t] = o * tc
    out = hs if return_sequences else hs[:, -1]
    return out, LSTMCache(x, params["Wx"], Wh, gates, cs, tcs, hs, return_sequences)


def bptt(dout: np.ndarray, cache: LSTMCache, need_dx: bool = True
         ) -> tuple[np.ndarray | None, Params, np.ndarray]:
    """-> dx (N, T, D), grads, and ||dL/dh_t|| for t = 1..T (over the batch and units)."""
    x, Wx, Wh, gates, cs, tcs, hs, seq = cache
    n, T, H = hs.shape
    dhs = dout if seq else np.zeros_like(hs)
    if not seq:
        dhs[:, -1] = dout
    da = np.empty_like(gates)
    norms = np.empty(T)
    dh_next = np.zeros_like(hs[:, 0])
    dc_next = np.zeros_like(hs[:, 0])
    zero = np.zeros_like(hs[:, 0])
    for t in range(T - 1, -1, -1):
        i, fg, g, o = np.split(gates[:, t], 4, axis=1)
        c_prev = cs[:, t - 1] if t else zero
        tc = tcs[:, t]
        dh = dhs[:, t] + dh_next                       # the output at t, and step t + 1
        norms[t] = np.sqrt(np.vdot(dh, dh))
        dc = dc_next + dh * o * (1.0 - tc * tc)        # h = o tanh(c); d tanh = 1 - tanh^2
        d = da[:, t]
        d[:, :H] = dc * g * i * (1.0 - i)              # c = f c_prev + i g; d sigmoid = s(1-s)
        d[:, H:2 * H] = dc * c_prev * fg * (1.0 - fg)
        d[:, 2 * H:3 * H] = dc * i * (1.0 - g * g)
        d[:, 3 * H:] = dh * tc * o * (1.0 - o)
        dc_next = dc * fg
        dh_next = d @ Wh.T
    h_prev = np.concatenate([np.zeros_like(hs[:, :1]), hs[:, :-1]], axis=1)
    da2 = da.reshape(n * T, -1)
    grads = {"Wx": x.reshape(n * T, -1).T @ da2, "Wh": h_prev.reshape(n * T, H).T @ da2,
             "b": da2.sum(axis=0)}
    return (da @ Wx.T if need_dx else None), grads, norms


def backward(dout: np.ndarray, cache: LSTMCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, Params]:
    dx, grads, _ = bptt(dout, cache, need_dx)
    return dx, grads


class LSTM(Recurrent):
    kind = "lstm"
    DEFAULTS = {"return_sequences": False, "init": {"type": "glorot"}}
    GATES = 4

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "LSTM":
        return cls._parse(spec, in_shape, path, {})

    @property
    def stat_activation(self) -> str:
        return "tanh"                               # h = o tanh(c) lies in (-1, 1)

    def init(self, rng, dtype):
        params = super().init(rng, dtype)
        h = self.spec["units"]
        params["b"][h:2 * h] = 1.0                  # the forget gate starts open
        return params

    def cost(self) -> Cost:
        """gates (4 T H), cs, tcs, hs kept; backward dout, dhs, da (4 T H), h_prev, dx
        (T D) and the arrays of one step; some 60 calls a step, forward and backward (the
        gates' slices and splits). Eval: the input, x Wx and x Wx + b for every step's
        gates at once (4 T H each), and cs, tcs and hs."""
        (T, d), h = self.in_shape, self.spec["units"]
        return Cost(self.macs(), 7 * T * h, 7 * T * h + T * d + 15 * h, 32 + 60 * T,
                    T * d + 11 * T * h)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params, self.spec["return_sequences"])

    def _bptt(self, dout, cache, need_dx):
        return bptt(dout, cache, need_dx)
