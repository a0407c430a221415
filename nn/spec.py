"""The one spec parser: validate a network + training spec against a data set, fill in the
defaults (all of them live in DEFAULTS below, the layers' own in their modules) and return a
Plan. Every problem is a SpecError naming the JSON path of the bad field.

Shapes are inferred layer by layer from DataInfo.input_shape (the per-sample shape); each
layer type (nn/layers, registry LAYERS) parses its own fields and says what it takes and gives.
"""
import copy
import secrets
from dataclasses import dataclass

import numpy as np

from . import fields as f
from .data import DataInfo, split_counts
from .errors import SpecError
from .generators import GENERATOR_DEFAULTS
from .init import INIT_DEFAULTS
from .layers import LAYERS, Layer
from .losses import LOSSES
from .seq2seq import DECODER_KINDS, ENCODER_KINDS

MAX_LAYERS = 100
MAX_PARAMS = 20_000_000
MAX_EPOCHS = 100_000
# "auto": the fast dense engine where it applies, else the reference; "reference": the
# layer-by-layer path everywhere (the yardstick the fast engine is tested against)
ENGINES = ("auto", "reference")

DEFAULTS: dict = {
    **{kind: cls.DEFAULTS for kind, cls in LAYERS.items()},   # "dense", "conv2d", ...
    "init": INIT_DEFAULTS,
    "training": {
        "algorithm": "backprop", "loss": "squared_error", "optimizer": {"type": "sgd"},
        "weight_decay": 0.0, "lr_schedule": None, "batch_size": 1, "epochs": 100,
        "seed": None, "shuffle": True, "validation_fraction": 0.0, "early_stopping": None,
        "standardize": False, "stats": True, "dtype": "float64", "engine": "auto",
    },
    "optimizer": {"sgd": {"learning_rate": 0.1, "momentum": 0.0, "nesterov": False},
                  "adam": {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}},
    "lr_schedule": {"step": {"step_size": 10, "gamma": 0.5}, "exponential": {"gamma": 0.95}},
    "early_stopping": {"patience": 10, "min_delta": 0.0},
    # training.pretrain is optional (absent or null: no pretraining); its fields' defaults.
    # optimizer null: the training optimizer (type and settings), fresh for every layer.
    "pretrain": {"epochs": 10, "optimizer": None},
    "generator": GENERATOR_DEFAULTS,
}


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated run: normalised JSON specs with every default filled in, and the layers.

    An encoder-decoder network's two stacks are one flat `layers` tuple, the encoder's
    `encoder_layers` first: the driver, checkpoints, optimizers, statistics and the budget
    read plan.layers and the weights list as for any network, and only nn/seq2seq.py's
    forward and backward (and decoding) know where the encoder ends."""
    network: dict
    training: dict
    data: DataInfo
    layers: tuple[Layer, ...]
    epochs_total: int
    n_params: int
    pretrain_epochs_total: int = 0
    encoder_layers: int = 0       # the encoder-decoder form: layers[:encoder_layers] encode


def parse_network(network, in_shape: tuple[int, ...], path: str = "network",
                  target_shape: tuple[int, ...] | None = None) -> tuple[dict, list[Layer]]:
    """-> (normalised network dict, layers). in_shape: the per-sample input shape.

    The encoder-decoder form {"encoder": {"layers"}, "decoder": {"layers"}} (seq2seq data:
    target_shape is then the targets' (T_tgt,)) gives one flat list, the encoder's layers
    first; encoder_size(network dict) says how many. Why flat: the weights, checkpoints,
    optimizers, statistics and budget handle any list of layers, so they take two stacks
    unchanged; only the forward and backward pass (nn/seq2seq.py) know where the cut is."""
    if isinstance(network, dict) and ("encoder" in network or "decoder" in network):
        return _parse_encoder_decoder(network, in_shape, target_shape, path)
    f.obj(network, path, {"layers"})
    layers = _parse_stack(network, in_shape, f"{path}.layers", output=True)
    _check_size(layers, f"{path}.layers")
    return {"layers": copy.deepcopy([l.spec for l in layers])}, layers


def stacks(network: dict) -> list[tuple[str, list[dict]]]:
    """(JSON path, layer specs) of each stack of a normalised network, in the flat list's
    order: its `layers`, or the encoder's and then the decoder's."""
    if "encoder" not in network:
        return [("network.layers", network["layers"])]
    return [(f"network.{side}.layers", network[side]["layers"]) for side in ("encoder", "decoder")]


def encoder_size(network: dict) -> int:
    """The number of encoder layers at the front of a normalised network's flat list (0 for
    the plain {"layers"} form)."""
    return len(network["encoder"]["layers"]) if "encoder" in network else 0


def layer_path(n_enc: int, i: int) -> str:
    """The JSON path of the flat list's layer i (n_enc encoder layers first, 0: plain)."""
    if not n_enc:
        return f"network.layers[{i}]"
    return f"network.encoder.layers[{i}]" if i < n_enc else f"network.decoder.layers[{i - n_enc}]"


