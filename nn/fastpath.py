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
state and checkpoints are unchanged. Given an order (large data, nn/train.py), each batch
takes its shuffled rows into a buffer (np.take). The statistics' probe pass has buffers of
its own (_Probe: transposed, biases folded into the products), and the parameters and
gradients it summarises are read straight from the flat vectors.

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
from itertools import accumulate
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
        self.z = np.empty((n, sizes[-1]), dtype)                     # the output z
        self.x = np.empty((n, sizes[0]), dtype)                      # the batch's rows


class _Probe:
    """The statistics' probe pass over the fixed probe rows x, in buffers of its own, with
    fewer and cheaper calls than a training step (which must stay bit-identical to the
    general path; the probe only agrees with it to rounding, as the statistics need).
    It works on transposes, one column per sample: each layer's input a^T (k, n) sits on
    top of a row of ones, and the Flat lays each layer's W and b end to end, i.e. as the
    matrix [W; b] (k + 1, H), so z^T = [W; b]^T [a^T; 1] is one product and so is
    [dW; db] = [a^T; 1] dz, written straight into the gradient vector; every array an
    element-wise operation touches is contiguous. All the layers' a^T lie end to end in
    `acts` (each followed by its row of ones); `bounds` says where."""

    def __init__(self, stack: "DenseStack", flat: Flat, x: np.ndarray, t: np.ndarray
                 ) -> None:
        n, sizes, dtype = len(x), stack.sizes, x.dtype
        self.x, self.t = x, t
        self.tT = np.ascontiguousarray(stack._targets(t, dtype).T)   # (K, n) as a^T
        heights = [k + 1 for k in sizes[1:]]
        self.acts = np.empty(n * sum(heights), dtype)
        ends = [n * h for h in accumulate(heights)]
        self.bounds = [(e - n * h, e - n) for e, h in zip(ends, heights)]
        self.h = [self.acts[e - n * h:e].reshape(h, n) for e, h in zip(ends, heights)]
        self.xa = np.empty((sizes[0] + 1, n), dtype)
        self.xa[:-1] = x.T
        for h in [self.xa, *self.h]:
            h[-1] = 1.0
        self.a = [h[:-1] for h in self.h]                   # the outputs a^T, contiguous
        self.z = [np.empty((k, n), dtype) for k in sizes[1:]]
        self.dx = [np.empty((k, n), dtype) for k in sizes[1:-1]]
        self.d = np.empty((sizes[-1], n), dtype)
        self.tmp = [np.empty((k, n), dtype) for k in sizes[1:]]
        self.mask = [np.empty((k, n), bool) for k in sizes[1:]]
        self.row = np.empty((1, n), dtype)
        where = {(i, key): sl for i, key, _, sl in flat.entries}
        spans = [slice(where[i, "W"].start, where[i, "b"].stop) for i in range(flat.layers)]
        self.wb = [flat.w[sl].reshape(d + 1, k) for sl, d, k in zip(spans, sizes, sizes[1:])]
        self.gwb = [flat.g[sl].reshape(d + 1, k) for sl, d, k in zip(spans, sizes, sizes[1:])]

    @staticmethod
    def fits(flat: Flat) -> bool:
        """Whether each layer's W and b lie end to end in the Flat, W first."""
        if flat.fits_probe is None:
            e = flat.entries
            flat.fits_probe = [(i, key) for i, key, _, _ in e] == [
                (i, key) for i in range(flat.layers) for key in ("W", "b")] \
                and all(w[3].stop == b[3].start for w, b in zip(e[::2], e[1::2]))
        return flat.fits_probe

    def run(self, acts: list[str], loss: str) -> list[np.ndarray]:
        """Forward and backward of the mean loss over the probe rows: the gradients land
        in the Flat's g. -> every layer's output a^T."""
        last = len(acts) - 1
        inputs = [self.xa, *self.h[:-1]]
        for i in range(last + 1):                                 # forward
            z, a = self.z[i], self.a[i]
            np.dot(self.wb[i].T, inputs[i], out=z)                # z^T = [W; b]^T [x^T; 1]
            if acts[i] == "softmax":                              # over the class axis, 0
                np.maximum.reduce(z, axis=0, keepdims=True, out=self.row)
                np.subtract(z, self.row, out=a)
                np.exp(a, out=a)
                a /= np.add.reduce(a, axis=0, keepdims=True, out=self.row)
            elif acts[i] == "linear":
                np.copyto(a, z)
            else:
                activate(acts[i], z, a, self.row)
        d = np.subtract(self.a[last], self.tT, out=self.d)        # backward, as
        d *= 1.0 / d.shape[1]                                     # DenseStack._loss_grad
        for i in range(last, -1, -1):
            if i < last or loss == "squared_error":
                if acts[i] == "softmax":                          # (rare: softmax + squared
                    d = d.T                                       # error) per sample rows
                    d[...] = ACTIVATIONS["softmax"].backward(d, self.z[i].T, self.a[i].T)
                    d = d.T
                else:
                    d = grad_z(acts[i], d, self.z[i], self.a[i], self.tmp[i], self.mask[i])
            np.dot(inputs[i], d.T, out=self.gwb[i])               # [dW; db] = [x^T; 1] dz
            if i:
                d = np.dot(self.wb[i][:-1], d, out=self.dx[i - 1])   # dx^T = W dz^T
        return self.a


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
        self.probe_pass: _Probe | None = None

    def epoch(self, params: Weights, opt, xs: np.ndarray, ts: np.ndarray, batch_size: int | None,
              lr: float, zbuf: np.ndarray, poll: Callable[[], bool],
              order: np.ndarray | None = None) -> bool:
        """backprop_epoch's contract: steps over (xs, ts) in order (xs[order] with order:
        each batch's rows are taken into a buffer), each batch's output z into zbuf
        (before its update). -> False when poll() asked to stop."""
        if self.flat is None:
            self.flat = Flat(params)
        self.flat.adopt(params)                  # (tiny writes its floats back into them)
        if self.tiny is not None:
            xs = xs if order is None else xs[order]
            return self.tiny.epoch(params, opt, xs, ts, batch_size, lr, zbuf, poll)
        ts = self._targets(ts, xs.dtype)
        n = len(ts)
        batch = min(batch_size or n, n)
        for k, s in enumerate(range(0, n, batch)):
            if order is None:
                x = xs[s:s + batch]
            else:
                rows = order[s:s + batch]
                x = np.take(xs, rows, axis=0, out=self._buffers(len(rows), xs.dtype).x,
                            mode="clip")         # (valid indices; "clip" needs no copy)
            self.gradients(params, x, ts[s:s + batch], zbuf[s:s + batch])
            opt.step_flat(self.flat, lr)
            if k & 15 == 15 and poll():
                return False
        return True

    def probe(self, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> tuple[list[np.ndarray], Weights, tuple | None]:
        """The statistics' probe pass (eval mode is train mode without dropout): every
        layer's output, the gradients of the mean loss (views of self.flat.g), and
        (vector, [(start, end) of each layer's outputs in it]) or None. The arrays are the
        engine's buffers, valid until its next step; the outputs may be transposed. x and t
        are the same rows every epoch."""
        flat = self.flat
        if flat is not None and flat.holds(params) and _Probe.fits(flat):
            probe = self.probe_pass
            if probe is None or probe.x is not x or probe.t is not t:
                probe = self.probe_pass = _Probe(self, flat, x, t)
            return probe.run(self.acts, self.loss), flat.grads, (probe.acts, probe.bounds)
        outputs, grads = self.gradients(params, x, self._targets(t, x.dtype),
                                        self._buffers(len(x), x.dtype).z)
        return outputs, grads, None

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
