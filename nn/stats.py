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


def _summary_or_none(prefix: str, arrays: list[np.ndarray] | None) -> dict:
    if arrays is None:
        return dict.fromkeys(f"{prefix}_{k}" for k in STAT_KEYS)
    flat = np.concatenate([a.astype(np.float64, copy=False).ravel() for a in arrays])
    return summary(prefix, flat)


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
    rows = []
    for i, layer in enumerate(layers):
        shapes = layer.param_shapes()
        if not shapes:
            continue
        g = None if grads is None else grads[i]
        keys = layer.weight_keys
        row: dict = {"layer": i, "name": f"{layer.kind}_{i}",
                     **_summary_or_none("grad", None if g is None else [g[k] for k in keys]),
                     **_summary_or_none("weight", [params[i][k] for k in keys])}
        act = layer.act_values(outputs[i], caches[i])
        row.update(activation_stats(act, layer.stat_activation))
        row["params"] = [{"param": k, **_summary_or_none("grad", None if g is None else [g[k]]),
                          **_summary_or_none("weight", [params[i][k]])} for k in shapes]
        if traces is not None:
            row.update(traces[i])
        rows.append(row)
    return rows