def _parse_stack(stack, in_shape: tuple[int, ...], lpath: str, output: bool,
                 kinds: tuple[str, ...] | None = None, memory_shape=None) -> list[Layer]:
    """stack {"layers": [...]} -> its layers; output: its last layer is the network's output
    layer (dense; the only place for softmax). kinds: the types the stack may hold (None:
    any but the decoder block, which needs an encoder)."""
    specs = f.get(stack, "layers", lpath.rsplit(".", 1)[0], f.MISSING)
    if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_LAYERS:
        raise SpecError(lpath, f"must be a list of 1 to {MAX_LAYERS} layers")
    layers: list[Layer] = []
    shape = tuple(in_shape)
    for i, spec in enumerate(specs):
        p = f"{lpath}[{i}]"
        if not isinstance(spec, dict):
            raise SpecError(p, "must be an object")
        cls = LAYERS[f.choice(spec, "type", p, tuple(LAYERS))]
        if kinds is None and cls.takes_memory:
            raise SpecError(f"{p}.type", f"{cls.kind} attends to an encoder's output: use "
                                         'the form {"encoder": {"layers"}, "decoder": '
                                         '{"layers"}} with a seq2seq data set')
        if kinds is not None and cls.kind not in kinds:
            stack = lpath.split(".")[-2]
            raise SpecError(f"{p}.type", f"{cls.kind} is not allowed in the {stack} (it may "
                                         f"hold {', '.join(kinds)})")
        f.obj(spec, p, cls.fields())
        if cls.first_only and i > 0:
            raise SpecError(f"{p}.type", f"{cls.kind} must be the first layer: it reads "
                                         "integer token ids from the inputs")
        layer = cls.parse(spec, shape, p, memory_shape=memory_shape) if cls.takes_memory \
            else cls.parse(spec, shape, p)
        if layer.activation == "softmax" and not (output and i == len(specs) - 1):
            raise SpecError(f"{p}.activation", "softmax is only allowed on the output layer")
        layers.append(layer)
        shape = layer.out_shape
    if output and layers[-1].kind != "dense":
        raise SpecError(f"{lpath}[{len(layers) - 1}].type",
                        "the last layer must be dense (it is the output layer)")
    return layers


def _check_size(layers: list[Layer], path: str) -> None:
    n_params = sum(l.n_params for l in layers)
    if n_params > MAX_PARAMS:
        raise SpecError(path, f"the network has {n_params} parameters; the limit is {MAX_PARAMS}")


