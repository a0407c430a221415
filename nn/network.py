"""A network is a list of layers run in order: forward over them, backward in reverse.

Weights = list[dict[str, ndarray]], one dict per layer in spec order ({} for dropout).
"""
from dataclasses import dataclass, field

import numpy as np

from .init import init_dense
from .layers import dense, dropout

Weights = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class LayerSpec:
    """One normalised layer: kind "dense" (n_in -> n_out, activation, init) or "dropout"."""
    kind: str
    n_in: int
    n_out: int
    activation: str | None = None
    init: dict = field(default_factory=dict)
    drop_prob: float = 0.0

    @property
    def n_params(self) -> int:
        return (self.n_in + 1) * self.n_out if self.kind == "dense" else 0


def init_params(layers: list[LayerSpec], rng: np.random.Generator, dtype) -> Weights:
    """Initial weights, drawn layer by layer from rng."""
    return [init_dense(l.n_in, l.n_out, l.init, rng, dtype) if l.kind == "dense" else {}
            for l in layers]


def forward(layers: list[LayerSpec], params: Weights, x: np.ndarray, *, train: bool,
            rng: np.random.Generator | None = None) -> tuple[np.ndarray, list]:
    """x: (N, D) -> out: (N, K) and one cache per layer. Dropout draws its masks from rng."""
    caches = []
    for layer, p in zip(layers, params):
        if layer.kind == "dense":
            x, cache = dense.forward(x, p, layer.activation)
        else:
            x, cache = dropout.forward(x, layer.drop_prob, train=train, rng=rng)
        caches.append(cache)
    return x, caches


def backward(layers: list[LayerSpec], dout: np.ndarray, caches: list, *,
             wrt_z: bool) -> Weights:
    """dout: dL/d(output), or dL/dz of the output layer when wrt_z (fused losses) -> grads."""
    grads: Weights = [{} for _ in layers]
    d = dout
    for i in range(len(layers) - 1, -1, -1):
        need_dx = i > 0
        if layers[i].kind == "dense":
            if wrt_z and i == len(layers) - 1:
                d, grads[i] = dense.backward_z(d, caches[i], need_dx)
            else:
                d, grads[i] = dense.backward(d, caches[i], need_dx)
        elif need_dx:
            d, grads[i] = dropout.backward(d, caches[i])
    return grads


def output_z(caches: list) -> np.ndarray:
    """The output layer's pre-activation z (the last layer is always dense)."""
    return caches[-1].z


def copy_weights(w: Weights) -> Weights:
    return [{k: v.copy() for k, v in p.items()} for p in w]
