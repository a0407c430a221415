"""The fully connected layer with its activation: a = f(x @ W + b).

params: {"W": (D, H), "b": (H,)}. x: (N, D) -> a: (N, H); on a sequence (N, T, D) the same W
applies at every time step (the matmul acts on the last axis) -> (N, T, H). The activation is
part of the layer because the spec puts it there; ``backward_z`` starts from dL/dz for the
fused softmax/sigmoid + cross-entropy gradients.
"""
import math
from typing import NamedTuple

import numpy as np

from ..activations import ACTIVATIONS
from ..errors import SpecError
from ..init import default_init, init_dense
from .base import Cost, Layer, Params, Shape, activation, init_spec, plain_infer, units


class DenseCache(NamedTuple):
    x: np.ndarray        # (N, [T,] D) input
    W: np.ndarray        # (D, H)
    z: np.ndarray        # (N, [T,] H) pre-activation
    a: np.ndarray        # (N, [T,] H) output
    activation: str


def forward(x: np.ndarray, params: dict[str, np.ndarray], activation: str
            ) -> tuple[np.ndarray, DenseCache]:
    """x: (N, D) or (N, T, D) -> a: (N, H) or (N, T, H)."""
    W = params["W"]
    z = x @ W
    z += params["b"]
    a = ACTIVATIONS[activation].forward(z)
    return a, DenseCache(x, W, z, a, activation)


def backward(da: np.ndarray, cache: DenseCache, need_dx: bool = True
             ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """da: dL/da -> dx, grads {"W": (D, H), "b": (H,)}."""
    act_backward = ACTIVATIONS[cache.activation].backward
    if act_backward is None:
        raise ValueError(f"activation {cache.activation!r} has no gradient")
    return backward_z(act_backward(da, cache.z, cache.a), cache, need_dx)


def backward_z(dz: np.ndarray, cache: DenseCache, need_dx: bool = True
               ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """dz = dL/dz -> dx, grads.  z = x W + b: dW = x^T dz, db = sum_n dz, dx = dz W^T
    (sums over time steps too: the same W acts at every step)."""
    D, H = cache.W.shape
    dz2 = dz.reshape(-1, H)
    dx = dz @ cache.W.T if need_dx else None
    return dx, {"W": cache.x.reshape(-1, D).T @ dz2, "b": np.add.reduce(dz2, axis=0)}


class Dense(Layer):
    kind = "dense"
    REQUIRED = ("units",)
    DEFAULTS = {"activation": "sigmoid", "init": None}     # init None: by the activation
    weight_keys = ("W",)

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Dense":
        if len(in_shape) > 2:
            raise SpecError(path, f"dense needs (D,) or (T, D) input but gets {in_shape}; "
                                  "add a flatten layer before it")
        n = units(spec, path)
        act = activation(spec, path, cls.DEFAULTS["activation"])
        init = init_spec(spec, path, default_init(act))
        normal = {"type": cls.kind, "units": n, "activation": act, "init": init}
        return cls(normal, in_shape, (*in_shape[:-1], n))

    @property
    def units(self) -> int:
        return self.spec["units"]

    def param_shapes(self) -> dict[str, Shape]:
        return {"W": (self.in_shape[-1], self.units), "b": (self.units,)}

    def cost(self) -> Cost:
        """P positions (1, or T time steps): z and a kept; backward the incoming da, two
        temporaries of the activation's derivative, dz, and dx."""
        d, h = self.in_shape[-1], self.units
        p = math.prod(self.in_shape[:-1])
        return Cost(p * d * h, 2 * p * h, 4 * p * h + p * d, 17, plain_infer(self))

    def init(self, rng: np.random.Generator, dtype) -> Params:
        return init_dense(self.in_shape[-1], self.units, self.spec["init"], rng, dtype)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params, self.activation)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache, need_dx)

    def backward_z(self, dz: np.ndarray, cache: DenseCache, need_dx: bool = True):
        """From dL/dz of the output layer (the fused cross-entropies)."""
        return backward_z(dz, cache, need_dx)