def _parse_encoder_decoder(network: dict, in_shape, target_shape, path: str
                           ) -> tuple[dict, list[Layer]]:
    f.obj(network, path, {"encoder", "decoder"})
    if target_shape is None:
        raise SpecError(f"{path}.encoder", "the encoder-decoder form needs a seq2seq data set "
                                           "(task 'seq2seq': token id sequences to sequences)")
    stacks = {}
    for name in ("encoder", "decoder"):
        stacks[name] = f.obj(f.get(network, name, path, f.MISSING), f"{path}.{name}",
                             {"layers"})
        specs = stacks[name].get("layers")
        if isinstance(specs, list) and specs and isinstance(specs[0], dict) \
                and specs[0].get("type") != "embedding":
            raise SpecError(f"{path}.{name}.layers[0].type", f"must be embedding: the {name} "
                                                              "reads token ids")
    enc_path, dec_path = f"{path}.encoder.layers", f"{path}.decoder.layers"
    encoder = _parse_stack(stacks["encoder"], in_shape, enc_path, False, ENCODER_KINDS)
    memory = encoder[-1].out_shape
    if len(memory) != 2:
        raise SpecError(f"{enc_path}[{len(encoder) - 1}]", f"the encoder's output must be a "
                                                           f"sequence (T, D), not {memory}")
    decoder = _parse_stack(stacks["decoder"], target_shape, dec_path, True, DECODER_KINDS,
                           memory_shape=memory)
    if not any(l.takes_memory for l in decoder):
        raise SpecError(dec_path, "needs a transformer_decoder layer: without one the decoder "
                                  "never reads the encoder's output")
    _check_size(encoder + decoder, path)
    net = {"encoder": {"layers": copy.deepcopy([l.spec for l in encoder])},
           "decoder": {"layers": copy.deepcopy([l.spec for l in decoder])}}
    return net, encoder + decoder


def _typed(spec, path: str, kinds: dict) -> dict:
    """An object {"type": one of kinds, ...} with that type's fields and defaults."""
    kind = f.choice(f.obj(spec, path, {"type"} | {k for d in kinds.values() for k in d}),
                    "type", path, tuple(kinds))
    f.obj(spec, path, {"type", *kinds[kind]})
    return {"type": kind, **kinds[kind], **{k: v for k, v in spec.items() if k != "type"}}


def _optimizer(spec, op: str) -> dict:
    opt = _typed(spec, op, DEFAULTS["optimizer"])
    f.number(opt, "learning_rate", op, lo=0, lo_open=True)
    if opt["type"] == "sgd":
        f.number(opt, "momentum", op, lo=0, hi=1, hi_open=True)
        if f.boolean(opt, "nesterov", op) and opt["momentum"] == 0:
            raise SpecError(f"{op}.nesterov", "Nesterov momentum needs momentum > 0")
    else:
        f.number(opt, "beta1", op, lo=0, hi=1, hi_open=True)
        f.number(opt, "beta2", op, lo=0, hi=1, hi_open=True)
        f.number(opt, "eps", op, lo=0, lo_open=True)
    return {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
            for k, v in opt.items()}


def parse_training(training, path: str = "training") -> dict:
    """-> the normalised training dict (every field present; a null seed becomes a random one)."""
    d = DEFAULTS["training"]
    t = f.obj(training if training is not None else {}, path, {*d, "pretrain"})
    out = {
        "algorithm": f.choice(t, "algorithm", path, ("backprop", "perceptron"), d["algorithm"]),
        "loss": f.choice(t, "loss", path, tuple(LOSSES), d["loss"]),
        "weight_decay": f.number(t, "weight_decay", path, d["weight_decay"], lo=0),
        "batch_size": f.integer(t, "batch_size", path, d["batch_size"], lo=1, nullable=True),
        "epochs": f.integer(t, "epochs", path, d["epochs"], lo=0, hi=MAX_EPOCHS),
        "seed": f.integer(t, "seed", path, d["seed"], lo=0, hi=2**63 - 1, nullable=True),
        "shuffle": f.boolean(t, "shuffle", path, d["shuffle"]),
        "validation_fraction": f.number(t, "validation_fraction", path,
                                        d["validation_fraction"], lo=0, hi=0.9),
        "standardize": f.boolean(t, "standardize", path, d["standardize"]),
        "stats": f.boolean(t, "stats", path, d["stats"]),
        "dtype": f.choice(t, "dtype", path, ("float64", "float32"), d["dtype"]),
        "engine": f.choice(t, "engine", path, ENGINES, d["engine"]),
    }
    if out["seed"] is None:
        out["seed"] = secrets.randbelow(2**31)
    out["optimizer"] = _optimizer(t.get("optimizer", d["optimizer"]), f"{path}.optimizer")
    sp = f"{path}.lr_schedule"
    sched = t.get("lr_schedule", d["lr_schedule"])
    if sched is not None:
        sched = _typed(sched, sp, DEFAULTS["lr_schedule"])
        sched["gamma"] = f.number(sched, "gamma", sp, lo=0, hi=1, lo_open=True)
        if sched["type"] == "step":
            f.integer(sched, "step_size", sp, lo=1)
    out["lr_schedule"] = sched
    ep = f"{path}.early_stopping"
    es = t.get("early_stopping", d["early_stopping"])
    if es is not None:
        es = {**DEFAULTS["early_stopping"], **f.obj(es, ep, set(DEFAULTS["early_stopping"]))}
        es["patience"] = f.integer(es, "patience", ep, lo=1, hi=MAX_EPOCHS)
        es["min_delta"] = f.number(es, "min_delta", ep, lo=0)
    out["early_stopping"] = es
    pretrain = t.get("pretrain")
    if pretrain is not None:                       # absent when null: older plans unchanged
        out["pretrain"] = _pretrain(pretrain, f"{path}.pretrain", out["optimizer"])
    return out


