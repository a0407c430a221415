"""Fast paths for stacks of dense layers: the same arithmetic as the general layer-by-layer
code (nn/epoch.py's backprop_epoch), without its per-batch costs.

When it applies (`engine()` decides once per run, or per pretrained layer): every layer is
dense, the per-sample input is a vector (D,), the algorithm is backprop; any loss, batch
size and optimizer. Anything else (dropout, convolutions, sequences, the perceptron) takes the
general path.

Why: for small nets an epoch is thousands of tiny steps, and a step of the general path
spends most of its time in Python and NumPy call overhead: a cache tuple per layer, fresh
arrays for every activation, derivative and gradient, reshapes, four calls per array in the
optimizer. Here each batch size gets its buffers once, activations and their derivatives are
computed in place with `out=`, the output layer writes its pre-activations straight into the
epoch's zbuf (which the on-the-fly metrics read), cross-entropy's targets are one-hot rows
made once per epoch, and the parameters, gradients and optimizer slots live in flat vectors
(nn/optim.py's Flat), so one optimizer step is a few calls for the whole net. The operations
on each number and their order are exactly the general path's, so the weights are
bit-identical (tests/nn/test_fastpath.py); the optimizer is the run's own object, so its
state and checkpoints are unchanged. The statistics' probe pass runs in the same buffers.

For per-sample SGD (batch_size 1) on tiny float64 nets even that is mostly overhead (a dozen
NumPy calls per layer on arrays of a few numbers), and plain Python floats are faster:
nn/tinynet.py, chosen when `tiny_is_faster()` (a cost model measured on per-sample epochs of
2-H-1, D-H-1 and deep 4-unit nets: Python costs about 2 us per layer + 1.1 us per unit + 0.1 us
per weight and sample, the buffers about 15.5 us per layer; 2-4-1 runs 3x faster in Python,
2-32-1 1.4x slower). It agrees with the general path to rounding, not bit for bit (its dot
products sum in order, BLAS's do not; libm's tanh is not NumPy's): ~1e-13 relative after an
epoch or two.

MODE "off" forces the general path and "buffers" rules out the pure-Python engine (tests).
"""
from typing import Callable

import numpy as np

from .activations import ACTIVATIONS
from .layers import Layer
from .layers.dense import Dense
from .network import Weights
from .optim import Flat
from .tinynet import TinyNet

MODE = "auto"                      # "auto" | "buffers" | "off"


def engine(layers: list[Layer], loss: str, batch_size: int | None, optimizer,
           dtype) -> "DenseStack | None":
    """The fast engine for this net and training, or None for the general path."""
    if MODE == "off" or not all(type(l) is Dense and len(l.in_shape) == 1 for l in layers):
        return None
    tiny = (MODE == "auto" and batch_size == 1 and TinyNet.applies(layers, optimizer, dtype)
            and tiny_is_faster(layers))
    return DenseStack(layers, loss, TinyNet(layers, loss) if tiny else None)


def tiny_is_faster(layers: list[Dense]) -> bool:
    """Per-sample cost model (us per sample; see the module docstring)."""
    units = sum(l.units for l in layers)
    weights = sum(l.in_shape[0] * l.units for l in layers)
    return 2 * len(layers) + 1.1 * units + 0.1 * weights < 15.5 * len(layers)


def activate(name: str, z: np.ndarray, out: np.ndarray, col: np.ndarray) -> np.ndarray:
    """a = f(z) into out (which may be z itself), as nn/activations.py computes it; col:
    (N, 1) scratch for softmax. -> a (z itself for linear)."""
    if name == "relu":
        return np.maximum(z, 0.0, out=out)
    if name == "sigmoid":
        np.multiply(z, 0.5, out=out)                     # (1 + tanh(z/2)) / 2
        np.tanh(out, out=out)
        out += 1.0
        out *= 0.5
        return out
    if name == "tanh":
        return np.tanh(z, out=out)
    if name == "linear":
        return z
    np.maximum.reduce(z, axis=-1, keepdims=True, out=col)   # softmax, shifted by the max
    np.subtract(z, col, out=out)
    np.exp(out, out=out)
    np.add.reduce(out, axis=-1, keepdims=True, out=col)
    out /= col
    return out


def grad_z(name: str, da: np.ndarray, z: np.ndarray, a: np.ndarray, tmp: np.ndarray,
           mask: np.ndarray) -> np.ndarray:
    """dL/dz = f'(z) * da, overwriting da (the general path's operations, in place)."""
    if name == "relu":
        np.greater(z, 0, out=mask)                       # d relu = 1 where z > 0
        return np.multiply(da, mask, out=da)
    if name == "sigmoid":
        np.multiply(da, a, out=da)                       # da a (1 - a)
        np.subtract(1.0, a, out=tmp)
        return np.multiply(da, tmp, out=da)
    if name == "tanh":
        np.multiply(a, a, out=tmp)                       # da (1 - a^2)
        np.subtract(1.0, tmp, out=tmp)
        return np.multiply(da, tmp, out=da)
    if name == "linear":
        return da
    da[...] = ACTIVATIONS[name].backward(da, z, a)       # softmax without cross-entropy: rare
    return da


