"""Fast paths for stacks of dense layers: the general layer-by-layer code's arithmetic
(nn/epoch.py's backprop_epoch), to rounding, without its per-batch costs.

When it applies (`engine()` decides once per run, or per pretrained layer): every layer is
dense, the per-sample input is a vector (D,), the algorithm is backprop; any loss, batch
size and optimizer. Anything else (dropout, convolutions, sequences, the perceptron) takes the
general path.

Why: for small nets an epoch is thousands of tiny steps, and a step of the general path
spends most of its time in Python and NumPy call overhead: a cache tuple per layer, fresh
arrays for every activation, derivative and gradient, reshapes, four calls per array in the
optimizer. Here each batch size gets its buffers once (_Pass), activations and their
derivatives are computed in place with `out=`, cross-entropy's targets are one-hot columns
made once per epoch, and the parameters, gradients and optimizer slots live in flat vectors
(nn/optim.py's Flat), so one optimizer step is a few calls for the whole net. A step works on
transposes with the biases folded into the products (_Pass's docstring): no bias additions
and no bias-gradient reductions, which were a tenth of a digits-mlp step (issue #6). So it
agrees with the general path to rounding, not bit for bit (b is added inside the product's
sum, db summed in BLAS's order): ~1e-14 relative after an epoch (tests/nn/test_fastpath.py);
where training is unstable such last-bit differences grow, as between two BLAS builds. Runs
stay deterministic, and a resumed run is bit-identical to one that never stopped; the
optimizer is the run's own object, so its state and checkpoints are unchanged. The engine
takes each epoch's rows itself, in the epoch's order (np.take), beside a column of ones: in
one copy, or batch by batch for large data (nn/epoch.py's copied()). The statistics'
probe pass is the same pass over the probe rows, in the buffers of a batch of their number
(warm from training when that is the batch size), and the parameters and gradients it
summarises are read straight from the flat vectors.

For per-sample SGD (batch_size 1) on tiny float64 nets even that is mostly overhead (a dozen
NumPy calls per layer on arrays of a few numbers), and plain Python floats are faster:
nn/tinynet.py, chosen when `tiny_is_faster()` (a cost model fitted to per-sample epochs of
2-H-1 and deeper nets of 3 to 17 units a layer, float64, on a 2-core AMD EPYC: Python costs
about 1.1 us per layer + 0.6 us per unit + 0.09 us per weight and sample, the buffers about
5.5 us per layer + 5.5; 2-4-1 runs 2.4x faster in Python, 2-16-1 the same, 2-8-8-8-1 1.2x
slower, a 9-layer net of 3 units 1.7x faster). It agrees with the general path to rounding
too (its dot products sum in order, BLAS's do not; libm's tanh is not NumPy's): ~1e-13
relative after an epoch or two.

Which engine trains is the plan's training.engine ("reference": never this one).
"""
from itertools import accumulate
from typing import Callable

import numpy as np

from .activations import ACTIVATIONS
from .epoch import copied
from .layers import Layer
from .layers.dense import Dense
from .network import Weights
from .optim import Flat
from .tinynet import TinyNet



def engine(training: dict, layers: list[Layer], loss: str, optimizer, dtype
           ) -> "DenseStack | None":
    """The fast engine training.engine asks for on this net, or None for the reference."""
    if not applies(training, layers):
        return None
    tiny = uses_tiny(layers, training["batch_size"], optimizer, dtype)
    return DenseStack(layers, loss, TinyNet(layers, loss) if tiny else None)


def applies(training: dict, layers: list[Layer]) -> bool:
    """Backprop through dense layers on (D,) inputs, unless the plan asks for the
    reference."""
    return (training["engine"] == "auto" and training["algorithm"] == "backprop"
            and all(type(l) is Dense and len(l.in_shape) == 1 for l in layers))


def uses_tiny(layers: list[Dense], batch_size: int | None, optimizer, dtype) -> bool:
    """Whether the engine trains in plain Python floats (tiny_is_faster)."""
    return batch_size == 1 and TinyNet.applies(layers, optimizer, dtype) \
        and tiny_is_faster(layers)


def step_us(layers: list[Dense]) -> tuple[float, float]:
    """Per-sample cost model (us per sample; see the module docstring): (plain Python
    floats, the buffers)."""
    units = sum(l.units for l in layers)
    weights = sum(l.in_shape[0] * l.units for l in layers)
    return 1.1 * len(layers) + 0.6 * units + 0.09 * weights, 5.5 * (len(layers) + 1)


