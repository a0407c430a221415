"""Every spec the service accepts trains, or ends with a documented stop reason: a property
test over generated specs (hypothesis).

For each generated case (a tiny data set of one of the four input shapes, a layer stack for
it, an init, an optimizer, a schedule, ...), when nn.build and the service's limits accept
it, training a few epochs the way the worker does (a checkpoint every epoch, then a resume
from one) must end with a stop reason the worker maps to `succeeded` or to the `diverged`
code, and never raise: an exception in the worker is an `internal_error`. Values are drawn
from sets that include the extremes the API accepts (learning rates up to 1e300, init
scales to 1e38 and past it, inputs of 1e300), so numeric blow-ups are exercised.

Derandomized, with a fixed number of examples, so CI sees the same cases every time.
"""
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nn
from service import limits
from service.config import DEFAULTS as SERVICE_SETTINGS
from service.errors import ApiError
from service.serialize import finite
from worker.training import SUCCEEDED

EXAMPLES = 400

ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")
SCALES = (1e-300, 1e-3, 0.1, 3.0, 1e20, 1e38, 1e39, 1e308)
RATES = (1e-300, 1e-4, 0.1, 1.0, 50.0, 1e10, 1e300)
MAGNITUDES = (1.0, 1e-300, 1e-6, 1e6, 1e150, 1e300)


def maybe(strategy) -> st.SearchStrategy:
    """A field that is absent (the default), or drawn from strategy."""
    return st.one_of(st.just(None), strategy)


def inits() -> st.SearchStrategy:
    return maybe(st.one_of(
        st.fixed_dictionaries({"type": st.just("uniform"), "scale": st.sampled_from(SCALES)}),
        st.just({"type": "glorot"}),
        st.fixed_dictionaries({"type": st.just("he"),
                               "distribution": st.sampled_from(("normal", "uniform"))})))


def layer(kind: str, draw, **fields) -> dict:
    """A layer spec with its optional init, drawn; fields given are set."""
    spec = {"type": kind, **fields}
    if kind in ("dense", "conv2d", "rnn", "lstm", "embedding", "self_attention",
                "transformer_encoder"):
        init = draw(inits())
        if init is not None:
            spec["init"] = init
    return spec


def hidden_dense(draw) -> dict:
    if draw(st.integers(0, 4)) == 0:
        return {"type": "dropout", "drop_prob": draw(st.sampled_from((0.0, 0.5, 0.99)))}
    return layer("dense", draw, units=draw(st.integers(1, 5)),
                 activation=draw(st.sampled_from(ACTIVATIONS)))


def image_layers(draw) -> list[dict]:
    stack = []
    for _ in range(draw(st.integers(0, 2))):
        k = draw(st.integers(1, 3))
        stack.append(layer("conv2d", draw, filters=draw(st.integers(1, 3)), kernel_size=k,
                           stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, k - 1)),
                           activation=draw(st.sampled_from(ACTIVATIONS))))
        if draw(st.booleans()):
            stack.append({"type": draw(st.sampled_from(("maxpool2d", "avgpool2d"))),
                          "pool_size": draw(st.integers(1, 2))})
    return stack + [{"type": "flatten"}] + [hidden_dense(draw)
                                            for _ in range(draw(st.integers(0, 1)))]


