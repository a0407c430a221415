"""A trained model as an ONNX graph for inference (GET /v1/runs/{run_id}/weights as
application/onnx), written with the `onnx` package.

The graph computes what `nn.Model.predict` puts in `outputs`: the input standardisation the
run fitted (training.standardize), then every layer in eval mode (dropout scales by its keep
probability), in float32 whatever dtype the run trained in.

- input `inputs`: float32 (N, *input_shape), N dynamic; token ids as float32 values too (an
  embedding casts them), so every model is called alike.
- output `outputs`: float32 (N, *output_shape); a softmax output is the probabilities.
- opset 17 (IR version 8): the first with LayerNormalization, and old enough that every
  current runtime loads it. Attention is spelt out in MatMul/Softmax (the Attention op is
  opset 23); rnn and lstm are ONNX's RNN and LSTM ops.
- metadata_props: `task`, `classes` (JSON: output column k is classes[k]) and `input_shape`.

One exporter per layer type in EXPORTERS, each (graph, x, layer, params) -> the name of its
output; a layer type without one is a NotExportable naming the layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import nn
from nn.layers import Layer

OPSET = 17
IR_VERSION = 8
MEDIA_TYPE = "application/onnx"
INPUT, OUTPUT = "inputs", "outputs"

Params = dict[str, np.ndarray]


class NotExportable(Exception):
    """Layer `index` (`what`: its type, and its activation if that is the reason) has no
    ONNX exporter."""

    def __init__(self, index: int, what: str, path: str | None = None) -> None:
        self.path = path or f"network.layers[{index}]"
        super().__init__(f"{self.path} ({what}) has no ONNX export")


class Graph:
    """Nodes and initializers being collected, each under a fresh name that starts with
    `prefix` (the layer's, e.g. "layers.2.", so that a viewer shows where it came from)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.prefix = ""
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initializer holding value (weights are float32; shapes and ids int64)."""
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs) -> list[str]:
        """One node with several outputs; -> their names."""
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """One node; -> its output's name."""
        return self.ops(op_type, *inputs, outputs=1, **attrs)[0]


# -- activations: z -> f(z), as nn/activations.py defines them -------------------------------

ACTIVATIONS: dict[str, Callable[[Graph, str], str]] = {
    "sigmoid": lambda g, z: g.op("Sigmoid", z),
    "tanh": lambda g, z: g.op("Tanh", z),
    "relu": lambda g, z: g.op("Relu", z),
    "linear": lambda g, z: z,
    "softmax": lambda g, z: g.op("Softmax", z, axis=-1),
    "step": lambda g, z: g.op("Cast", g.op("GreaterOrEqual", z, g.const(0.0)),
                              to=TensorProto.FLOAT),
}
# ONNX's RNN op takes its activation by name; "Affine" with alpha 1, beta 0 is the identity.
RNN_ACTIVATIONS = {"tanh": ("Tanh", {}), "sigmoid": ("Sigmoid", {}), "relu": ("Relu", {}),
                   "linear": ("Affine", {"activation_alpha": [1.0], "activation_beta": [0.0]})}


def _activate(g: Graph, z: str, name: str) -> str:
    return ACTIVATIONS[name](g, z)


# -- the building blocks: what several layer types share ------------------------------------

def _affine(g: Graph, x: str, W: np.ndarray, b: np.ndarray) -> str:
    """x (N, [T,] D) @ W (D, H) + b: MatMul broadcasts over the time axis (Gemm would not)."""
    return g.op("Add", g.op("MatMul", x, g.const(W, "W")), g.const(b, "b"))


def _reshape(g: Graph, x: str, shape: tuple[int, ...]) -> str:
    """x (N, ...) -> (N, *shape); the 0 copies the dynamic batch axis."""
    return g.op("Reshape", x, g.const([0, *shape], "shape", np.int64))


def _images(g: Graph, x: str, in_shape: tuple[int, ...]) -> str:
    """(N, H, W) -> (N, 1, H, W), as nn/layers/base.py image_shape reads an image."""
    return _reshape(g, x, (1, *in_shape)) if len(in_shape) == 2 else x


def _layer_norm(g: Graph, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float) -> str:
    return g.op("LayerNormalization", x, g.const(gamma, "gamma"), g.const(beta, "beta"),
                axis=-1, epsilon=eps)


def _attention(g: Graph, x: str, p: Params, T: int, heads: int, causal: bool) -> str:
    """nn/layers/self_attention.py: x (N, T, D) -> (N, T, D)."""
    D = p["Wq"].shape[0]
    d = D // heads

    def split(m: str, perm: list[int]) -> str:              # (N, T, D) -> heads, permuted
        return g.op("Transpose", _reshape(g, m, (T, heads, d)), perm=perm)

    q = split(_affine(g, x, p["Wq"], p["bq"]), [0, 2, 1, 3])   # (N, h, T, d)
    kt = split(_affine(g, x, p["Wk"], p["bk"]), [0, 2, 3, 1])  # (N, h, d, T)
    v = split(_affine(g, x, p["Wv"], p["bv"]), [0, 2, 1, 3])
    s = g.op("Div", g.op("MatMul", q, kt), g.const(math.sqrt(d), "sqrt_d"))
    if causal:                                                 # keys j <= query i
        s = g.op("Where", g.const(np.tri(T, dtype=bool), "causal", bool), s,
                 g.const(-np.inf, "minus_inf"))
    ctx = g.op("Transpose", g.op("MatMul", g.op("Softmax", s, axis=-1), v), perm=[0, 2, 1, 3])
    return _affine(g, _reshape(g, ctx, (T, D)), p["Wo"], p["bo"])


def _iofc(m: np.ndarray) -> np.ndarray:
    """Gate blocks along the last axis from nn's order i, f, g, o to ONNX's i, o, f, c."""
    i, f, c, o = np.split(m, 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1)


def _recurrent(g: Graph, x: str, layer: Layer, p: Params, op_type: str,
               gates: Callable[[np.ndarray], np.ndarray], **attrs) -> str:
    """ONNX's RNN / LSTM op, which takes time-major (T, N, D), W (1, G H, D), R (1, G H, H)
    and B (1, 2 G H) = the input's and the recurrence's biases (ours is one: the second 0)."""
    H = layer.spec["units"]
    W, R = g.const(gates(p["Wx"]).T[None], "W"), g.const(gates(p["Wh"]).T[None], "R")
    b = gates(p["b"])
    B = g.const(np.concatenate([b, np.zeros_like(b)])[None], "B")
    y, y_h = g.ops(op_type, g.op("Transpose", x, perm=[1, 0, 2]), W, R, B, outputs=2,
                   hidden_size=H, **attrs)
    if layer.spec["return_sequences"]:                         # Y (T, 1, N, H) -> (N, T, H)
        return g.op("Transpose", g.op("Squeeze", y, g.const([1], "axes", np.int64)),
                    perm=[1, 0, 2])
    return g.op("Squeeze", y_h, g.const([0], "axes", np.int64))   # Y_h (1, N, H) -> (N, H)


# -- one exporter per layer type -------------------------------------------------------------

def _dense(g: Graph, x: str, layer: Layer, p: Params) -> str:
    return _activate(g, _affine(g, x, p["W"], p["b"]), layer.activation)


def _conv2d(g: Graph, x: str, layer: Layer, p: Params) -> str:
    (ph, pw), s = layer.spec["padding"], layer.spec["stride"]
    z = g.op("Conv", _images(g, x, layer.in_shape), g.const(p["W"], "W"), g.const(p["b"], "b"),
             kernel_shape=layer.spec["kernel_size"], strides=s, pads=[ph, pw, ph, pw])
    return _activate(g, z, layer.activation)


def _pool(op_type: str) -> Callable[[Graph, str, Layer, Params], str]:
    def export(g: Graph, x: str, layer: Layer, p: Params) -> str:
        out = g.op(op_type, _images(g, x, layer.in_shape), kernel_shape=layer.spec["pool_size"],
                   strides=layer.spec["stride"])
        return _reshape(g, out, layer.out_shape) if len(layer.in_shape) == 2 else out
    return export


def _dropout(g: Graph, x: str, layer: Layer, p: Params) -> str:
    return g.op("Mul", x, g.const(1.0 - layer.spec["drop_prob"], "keep"))   # eval: x keep


def _rnn(g: Graph, x: str, layer: Layer, p: Params) -> str:
    name, attrs = RNN_ACTIVATIONS[layer.activation]
    return _recurrent(g, x, layer, p, "RNN", lambda m: m, activations=[name], **attrs)


def _lstm(g: Graph, x: str, layer: Layer, p: Params) -> str:
    return _recurrent(g, x, layer, p, "LSTM", _iofc)           # sigmoid, tanh, tanh: ours


def _embedding(g: Graph, x: str, layer: Layer, p: Params) -> str:
    ids = g.op("Cast", x, to=TensorProto.INT64)                # float ids, as predict takes
    return g.op("Gather", g.const(p["E"], "E"), ids, axis=0)


def _positional_encoding(g: Graph, x: str, layer: Layer, p: Params) -> str:
    return g.op("Add", x, g.const(p["P"] if layer.learned else layer.table, "P"))


def _self_attention(g: Graph, x: str, layer: Layer, p: Params) -> str:
    return _attention(g, x, p, layer.in_shape[0], layer.spec["heads"], layer.spec["causal"])


def _transformer_encoder(g: Graph, x: str, layer: Layer, p: Params) -> str:
    """nn/layers/transformer_encoder.py, pre- or post-norm."""
    s, T, eps = layer.spec, layer.in_shape[0], layer.EPS

    def ln(m: str, tag: str) -> str:
        return _layer_norm(g, m, p[f"{tag}_gamma"], p[f"{tag}_beta"], eps)

    def attend(m: str) -> str:
        return _attention(g, m, p, T, s["heads"], s["causal"])

    def ffn(m: str) -> str:
        u = _activate(g, _affine(g, m, p["W1"], p["b1"]), s["activation"])
        return _affine(g, u, p["W2"], p["b2"])

    if s["norm"] == "pre":
        x1 = g.op("Add", x, attend(ln(x, "ln1")))
        return g.op("Add", x1, ffn(ln(x1, "ln2")))
    x1 = ln(g.op("Add", x, attend(x)), "ln1")
    return ln(g.op("Add", x1, ffn(x1)), "ln2")


def _sequence_pool(g: Graph, x: str, layer: Layer, p: Params) -> str:
    mode = layer.spec["mode"]
    if mode == "last":                                         # a scalar index drops the axis
        return g.op("Gather", x, g.const(layer.in_shape[0] - 1, "last", np.int64), axis=1)
    return g.op("ReduceMean" if mode == "mean" else "ReduceMax", x, axes=[1], keepdims=0)


EXPORTERS: dict[str, Callable[[Graph, str, Layer, Params], str]] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "maxpool2d": _pool("MaxPool"),
    "avgpool2d": _pool("AveragePool"),
    "flatten": lambda g, x, layer, p: g.op("Flatten", x, axis=1),
    "dropout": _dropout,
    "rnn": _rnn,
    "lstm": _lstm,
    "embedding": _embedding,
    "layer_norm": lambda g, x, layer, p: _layer_norm(g, x, p["gamma"], p["beta"],
                                                     layer.spec["eps"]),
    "positional_encoding": _positional_encoding,
    "self_attention": _self_attention,
    "transformer_encoder": _transformer_encoder,
    "sequence_pool": _sequence_pool,
}


