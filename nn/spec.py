"""The one spec parser: validate a network + training spec against a data set, fill in the
defaults (all of them live in DEFAULTS below) and return a Plan. Every problem is a SpecError
naming the JSON path of the bad field.
"""
import copy
import secrets
from dataclasses import dataclass

from . import fields as f
from .activations import ACTIVATIONS
from .data import DataInfo, split_counts
from .errors import SpecError
from .losses import LOSSES
from .network import LayerSpec

MAX_LAYERS = 100
MAX_UNITS = 100_000
MAX_PARAMS = 20_000_000
MAX_EPOCHS = 100_000

DEFAULTS: dict = {
    "dense": {"activation": "sigmoid", "init": {"type": "uniform"}},
    "dropout": {"drop_prob": 0.5},
    "init": {"uniform": {"scale": 0.1}, "glorot": {}, "he": {"distribution": "normal"}},
    "training": {
        "algorithm": "backprop", "loss": "squared_error", "optimizer": {"type": "sgd"},
        "weight_decay": 0.0, "lr_schedule": None, "batch_size": 1, "epochs": 100,
        "seed": None, "shuffle": True, "validation_fraction": 0.0, "early_stopping": None,
        "standardize": False, "stats": True, "dtype": "float64",
    },
    "optimizer": {"sgd": {"learning_rate": 0.1, "momentum": 0.0, "nesterov": False},
                  "adam": {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}},
    "lr_schedule": {"step": {"step_size": 10, "gamma": 0.5}, "exponential": {"gamma": 0.95}},
    "early_stopping": {"patience": 10, "min_delta": 0.0},
}


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated run: normalised JSON specs with every default filled in, and the layers."""
    network: dict
    training: dict
    data: DataInfo
    layers: tuple[LayerSpec, ...]
    epochs_total: int
    n_params: int


def _init(spec, path: str) -> dict:
    if spec is None:
        spec = DEFAULTS["dense"]["init"]
    kind = f.choice(f.obj(spec, path, {"type", "scale", "distribution"}), "type", path,
                    tuple(DEFAULTS["init"]))
    d = DEFAULTS["init"][kind]
    f.obj(spec, path, {"type", *d})
    out: dict = {"type": kind}
    if kind == "uniform":
        out["scale"] = f.number(spec, "scale", path, d["scale"], lo=0, lo_open=True)
    elif kind == "he":
        out["distribution"] = f.choice(spec, "distribution", path, ("normal", "uniform"),
                                       d["distribution"])
    return out


def parse_network(network, n_in: int, path: str = "network") -> tuple[dict, list[LayerSpec]]:
    """-> (normalised network dict, layers). n_in: the number of input features."""
    f.obj(network, path, {"layers"})
    specs = f.get(network, "layers", path, f.MISSING)
    lpath = f"{path}.layers"
    if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_LAYERS:
        raise SpecError(lpath, f"must be a list of 1 to {MAX_LAYERS} layers")
    normal, layers = [], []
    for i, spec in enumerate(specs):
        p = f"{lpath}[{i}]"
        kind = f.choice(f.obj(spec, p, {"type", "units", "activation", "init", "drop_prob"}),
                        "type", p, ("dense", "dropout"))
        if kind == "dense":
            f.obj(spec, p, {"type", "units", "activation", "init"})
            units = f.integer(spec, "units", p, lo=1, hi=MAX_UNITS)
            act = f.choice(spec, "activation", p, tuple(ACTIVATIONS),
                           DEFAULTS["dense"]["activation"])
            if act == "softmax" and i != len(specs) - 1:
                raise SpecError(f"{p}.activation", "softmax is only allowed on the output layer")
            init = _init(spec.get("init"), f"{p}.init")
            normal.append({"type": kind, "units": units, "activation": act, "init": init})
            layers.append(LayerSpec("dense", n_in, units, act, init))
            n_in = units
        else:
            f.obj(spec, p, {"type", "drop_prob"})
            prob = f.number(spec, "drop_prob", p, DEFAULTS["dropout"]["drop_prob"],
                            lo=0, hi=1, hi_open=True)
            normal.append({"type": kind, "drop_prob": prob})
            layers.append(LayerSpec("dropout", n_in, n_in, drop_prob=prob))
    if layers[-1].kind != "dense":
        raise SpecError(f"{lpath}[{len(layers) - 1}].type",
                        "the last layer must be dense (it is the output layer)")
    n_params = sum(l.n_params for l in layers)
    if n_params > MAX_PARAMS:
        raise SpecError(lpath, f"the network has {n_params} parameters; the limit is {MAX_PARAMS}")
    return {"layers": normal}, layers


def _typed(spec, path: str, kinds: dict) -> dict:
    """An object {"type": one of kinds, ...} with that type's fields and defaults."""
    kind = f.choice(f.obj(spec, path, {"type"} | {k for d in kinds.values() for k in d}),
                    "type", path, tuple(kinds))
    f.obj(spec, path, {"type", *kinds[kind]})
    return {"type": kind, **kinds[kind], **{k: v for k, v in spec.items() if k != "type"}}