def tiny_is_faster(layers: list[Dense]) -> bool:
    tiny, buffers = step_us(layers)
    return tiny < buffers


def activate(name: str, z: np.ndarray, out: np.ndarray, row: np.ndarray) -> np.ndarray:
    """a^T = f(z^T) into out, as nn/activations.py computes it, for transposes z^T (units,
    n): softmax over the class axis 0; row: (1, n) scratch for it. -> out"""
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
        np.copyto(out, z)
        return out
    np.maximum.reduce(z, axis=0, keepdims=True, out=row)    # softmax, shifted by the max
    np.subtract(z, row, out=out)
    np.exp(out, out=out)
    out /= np.add.reduce(out, axis=0, keepdims=True, out=row)
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


def _beside_ones(n: int, d: int, dtype) -> np.ndarray:
    """Room for n rows of d inputs beside a column of ones, (n, d + 1): the rows go to
    [:, :-1]; [x, 1] [W; b] is x W + b."""
    return np.ones((n, d + 1), dtype)


class _Pass:
    """Forward and backward over n samples (a training batch, or the statistics' probe rows)
    in buffers of their own. It works on transposes, one column per sample: each layer's
    input a^T (k, n) sits on top of a row of ones, and the Flat lays each layer's W and b end
    to end, i.e. as the matrix [W; b] (k + 1, H), so z^T = [W; b]^T [a^T; 1] is one product
    and so is [dW; db] = [a^T; 1] dz, written straight into the gradient vector: no bias
    additions, no bias-gradient reductions, and every array an element-wise operation
    touches is contiguous (softmax reduces over the class axis 0, across the samples at
    once). The input rows come as xa (n, D + 1), last column ones: the epoch's copy, the
    probe rows, or x, into which a batch of large data takes its rows. All the layers' a^T
    lie end to end in `acts` (each followed by its row of ones); `bounds` says where."""

    def __init__(self, sizes: list[int], flat: Flat, n: int, dtype) -> None:
        heights = [k + 1 for k in sizes[1:]]
        self.acts = np.empty(n * sum(heights), dtype)
        ends = [n * h for h in accumulate(heights)]
        self.bounds = [(e - n * h, e - n) for e, h in zip(ends, heights)]
        self.h = [self.acts[e - n * h:e].reshape(h, n) for e, h in zip(ends, heights)]
        self.x = _beside_ones(n, sizes[0], dtype)
        for h in self.h:
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

    def run(self, acts: list[str], loss: str, xa: np.ndarray, tT: np.ndarray
            ) -> list[np.ndarray]:
        """Forward and backward of the mean loss over rows xa (n, D + 1; last column ones)
        with targets tT (K, n: DenseStack._targets_T's columns): the gradients land in the
        Flat's g, the output z^T in self.z[-1]. -> every layer's output a^T."""
        last = len(acts) - 1
        inputs = [xa.T, *self.h[:-1]]
        for i in range(last + 1):                                 # forward
            np.matmul(self.wb[i].T, inputs[i], out=self.z[i])     # z^T = [W; b]^T [x^T; 1]
            activate(acts[i], self.z[i], self.a[i], self.row)
        d = np.subtract(self.a[last], tT, out=self.d)             # backward: nn/losses.py's
        d *= 1.0 / d.shape[1]                                     # grads over the batch's n
        for i in range(last, -1, -1):
            if i < last or loss == "squared_error":
                if acts[i] == "softmax":                          # (rare: softmax + squared
                    d = d.T                                       # error) per sample rows
                    d[...] = ACTIVATIONS["softmax"].backward(d, self.z[i].T, self.a[i].T)
                    d = d.T
                else:
                    d = grad_z(acts[i], d, self.z[i], self.a[i], self.tmp[i], self.mask[i])
            np.matmul(inputs[i], d.T, out=self.gwb[i])            # [dW; db] = [x^T; 1] dz
            if i:
                d = np.matmul(self.wb[i][:-1], d, out=self.dx[i - 1])   # dx^T = W dz^T
        return self.a