def check_exportable(model: nn.Model) -> None:
    """NotExportable naming the first layer without an exporter for its type or activation,
    or the decoder of an encoder-decoder network (decoding is a loop over steps, not one
    graph from inputs to outputs)."""
    if model.encoder_layers:
        raise NotExportable(model.encoder_layers, "an encoder-decoder network's decoder",
                            path="network.decoder")
    for i, layer in enumerate(model.layers):
        if layer.kind not in EXPORTERS:
            raise NotExportable(i, layer.kind)
        act = layer.activation or "linear"
        if act not in (RNN_ACTIVATIONS if layer.kind == "rnn" else ACTIVATIONS):
            raise NotExportable(i, f"{layer.kind} with activation {act}")


def to_onnx(model: nn.Model, name: str = "backprop-service model") -> onnx.ModelProto:
    """The model as an ONNX graph from `inputs` (N, *input_shape) to `outputs`
    (N, *output_shape), both float32; NotExportable for a layer without an exporter."""
    check_exportable(model)
    g = Graph()
    x = INPUT
    if model.meta["standardize"] is not None:                 # as nn/data.py standardize
        mean, std = model.meta["standardize"]["mean"], model.meta["standardize"]["std"]
        x = g.op("Div", g.op("Sub", x, g.const(mean, "mean")), g.const(std, "std"))
    for i, (layer, params) in enumerate(zip(model.layers, model.weights)):
        g.prefix = f"layers.{i}."
        x = EXPORTERS[layer.kind](g, x, layer, params)
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT], name=OUTPUT))
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                       ["N", *model.meta["input_shape"]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                       ["N", *model.layers[-1].out_shape])],
        g.initializers)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            ir_version=IR_VERSION, producer_name="backprop-service")
    helper.set_model_props(out, {"task": model.meta["task"],
                                 "classes": json.dumps(model.meta["classes"]),
                                 "input_shape": json.dumps(model.meta["input_shape"])})
    return out
