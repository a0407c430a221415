"""Embedding: integer token ids -> rows of a learned table, out[n, t] = E[x[n, t]].

params: {"E": (vocab_size, dim)}. x: (N, T) token ids in [0, vocab_size) (integer-valued floats,
as the inputs arrive) -> (N, T, dim). It must be the first layer: the ids are data, not
activations, so there is no dx. The ids are checked against vocab_size when the plan is built
(DataInfo.token_range), and again by train() and Model.predict (SpecError "inputs").
"""
import numpy as np

from .. import fields as f
from ..errors import SpecError
from .base import (Cost, Layer, Params, Shape, init_spec, matrix, plain_infer, shape_error,
                   units)

MAX_VOCAB = 1_000_000


def forward(x: np.ndarray, params: Params) -> tuple[np.ndarray, tuple]:
    """x: (N, T) ids -> (N, T, dim)."""
    idx = x.astype(np.intp)
    return params["E"][idx], (idx, params["E"].shape)


def backward(dout: np.ndarray, cache: tuple) -> tuple[None, Params]:
    """out = E[idx]: row E[v] gets the sum of the gradients at the positions holding v."""
    idx, shape = cache
    dE = np.zeros(shape, dtype=dout.dtype)
    np.add.at(dE, idx.ravel(), dout.reshape(-1, shape[1]))
    return None, {"E": dE}


def check_ids(x: np.ndarray, vocab_size: int, path: str = "inputs") -> None:
    """SpecError unless every value of x is an integer in [0, vocab_size)."""
    if x.size and (not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() >= vocab_size):
        raise SpecError(path, f"the first layer is an embedding: inputs must be integer token "
                              f"ids in [0, {vocab_size})")


class Embedding(Layer):
    kind = "embedding"
    REQUIRED = ("vocab_size", "dim")
    DEFAULTS = {"init": {"type": "uniform", "scale": 1.0}}
    weight_keys = ("E",)
    first_only = True

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Embedding":
        if len(in_shape) != 1:
            raise shape_error(path, cls.kind, "(T,) token ids", in_shape)
        vocab = f.integer(spec, "vocab_size", path, lo=1, hi=MAX_VOCAB)
        dim = units(spec, path, "dim")
        init = init_spec(spec, path, cls.DEFAULTS["init"])
        normal = {"type": cls.kind, "vocab_size": vocab, "dim": dim, "init": init}
        return cls(normal, in_shape, (in_shape[0], dim))

    def param_shapes(self) -> dict[str, Shape]:
        return {"E": (self.spec["vocab_size"], self.spec["dim"])}

    def init(self, rng, dtype):
        return {"E": matrix(self.param_shapes()["E"], self.spec["init"], rng, dtype)}

    def cost(self) -> Cost:
        """The ids as indices and the rows looked up kept; backward the incoming gradient
        (dE is a parameter-sized gradient, and there is no dx)."""
        T, dim = self.in_shape[0], self.spec["dim"]
        return Cost(0, T + T * dim, T * dim, 5, plain_infer(self))

    def check_inputs(self, x, path="inputs"):
        check_ids(x, self.spec["vocab_size"], path)

    def forward(self, x, params, *, train, rng=None):
        return forward(x, params)

    def backward(self, dout, cache, need_dx=True):
        return backward(dout, cache)

