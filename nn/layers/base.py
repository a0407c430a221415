"""The layer protocol every layer type implements, and the spec helpers they share.

A layer object is one normalised layer spec bound to the per-sample shape it receives (shapes
never include the batch axis N). The math lives in each module's plain functions, CS231n
style (`forward(x, params, ...) -> (out, cache)`, `backward(dout, cache) -> (dx, grads)`,
grads with the same keys as params); the class adapts them to one interface, so the network,
the spec parser, the weights checks and the statistics never ask which type a layer is.
The registry of types is nn/layers/__init__.py.
"""
import math
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .. import fields as f
from ..activations import ACTIVATIONS
from ..errors import SpecError
from ..init import init_bias, init_weights, parse_init

Shape = tuple[int, ...]
Params = dict[str, np.ndarray]

MAX_UNITS = 100_000          # units, filters, dims: the same bound as a dense layer's units


class Cost(NamedTuple):
    """What one sample costs a layer in a training step of the layer-by-layer path, and in
    an eval-mode forward pass (counts of values, not bytes; nn/budget.py turns them into a
    run's estimate, nn/model.py into a prediction's). Counted from the module's own code,
    rounded up where NumPy may or may not make a temporary, with a boolean or an index
    array counted as one value.

    macs: forward multiply-adds (the matrix products: every output position of a
      convolution, every time step of a sequence, attention's T x T scores; 0 for layers
      that only move, compare or scale values). A backward pass does about twice as many.
    kept: values the layer allocates in forward and keeps until backward (its output and
      its cache's own arrays; the input it keeps is the layer before's output).
    scratch: values alive at once beyond those while the layer runs forward or backward
      (temporaries, the incoming gradient and the dx it returns): only one layer runs at a
      time, so a step needs the sum of `kept` and the largest `scratch`.
    calls: what a batch costs it besides, whatever its size: its NumPy calls forward and
      backward (a recurrent layer's at each of its T steps), counted from its code and
      scaled to their time: a call is about 0.6 us of NumPy's per-call cost with Python's
      around it (bench/BUDGET.md measures each type's).
    infer: values alive at the peak of one eval-mode forward pass of the layer, its cache
      let go once it returns (nn/network.py's infer): its input, its output, its cache and
      its temporaries. Only one layer runs at a time, so an evaluation needs the largest
      (network.infer_values); checked against measured peaks in tests/nn/test_layers.py.
    """
    macs: int
    kept: int
    scratch: int
    calls: int
    infer: int