def sequence_layers(draw, dim: int) -> list[dict]:
    """Layers on (T, dim) that keep a (T, D) shape."""
    stack = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("rnn", "lstm", "self_attention", "transformer_encoder",
                                     "layer_norm", "positional_encoding", "dense",
                                     "dropout")))
        if kind in ("rnn", "lstm"):
            dim = draw(st.integers(1, 4))
            extra = {"activation": draw(st.sampled_from(ACTIVATIONS))} if kind == "rnn" else {}
            stack.append(layer(kind, draw, units=dim, return_sequences=True, **extra))
        elif kind == "self_attention":
            stack.append(layer(kind, draw, heads=draw(st.sampled_from((1, dim))),
                               causal=draw(st.booleans())))
        elif kind == "transformer_encoder":
            stack.append(layer(kind, draw, heads=draw(st.sampled_from((1, dim))),
                               ff_units=draw(st.integers(1, 4)),
                               activation=draw(st.sampled_from(ACTIVATIONS)),
                               causal=draw(st.booleans()),
                               norm=draw(st.sampled_from(("pre", "post")))))
        elif kind == "layer_norm":
            stack.append({"type": kind, "eps": draw(st.sampled_from((1e-300, 1e-5, 1.0)))})
        elif kind == "positional_encoding":
            stack.append({"type": kind, "mode": draw(st.sampled_from(("sinusoidal",
                                                                      "learned")))})
        elif kind == "dense":
            stack.append(hidden_dense(draw))
            dim = stack[-1].get("units", dim)
        else:
            stack.append({"type": "dropout", "drop_prob": 0.5})
    return stack