def _pretrain(spec, path: str, optimizer: dict) -> dict:
    """{"epochs", "optimizer"}: a null optimizer is the training optimizer (the same object)."""
    d = DEFAULTS["pretrain"]
    f.obj(spec, path, set(d))
    opt = spec.get("optimizer")
    return {"epochs": f.integer(spec, "epochs", path, d["epochs"], lo=1, hi=MAX_EPOCHS),
            "optimizer": dict(optimizer) if opt is None else
            _optimizer(opt, f"{path}.optimizer")}


def _check_output(layers: list[Layer], training: dict, data: DataInfo) -> None:
    """The output layer, the loss and the data must agree."""
    j = len(layers) - 1
    out = layers[j]
    p = f"network.layers[{j}]"
    loss = training["loss"]
    n_out = out.out_shape[-1]
    per_step = data.task == "classification" and len(data.target_shape) == 1
    if per_step:
        steps = data.target_shape[0]
        if out.out_shape[:-1] != (steps,):
            raise SpecError(p, f"the targets are a label per time step ({steps},) but the "
                               f"output per sample is {out.out_shape}; keep the time axis "
                               "(return_sequences) up to the output layer")
        if loss != "cross_entropy":
            raise SpecError("training.loss", "labels per time step need cross_entropy (a "
                                             "softmax over the classes at every step)")
    elif len(out.out_shape) != 1:
        what = "one label" if data.task == "classification" else f"({data.target_dim},)"
        raise SpecError(p, f"the output per sample is {out.out_shape} but the targets are "
                           f"{what} per sample; pool the sequence (sequence_pool) or flatten "
                           "before the output layer")
    if data.task == "regression":
        if loss != "squared_error":
            raise SpecError("training.loss", f"{loss} needs class labels; the data set is "
                                             "regression (use squared_error)")
        if n_out != data.target_dim:
            raise SpecError(f"{p}.units", f"the output layer has {n_out} units but the "
                                          f"targets have {data.target_dim} columns")
        if n_out == 1 and out.activation == "softmax":
            raise SpecError(f"{p}.activation", "a softmax over one unit always outputs 1; "
                                               "use linear for one target column")
        return
    k = len(data.classes)
    if loss == "binary_cross_entropy":
        if k != 2:
            raise SpecError("training.loss", f"binary_cross_entropy needs 2 classes; "
                                             f"the data has {k}")
        if out.activation != "sigmoid":
            raise SpecError(f"{p}.activation", "binary_cross_entropy needs a sigmoid output")
        if n_out != 1:
            raise SpecError(f"{p}.units", f"the output layer has {n_out} units but "
                                          "binary_cross_entropy needs 1")
        return
    if loss == "cross_entropy" and out.activation != "softmax":
        raise SpecError(f"{p}.activation", "cross_entropy needs a softmax output layer")
    single_ok = k == 2 and out.activation != "softmax"
    if n_out != k and not (single_ok and n_out == 1):
        also = " (or 1 unit for 2 classes)" if single_ok else ""
        raise SpecError(f"{p}.units", f"the output layer has {n_out} units but the data "
                                      f"has {k} classes{also}")


