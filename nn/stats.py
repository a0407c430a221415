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
        saturated = np.count_nonzero(np.abs(a - 0.5) > 0.49) / a.size   # a < .01 or a > .99
    elif activation == "tanh":
        saturated = np.count_nonzero(np.abs(a) > 0.99) / a.size
    elif activation == "relu":
        dead = (a.size - np.count_nonzero(a)) / a.size
    return {"act_mean": float(np.add.reduce(a, axis=None)) / a.size,
            "act_saturated_fraction": saturated, "act_dead_fraction": dead}


def layer_stats(layers, params, grads, caches) -> list[dict]:
    """One row per dense layer; grads may be None (perceptron). caches from the probe forward."""
    rows = []
    for i, layer in enumerate(layers):
        if layer.kind != "dense":
            continue
        row: dict = {"layer": i, "name": f"dense_{i}"}
        if grads is not None:
            row.update(summary("grad", grads[i]["W"].astype(np.float64, copy=False)))
        else:
            row.update(dict.fromkeys(("grad_mean_abs", "grad_norm", "grad_max_abs", "grad_std")))
        row.update(summary("weight", params[i]["W"].astype(np.float64, copy=False)))
        row.update(activation_stats(caches[i].a, layer.activation))
        rows.append(row)
    return rows
