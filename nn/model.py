"""A trained model: the normalised network, its weights and the meta needed to predict."""
import io
import json
import math

import numpy as np

from .data import check_inputs, check_shape, standardize
from .errors import SpecError
from .network import infer, infer_values
from .spec import encoder_size, parse_network, stacks
from .targets import decode
from .weights import Weights, check_weights

FORMAT = 1


class Model:
    """network: plan.network; weights; meta: JSON with format, task, classes, loss, algorithm,
    input_shape, target_dim, standardize ({"mean", "std"} or None) and dtype; seq2seq adds
    target_shape (an encoder-decoder network: layers and weights are one list, the encoder's
    encoder_layers first; decode() answers, not predict())."""

    def __init__(self, network: dict, weights: Weights, meta: dict) -> None:
        self.network = network
        self.meta = meta
        target = meta.get("target_shape")
        _, layers = parse_network(network, tuple(meta["input_shape"]),
                                  target_shape=None if target is None else tuple(target))
        self.layers = layers
        self.encoder_layers = encoder_size(network)
        self.weights = check_weights(weights, layers, "weights", np.dtype(meta["dtype"]))

    @property
    def sample_bytes(self) -> int:
        """Bytes one sample takes while predict() computes it, an estimate from above: the
        peak of its eval-mode forward pass (network.infer_values) in the model's dtype, and
        the sample's input standardised (float64) and cast. predict(batch_size=B) then
        holds about B times this beside its inputs and result."""
        itemsize = np.dtype(self.meta["dtype"]).itemsize
        inputs = math.prod(self.meta["input_shape"])
        return infer_values(self.layers) * itemsize + inputs * (8 + itemsize)

    @property
    def result_values(self) -> int:
        """Numbers per sample in predict()'s result: the outputs, and for classifiers a label
        and a row of probabilities (at least two) per output row."""
        shape = self.layers[-1].out_shape                 # (K,) or (T, K)
        n = math.prod(shape)
        if self.meta["classes"] is not None:
            n += math.prod(shape[:-1]) * (1 + max(shape[-1], 2))
        return n

    def decode_cost(self, steps: int, beam_size: int = 1, attention: bool = False
                    ) -> tuple[int, int]:
        """decode()'s sample_bytes and result_values, estimates from above: (bytes one input
        takes while it is decoded: per beam entry the encoder's and one decoder step's
        forward pass, every decoder block's cached self-attention keys and values over
        `steps` and cross-attention ones over the source, and the output distribution;
        numbers in its answer: the ids and score, with attention every block's weights)."""
        decoder = [layer.spec for layer in self.layers[self.encoder_layers:]]
        embedding = decoder[0]                            # the decoder reads its tokens first
        blocks = [spec for spec in decoder if spec["type"] == "transformer_decoder"]
        source = self.meta["input_shape"][0]
        cache = len(blocks) * 2 * (steps + source) * embedding["dim"]
        itemsize = np.dtype(self.meta["dtype"]).itemsize
        per_input = beam_size * (self.sample_bytes
                                 + (cache + 2 * embedding["vocab_size"]) * itemsize)
        values = steps + 1
        if attention:
            values += sum(spec["heads"] for spec in blocks) * steps * source
        return per_input, values

    def predict(self, inputs, batch_size: int | None = None) -> dict:
        """Eval mode. -> {"outputs"} and, for classifiers, {"labels", "probabilities"}; with
        outputs per time step, a label (and a probability row) per sample and step. With
        batch_size the samples are computed that many at a time (the same answers, to rounding), so
        that memory stays near batch_size x sample_bytes. JSON-ready lists of predict_arrays'."""
        arrays = self.predict_arrays(inputs, batch_size)
        result = {"outputs": arrays["outputs"].tolist()}
        classes = self.meta["classes"]
        if classes is not None:
            table = np.empty(len(classes), dtype=object)
            table[:] = classes
            result["labels"] = table[arrays["labels"]].tolist()
            result["probabilities"] = arrays["probabilities"].tolist()
        return result

    def predict_arrays(self, inputs, batch_size: int | None = None) -> dict:
        """predict() as arrays: "outputs" (N, *out_shape) in the model's dtype, and for
        classifiers "labels" (N,) or (N, T), int64 indices into meta["classes"], and
        "probabilities" (N, C) or (N, T, C). SpecError("inputs") when outputs overflow."""
        if self.encoder_layers:
            raise SpecError("inputs", "a seq2seq model decodes its inputs (Model.decode: "
                                      "max_length, beam_size), it does not predict them")
        x = check_inputs(inputs)
        x = check_shape(x, self.meta["input_shape"])
        self.layers[0].check_inputs(x)
        dtype = self.meta["dtype"]
        with np.errstate(over="ignore", invalid="ignore"):
            out = infer(self.layers, self.weights, x, batch_size, prepare=lambda chunk:
                        standardize(chunk, self.meta["standardize"]).astype(dtype))
        check_finite(out)
        result = {"outputs": out}
        if self.meta["classes"] is not None:
            labels, probs = decode(out, self.layers[-1].activation)
            result["labels"] = np.asarray(labels, dtype=np.int64)
            result["probabilities"] = np.asarray(probs)
        return result

    def decode(self, inputs, max_length: int | None = None, beam_size: int = 1,
               attention: bool = False, batch_size: int | None = None) -> dict:
        """A seq2seq model's answer (nn/decode.py): {"outputs": [[ids]], "scores": [total
        log-probability]} and with attention {"attention": (sample, layer, head, target step,
        source position) nested lists}."""
        from .decode import decode
        return decode(self, inputs, max_length, beam_size, attention, batch_size)

    def to_npz(self) -> bytes:
        """Self-contained bytes: arrays "layers.<i>.<key>" and "meta" (uint8 UTF-8 JSON)."""
        arrays = {f"layers.{i}.{k}": v for i, p in enumerate(self.weights) for k, v in p.items()}
        meta = {**self.meta, "network": self.network}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, b: bytes) -> "Model":
        """The inverse of to_npz; ValueError on anything malformed."""
        try:
            with np.load(io.BytesIO(b), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("unknown model format")
            net = meta.pop("network")
            weights: list[dict] = [{} for _, layers in stacks(net) for _ in layers]
            for name, a in arrays.items():
                _, i, key = name.split(".")
                weights[int(i)][key] = a
            return cls(net, weights, meta)
        except (ValueError, MemoryError):
            raise
        except Exception as e:                     # zipfile, KeyError, TypeError, ...
            raise ValueError(f"not a model file: {e!r}") from None


def check_finite(out: np.ndarray, shown: int = 10) -> None:
    """SpecError("inputs") naming the samples whose outputs out (N, ...) overflowed: finite
    weights and inputs can still drive a sum past float64's range (inputs of 1e308), and an
    infinite or NaN output is neither JSON nor of use to anyone."""
    bad = np.flatnonzero(~np.isfinite(out).all(axis=tuple(range(1, out.ndim))))
    if len(bad):
        rows = ", ".join(map(str, bad[:shown])) + (f" and {len(bad) - shown} more"
                                                   if len(bad) > shown else "")
        raise SpecError("inputs", f"the outputs overflow (are not finite) for rows {rows}: "
                                  f"these inputs are far outside the range the model was "
                                  f"trained on")


def model_meta(plan, standardizer: dict | None = None) -> dict:
    """The meta of a model trained by plan (standardizer: {"mean", "std"} lists or None)."""
    tr = plan.training
    meta = {"format": FORMAT, "task": plan.data.task, "classes": plan.data.classes,
            "loss": tr["loss"], "algorithm": tr["algorithm"],
            "input_shape": list(plan.data.input_shape), "target_dim": plan.data.target_dim,
            "standardize": standardizer, "dtype": tr["dtype"]}
    if plan.data.task == "seq2seq":
        meta["target_shape"] = list(plan.data.target_shape)
    return meta