class DenseStack:
    """One run's (or one pretrained layer's) engine: a _Pass per batch size, reused (the
    statistics' probe too); its epochs run in tiny's plain Python floats when given."""

    def __init__(self, layers: list[Layer], loss: str, tiny: TinyNet | None = None) -> None:
        self.acts = [l.activation for l in layers]
        self.sizes = [layers[0].in_shape[0]] + [l.units for l in layers]
        self.loss = loss
        self.tiny = tiny
        self.passes: dict[int, _Pass] = {}
        self.rows: np.ndarray | None = None        # an epoch's rows with a column of ones
        self.flat: Flat | None = None              # parameters and gradients, laid flat
        self.probe_rows: tuple | None = None       # (x, t, x with ones, targets as columns)

    def _adopt(self, params: Weights) -> Flat:
        """The Flat, each layer's W and b end to end (as _Pass needs), holding params."""
        if self.flat is None:
            self.flat = Flat([{"W": p["W"], "b": p["b"]} for p in params])
        self.flat.adopt(params)
        return self.flat

    def _pass(self, n: int, dtype) -> _Pass:
        p = self.passes.get(n)
        if p is None:
            p = self.passes[n] = _Pass(self.sizes, self.flat, n, dtype)
        return p

    def epoch(self, params: Weights, opt, xs: np.ndarray, ts: np.ndarray, batch_size: int | None,
              lr: float, zbuf: np.ndarray, poll: Callable[[], bool],
              order: np.ndarray | None = None) -> bool:
        """backprop_epoch's contract: steps over (xs, ts) in order (xs[order] with order),
        each batch's output z into zbuf (before its update). The rows are taken into the
        engine's buffers: small data in one copy per epoch, large batch by batch
        (nn/epoch.py's copied()). -> False when poll() asked to stop."""
        flat = self._adopt(params)               # (tiny writes its floats back into them)
        if self.tiny is not None:
            xs = xs if order is None else xs[order]
            return self.tiny.epoch(params, opt, xs, ts, batch_size, lr, zbuf, poll)
        tT = self._targets_T(ts, xs.dtype)
        n = len(ts)
        batch = min(batch_size or n, n)
        small = copied(xs)
        if small:                                # this epoch's rows in its order, beside
            if self.rows is None or len(self.rows) != n:     # a column of ones: one copy
                self.rows = _beside_ones(n, self.sizes[0], xs.dtype)
            if order is None:
                np.copyto(self.rows[:, :-1], xs)
            else:
                np.take(xs, order, axis=0, out=self.rows[:, :-1], mode="clip")
        for k, s in enumerate(range(0, n, batch)):
            p = self._pass(min(batch, n - s), xs.dtype)
            if small:
                xa = self.rows[s:s + batch]
            else:                                # large data: each batch takes its rows
                xa = p.x
                if order is None:
                    np.copyto(xa[:, :-1], xs[s:s + batch])
                else:                            # (valid indices; "clip" needs no copy)
                    np.take(xs, order[s:s + batch], axis=0, out=xa[:, :-1], mode="clip")
            p.run(self.acts, self.loss, xa, tT[:, s:s + batch])
            np.copyto(zbuf[s:s + batch], p.z[-1].T)
            opt.step_flat(flat, lr)
            if k & 15 == 15 and poll():
                return False
        return True

    def probe(self, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> tuple[list[np.ndarray], Weights, tuple]:
        """The statistics' probe pass (eval mode is train mode without dropout): every
        layer's output a^T, the gradients of the mean loss (views of self.flat.g), and
        (vector, [(start, end) of each layer's outputs in it]). The arrays are the
        engine's buffers, valid until its next step. x and t are the same rows every
        epoch."""
        flat = self._adopt(params)
        if self.probe_rows is None or self.probe_rows[0] is not x \
                or self.probe_rows[1] is not t:
            xa = _beside_ones(len(x), self.sizes[0], x.dtype)
            xa[:, :-1] = x
            self.probe_rows = (x, t, xa, self._targets_T(t, x.dtype))
        _, _, xa, tT = self.probe_rows
        p = self._pass(len(x), x.dtype)          # a batch's buffers, warm from training
        return p.run(self.acts, self.loss, xa, tT), flat.grads, (p.acts, p.bounds)

    def _targets_T(self, t: np.ndarray, dtype) -> np.ndarray:
        """The targets as columns (K, N), once per epoch; cross-entropy's class indices as
        one-hot columns: the gradient softmax - onehot is then one subtraction per batch
        (a - 0 is a: bit for bit)."""
        if self.loss == "cross_entropy":
            return np.eye(self.sizes[-1], dtype=dtype)[:, t]
        return np.ascontiguousarray(t.T)
