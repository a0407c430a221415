"""Initial weights, drawn from the run's init generator (seeded by (seed, 0)), and the parser of
a layer's `init` spec.

- uniform (the textbook's small random weights): W and b ~ U(-scale, scale), scale 0.1.
  Biases are drawn too: the textbook treats the bias as the weight w_0 of a constant input.
- glorot (Xavier uniform): W ~ U(-l, l), l = sqrt(6 / (fan_in + fan_out)); b = 0.
- he: distribution "normal" (default): W ~ N(0, 2 / fan_in); "uniform": W ~ U(-l, l),
  l = sqrt(6 / fan_in); b = 0.

A dense or conv2d layer without an `init` gets the one its activation wants
(default_init): glorot keeps the variance of sigmoid, tanh, linear and softmax units about
the same from layer to layer, forward and backward; he does it for ReLU, whose outputs are
zero half the time; step units (the perceptron) keep the textbook's uniform. With the
textbook's 0.1 a deep stack's signal shrinks by ~10x a layer: six ReLU layers kept a 1e5
gradient gap.

fan_in and fan_out are those of one output unit: a dense W (D, H) has fan_in D, fan_out H; a
conv2d W (F, C, kh, kw) has fan_in C kh kw and fan_out F kh kw.
"""
import math

import numpy as np

from . import fields as f

INIT_DEFAULTS: dict = {"uniform": {"scale": 0.1}, "glorot": {}, "he": {"distribution": "normal"}}
# The largest uniform scale: weights beyond it are infinite in float32 (max ~3.4e38), and
# U(-scale, scale) itself overflows a float64 from ~9e307; no network learns from such weights.
MAX_SCALE = 1e38


def default_init(activation: str) -> dict:
    """The init of a dense or conv2d layer of this activation that names none."""
    if activation == "relu":
        return {"type": "he"}
    if activation == "step":
        return {"type": "uniform"}
    return {"type": "glorot"}


def parse_init(spec, path: str, default: dict) -> dict:
    """A layer's `init` object (None: `default`) -> the normalised init, every field filled in."""
    if spec is None:
        spec = default
    kind = f.choice(f.obj(spec, path, {"type", "scale", "distribution"}), "type", path,
                    tuple(INIT_DEFAULTS))
    d = INIT_DEFAULTS[kind]
    f.obj(spec, path, {"type", *d})
    out: dict = {"type": kind}
    if kind == "uniform":
        out["scale"] = f.number(spec, "scale", path, d["scale"], lo=0, lo_open=True,
                                hi=MAX_SCALE)
    elif kind == "he":
        out["distribution"] = f.choice(spec, "distribution", path, ("normal", "uniform"),
                                       d["distribution"])
    return out


def init_weights(shape: tuple[int, ...], fan_in: int, fan_out: int, spec: dict,
                 rng: np.random.Generator) -> np.ndarray:
    """A weight array of `shape` (float64) drawn as `spec` says."""
    kind = spec["type"]
    if kind == "uniform":
        s = spec["scale"]
        return rng.uniform(-s, s, shape)
    if kind == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)
    if kind == "he" and spec["distribution"] == "normal":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if kind == "he":
        limit = math.sqrt(6.0 / fan_in)
        return rng.uniform(-limit, limit, shape)
    raise ValueError(f"unknown init {kind!r}")


def init_bias(n: int, spec: dict, rng: np.random.Generator) -> np.ndarray:
    """b: (n,) ~ U(-scale, scale) for the uniform init (the textbook's w_0), else zeros."""
    if spec["type"] == "uniform":
        return rng.uniform(-spec["scale"], spec["scale"], n)
    return np.zeros(n)


def init_dense(n_in: int, n_out: int, spec: dict, rng: np.random.Generator,
               dtype: np.dtype) -> dict[str, np.ndarray]:
    """-> {"W": (n_in, n_out), "b": (n_out,)} in dtype (W drawn first, then b)."""
    W = init_weights((n_in, n_out), n_in, n_out, spec, rng)
    b = init_bias(n_out, spec, rng)
    return {"W": W.astype(dtype), "b": b.astype(dtype)}
