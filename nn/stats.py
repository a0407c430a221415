"""Per-epoch, per-layer statistics, measured on a fixed probe batch.

How they are measured: before the first epoch the engine picks the probe batch once: 128
samples of the training split, drawn without replacement by a generator seeded with
(seed, 0, 2), kept in the data's order (all of the training split if it has <= 128 samples).
At the end of every epoch, with the weights as they are then, the network runs one forward
pass over the probe batch in eval mode (no dropout; dropout scales by its keep probability)
and one backward pass of the mean training loss over the batch (without weight decay).
For every layer with parameters (dense) one row is reported:

- weight_mean_abs, weight_norm, weight_max_abs, weight_std: mean |w|, L2 norm sqrt(sum w^2),
  max |w| and standard deviation of the layer's weight matrix W only (biases excluded);
- grad_mean_abs, grad_norm, grad_max_abs, grad_std: the same four of dL/dW (W only, biases
  excluded), L the mean loss over the probe batch; None for the perceptron (no gradient);
- act_mean: mean of the layer's outputs a = f(xW + b) over the probe batch and units;
- act_saturated_fraction: sigmoid: fraction of outputs < 0.01 or > 0.99; tanh: fraction with
  |a| > 0.99; None for other activations;
- act_dead_fraction: relu: fraction of outputs (sample, unit) exactly 0; None otherwise.

Cost: one forward and backward pass over at most 128 samples per epoch, plus a few
reductions per layer: a few percent of an epoch for the benchmarked workloads
(bench/RESULTS.md); relatively more when an epoch is itself only one or two batches.

Rows are ordered as the layers; `layer` is the index in network.layers and `name` is
"dense_<index>". Numbers are Python floats (computed in float64).
"""
import math
from itertools import accumulate
from typing import NamedTuple

import numpy as np

PROBE_SIZE = 128


def summary(prefix: str, x: np.ndarray) -> dict[str, float]:
    """mean |x|, L2 norm, max |x|, std of x (ufunc reductions: a few microseconds)."""
    flat = x.ravel()
    n = flat.size
    absx = np.abs(flat)
    dev = flat - np.add.reduce(flat) / n             # two-pass std, as numpy's
    return {f"{prefix}_mean_abs": float(np.add.reduce(absx)) / n,
            f"{prefix}_norm": math.sqrt(float(np.dot(flat, flat))),
            f"{prefix}_max_abs": float(np.maximum.reduce(absx)),
            f"{prefix}_std": math.sqrt(float(np.dot(dev, dev)) / n)}


def activation_stats(a: np.ndarray, activation: str) -> dict[str, float | None]:
    saturated = dead = None
    if activation == "sigmoid":
        saturated = int(np.count_nonzero(np.abs(a - 0.5) > 0.49)) / a.size   # < .01 or > .99
    elif activation == "tanh":
        saturated = int(np.count_nonzero(np.abs(a) > 0.99)) / a.size
    elif activation == "relu":
        dead = (a.size - int(np.count_nonzero(a))) / a.size
    return {"act_mean": float(np.add.reduce(a, axis=None)) / a.size,
            "act_saturated_fraction": saturated, "act_dead_fraction": dead}


STAT_KEYS = ("mean_abs", "norm", "max_abs", "std")
GRAD_KEYS = tuple(f"grad_{k}" for k in STAT_KEYS)
WEIGHT_KEYS = tuple(f"weight_{k}" for k in STAT_KEYS)


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


def moments(arrays: list[np.ndarray]) -> list[Moments]:
    """The moments of each array (in float64), computed over all of them at once: a dozen
    ufunc calls however many arrays (segment reductions over their concatenation), where
    summary() costs as many per array; that matters for small nets, whose epoch is short.
    The std is two-pass, as numpy's."""
    sizes = [a.size for a in arrays]
    flat = np.concatenate([a.ravel() for a in arrays], dtype=np.float64)
    starts = [0, *accumulate(sizes[:-1])]
    absx = np.abs(flat)
    sum_abs = np.add.reduceat(absx, starts).tolist()
    max_abs = np.maximum.reduceat(absx, starts).tolist()
    mean = np.add.reduceat(flat, starts)
    mean /= sizes
    flat -= np.repeat(mean, sizes)                   # deviations, in place
    ssd = np.add.reduceat(np.square(flat, out=flat), starts).tolist()
    return [Moments(*m) for m in zip(sizes, sum_abs, max_abs, mean.tolist(), ssd)]


def combine(parts: list[Moments]) -> Moments:
    """The moments of several arrays taken together (Chan et al.'s pairwise variance)."""
    if len(parts) == 1:
        return parts[0]
    n = sum(m.n for m in parts)
    mean = sum(m.n * m.mean for m in parts) / n
    return Moments(n, sum(m.sum_abs for m in parts), max(m.max_abs for m in parts), mean,
                   sum(m.ssd + m.n * (m.mean - mean) ** 2 for m in parts))


ROW_KEYS = (*GRAD_KEYS, *WEIGHT_KEYS)
NO_GRAD = (None,) * len(STAT_KEYS)              # the perceptron's grad_*


def _values(g: list[Moments] | None, w: list[Moments]) -> tuple:
    """grad_* (None without gradients) and weight_* of the arrays together (ROW_KEYS)."""
    return (NO_GRAD if g is None else combine(g).stats()) + combine(w).stats()


def layer_stats(layers, params, grads, outputs, caches, traces=None) -> list[dict]:
    """One row per layer with parameters. grads None: the perceptron. outputs and caches:
    each layer's output and cache from the probe forward; traces: from the probe backward.

    Beyond dense layers (docs/engine-api.md repeats this; openapi.yaml will too):
    - name is "<type>_<index>" ("dense_0", "conv2d_1", "lstm_2", ...).
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
    keyed = [(i, layer, tuple(layer.param_shapes())) for i, layer in enumerate(layers)]
    keyed = [(i, layer, keys) for i, layer, keys in keyed if keys]
    arrays = [params[i][k] for i, _, keys in keyed for k in keys]
    if grads is not None:
        arrays += [grads[i][k] for i, _, keys in keyed for k in keys]
    found = iter(moments(arrays))                   # the weights', then the gradients'
    weights = [{k: next(found) for k in keys} for _, _, keys in keyed]
    gradients = [None if grads is None else {k: next(found) for k in keys}
                 for _, _, keys in keyed]
    rows = []
    for (i, layer, keys), w, g in zip(keyed, weights, gradients):
        own = {k: _values(None if g is None else [g[k]], [w[k]]) for k in keys}
        wk = layer.weight_keys                      # the row: its weight arrays together
        row: dict = {"layer": i, "name": f"{layer.kind}_{i}", **dict(zip(ROW_KEYS, own[
            wk[0]] if len(wk) == 1 else _values(None if g is None else [g[k] for k in wk],
                                                 [w[k] for k in wk])))}
        act = layer.act_values(outputs[i], caches[i])
        row.update(activation_stats(act, layer.stat_activation))
        row["params"] = [{"param": k, **dict(zip(ROW_KEYS, own[k]))} for k in keys]
        if traces is not None:
            row.update(traces[i])
        rows.append(row)
    return rows