@st.composite
def cases(draw) -> tuple:
    """-> (inputs, targets, task, network, training)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = draw(st.sampled_from(("features", "images", "sequences", "tokens")))
    n = draw(st.integers(4, 16))
    magnitude = draw(st.sampled_from(MAGNITUDES))
    per_step = False
    if shape == "features":
        X = rng.standard_normal((n, draw(st.integers(1, 4)))) * magnitude
        body = [hidden_dense(draw) for _ in range(draw(st.integers(0, 3)))]
    elif shape == "images":
        size = draw(st.integers(2, 5))
        channels = draw(st.sampled_from(((), (1,), (2,))))
        X = rng.uniform(0, 1, (n, *channels, size, size)) * magnitude
        body = image_layers(draw)
    else:
        T = draw(st.integers(1, 4))
        if shape == "sequences":
            dim = draw(st.integers(1, 3))
            X = rng.standard_normal((n, T, dim)) * magnitude
            body = []
        else:
            vocab = draw(st.integers(2, 5))
            X = rng.integers(0, vocab, (n, T)).astype(np.float64)
            dim = draw(st.integers(1, 4))
            body = [layer("embedding", draw, vocab_size=vocab + draw(st.integers(0, 2)),
                          dim=dim)]
        body += sequence_layers(draw, dim)
        per_step = draw(st.booleans())
        if not per_step:
            body.append(draw(st.sampled_from(({"type": "sequence_pool", "mode": "mean"},
                                              {"type": "sequence_pool", "mode": "last"},
                                              {"type": "sequence_pool", "mode": "max"},
                                              {"type": "flatten"}))))
    task = "regression" if not per_step and draw(st.integers(0, 3)) == 0 else "classification"
    if task == "regression":
        dim = draw(st.integers(1, 2))
        y = rng.standard_normal((n, dim)) * draw(st.sampled_from(MAGNITUDES))
        units, loss = dim, "squared_error"
        out_act = draw(st.sampled_from(ACTIVATIONS + ("softmax",)))
    else:
        k = draw(st.integers(2, 3))
        y = rng.integers(0, k, (n, X.shape[1]) if per_step else n)
        y.flat[:k] = np.arange(k)                          # every class present
        losses = ("squared_error", "cross_entropy") + (("binary_cross_entropy",) if k == 2
                                                       else ())
        loss = "cross_entropy" if per_step else draw(st.sampled_from(losses))
        out_act = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}.get(
            loss, draw(st.sampled_from(ACTIVATIONS + ("softmax",))))
        units = 1 if loss == "binary_cross_entropy" or (
            k == 2 and out_act != "softmax" and draw(st.booleans())) else k
    network = {"layers": body + [layer("dense", draw, units=units, activation=out_act)]}
    training = training_spec(draw, loss, pretrain=shape == "features")
    if shape == "tokens":
        training["standardize"] = False                    # token ids are never standardized
    if shape == "features" and task == "classification" and draw(st.integers(0, 9)) == 0:
        network = {"layers": [layer("dense", draw, units=1 if y.max() == 1 else 3,
                                    activation="step")]}
        training = {"algorithm": "perceptron", "epochs": draw(st.integers(0, 3)),
                    "optimizer": {"type": "sgd", "learning_rate": draw(st.sampled_from(RATES))},
                    "seed": draw(st.integers(0, 2**31))}
    return X, y, task, network, training


def training_spec(draw, loss: str, pretrain: bool) -> dict:
    """A training spec for loss; pretraining only where it applies (dense stacks)."""
    rate = st.sampled_from(RATES)
    unit = st.sampled_from((0.0, 0.5, 0.999999))
    optimizer = st.one_of(
        st.fixed_dictionaries({"type": st.just("sgd"), "learning_rate": rate},
                              optional={"momentum": unit}),
        st.just({"type": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
        st.fixed_dictionaries({"type": st.just("adam"), "learning_rate": rate},
                              optional={"beta1": unit, "beta2": unit,
                                        "eps": st.sampled_from((1e-300, 1e-8, 1e300))}))
    training = draw(st.fixed_dictionaries(
        {"loss": st.just(loss), "optimizer": optimizer, "epochs": st.integers(0, 3),
         "seed": st.integers(0, 2**63 - 1)},
        optional={
            "weight_decay": st.sampled_from((0.0, 1e-3, 1e300)),
            "lr_schedule": maybe(st.one_of(
                st.fixed_dictionaries({"type": st.just("step"),
                                       "step_size": st.integers(1, 2),
                                       "gamma": st.sampled_from((1e-300, 0.5, 1.0))}),
                st.fixed_dictionaries({"type": st.just("exponential"),
                                       "gamma": st.sampled_from((1e-300, 0.5, 1.0))}))),
            "batch_size": st.sampled_from((1, 2, 5, None, 1000)),
            "shuffle": st.booleans(),
            "validation_fraction": st.sampled_from((0.0, 0.2, 0.5, 0.9)),
            "early_stopping": maybe(st.fixed_dictionaries(
                {"patience": st.integers(1, 2),
                 "min_delta": st.sampled_from((0.0, 1e300))})),
            "standardize": st.booleans(),
            "stats": st.booleans(),
            "dtype": st.sampled_from(("float64", "float32")),
            **({"pretrain": maybe(st.fixed_dictionaries(
                {"epochs": st.integers(1, 2)},
                optional={"optimizer": maybe(optimizer)}))} if pretrain else {}),
        }))
    return training


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_every_accepted_spec_trains_or_diverges(case):
    X, y, task, network, training = case
    try:
        plan = nn.build(network, training, nn.describe(X, y, task))
        limits.check_plan(plan, len(X), SERVICE_SETTINGS)
    except (nn.SpecError, ApiError):
        return                                           # a 422 naming the field
    rows, checkpoints = [], {}
    result = nn.train(plan, X, y, on_epoch=rows.append, checkpoint_every=1,
                      on_checkpoint=checkpoints.__setitem__)
    assert_documented(result)
    for report in rows:                                  # what the worker stores
        json.dumps(finite(report.to_dict()), allow_nan=False)
    json.dumps(finite(result.metrics), allow_nan=False)
    nn.Model.from_npz(result.model.to_npz())
    if result.best_model is not None:
        nn.Model.from_npz(result.best_model.to_npz())
    if checkpoints:                                      # a worker died: the next resumes
        assert_documented(nn.train(plan, X, y, resume=min(checkpoints.items())[1]))


def assert_documented(result: nn.TrainResult) -> None:
    """succeeded (worker/training.py's SUCCEEDED), or failed with code diverged."""
    if result.stop_reason == "diverged":
        assert result.error["code"] == "diverged" and result.error["message"]
    else:
        assert result.stop_reason in SUCCEEDED and result.error is None, result.stop_reason
