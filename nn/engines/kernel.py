"""The dense engine's compiled kernel: SGD over a stack of dense layers, sample by sample in
machine code, where a NumPy call would cost more than the arithmetic it does.

numba compiles it once per dtype and caches the machine code on disk (cache=True); the
worker warms it when it starts (warm()). A sample's forward pass keeps every layer's z and a
end to end in one vector; its backward pass adds x d to the batch's gradient; after the
batch w <- w - (g + lambda W) lr, the reference's plain SGD. Activations and losses are
named by their codes (nn/activations.py's table, LOSS_CODES) because one function serves all.
"""
import math

import numpy as np
from numba import njit

from ..activations import ACTIVATIONS

LINEAR, SIGMOID, TANH, RELU, SOFTMAX = (ACTIVATIONS[name].code for name in
                                        ("linear", "sigmoid", "tanh", "relu", "softmax"))
SQUARED_ERROR, CROSS_ENTROPY, BINARY_CROSS_ENTROPY = range(3)
LOSS_CODES = {"squared_error": SQUARED_ERROR, "cross_entropy": CROSS_ENTROPY,
              "binary_cross_entropy": BINARY_CROSS_ENTROPY}


@njit(cache=True, inline="always")
def sigmoid(z):
    """nn/activations.py's sigmoid, 1 / (1 + e^-z), without its overflow to inf."""
    if z < -700.0:
        return 0.0 * z
    return 1.0 / (1.0 + math.exp(-z))


@njit(cache=True)
def _activate(code, z, a, lo, hi):
    """a[lo:hi] = f(z[lo:hi])."""
    if code == SIGMOID:
        for j in range(lo, hi):
            a[j] = sigmoid(z[j])
    elif code == TANH:
        for j in range(lo, hi):
            a[j] = math.tanh(z[j])
    elif code == RELU:
        for j in range(lo, hi):
            a[j] = 0.0 if z[j] <= 0.0 else z[j]         # keeps NaN, as np.maximum
    elif code == LINEAR:
        for j in range(lo, hi):
            a[j] = z[j]
    else:
        m = z[lo]
        for j in range(lo + 1, hi):
            m = max(m, z[j])
        s = 0.0
        for j in range(lo, hi):
            a[j] = math.exp(z[j] - m)
            s += a[j]
        for j in range(lo, hi):
            a[j] /= s


@njit(cache=True)
def _grad_z(code, d, z, a, lo, hi):
    """d[lo:hi] (dL/da) <- dL/dz = f'(z) d."""
    if code == SIGMOID:
        for j in range(lo, hi):
            d[j] = d[j] * a[j] * (1.0 - a[j])            # d sigmoid = a (1 - a)
    elif code == TANH:
        for j in range(lo, hi):
            d[j] = d[j] * (1.0 - a[j] * a[j])            # d tanh = 1 - a^2
    elif code == RELU:
        for j in range(lo, hi):
            if not z[j] > 0.0:                           # d relu = 1 where z > 0
                d[j] = 0.0
    elif code == SOFTMAX:
        s = 0.0
        for j in range(lo, hi):                          # dz_j = a_j (da_j - sum_k da_k a_k)
            s += d[j] * a[j]
        for j in range(lo, hi):
            d[j] = a[j] * (d[j] - s)


@njit(cache=True, inline="always")   # its array arguments would cost a call each sample
def _sample(w, g, sizes, w_at, b_at, acts, loss, x, tf, ti, scale, z, a, d, dx):
    """Forward and backward of one sample x: adds scale x dL/dz to g for every layer (the
    mean loss's share of this sample), leaves every layer's z and a in z and a (a[:D] the
    input, then each layer's outputs end to end)."""
    layers = len(acts)
    n_out = sizes[layers]
    for k in range(sizes[0]):
        a[k] = x[k]
    lo_in, lo = 0, sizes[0]                          # the layer's input and outputs in a
    for l in range(layers):
        n_in, n_h = sizes[l], sizes[l + 1]
        wl, bl = w_at[l], b_at[l]
        for j in range(n_h):
            z[lo + j] = w[bl + j]
        for k in range(n_in):                        # z = x W + b, W row by row
            ak = a[lo_in + k]
            row = wl + k * n_h
            for j in range(n_h):
                z[lo + j] += ak * w[row + j]
        _activate(acts[l], z, a, lo, lo + n_h)
        lo_in, lo = lo, lo + n_h
    out = lo - n_out                                 # the output layer's units
    if loss == CROSS_ENTROPY:                        # softmax - onehot
        for j in range(n_out):
            d[out + j] = a[out + j] * scale
        d[out + ti] -= scale
    else:                                            # a - t (fused with the sigmoid for
        for j in range(n_out):                       # binary cross-entropy)
            d[out + j] = (a[out + j] - tf[j]) * scale
        if loss == SQUARED_ERROR:
            _grad_z(acts[layers - 1], d, z, a, out, out + n_out)
    hi = out
    for l in range(layers - 1, -1, -1):              # backward
        n_in, n_h = sizes[l], sizes[l + 1]
        wl, bl = w_at[l], b_at[l]
        lo_in = hi - n_in
        for j in range(n_h):
            g[bl + j] += d[hi + j]                   # db = d
        for k in range(n_in):
            ak = a[lo_in + k]
            row = wl + k * n_h
            acc = 0.0
            for j in range(n_h):
                g[row + j] += ak * d[hi + j]         # dW = x^T d
                acc += w[row + j] * d[hi + j]
            dx[k] = acc                              # dx = W d, before the update
        if l:
            for k in range(n_in):
                d[lo_in + k] = dx[k]
            _grad_z(acts[l - 1], d, z, a, lo_in, lo_in + n_in)
        hi = lo_in
    return out


