"""Per-epoch, per-layer statistics, measured on a fixed probe batch.

How they are measured: before the first epoch the engine picks the probe batch once:
min(128, max(32, ceil(n / 64))) of the n samples of the training split (about one in 64, at
least 32, at most 128), drawn without replacement by a generator seeded with (seed, 0, 2),
kept in the data's order (all of the training split if it has no more samples than that).
At the end of every epoch, with the weights as they are then, the network runs one forward
pass over the probe batch in eval mode (no dropout; dropout scales by its keep probability)
and one backward pass of the mean training loss over the batch (without weight decay).
For every layer with parameters one row is reported (layer_stats() says what a row of
each layer type covers); for dense layers:

- weight_mean_abs, weight_norm, weight_max_abs, weight_std: mean |w|, L2 norm sqrt(sum w^2),
  max |w| and standard deviation of the layer's weight matrix W only (biases excluded);
- grad_mean_abs, grad_norm, grad_max_abs, grad_std: the same four of dL/dW (W only, biases
  excluded), L the mean loss over the probe batch; None for the perceptron (no gradient);
- act_mean: mean of the layer's outputs a = f(xW + b) over the probe batch and units;
- act_saturated_fraction: sigmoid: fraction of outputs < 0.01 or > 0.99; tanh: fraction with
  |a| > 0.99; None for other activations;
- act_dead_fraction: relu: fraction of outputs (sample, unit) exactly 0; None otherwise.

Cost: one forward and backward pass over the probe batch per epoch, plus a dozen reductions
over all the layers' arrays at once: a few percent of an epoch for the benchmarked workloads
(bench/RESULTS.md); relatively more when an epoch is itself only one or two batches, or a
few hundred samples (the probe pass alone is 16% of a 200-sample epoch).

Rows are ordered as the layers; `layer` is the index in network.layers and `name` is
"dense_<index>". Numbers are Python floats (computed in float64).
"""
import math
from itertools import accumulate
from typing import NamedTuple

import numpy as np

PROBE_SIZE = 128          # at most
PROBE_MIN = 32            # at least (or every sample, when there are fewer)
PROBE_SHARE = 64          # otherwise one in PROBE_SHARE samples


