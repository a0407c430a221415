"""The fast engine for stacks of dense layers on (D,) inputs: the reference's arithmetic, to
rounding, without its per-batch costs. Two ways through one engine, chosen once per run:

- the compiled kernel (nn/engines/kernel.py) for plain SGD (weight decay allowed) where a
  step is too small for BLAS to pay off: per-sample SGD, and small nets in any batch;
- otherwise buffers per batch size (_Pass), activations in place (nn/activations.py's
  *_into forms), parameters, gradients and optimizer slots in flat vectors (nn/optim.py's
  Flat), biases folded into the products: a step is a few NumPy calls for the whole net.

Both agree with the reference to rounding, not bit for bit (sums in another order, b added
inside the product); runs stay deterministic and resume bit-identically (tests/nn/engines/).
"""
from itertools import accumulate
from collections.abc import Callable

import numpy as np

from ..activations import ACTIVATIONS
from ..layers import Layer
from ..layers.dense import Dense
from ..network import Weights
from ..optim import SGD, Flat, Optimizer
from ..stats import LayerStats
from . import copied

KERNEL_WEIGHTS = 4096     # batches of at most this many weights x rows: the kernel
KERNEL_ROWS = 2048        # rows per kernel call (a poll between calls)


def engine(training: dict, layers: list[Layer], loss: str, optimizer: Optimizer, dtype
           ) -> "DenseStack":
    """The dense engine for this net and training (applies() must hold)."""
    return DenseStack(layers, loss, uses_kernel(layers, training["batch_size"], optimizer))


def applies(training: dict, layers: list[Layer]) -> bool:
    """Backprop through dense layers on (D,) inputs, unless the plan asks for the
    reference."""
    return (training["engine"] == "auto" and training["algorithm"] == "backprop"
            and all(type(l) is Dense and len(l.in_shape) == 1 for l in layers))


def uses_kernel(layers: list[Dense], batch_size: int | None, optimizer: Optimizer) -> bool:
    """Plain SGD (the kernel's update), per sample or in batches too small for BLAS and
    NumPy's calls to pay off (measured crossover: bench/README.md)."""
    plain = type(optimizer) is SGD and not optimizer.spec["momentum"]
    weights = sum(l.in_shape[0] * l.units for l in layers)
    return plain and (batch_size == 1 or (batch_size or 1 << 62) * weights <= KERNEL_WEIGHTS)


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
            ACTIVATIONS[acts[i]].forward_into(self.z[i], self.a[i], self.tmp[i],
                                              self.mask[i], 0)
        d = np.subtract(self.a[last], tT, out=self.d)             # backward: nn/losses.py's
        d *= 1.0 / d.shape[1]                                     # grads over the batch's n
        for i in range(last, -1, -1):
            if i < last or loss == "squared_error":
                d = ACTIVATIONS[acts[i]].grad_into(d, self.z[i], self.a[i], self.tmp[i],
                                                   self.mask[i], 0)
            np.matmul(inputs[i], d.T, out=self.gwb[i])            # [dW; db] = [x^T; 1] dz
            if i:
                d = np.matmul(self.wb[i][:-1], d, out=self.dx[i - 1])   # dx^T = W dz^T
        return self.a