class _Buffers:
    """Everything one step at batch size n writes. Hidden layers compute a = f(z) in place
    (their backward needs only a; relu's z > 0 is a > 0); the output layer's z is the slice
    of zbuf the caller passes, and its a is separate (a non-fused loss needs both, and the
    statistics the output)."""

    def __init__(self, sizes: list[int], dtype, n: int) -> None:
        self.h = [np.empty((n, k), dtype) for k in sizes[1:]]        # a (= z) per layer
        self.dx = [np.empty((n, k), dtype) for k in sizes[1:-1]]     # dL/d(input of l + 1)
        self.d = np.empty((n, sizes[-1]), dtype)                     # the loss gradient
        self.tmp = [np.empty((n, k), dtype) for k in sizes[1:]]
        self.mask = [np.empty((n, k), bool) for k in sizes[1:]]
        self.col = np.empty((n, 1), dtype)
        self.z = np.empty((n, sizes[-1]), dtype)                     # the output z (probe)


class DenseStack:
    """One run's (or one pretrained layer's) engine: buffers per batch size, reused; its
    epochs run in tiny's plain Python floats when given."""

    def __init__(self, layers: list[Layer], loss: str, tiny: TinyNet | None = None) -> None:
        self.acts = [l.activation for l in layers]
        self.sizes = [layers[0].in_shape[0]] + [l.units for l in layers]
        self.loss = loss
        self.tiny = tiny
        self.buffers: dict[int, _Buffers] = {}
        self.flat: Flat | None = None              # parameters and gradients, laid flat

    def epoch(self, params: Weights, opt, xs: np.ndarray, ts: np.ndarray, batch_size: int | None,
              lr: float, zbuf: np.ndarray, poll: Callable[[], bool]) -> bool:
        """backprop_epoch's contract: steps over (xs, ts) in order, each batch's output z
        into zbuf (before its update). -> False when poll() asked to stop."""
        if self.tiny is not None:
            return self.tiny.epoch(params, opt, xs, ts, batch_size, lr, zbuf, poll)
        if self.flat is None:
            self.flat = Flat(params)
        self.flat.adopt(params)
        ts = self._targets(ts, xs.dtype)
        n = len(xs)
        batch = min(batch_size or n, n)
        for k, s in enumerate(range(0, n, batch)):
            self.gradients(params, xs[s:s + batch], ts[s:s + batch], zbuf[s:s + batch])
            opt.step_flat(self.flat, lr)
            if k & 15 == 15 and poll():
                return False
        return True

    def probe(self, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> tuple[list[np.ndarray], Weights]:
        """The statistics' probe pass (eval mode is train mode without dropout): every
        layer's output and the gradients of the mean loss. The arrays are the engine's
        buffers, valid until its next step."""
        buf = self._buffers(len(x), x.dtype)
        return self.gradients(params, x, self._targets(t, x.dtype), buf.z)

    def _targets(self, t: np.ndarray, dtype) -> np.ndarray:
        """Cross-entropy's class indices as one-hot rows, once per epoch: the gradient
        softmax - onehot is then one subtraction per batch (a - 0 is a: bit for bit)."""
        if self.loss != "cross_entropy":
            return t
        return np.eye(self.sizes[-1], dtype=dtype)[t]

    def _buffers(self, n: int, dtype) -> _Buffers:
        buf = self.buffers.get(n)
        if buf is None:
            buf = self.buffers[n] = _Buffers(self.sizes, dtype, n)
        return buf

    def gradients(self, params: Weights, x: np.ndarray, t: np.ndarray, z_out: np.ndarray
                  ) -> tuple[list[np.ndarray], Weights]:
        """Forward and backward of one batch x (n, D) with targets t; z_out (n, K) receives
        the output layer's z. -> (each layer's output, the gradients)."""
        buf = self._buffers(len(x), x.dtype)
        if self.flat is None:
            self.flat = Flat(params)
        last = len(params) - 1
        acts, h = self.acts, buf.h
        a = x
        for i, p in enumerate(params):                   # forward
            z = z_out if i == last else h[i]
            np.matmul(a, p["W"], out=z)
            z += p["b"]
            a = activate(acts[i], z, h[i], buf.col)
        outputs = h[:last] + [a]
        d = self._loss_grad(a, t, buf)                   # backward
        grads = self.flat.grads
        for i in range(last, -1, -1):
            if i < last or self.loss == "squared_error":
                d = grad_z(acts[i], d, z_out if i == last else h[i], h[i], buf.tmp[i],
                           buf.mask[i])
            x_in = h[i - 1] if i else x
            np.matmul(x_in.T, d, out=grads[i]["W"])      # dW = x^T dz, db = sum_n dz
            np.add.reduce(d, axis=0, out=grads[i]["b"])
            if i:
                d = np.matmul(d, params[i]["W"].T, out=buf.dx[i - 1])   # dx = dz W^T
        return outputs, grads

    def _loss_grad(self, a: np.ndarray, t: np.ndarray, buf: _Buffers) -> np.ndarray:
        """nn/losses.py's grads (squared error: dL/da; the fused cross-entropies: dL/dz):
        a - t, softmax - onehot (t: _targets()), sigmoid - t; over the batch's n."""
        d = np.subtract(a, t, out=buf.d)
        d *= 1.0 / len(a)
        return d