def _check_algorithm(layers: list[Layer], training: dict, data: DataInfo, n_enc: int = 0
                     ) -> None:
    if training["algorithm"] == "backprop":
        for i, l in enumerate(layers):
            if l.activation == "step":
                raise SpecError(f"{layer_path(n_enc, i)}.activation",
                                "step has zero gradient, so backprop cannot train it; "
                                "use training.algorithm 'perceptron'")
        return
    if len(layers) != 1 or layers[0].activation != "step":
        raise SpecError("network.layers", "the perceptron is exactly one dense layer with "
                                          "activation step")
    if len(data.input_shape) != 1:
        raise SpecError("network.layers", f"the perceptron takes (D,) inputs, not "
                                          f"{data.input_shape}")
    if data.task != "classification":
        raise SpecError("training.algorithm", "the perceptron needs a classification data set")
    rules = [("loss", training["loss"] == "squared_error", "must be squared_error"),
             ("optimizer.type", training["optimizer"]["type"] == "sgd", "must be sgd"),
             ("optimizer.momentum", not training["optimizer"].get("momentum"), "must be 0"),
             ("batch_size", training["batch_size"] == 1,
              "must be 1: the perceptron rule updates after every sample"),
             ("weight_decay", training["weight_decay"] == 0, "must be 0"),
             ("early_stopping", training["early_stopping"] is None, "must be null"),
             ("lr_schedule", training["lr_schedule"] is None, "must be null"),
             ("pretrain", "pretrain" not in training, "must be null")]
    for field, ok, msg in rules:
        if not ok:
            raise SpecError(f"training.{field}", f"{msg} with the perceptron")


def _check_inputs(layers: list[Layer], training: dict, data: DataInfo) -> None:
    """An embedding reads token ids: integers in [0, vocab_size), never standardised."""
    first = layers[0]
    if first.kind != "embedding":
        return
    p = "network.layers[0]"
    if data.token_range is None or data.token_range[0] < 0:
        raise SpecError(p, "embedding needs integer token ids >= 0 as inputs, but the inputs "
                           "are not all non-negative integers")
    vocab = first.spec["vocab_size"]
    if data.token_range[1] >= vocab:
        raise SpecError(f"{p}.vocab_size", f"the inputs hold token ids up to "
                                           f"{data.token_range[1]}; vocab_size must be > "
                                           f"{data.token_range[1]}, not {vocab}")
    if training["standardize"]:
        raise SpecError("training.standardize", "token ids cannot be standardized (the first "
                                                "layer is an embedding)")


def pretrained_layers(layers: list[Layer] | tuple[Layer, ...]) -> list[int]:
    """The layers greedy layer-wise pretraining trains, in order: every dense layer but the
    output layer."""
    return [i for i, l in enumerate(layers[:-1]) if l.kind == "dense"]


def autoencoder(encoder: Layer) -> list[Layer]:
    """What pretraining trains for a layer: [the encoder layer itself, its linear decoder
    back to the encoder's input size]."""
    n_in, n_hidden = encoder.in_shape[-1], encoder.out_shape[-1]
    decoder = LAYERS["dense"].parse({"units": n_in, "activation": "linear",
                                     "init": encoder.spec["init"]}, (n_hidden,), "decoder")
    return [encoder, decoder]


def _check_pretrain(layers: list[Layer], training: dict, data: DataInfo) -> int:
    """-> the number of pretraining epochs (0 without pretraining)."""
    if "pretrain" not in training:
        return 0
    p = "training.pretrain"
    for i, l in enumerate(layers):
        if l.kind not in ("dense", "dropout"):
            raise SpecError(p, f"greedy layer-wise pretraining is for stacks of dense (and "
                               f"dropout) layers; network.layers[{i}] is {l.kind}")
    if len(data.input_shape) != 1:
        raise SpecError(p, f"pretraining takes (D,) inputs, not {data.input_shape}")
    hidden = pretrained_layers(layers)
    if not hidden:
        raise SpecError(p, "needs at least one hidden dense layer (every dense layer but the "
                           "output layer is pretrained)")
    return len(hidden) * training["pretrain"]["epochs"]