def parse_training(training, path: str = "training") -> dict:
    """-> the normalised training dict (every field present; a null seed becomes a random one)."""
    d = DEFAULTS["training"]
    t = f.obj(training if training is not None else {}, path, set(d))
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
    }
    if out["seed"] is None:
        out["seed"] = secrets.randbelow(2**31)
    op = f"{path}.optimizer"
    opt = _typed(t.get("optimizer", d["optimizer"]), op, DEFAULTS["optimizer"])
    f.number(opt, "learning_rate", op, lo=0, lo_open=True)
    if opt["type"] == "sgd":
        f.number(opt, "momentum", op, lo=0, hi=1, hi_open=True)
        if f.boolean(opt, "nesterov", op) and opt["momentum"] == 0:
            raise SpecError(f"{op}.nesterov", "Nesterov momentum needs momentum > 0")
    else:
        f.number(opt, "beta1", op, lo=0, hi=1, hi_open=True)
        f.number(opt, "beta2", op, lo=0, hi=1, hi_open=True)
        f.number(opt, "eps", op, lo=0, lo_open=True)
    out["optimizer"] = {k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                        for k, v in opt.items()}
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
    return out


def _check_output(layers: list[LayerSpec], training: dict, data: DataInfo) -> None:
    """The output layer, the loss and the data must agree."""
    j = len(layers) - 1
    out = layers[j]
    p = f"network.layers[{j}]"
    loss = training["loss"]
    if data.task == "regression":
        if loss != "squared_error":
            raise SpecError("training.loss", f"{loss} needs class labels; the data set is "
                                             "regression (use squared_error)")
        if out.n_out != data.target_dim:
            raise SpecError(f"{p}.units", f"the output layer has {out.n_out} units but the "
                                          f"targets have {data.target_dim} columns")
        return
    k = len(data.classes)
    if loss == "binary_cross_entropy":
        if k != 2:
            raise SpecError("training.loss", f"binary_cross_entropy needs 2 classes; "
                                             f"the data has {k}")
        if out.activation != "sigmoid":
            raise SpecError(f"{p}.activation", "binary_cross_entropy needs a sigmoid output")
        if out.n_out != 1:
            raise SpecError(f"{p}.units", f"the output layer has {out.n_out} units but "
                                          "binary_cross_entropy needs 1")
        return
    if loss == "cross_entropy" and out.activation != "softmax":
        raise SpecError(f"{p}.activation", "cross_entropy needs a softmax output layer")
    single_ok = k == 2 and out.activation != "softmax"
    if out.n_out != k and not (single_ok and out.n_out == 1):
        also = " (or 1 unit for 2 classes)" if single_ok else ""
        raise SpecError(f"{p}.units", f"the output layer has {out.n_out} units but the data "
                                      f"has {k} classes{also}")


def _check_algorithm(layers: list[LayerSpec], training: dict, data: DataInfo) -> None:
    if training["algorithm"] == "backprop":
        for i, l in enumerate(layers):
            if l.activation == "step":
                raise SpecError(f"network.layers[{i}].activation",
                                "step has zero gradient, so backprop cannot train it; "
                                "use training.algorithm 'perceptron'")
        return
    if len(layers) != 1 or layers[0].activation != "step":
        raise SpecError("network.layers", "the perceptron is exactly one dense layer with "
                                          "activation step")
    if data.task != "classification":
        raise SpecError("training.algorithm", "the perceptron needs a classification data set")
    rules = [("loss", training["loss"] == "squared_error", "must be squared_error"),
             ("optimizer.type", training["optimizer"]["type"] == "sgd", "must be sgd"),
             ("optimizer.momentum", not training["optimizer"].get("momentum"), "must be 0"),
             ("batch_size", training["batch_size"] == 1,
              "must be 1: the perceptron rule updates after every sample"),
             ("weight_decay", training["weight_decay"] == 0, "must be 0"),
             ("early_stopping", training["early_stopping"] is None, "must be null"),
             ("lr_schedule", training["lr_schedule"] is None, "must be null")]
    for field, ok, msg in rules:
        if not ok:
            raise SpecError(f"training.{field}", f"{msg} with the perceptron")


def check_split(training: dict, data: DataInfo) -> None:
    frac = training["validation_fraction"]
    if frac == 0:
        return
    p = "training.validation_fraction"
    counts = data.class_counts if data.task == "classification" else [data.n_samples]
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
    if len(data.input_shape) != 1:
        raise SpecError("inputs", f"dense networks take (N, D) inputs, not {data.input_shape}")
    net, layers = parse_network(copy.deepcopy(network), data.input_shape[0])
    train = parse_training(copy.deepcopy(training))
    _check_algorithm(layers, train, data)
    _check_output(layers, train, data)
    check_split(train, data)
    return Plan(net, train, data, tuple(layers), train["epochs"],
                sum(l.n_params for l in layers))