class DenseStack:
    """One run's (or one pretrained layer's) engine: the compiled kernel, or a _Pass per
    batch size, reused (the statistics' probe too)."""

    def __init__(self, layers: list[Layer], loss: str, compiled: bool = False) -> None:
        self.acts = [l.activation for l in layers]
        self.sizes = [layers[0].in_shape[0]] + [l.units for l in layers]
        self.loss = loss
        self.kernel = _Kernel(self) if compiled else None
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

    def epoch(self, params: Weights, opt: Optimizer, xs: np.ndarray, ts: np.ndarray,
              order: np.ndarray | None, batch_size: int | None, lr: float, zbuf: np.ndarray,
              rng: np.random.Generator, poll: Callable[[], bool]) -> bool:
        """The reference's contract (nn/engines/reference.py). The rows are taken into the
        engine's buffers beside a column of ones: small data in one copy per epoch, large
        batch by batch (copied())."""
        flat = self._adopt(params)
        if self.kernel is not None:
            return self.kernel.epoch(flat, opt, xs, ts, order, batch_size, lr, zbuf, poll)
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

    def finite(self, params: Weights) -> bool:
        """Whether params (which an epoch has left as views of the Flat) are all finite: one
        call over the Flat's vector."""
        return bool(np.isfinite(self._adopt(params).w).all())

    def stats(self, reporter: LayerStats, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> list[dict]:
        """The statistics rows of the probe rows (x, t), from this engine's own pass."""
        if self.kernel is not None:
            flat = self._adopt(params)
            return reporter.tabled(self.kernel.stats(flat, x, t, reporter.kernel_layout(flat)))
        outputs, grads, acts = self.probe(params, x, t)
        return reporter(params, grads, outputs, None, flat=self.flat, acts=acts)

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


class _Kernel:
    """The compiled kernel's side of a DenseStack: the net's layout as the kernel reads it
    (codes, widths, where each W and b lie in the Flat) and its scratch vectors."""

    def __init__(self, stack: DenseStack) -> None:
        from . import kernel                     # numba loads only when a run needs it
        self.k = kernel
        self.sizes = np.array(stack.sizes, np.int64)
        self.acts = np.array([ACTIVATIONS[a].code for a in stack.acts], np.int64)
        self.loss = kernel.LOSS_CODES[stack.loss]
        self.layout = None                       # (w_at, b_at, scratch...) once a Flat is
        self.cols: dict[int, tuple] = {}         # n -> (order 0..n-1, empty targets)
        self.probe_in: tuple | None = None       # (x, t, x contiguous, tf, ti)

    def _layout(self, flat: Flat) -> tuple:
        if self.layout is None or self.layout[0] is not flat:
            where = {(i, key): sl.start for i, key, _, sl in flat.entries}
            w_at = np.array([where[i, "W"] for i in range(flat.layers)], np.int64)
            b_at = np.array([where[i, "b"] for i in range(flat.layers)], np.int64)
            total, widest = int(self.sizes.sum()), int(self.sizes.max())
            dtype = flat.w.dtype
            self.layout = (flat, w_at, b_at, *(np.empty(total, dtype) for _ in range(3)),
                           np.empty(widest, dtype))
        return self.layout[1:]

    def _targets(self, t: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(float targets (n, K), class indices (n,)): the loss reads one, the other is an
        empty stand-in of the same length."""
        n = len(t)
        if n not in self.cols:
            self.cols[n] = (np.arange(n, dtype=np.int64), np.zeros((n, 0), dtype),
                            np.zeros(n, np.int64))
        _, no_tf, no_ti = self.cols[n]
        if self.loss == self.k.CROSS_ENTROPY:
            return no_tf, np.ascontiguousarray(t, np.int64)
        return np.ascontiguousarray(t, dtype).reshape(n, -1), no_ti

    def epoch(self, flat: Flat, opt: Optimizer, xs: np.ndarray, ts: np.ndarray,
              order: np.ndarray | None, batch_size: int | None, lr: float, zbuf: np.ndarray,
              poll: Callable[[], bool]) -> bool:
        w_at, b_at, z, a, d, dx = self._layout(flat)
        n = len(ts)
        batch = min(batch_size or n, n)
        tf, ti = self._targets(ts, flat.w.dtype)
        order = self.cols[n][0] if order is None else order
        xs = np.ascontiguousarray(xs, flat.w.dtype)
        out = zbuf.reshape(n, -1)
        chunk = max(1, KERNEL_ROWS // batch) * batch
        for s in range(0, n, chunk):
            opt.t += self.k.sgd_rows(flat.w, flat.g, self.sizes, w_at, b_at, self.acts,
                                     self.loss, xs, order, tf, ti, s, min(s + chunk, n),
                                     batch, lr, opt.weight_decay, out, z, a, d, dx)
            if poll():
                return False
        return True

    def stats(self, flat: Flat, x: np.ndarray, t: np.ndarray, layout: tuple) -> np.ndarray:
        """The statistics step on the probe rows (x, t, the same every epoch) in one
        compiled call: the gradient of their mean loss into flat.g, and the table
        LayerStats.tabled() reads. layout: LayerStats.kernel_layout()."""
        w_at, b_at, z, a, d, dx = self._layout(flat)
        if self.probe_in is None or self.probe_in[0] is not x or self.probe_in[1] is not t:
            self.probe_in = (x, t, np.ascontiguousarray(x, flat.w.dtype),
                             *self._targets(t, flat.w.dtype))
        _, _, xc, tf, ti = self.probe_in
        self.k.probe_stats(flat.w, flat.g, self.sizes, w_at, b_at, self.acts, self.loss, xc,
                           tf, ti, z, a, d, dx, flat.wg, *layout)
        return layout[-1]