class Layer:
    """One layer: its normalised spec, its input and output shapes, and its math."""
    kind: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()     # spec fields without a default
    DEFAULTS: ClassVar[dict] = {}                # the other fields and their defaults
    weight_keys: ClassVar[tuple[str, ...]] = ()  # what its statistics row summarises
    decay_keys: ClassVar[tuple[str, ...] | None] = None   # weight decay; None: weight_keys
    first_only: ClassVar[bool] = False           # must be network.layers[0]
    # forward also takes key_mask= (N, T) bool, False = PAD: masked out of attention's keys
    masks_keys: ClassVar[bool] = False
    # a decoder layer (transformer_decoder): parse also takes memory_shape= (T_src, D_m),
    # forward memory= (N, T_src, D_m), src_mask=, tgt_mask=; backward returns
    # (dx, dmemory, grads) and backward_traced (dx, dmemory, grads, trace)
    takes_memory: ClassVar[bool] = False

    def __init__(self, spec: dict, in_shape: Shape, out_shape: Shape) -> None:
        self.spec = spec
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    @classmethod
    def fields(cls) -> set[str]:
        return {"type", *cls.REQUIRED, *cls.DEFAULTS}

    @classmethod
    def parse(cls, spec: dict, in_shape: Shape, path: str) -> "Layer":
        """A spec (keys already checked against fields()) -> the layer; SpecError if bad."""
        raise NotImplementedError

    @property
    def activation(self) -> str | None:
        return self.spec.get("activation")

    @property
    def stat_activation(self) -> str | None:
        """The activation whose saturated / dead fractions its statistics row reports."""
        return self.activation

    def param_shapes(self) -> dict[str, Shape]:
        return {}

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def cost(self) -> Cost:
        """Per sample (Cost). This default fits a layer without products that makes its
        output in a call and, backward, a dx beside the incoming gradient in another."""
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        return Cost(0, n_out, n_in + n_out, 2, plain_infer(self))

    def decayed(self) -> tuple[str, ...]:
        return self.weight_keys if self.decay_keys is None else self.decay_keys

    def init(self, rng: np.random.Generator, dtype) -> Params:
        return {}

    def check_inputs(self, x: np.ndarray, path: str = "inputs") -> None:
        """SpecError when data x (N, *in_shape) cannot be this first layer's input (an
        embedding's token ids must be integers in range)."""

    def forward(self, x: np.ndarray, params: Params, *, train: bool,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def backward(self, dout: np.ndarray, cache: Any, need_dx: bool = True
                 ) -> tuple[np.ndarray | None, Params]:
        raise NotImplementedError

    def backward_traced(self, dout: np.ndarray, cache: Any, need_dx: bool = True
                        ) -> tuple[np.ndarray | None, Params, dict]:
        """backward, plus what the statistics report beyond the gradients (rnn, lstm)."""
        dx, grads = self.backward(dout, cache, need_dx)
        return dx, grads, {}

    def act_values(self, out: np.ndarray, cache: Any) -> np.ndarray:
        """The activations its statistics row describes (rnn: every h_t, not just the last)."""
        return out

    def __repr__(self) -> str:
        return f"<{self.kind} {self.in_shape} -> {self.out_shape}>"


def plain_infer(layer: Layer) -> int:
    """Cost.infer of a layer that makes its output in a call or two: its input, z, its
    output and one temporary of the activation (or a copy of a non-contiguous input)."""
    return math.prod(layer.in_shape) + 3 * math.prod(layer.out_shape)


def shape_error(path: str, kind: str, need: str, got: Shape, hint: str = "") -> SpecError:
    return SpecError(path, f"{kind} needs {need} input but gets {tuple(got)}{hint}")


def image_shape(in_shape: Shape, kind: str, path: str) -> Shape:
    """(C, H, W), or (H, W) read as C = 1."""
    if len(in_shape) == 3:
        return in_shape
    if len(in_shape) == 2:
        return (1, *in_shape)
    raise shape_error(path, kind, "(C, H, W) or (H, W)", in_shape)


def sequence_shape(in_shape: Shape, kind: str, path: str) -> Shape:
    """(T, D): T time steps of D features."""
    if len(in_shape) != 2:
        hint = "; give each time step a feature axis, (T, 1)" if len(in_shape) == 1 else ""
        raise shape_error(path, kind, "(T, D)", in_shape, hint)
    return in_shape


def pair(spec: dict, key: str, path: str, default=f.MISSING, lo: int = 1,
         hi: int = MAX_UNITS) -> list[int]:
    """An int n (meaning [n, n]) or a list [a, b] of ints in [lo, hi] -> [a, b]."""
    v = f.get(spec, key, path, default)
    items = v if isinstance(v, list) else [v, v]
    if len(items) != 2 or not all(isinstance(i, int) and not isinstance(i, bool)
                                  and lo <= i <= hi for i in items):
        raise SpecError(f"{path}.{key}", f"must be an integer in [{lo}, {hi}] or a list of two "
                                         f"such integers, got {v!r}")
    return list(items)


def units(spec: dict, path: str, key: str = "units") -> int:
    return f.integer(spec, key, path, lo=1, hi=MAX_UNITS)


def activation(spec: dict, path: str, default: str, options: tuple[str, ...] | None = None
               ) -> str:
    return f.choice(spec, "activation", path, options or tuple(ACTIVATIONS), default)


def init_spec(spec: dict, path: str, default: dict) -> dict:
    return parse_init(spec.get("init"), f"{path}.init", default)


def matrix(shape: Shape, init: dict, rng: np.random.Generator, dtype) -> np.ndarray:
    """A weight matrix (fan_in, fan_out) drawn as `init` says."""
    return init_weights(shape, shape[0], shape[1], init, rng).astype(dtype)


def bias(n: int, init: dict, rng: np.random.Generator, dtype) -> np.ndarray:
    return init_bias(n, init, rng).astype(dtype)
