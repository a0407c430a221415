"""A network is a list of layers run in order: forward over them, backward in reverse.

Weights = list[dict[str, ndarray]], one dict per layer in spec order ({} for layers without
parameters). Layers are nn/layers' Layer objects; nothing here asks which type a layer is.
"""
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


def evaluate(layers: list[Layer], params: Weights, x: np.ndarray) -> np.ndarray:
    """x: (N, *input_shape) -> out: (N, *output_shape), in eval mode, each layer's cache let
    go as soon as it returns: the peak is one layer's (infer_values), not the sum of every
    cache that training keeps for backward."""
    for layer, p in zip(layers, params):
        x, _ = layer.forward(x, p, train=False)
    return x


def infer_values(layers: list[Layer] | tuple[Layer, ...]) -> int:
    """Values per sample at the peak of an eval-mode forward pass over layers that lets each
    cache go as soon as its layer returns: the largest Cost.infer (one layer runs at a
    time, and holds its input and output)."""
    return max((layer.cost().infer for layer in layers), default=0)


def infer(layers: list[Layer], params: Weights, x: np.ndarray, rows: int, *,
          z: bool = False) -> np.ndarray:
    """Eval-mode forward over x (N, *input_shape) in chunks of `rows` samples -> the outputs
    (N, *output_shape), or with z the output layer's pre-activations: the memory of one
    chunk's activations, however large N (x itself without layers)."""
    if not layers:
        return x
    result = None
    for s in range(0, max(len(x), 1), rows):
        out, caches = forward(layers, params, x[s:s + rows], train=False)
        part = output_z(caches) if z else out
        if len(part) == len(x):
            return part
        if result is None:
            result = np.empty((len(x), *part.shape[1:]), part.dtype)
        result[s:s + rows] = part
    return result


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