def probe_size(n: int) -> int:
    """The probe batch's size for n training samples: min(128, max(32, ceil(n / 64)))."""
    return min(PROBE_SIZE, max(PROBE_MIN, -(-n // PROBE_SHARE)))


def activation_stats(a: np.ndarray, activation: str) -> dict[str, float | None]:
    """act_mean (accumulated in float64), act_saturated_fraction, act_dead_fraction of a."""
    saturated = dead = None
    if activation == "sigmoid":
        saturated = int(np.count_nonzero(np.abs(a - 0.5) > 0.49)) / a.size   # < .01 or > .99
    elif activation == "tanh":
        saturated = int(np.count_nonzero(np.abs(a) > 0.99)) / a.size
    elif activation == "relu":
        dead = (a.size - int(np.count_nonzero(a))) / a.size
    return {"act_mean": float(np.add.reduce(a, axis=None, dtype=np.float64)) / a.size,
            "act_saturated_fraction": saturated, "act_dead_fraction": dead}


STAT_KEYS = ("mean_abs", "norm", "max_abs", "std")
GRAD_KEYS = tuple(f"grad_{k}" for k in STAT_KEYS)
WEIGHT_KEYS = tuple(f"weight_{k}" for k in STAT_KEYS)
ROW_KEYS = (*GRAD_KEYS, *WEIGHT_KEYS)
NO_GRAD = (None,) * len(STAT_KEYS)              # the perceptron's grad_*
NO_GRAD_LIST = list(NO_GRAD)
ROW_FIELDS = ("layer", "name", *ROW_KEYS, "act_mean", "act_saturated_fraction",
              "act_dead_fraction")
PARAM_FIELDS = ("param", *ROW_KEYS)
ONE_PASS = 1 << 14        # LayerStats: arrays of more numbers than this in all: one-pass std
COUNTED = {"sigmoid": "act_saturated_fraction", "tanh": "act_saturated_fraction",
           "relu": "act_dead_fraction"}         # the fraction each activation reports


class RowPlan(NamedTuple):
    """What one statistics row is made of."""
    index: int                                       # the layer's index in the network
    name: str                                        # "<kind>_<index>"
    layer: object
    arrays: list[tuple[str, int]]                    # (key, its array's index), every array
    weights: list[int]                               # the arrays weight_* and grad_* cover
    counted: str | None                              # the act_* fraction it reports
    activation: str | None


class Moments(NamedTuple):
    """What the four statistics of an array are made of, so that those of several arrays
    together (a layer's row) follow without another pass over them."""
    n: int
    sum_abs: float
    max_abs: float
    mean: float
    ssd: float                                       # sum of squared deviations from mean

    def stats(self) -> tuple[float, float, float, float]:
        """mean |x|, L2 norm, max |x|, std (STAT_KEYS' order); sum x^2 = ssd + n mean^2."""
        return (self.sum_abs / self.n, math.sqrt(self.ssd + self.n * self.mean * self.mean),
                self.max_abs, math.sqrt(self.ssd / self.n))


def combine(parts: list[Moments]) -> Moments:
    """The moments of several arrays taken together (Chan et al.'s pairwise variance)."""
    if len(parts) == 1:
        return parts[0]
    n = sum(m.n for m in parts)
    mean = sum(m.n * m.mean for m in parts) / n
    # d * d, not d ** 2: a float's ** raises OverflowError where * gives inf (weights of
    # 1e300 are finite, and their statistics may be infinite)
    return Moments(n, sum(m.sum_abs for m in parts), max(m.max_abs for m in parts), mean,
                   sum(m.ssd + m.n * (d := m.mean - mean) * d for m in parts))


class LayerStats:
    """The statistics step of one run (or one pretrained layer): layer_stats() with its
    layout worked out once, so that an epoch's step is a dozen NumPy calls however many
    arrays and layers (segment reductions over one float64 vector holding every weight and
    gradient array end to end: the Flat's own vector when the fast path has one), and a
    little Python per row. Small nets are why: their epoch lasts a few milliseconds, and a
    few calls per array and layer were a tenth of it (issue #6).

    Per array: mean |x|, sqrt(sum x^2), max |x| and the std. Small nets take the std in two
    passes (deviations from the array's own mean, as numpy's std: the fewest calls); large
    ones in one, sum x^2 - n mean^2 (the least memory traffic), and in two passes for any
    array where that loses its digits. Rows of several weight arrays (rnn, lstm, attention,
    encoder) combine their arrays' moments (combine()). Activations: the mean accumulated
    in float64, and the saturated / dead counts; when the caller has every layer's output
    in one vector (the fast path's probe) those take a few calls in all, else a few per
    layer."""

    def __init__(self, layers, names: list[str] | None = None) -> None:
        """names: each layer's row name (default "<kind>_<index>")."""
        names = names or [f"{layer.kind}_{i}" for i, layer in enumerate(layers)]
        keyed = [(i, layer, layer.param_shapes()) for i, layer in enumerate(layers)]
        keyed = [(i, layer, shapes) for i, layer, shapes in keyed if shapes]
        self.arrays = [(i, k) for i, _, shapes in keyed for k in shapes]
        sizes = [math.prod(shape) for _, _, shapes in keyed for shape in shapes.values()]
        k = len(sizes)
        self.counts = np.array(sizes * 2)              # weights, then gradients
        self.sizes = self.counts.astype(np.float64)
        self.starts = np.array([0, *accumulate(sizes * 2)][:-1], np.intp)   # (an array:
        # reduceat converts a list on every call)
        # one-pass variance, sum x^2 - n mean^2, loses digits where |mean| >> std: then
        # (ssd < 1e-3 sum x^2, or < 0) two passes. A single number's is exactly 0 anyway.
        self.cancels = np.where(self.counts > 1, 1e-3, 0.0)
        self.half = sum(sizes)
        self.vec = self.scratch = None                 # float64 buffers, made when needed
        self.out = np.empty((4, 2 * k))                # STAT_KEYS x arrays
        self.flat_seen: object = None                  # a Flat seen to match our order
        self.rows_plan: list[RowPlan] = []
        j = 0
        for i, layer, shapes in keyed:
            keys = tuple(shapes)
            own = list(range(j, j + len(keys)))
            j += len(keys)
            weight = [own[keys.index(w)] for w in layer.weight_keys]
            counted = COUNTED.get(layer.stat_activation)
            self.rows_plan.append(RowPlan(i, names[i], layer, list(zip(keys, own)),
                                          weight, counted, layer.stat_activation))
        self.combines = any(len(row.weights) > 1 for row in self.rows_plan)
        self.kinds = {}                                # activation: the rows it counts in
        for r, row in enumerate(self.rows_plan):
            if row.counted is not None:
                self.kinds.setdefault(row.activation, []).append(r)
        self.act_layout: tuple | None = None           # (bounds, cuts, sizes) of acts
        self.kernel_layout: tuple | None = None        # (bounds, their array, kinds, out)

    def __call__(self, params, grads, outputs, caches, traces=None, flat=None,
                 acts: tuple | None = None, kernel=None) -> list[dict]:
        """The rows (layer_stats()). flat: an nn/optim.py Flat of which params and grads
        are views (the dense engine's probe has just adopted them): its vector is read as it
        lies. acts: (vector, [(start, end)]): every row's layer's outputs lie in
        vector[start:end] (the dense engine's probe). kernel: nn/engines/kernel.py, whose
        compiled reductions then replace NumPy's dozen calls (for epochs of microseconds)."""
        with_grads = grads is not None
        if kernel is not None and with_grads and not self.combines and acts is not None:
            values, act = self._compiled(kernel, params, grads, flat, *acts)
        else:
            values = self._values(params, grads, flat)
            act = self._acts(outputs, caches) if acts is None else self._flat_acts(*acts)
        k = len(self.arrays)
        per = [(values[k + j] if with_grads else NO_GRAD_LIST) + values[j] for j in range(k)]
        rows = []
        for (i, name, _, own, weight, counted, _), (mean, frac) in zip(self.rows_plan, act):
            summary_values = per[weight[0]] if len(weight) == 1 else \
                self._combined(weight, with_grads)
            row = dict(zip(ROW_FIELDS, (i, name, *summary_values, mean, None, None)))
            if counted is not None:
                row[counted] = frac
            row["params"] = [dict(zip(PARAM_FIELDS, (key, *per[j]))) for key, j in own]
            if traces is not None:
                row.update(traces[i])
            rows.append(row)
        return rows

    def _values(self, params, grads, flat) -> list[list[float]]:
        """Per array, weights then gradients: [mean |x|, norm, max |x|, std] (STAT_KEYS).
        Without gradients (the perceptron) their entries are those of zeros, unused."""
        x, owned = self._source(params, grads, flat)
        out, starts, sizes = self.out, self.starts, self.sizes
        sums = np.add.reduceat(x, starts)
        mean = sums / sizes
        if len(x) <= ONE_PASS:                         # small: two passes, the fewest calls
            absx = np.abs(x, out=self._scratch())
            np.add.reduceat(absx, starts, out=out[0])
            np.maximum.reduceat(absx, starts, out=out[2])
            dev = np.subtract(x, mean.repeat(self.counts), out=absx)
            ssd = np.add.reduceat(np.square(dev, out=dev), starts, out=out[3])
            np.multiply(sums, mean, out=out[1])        # sum x^2 = ssd + n mean^2
            out[1] += ssd
        else:                                          # large: one pass over one buffer
            absx = np.abs(x, out=x if owned else self._scratch())
            np.add.reduceat(absx, starts, out=out[0])
            np.maximum.reduceat(absx, starts, out=out[2])
            np.add.reduceat(np.square(absx, out=absx), starts, out=out[1])   # sum x^2
            ssd = np.subtract(out[1], np.multiply(sums, mean, out=sums), out=out[3])
            if np.logical_or.reduce(ssd < self.cancels * out[1]):   # |mean| >> std: sum
                self._two_pass(params, grads, flat, mean, ssd)   # x^2 - n mean^2 cancels
        if self.combines:                              # rows of several weight arrays
            self.moments = (out[0].tolist(), out[2].tolist(), mean.tolist(), ssd.tolist())
        np.divide(out[::3], sizes, out=out[::3])       # mean |x|, ssd / n
        np.sqrt(out[1::2], out=out[1::2])              # norm = sqrt(sum x^2), std
        return out.T.tolist()

    def _compiled(self, kernel, params, grads, flat, acts: np.ndarray,
                  bounds: list[tuple[int, int]]) -> tuple[list, list]:
        """_values() and _flat_acts() by the kernel's reductions, in two calls."""
        x, _ = self._source(params, grads, flat)
        kernel.array_stats(x, self.starts, self.counts, self.out)
        if self.kernel_layout is None or self.kernel_layout[0] != bounds:
            kinds = np.zeros(len(bounds), np.int64)
            for r, row in enumerate(self.rows_plan):
                if row.counted is not None:
                    kinds[r] = ("sigmoid", "tanh", "relu").index(row.activation) + 1
            self.kernel_layout = (bounds, np.array(bounds, np.int64).reshape(-1, 2), kinds,
                                  np.empty((2, len(bounds))))
        _, cuts, kinds, res = self.kernel_layout
        kernel.act_stats(acts, cuts, kinds, res)
        means, fracs = res.tolist()
        return self.out.T.tolist(), [(m, f if k else None)
                                     for m, f, k in zip(means, fracs, kinds.tolist())]

    def _source(self, params, grads, flat) -> tuple[np.ndarray, bool]:
        """Every weight array, then every gradient array, end to end, in float64: flat.wg
        itself when params and grads are its views in our order (and float64), else a copy.
        -> (it, whether it is our copy)."""
        if flat is not None and self.flat_seen is not flat:
            if [(i, key) for i, key, _, _ in flat.entries] == self.arrays:
                self.flat_seen = flat
        if grads is not None and flat is not None and self.flat_seen is flat:
            if flat.wg.dtype == np.float64:
                return flat.wg, False
            vec = self._vec()
            np.copyto(vec, flat.wg)
            return vec, True
        vec, half = self._vec(), self.half
        if grads is None:                              # the perceptron: weights only
            np.concatenate([params[i][key].ravel() for i, key in self.arrays], out=vec[:half])
            vec[half:] = 0.0
        else:
            np.concatenate([params[i][key].ravel() for i, key in self.arrays]
                           + [grads[i][key].ravel() for i, key in self.arrays], out=vec)
        return vec, True

    def _vec(self) -> np.ndarray:
        if self.vec is None:
            self.vec = np.empty(2 * self.half)
        return self.vec

    def _scratch(self) -> np.ndarray:
        if self.scratch is None:
            self.scratch = np.empty(2 * self.half)
        return self.scratch

    def _two_pass(self, params, grads, flat, mean: np.ndarray, ssd: np.ndarray) -> None:
        """ssd = sum (x - mean)^2 of the arrays whose one-pass value lost its digits."""
        k = len(self.arrays)
        for j in np.flatnonzero(ssd < self.cancels * self.out[1]).tolist():
            i, key = self.arrays[j % k]
            a = (params if j < k else grads)[i][key]
            dev = a.ravel() - mean[j]                  # (float64: mean is)
            ssd[j] = np.add.reduce(np.square(dev, out=dev))

    def _combined(self, js: list[int], with_grads: bool) -> tuple:
        """A row's grad_* and weight_* over several of its arrays together."""
        k = len(self.arrays)
        sum_abs, max_abs, mean, ssd = self.moments

        def together(offset):
            return combine([Moments(int(self.counts[j]), sum_abs[j], max_abs[j], mean[j],
                                    ssd[j]) for j in (j + offset for j in js)]).stats()
        return (together(k) if with_grads else NO_GRAD) + together(0)

    def _acts(self, outputs, caches) -> list[tuple[float, float | None]]:
        """Per row: act_mean and its activation's saturated or dead fraction (None)."""
        out = []
        for i, _, layer, _, _, counted, activation in self.rows_plan:
            cache = None if caches is None else caches[i]
            s = activation_stats(layer.act_values(outputs[i], cache), activation)
            out.append((s["act_mean"], None if counted is None else s[counted]))
        return out

    def _flat_acts(self, acts: np.ndarray, bounds: list[tuple[int, int]]
                   ) -> list[tuple[float, float | None]]:
        """_acts() from acts (see __call__): a few calls for every layer together."""
        if self.act_layout is None or self.act_layout[0] != bounds:
            cuts = [c for b in bounds for c in b]              # reduceat sums cuts[2m] to
            if cuts[-1] == len(acts):                          # cuts[2m + 1] at 2m
                cuts.pop()
            self.act_layout = (bounds, np.array(cuts, np.intp), [e - s for s, e in bounds])
        _, cuts, sizes = self.act_layout
        sums = np.add.reduceat(acts, cuts, dtype=np.float64).tolist()[::2]
        fracs: list = [None] * len(sizes)
        for activation, rows in self.kinds.items():
            if activation == "sigmoid":
                hit = np.abs(acts - 0.5) > 0.49              # < .01 or > .99
            elif activation == "tanh":
                hit = np.abs(acts) > 0.99
            else:
                hit = acts != 0                              # relu: alive
            for r in rows:
                c = np.count_nonzero(hit[bounds[r][0]:bounds[r][1]])
                fracs[r] = ((sizes[r] - c) if activation == "relu" else c) / sizes[r]
        return [(s / n, f) for s, n, f in zip(sums, sizes, fracs)]


def layer_stats(layers, params, grads, outputs, caches, traces=None) -> list[dict]:
    """One row per layer with parameters. grads None: the perceptron. outputs and caches:
    each layer's output and cache from the probe forward; traces: from the probe backward.
    (A run makes one LayerStats and calls it every epoch.)

    Beyond dense layers (docs/engine-api.md and openapi.yaml repeat this):
    - name is "<type>_<index>" ("dense_0", "conv2d_1", "lstm_2", ...); an encoder-decoder
      network's rows are "encoder.<type>_<i>" and "decoder.<type>_<i>", i the index in its
      stack, and `layer` the index in the flat list (the encoder's layers first).
    - The row's weight_* and grad_* summarise the layer's weight arrays (biases, and layer
      norm's beta, excluded), all of them concatenated: dense and conv2d W; rnn and lstm
      Wx and Wh; embedding E; self_attention Wq, Wk, Wv, Wo; transformer_encoder those four
      and W1, W2; layer_norm gamma; a learned positional_encoding P.
    - act_* describe the layer's outputs (rnn and lstm: every state h_1..h_T, whatever
      return_sequences says); saturated / dead follow the layer's activation (conv2d, rnn:
      their own; lstm: the tanh rule on h); None for the others.
    - params: one entry per array of the layer (biases included), in the layer's order:
      {"param": "W" | "b" | "Wx" | ..., grad_mean_abs, grad_norm, grad_max_abs, grad_std,
      weight_mean_abs, weight_norm, weight_max_abs, weight_std} over that array alone; the
      natural key of such a row is (run, phase, epoch, layer, param).
    - rnn and lstm rows add grad_norm_by_time: [||dL/dh_t|| for t = 1..T], the L2 norm over
      the probe batch and units of the gradient reaching state h_t (from the output and from
      h_{t+1}), L the mean probe loss: the vanishing gradient through time.
    """
    return LayerStats(layers)(params, grads, outputs, caches, traces)