@njit(cache=True)
def sgd_rows(w, g, sizes, w_at, b_at, acts, loss, xs, order, tf, ti, start, stop, batch,
             lr, decay, zbuf, z, a, d, dx):
    """SGD on the epoch's rows start..stop (whole batches, or the epoch's end): sample i is
    xs[order[i]] with targets tf[i] (or class ti[i]); its output z goes to zbuf[i] before
    its batch's update. sizes: (L + 1,) widths; w_at, b_at: where layer l's W and b start
    in w (and g); z, a, d: scratch of sum(sizes); dx: of max(sizes). -> batches taken."""
    layers = len(acts)
    n_out = sizes[layers]
    steps = 0
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        scale = 1.0 / (e - s)
        g[:] = 0.0
        for i in range(s, e):
            out = _sample(w, g, sizes, w_at, b_at, acts, loss, xs[order[i]], tf[i], ti[i],
                          scale, z, a, d, dx)
            for j in range(n_out):
                zbuf[i, j] = z[out + j]
        if decay != 0.0:                             # w <- w - (g + lambda W) lr
            for l in range(layers):
                for k in range(w_at[l], w_at[l] + sizes[l] * sizes[l + 1]):
                    g[k] += decay * w[k]
        for k in range(len(w)):
            w[k] -= g[k] * lr
        steps += 1
    return steps


@njit(cache=True)
def array_stats(x, starts, counts, out):
    """Per array j of x (counts[j] numbers from starts[j]): out[:, j] = mean |x|, L2 norm,
    max |x|, std (nn/stats.py's STAT_KEYS), in float64, the std in two passes, NaN kept."""
    for j in range(len(starts)):
        s, n = starts[j], counts[j]
        total = sum_abs = sum_sq = 0.0
        top = 0.0
        for i in range(s, s + n):
            v = np.float64(x[i])
            total += v
            sum_abs += abs(v)
            sum_sq += v * v
            if not abs(v) <= top:                    # larger, or NaN (which stays)
                if top == top:
                    top = abs(v)
        mean = total / n
        ssd = 0.0
        for i in range(s, s + n):
            dev = np.float64(x[i]) - mean
            ssd += dev * dev
        out[0, j] = sum_abs / n
        out[1, j] = math.sqrt(sum_sq)
        out[2, j] = top
        out[3, j] = math.sqrt(ssd / n)


@njit(cache=True)
def probe_stats(w, g, sizes, w_at, b_at, acts, loss, xs, tf, ti, z, a, d, dx, wg, starts,
                counts, kinds, out):
    """The statistics step in one call. g = the gradient of the mean loss over xs's rows
    (the probe); then for every array j of wg (w then g, counts[j] numbers from starts[j]),
    out[:, j] = array_stats; for every layer l, out[0, J + l] = the mean of its outputs
    over the rows and units (summed in float64, sample by sample), out[1, J + l] = the
    fraction saturated (kinds[l] 1: sigmoid, < .01 or > .99; 2: tanh, |a| > .99) or dead
    (3: relu, exactly 0); 0 for other kinds. J = len(starts)."""
    n = len(xs)
    at = len(starts)
    out[:2, at:] = 0.0
    g[:] = 0.0
    for i in range(n):
        _sample(w, g, sizes, w_at, b_at, acts, loss, xs[i], tf[i], ti[i], 1.0 / n, z, a, d,
                dx)
        lo = sizes[0]
        for l in range(len(acts)):
            total = 0.0
            hits = 0
            for j in range(lo, lo + sizes[l + 1]):
                v = np.float64(a[j])
                total += v
                if kinds[l] == 1:
                    hits += abs(v - 0.5) > 0.49
                elif kinds[l] == 2:
                    hits += abs(v) > 0.99
                elif kinds[l] == 3:
                    hits += v == 0.0
            out[0, at + l] += total
            out[1, at + l] += hits
            lo += sizes[l + 1]
    for l in range(len(acts)):
        out[0, at + l] /= n * sizes[l + 1]
        out[1, at + l] /= n * sizes[l + 1]
    array_stats(wg, starts, counts, out)


def warm() -> None:
    """Compile (or load from the disk cache) the kernels for float64 and float32, so that a
    run's first epoch does not wait for them."""
    at = np.zeros(1, np.int64)
    for dtype in (np.float64, np.float32):
        sizes = np.array([1, 1], np.int64)
        w, g, x = np.zeros(2, dtype), np.zeros(2, dtype), np.zeros((1, 1), dtype)
        tf, ti = np.zeros((1, 1), dtype), np.zeros(1, np.int64)
        z, a, d = (np.zeros(2, dtype) for _ in range(3))
        sgd_rows(w, g, sizes, at, at + 1, at, 0, x, ti, tf, ti, 0, 1, 1, 0.0, 0.0,
                 np.zeros((1, 1), dtype), z, a, d, np.zeros(1, dtype))
        probe_stats(w, g, sizes, at, at + 1, at, 0, x, tf, ti, z, a, d, np.zeros(1, dtype),
                    np.zeros(4, dtype), at, at + 1, at, np.zeros((4, 2)))
