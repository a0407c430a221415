"""A network is a list of layers run in order: forward over them, backward in reverse.

Weights = list[dict[str, ndarray]], one dict per layer in spec order ({} for layers without
parameters). Layers are nn/layers' Layer objects; nothing here asks which type a layer is.
"""
from collections.abc import Callable

import numpy as np

from .layers import Layer

Weights = list[dict[str, np.ndarray]]


def init_params(layers: list[Layer], rng: np.random.Generator, dtype) -> Weights:
    """Initial weights, drawn layer by layer from rng."""
    return [layer.init(rng, dtype) for layer in layers]


def forward(layers: list[Layer], params: Weights, x: np.ndarray, *, train: bool,
            rng: np.random.Generator | None = None, outputs: list | None = None
            ) -> tuple[np.ndarray, list]:
    """x: (N, *input_shape) -> out: (N, *output_shape) and one cache per layer. Dropout draws
    its masks from rng. outputs, when given, receives every layer's output."""
    caches = []
    for layer, p in zip(layers, params):
        x, cache = layer.forward(x, p, train=train, rng=rng)
        caches.append(cache)
        if outputs is not None:
            outputs.append(x)
    return x, caches


def infer(layers: list[Layer], params: Weights, x: np.ndarray, rows: int | None = None, *,
          z: bool = False, prepare: Callable[[np.ndarray], np.ndarray] | None = None
          ) -> np.ndarray:
    """Eval-mode forward over x (N, *input_shape) in chunks of `rows` samples (all at once
    without) -> the outputs (N, *output_shape), or with z the output layer's
    pre-activations; x itself without layers. Each layer's cache is let go as soon as the
    layer returns (the output layer's kept for z), so a chunk's peak is its rows times
    infer_values(layers), however large N. prepare, when given, makes each chunk of x into
    the first layer's input."""
    if not layers:
        return x
    result = None
    rows = rows or max(len(x), 1)
    for s in range(0, max(len(x), 1), rows):
        part = x[s:s + rows] if prepare is None else prepare(x[s:s + rows])
        for layer, p in zip(layers[:-1], params):
            part = layer.forward(part, p, train=False)[0]      # [0]: the cache goes at once
        part, cache = layers[-1].forward(part, params[-1], train=False)
        if z:
            part = output_z([cache])
        del cache                                  # not held through the next chunk
        if len(part) == len(x):
            return part
        if result is None:
            result = np.empty((len(x), *part.shape[1:]), part.dtype)
        result[s:s + rows] = part
    return result


def infer_values(layers: list[Layer] | tuple[Layer, ...]) -> int:
    """Values per sample at the peak of infer() over layers: the largest Cost.infer (one
    layer runs at a time, and holds its input and output)."""
    return max((layer.cost().infer for layer in layers), default=0)


def backward(layers: list[Layer], dout: np.ndarray, caches: list, *, wrt_z: bool,
             traces: list[dict] | None = None) -> Weights:
    """dout: dL/d(output), or dL/dz of the output layer when wrt_z (fused losses) -> grads.
    traces, when given (one dict per layer), receives what layers report beyond their
    gradients (the recurrent layers' grad_norm_by_time)."""
    grads: Weights = [{} for _ in layers]
    d = dout
    last = len(layers) - 1
    for i in range(last, -1, -1):
        layer, need_dx = layers[i], i > 0
        if not need_dx and not layer.param_shapes():
            break                                  # nothing left to compute
        if wrt_z and i == last:
            d, grads[i] = layer.backward_z(d, caches[i], need_dx)
        elif traces is not None:
            d, grads[i], traces[i] = layer.backward_traced(d, caches[i], need_dx)
        else:
            d, grads[i] = layer.backward(d, caches[i], need_dx)
    return grads


def output_z(caches: list) -> np.ndarray:
    """The output layer's pre-activation z (the last layer is always dense)."""
    return caches[-1].z


def copy_weights(w: Weights) -> Weights:
    return [{k: v.copy() for k, v in p.items()} for p in w]


def weights_finite(w: Weights) -> bool:
    return all(np.isfinite(v).all() for p in w for v in p.values())
