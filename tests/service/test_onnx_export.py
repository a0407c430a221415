"""The ONNX export run in onnxruntime against Model.predict, one network per layer type and
activation (models built from specs with random weights, not trained: every weight matters).

Tolerance: the graph is float32; predict of a float32 model computes in float32 too, but
onnxruntime sums in another order (its own matrix kernels, fused ops), so outputs differ by
float32 roundings (eps 1.2e-7) of sums of tens of terms of order 1: at most 2e-6 measured
here (8e-6 on outputs near 7 of a float64 model, which predict computes in float64).
rtol = atol = 1e-5 leaves room for that and still fails on any real mistake (a gate order,
a scale, a mask, a padding), which moves outputs by 1e-2 or more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import nn
from nn.activations import ACTIVATIONS
from nn.layers import LAYERS, Layer
from nn.layers.rnn import ACTIVATIONS_RNN
from nn.spec import parse_network
from service import onnx_export
from tests.procs import ROOT

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def dense(units: int, activation: str = "tanh") -> dict:
    return {"type": "dense", "units": units, "activation": activation}


def model_of(layers: list[dict], input_shape: tuple[int, ...], *, dtype: str = "float32",
             standardize: dict | None = None, classes: list | None = None) -> nn.Model:
    """A Model of these layer specs with their initial weights moved at random (so that
    biases, gains and a learned encoding are not their 0s and 1s)."""
    network = {"layers": layers}
    _, parsed = parse_network(network, input_shape)
    rng = np.random.default_rng(0)
    weights = [{k: (v + rng.normal(0, 0.3, v.shape)).astype(dtype)
                for k, v in layer.init(rng, dtype).items()} for layer in parsed]
    meta = {"format": nn.model.FORMAT, "task": "regression" if classes is None else
            "classification", "classes": classes, "loss": "squared_error",
            "algorithm": "backprop", "input_shape": list(input_shape), "target_dim": 1,
            "standardize": standardize, "dtype": dtype}
    return nn.Model(network, weights, meta)


def inputs_for(model: nn.Model, n: int = 7) -> np.ndarray:
    rng = np.random.default_rng(1)
    shape = (n, *model.meta["input_shape"])
    first = model.layers[0]
    if first.kind == "embedding":
        return rng.integers(0, first.spec["vocab_size"], shape).astype(np.float64)
    return rng.normal(0, 1.5, shape)


def run_onnx(model: nn.Model, x: np.ndarray) -> np.ndarray:
    proto = onnx_export.to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)          # types and shapes infer, too
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (out,) = session.run([onnx_export.OUTPUT], {onnx_export.INPUT: x.astype(np.float32)})
    return out


def assert_matches_predict(model: nn.Model, x: np.ndarray) -> None:
    got = run_onnx(model, x)
    expected = np.array(model.predict(x)["outputs"])
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOLERANCE)


SEQ = (5, 6)                                                   # (T, D)
OUT = dense(3, "linear")                  # the output layer (always dense) after the layer tested
FLAT = [{"type": "flatten"}, OUT]
CASES: dict[str, tuple[list[dict], tuple[int, ...]]] = {
    **{f"dense_{a}": ([dense(8), dense(4, a)], (3,)) for a in ACTIVATIONS},
    "dense_on_sequences": ([dense(4, "sigmoid"), OUT], SEQ),
    "dropout": ([dense(8, "relu"), {"type": "dropout", "drop_prob": 0.3}, OUT], (3,)),
    "cnn": ([{"type": "conv2d", "filters": 3, "kernel_size": [3, 2], "stride": [2, 1],
              "padding": [1, 0]},
             {"type": "maxpool2d"}, {"type": "flatten"}, dense(4, "softmax")], (2, 9, 8)),
    "conv2d_on_hw_sigmoid": ([{"type": "conv2d", "filters": 2, "kernel_size": 3,
                               "activation": "sigmoid"}, *FLAT], (6, 7)),
    "maxpool2d_on_hw_overlapping": ([{"type": "maxpool2d", "pool_size": [3, 2],
                                      "stride": [2, 1]}, *FLAT], (7, 6)),
    "avgpool2d_uneven": ([{"type": "avgpool2d", "pool_size": 2}, *FLAT], (2, 5, 7)),
    "avgpool2d_on_hw_overlapping": ([{"type": "avgpool2d", "pool_size": 3, "stride": 1},
                                     *FLAT], (5, 5)),
    **{f"rnn_{a}": ([{"type": "rnn", "units": 4, "activation": a}, OUT], SEQ)
       for a in ACTIVATIONS_RNN},
    "rnn_sequences": ([{"type": "rnn", "units": 4, "return_sequences": True}, OUT], SEQ),
    "lstm": ([{"type": "lstm", "units": 4}, OUT], SEQ),
    "lstm_sequences_stacked": ([{"type": "lstm", "units": 3, "return_sequences": True},
                                {"type": "lstm", "units": 2, "return_sequences": True}, OUT],
                               SEQ),
    "embedding_attention_causal": (
        [{"type": "embedding", "vocab_size": 11, "dim": 6}, {"type": "positional_encoding"},
         {"type": "self_attention", "heads": 3, "causal": True},
         {"type": "sequence_pool", "mode": "mean"}, dense(3, "softmax")], (5,)),
    "self_attention": ([{"type": "self_attention"}, OUT], SEQ),
    "positional_encoding_learned": ([{"type": "positional_encoding", "mode": "learned"}, OUT],
                                    SEQ),
    "layer_norm_sequences": ([{"type": "layer_norm", "eps": 1e-3}, OUT], SEQ),
    "layer_norm_vectors": ([dense(6), {"type": "layer_norm"}, OUT], (3,)),
    "transformer_pre_causal": ([{"type": "transformer_encoder", "heads": 2, "ff_units": 8,
                                 "causal": True}, OUT], SEQ),
    "transformer_post_tanh": ([{"type": "transformer_encoder", "norm": "post",
                                "activation": "tanh"}, OUT], SEQ),
    **{f"sequence_pool_{m}": ([{"type": "sequence_pool", "mode": m}, OUT], SEQ)
       for m in ("mean", "max", "last")},
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_layer_type_matches_predict(case: str) -> None:
    layers, shape = CASES[case]
    model = model_of(layers, shape)
    assert_matches_predict(model, inputs_for(model))


def test_every_layer_type_and_activation_has_a_case() -> None:
    """A layer type added to nn without an exporter would be a 406: add one here instead.
    transformer_decoder has none: it lives only in an encoder-decoder network, whose decoding
    is a loop over steps and is refused as a whole (tests/service/test_seq2seq.py)."""
    kinds = {spec["type"] for layers, _ in CASES.values() for spec in layers}
    assert kinds == set(LAYERS) - {"transformer_decoder"} == set(onnx_export.EXPORTERS)
    assert set(onnx_export.ACTIVATIONS) == set(ACTIVATIONS)
    assert set(onnx_export.RNN_ACTIVATIONS) == set(ACTIVATIONS_RNN)


def test_standardisation_and_a_float64_model() -> None:
    """predict standardises in float64 and computes in the model's dtype; the graph does
    both in float32."""
    shape = (2, 4, 4)
    rng = np.random.default_rng(2)
    standardize = {"mean": rng.normal(3, 1, shape).tolist(),
                   "std": rng.uniform(0.5, 4, shape).tolist()}
    layers = [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1},
              {"type": "avgpool2d"}, {"type": "flatten"}, dense(3, "softmax")]
    model = model_of(layers, shape, dtype="float64", standardize=standardize)
    x = rng.normal(3, 3, (5, *shape))
    assert_matches_predict(model, x)
    unstandardized = model_of(layers, shape, dtype="float64")
    assert not np.allclose(run_onnx(unstandardized, x), run_onnx(model, x), atol=1e-2)


def test_batch_axis_is_dynamic_and_names_and_metadata_are_documented() -> None:
    layers, shape = CASES["cnn"]
    model = model_of(layers, shape, classes=["a", "b", "c", "d"])
    proto = onnx_export.to_onnx(model)
    assert proto.opset_import[0].version == onnx_export.OPSET == 17
    assert proto.ir_version == onnx_export.IR_VERSION
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert [i.name for i in proto.graph.input] == ["inputs"] and dims == ["N", 2, 9, 8]
    assert [o.name for o in proto.graph.output] == ["outputs"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props == {"task": "classification", "classes": '["a", "b", "c", "d"]',
                     "input_shape": "[2, 9, 8]"}
    for n in (1, 3):
        assert run_onnx(model, inputs_for(model, n)).shape == (n, 4)


class Mystery(Layer):
    """A layer type the exporter does not know (none of nn's is such)."""
    kind = "mystery"

    def forward(self, x: np.ndarray, params: Any, *, train: bool, rng: Any = None) -> Any:
        return x, None


def test_a_layer_without_an_exporter_is_named() -> None:
    model = model_of([dense(4), dense(2)], (3,))
    model.layers[1] = Mystery({"type": "mystery"}, (4,), (4,))
    with pytest.raises(onnx_export.NotExportable) as e:
        onnx_export.to_onnx(model)
    assert e.value.path == "network.layers[1]"
    assert str(e.value) == "network.layers[1] (mystery) has no ONNX export"
    model.layers[0].spec["activation"] = "swish"               # nor nn's activations
    with pytest.raises(onnx_export.NotExportable, match=r"^network.layers\[0\] \(dense with "
                                                        r"activation swish\)"):
        onnx_export.to_onnx(model)


def test_the_readme_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README.md's "ONNX export" Python block on an XOR network's file: predict's labels."""
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme[readme.index("### ONNX export"):], re.S)
    model = model_of([dense(4, "sigmoid"), dense(1, "sigmoid")], (2,), classes=[0, 1])
    model.weights = [{"W": np.eye(2, 4), "b": np.zeros(4)},      # label 1 where x1 > 0
                     {"W": np.array([[10.0], [0], [0], [0]]), "b": np.array([-5.0])}]
    (tmp_path / "xor.onnx").write_bytes(onnx_export.to_onnx(model).SerializeToString())
    monkeypatch.chdir(tmp_path)
    names: dict[str, Any] = {}
    exec(snippet.group(1), names)  # noqa: S102 - the README's own code
    assert names["labels"] == model.predict(names["inputs"])["labels"] == [1, 1, 0, 0]