def _check_dtype(training: dict, data: DataInfo) -> None:
    """float32 holds magnitudes up to ~3.4e38; beyond, the data would be infinite."""
    limit = float(np.finfo(np.float32).max)
    if training["dtype"] == "float32" and data.max_abs > limit:
        raise SpecError("training.dtype", f"the data holds values up to {data.max_abs:.3g}, "
                                          f"beyond float32's range ({limit:.3g}); use float64")


def check_split(training: dict, data: DataInfo) -> None:
    frac = training["validation_fraction"]
    if frac == 0:
        return
    p = "training.validation_fraction"
    stratified = data.task == "classification" and not data.target_shape
    counts = data.class_counts if stratified else [data.n_samples]
    if counts is None:
        return                                     # checked again by train() with the data
    n_val = split_counts(data.n_samples, frac, counts)
    if sum(n_val) == 0:
        raise SpecError(p, f"leaves no validation sample out of {data.n_samples}")
    for i, (c, v) in enumerate(zip(counts, n_val)):
        if c - v < 1:
            which = f" of class {data.classes[i]!r}" if data.classes else ""
            raise SpecError(p, f"leaves no training sample{which}")


def build(network: dict, training: dict, data: DataInfo) -> Plan:
    """Validate network + training against the data and fill in defaults -> Plan."""
    seq2seq = data.task == "seq2seq"
    net, layers = parse_network(copy.deepcopy(network), data.input_shape,
                                target_shape=data.target_shape if seq2seq else None)
    train = parse_training(copy.deepcopy(training))
    n_enc = encoder_size(net)
    if seq2seq:
        _check_seq2seq(layers, n_enc, train, data)
        _check_algorithm(layers, train, data, n_enc)
        pretrain_epochs = 0
    else:
        _check_algorithm(layers, train, data)
        _check_output(layers, train, data)
        _check_inputs(layers, train, data)
        pretrain_epochs = _check_pretrain(layers, train, data)
    _check_dtype(train, data)
    check_split(train, data)
    return Plan(net, train, data, tuple(layers), train["epochs"],
                sum(l.n_params for l in layers), pretrain_epochs, n_enc)


def _check_seq2seq(layers: list[Layer], n_enc: int, training: dict, data: DataInfo) -> None:
    """An encoder-decoder network and its training against seq2seq data (both embeddings'
    vocabularies, the output layer, the loss)."""
    if n_enc == 0:
        raise SpecError("network", 'a seq2seq data set needs the encoder-decoder form '
                                   '{"encoder": {"layers"}, "decoder": {"layers"}}')
    rules = [("algorithm", training["algorithm"] == "backprop", "must be backprop"),
             ("loss", training["loss"] == "cross_entropy",
              "must be cross_entropy (a softmax over the decoder's vocabulary at every "
              "target position)"),
             ("standardize", not training["standardize"], "must be false: token ids cannot "
                                                          "be standardized"),
             ("pretrain", "pretrain" not in training, "must be null: pretraining is for "
                                                      "stacks of dense layers")]
    for field, ok, msg in rules:
        if not ok:
            raise SpecError(f"training.{field}", f"{msg} for a seq2seq data set")
    decoder = layers[n_enc:]
    for name, first, bound, side in (("encoder", layers[0], data.vocab_sizes[0], "inputs"),
                                     ("decoder", decoder[0], data.vocab_sizes[1], "targets")):
        vocab = first.spec["vocab_size"]
        if vocab < bound:
            raise SpecError(f"network.{name}.layers[0].vocab_size",
                            f"the {side} hold token ids up to {bound - 1}; vocab_size must be "
                            f"> {bound - 1}, not {vocab}")
    out, j = decoder[-1], len(decoder) - 1
    p = f"network.decoder.layers[{j}]"
    vocab = decoder[0].spec["vocab_size"]
    if out.activation != "softmax":
        raise SpecError(f"{p}.activation", "the decoder's output layer must be softmax (a "
                                           "distribution over its vocabulary)")
    if out.out_shape[-1] != vocab:
        raise SpecError(f"{p}.units", f"the output layer has {out.out_shape[-1]} units but the "
                                      f"decoder's vocabulary (its embedding's vocab_size) is "
                                      f"{vocab}")
