"""N-D data, the new generators, and build() for the deep structures: shapes inferred layer by
layer, defaults filled in, and a SpecError naming the field for every mismatch."""
import copy

import numpy as np
import pytest

import nn
from nn.generators import glyph_bitmaps
from tests.nn.conftest import dense

IMG = nn.describe(np.zeros((10, 8, 8)), np.arange(10) % 2)
IMG3 = nn.describe(np.zeros((10, 3, 8, 8)), np.arange(10) % 2)
VEC = nn.describe(np.zeros((10, 16)), np.arange(10) % 2)
SEQ = nn.describe(np.zeros((10, 5, 4)), np.arange(10) % 2)
TOK = nn.describe(np.arange(50).reshape(10, 5) % 7, np.arange(10) % 2)
FLOATS = nn.describe(np.arange(50).reshape(10, 5) / 3, np.arange(10) % 2)
NEXT = nn.describe(*nn.generate("next_token", 60, 0, seed=1, length=6, vocab_size=8),
                   "classification")
SOFTMAX8 = dense(8, "softmax")
CE = {"loss": "cross_entropy"}


# ---- data ----------------------------------------------------------------------------------

def test_describe_reports_the_per_sample_shape_and_tokens():
    assert IMG.input_shape == (8, 8) and IMG3.input_shape == (3, 8, 8)
    assert SEQ.input_shape == (5, 4) and IMG.token_range == (0, 0)
    assert TOK.input_shape == (5,) and TOK.token_range == (0, 6)
    assert FLOATS.token_range is None and SEQ.target_shape == ()
    assert NEXT.target_shape == (6,) and NEXT.classes == list(range(8))
    assert sum(NEXT.class_counts) == 60 * 6                    # labels, not samples
    reg = nn.describe(np.zeros((4, 2, 2)), np.zeros((4, 3)))
    assert reg.task == "regression" and reg.target_shape == (3,)
    assert nn.describe(np.zeros((4, 1)), np.ones((4, 2), int)).task == "regression"


def test_describe_labels_per_time_step():
    info = nn.describe(np.zeros((2, 3)), [["a", "b", "a"], ["c", "a", "b"]], "classification")
    assert info.classes == ["a", "b", "c"] and info.class_counts == [3, 2, 1]
    with pytest.raises(nn.SpecError) as e:
        nn.describe(np.zeros((2, 3)), [[0, "a", 1], [1, 0, 1]], "classification")
    assert e.value.path == "targets"


@pytest.mark.parametrize("inputs", [np.zeros(3), np.zeros((3, 0, 2)), np.zeros((3, 2, 0))])
def test_describe_rejects_empty_sample_shapes(inputs):
    with pytest.raises(nn.SpecError) as e:
        nn.describe(inputs, [0, 1, 0])
    assert e.value.path == "inputs"


# ---- generators ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,params,x_shape,y_shape", [
    ("glyphs", {}, (8, 8), ()), ("glyphs", {"size": 12}, (12, 12), ()),
    ("parity", {}, (8, 1), ()), ("parity", {"length": 3}, (3, 1), ()),
    ("max_position", {"length": 5}, (5, 1), ()),
    ("next_token", {}, (12,), (12,)), ("next_token", {"length": 4, "vocab_size": 9}, (4,), (4,)),
])
def test_new_generators_shapes_and_determinism(kind, params, x_shape, y_shape):
    X, y = nn.generate(kind, 200, 10, seed=4, **params)
    assert X.shape == (200, *x_shape) and X.dtype == np.float64
    assert y.shape == (200, *y_shape) and y.dtype == np.int64
    X2, y2 = nn.generate(kind, 200, 10, seed=4, **params)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, nn.generate(kind, 200, 10, seed=5, **params)[0])
    info = nn.describe(X, y, "classification")
    assert info.input_shape == x_shape and info.target_shape == y_shape
    assert nn.generator_shapes(kind, 200, 10, seed=4, **params) == (x_shape, y_shape)


def test_generator_labels_follow_their_rules():
    X, y = nn.generate("parity", 300, 0, seed=0, length=6)
    assert np.array_equal(y, X.sum(axis=(1, 2)).astype(int) % 2)
    X, y = nn.generate("max_position", 300, 0, seed=0, length=6)
    assert np.array_equal(y, X[..., 0].argmax(axis=1)) and set(y.tolist()) == set(range(6))
    X, y = nn.generate("next_token", 300, 0, seed=0, length=6, vocab_size=10)
    assert np.array_equal(y[:, :-1], X[:, 1:])                 # the next token
    step = (X[:, 1] - X[:, 0]) % 10
    assert set(step.tolist()) == {1, 2, 3} and np.array_equal((y[:, -1] - X[:, -1]) % 10, step)
    Xn, yn = nn.generate("next_token", 300, 50, seed=0, length=6, vocab_size=10)
    assert np.array_equal(yn, y) and 0.2 < np.mean(Xn[:, 1:] != X[:, 1:]) < 0.6
    X, y = nn.generate("glyphs", 100, 0, seed=0)
    assert np.bincount(y).tolist() == [10] * 10                 # balanced
    glyphs = glyph_bitmaps()
    assert len({g.tobytes() for g in glyphs}) == 10
    for image, label in zip(X[:30], y[:30]):           # its glyph at one of 4 x 4 offsets
        ink = glyphs[label] > 0
        assert (image > 0).sum() == ink.sum()
        assert any(np.array_equal(image[r:r + 5, c:c + 5] > 0, ink)
                   for r in range(4) for c in range(4))


@pytest.mark.parametrize("kwargs,path", [
    ({"kind": "glyphs", "size": 5}, "generator.size"),
    ({"kind": "glyphs", "size": 8.0}, "generator.size"),
    ({"kind": "glyphs", "length": 8}, "generator.length"),
    ({"kind": "parity", "length": 1}, "generator.length"),
    ({"kind": "parity", "length": True}, "generator.length"),
    ({"kind": "next_token", "vocab_size": 3}, "generator.vocab_size"),
    ({"kind": "next_token", "length": 65}, "generator.length"),
    ({"kind": "xor", "length": 4}, "generator.length"),
    ({"kind": "max_position", "noise": 60}, "generator.noise"),
])
def test_new_generator_errors(kwargs, path):
    for fn in (nn.generate, nn.generator_shapes):
        with pytest.raises(nn.SpecError) as e:
            fn(**kwargs)
        assert e.value.path == path


@pytest.mark.parametrize("kind", ["xor", "circle", "gaussian", "spiral"])
def test_playground_shapes(kind):
    X, y = nn.generate(kind, 10, seed=1)
    assert nn.generator_shapes(kind, 10) == (X.shape[1:], y.shape[1:]) == ((2,), ())


def test_generator_defaults_are_published():
    assert nn.DEFAULTS["generator"]["next_token"] == {"length": 12, "vocab_size": 16}
    assert nn.generate("glyphs", 3, seed=0)[0].shape == (3, 8, 8)


# ---- build ---------------------------------------------------------------------------------

CNN = [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1},
       {"type": "maxpool2d"},
       {"type": "conv2d", "filters": 6, "kernel_size": [3, 2], "stride": [1, 2]},
       {"type": "avgpool2d", "pool_size": 1},
       {"type": "flatten"}, dense(1)]


def test_shapes_are_inferred_layer_by_layer():
    plan = nn.build({"layers": CNN}, {}, IMG)
    assert [l.out_shape for l in plan.layers] == [(4, 8, 8), (4, 4, 4), (6, 2, 2), (6, 2, 2),
                                                  (24,), (1,)]
    assert plan.n_params == (4 * 9 + 4) + (6 * 4 * 6 + 6) + 25
    assert plan.network["layers"][0] == {
        "type": "conv2d", "filters": 4, "kernel_size": [3, 3], "stride": [1, 1],
        "padding": [1, 1], "activation": "relu", "init": {"type": "he", "distribution": "normal"}}
    assert plan.network["layers"][1] == {"type": "maxpool2d", "pool_size": [2, 2],
                                         "stride": [2, 2]}
    seq = nn.build({"layers": [{"type": "lstm", "units": 3, "return_sequences": True},
                               {"type": "transformer_encoder", "heads": 3},
                               {"type": "sequence_pool"}, dense(1)]}, {}, SEQ)
    assert [l.out_shape for l in seq.layers] == [(5, 3), (5, 3), (3,), (1,)]
    assert seq.network["layers"][1] == {"type": "transformer_encoder", "heads": 3,
                                        "ff_units": 12, "activation": "relu", "causal": False,
                                        "norm": "pre", "init": {"type": "glorot"}}


NETWORKS = [
    (IMG3, CNN),
    (SEQ, [{"type": "rnn", "units": 3}, dense(1)]),
    (SEQ, [{"type": "rnn", "units": 3, "return_sequences": True, "activation": "relu"},
           {"type": "sequence_pool", "mode": "max"}, dense(1)]),
    (SEQ, [{"type": "dense", "units": 8, "activation": "linear"},
           {"type": "positional_encoding", "mode": "learned"},
           {"type": "self_attention", "heads": 2, "causal": True}, {"type": "layer_norm"},
           {"type": "sequence_pool", "mode": "last"}, dense(1)]),
    (TOK, [{"type": "embedding", "vocab_size": 7, "dim": 4},
           {"type": "positional_encoding"},
           {"type": "transformer_encoder", "heads": 2, "ff_units": 8, "norm": "post"},
           {"type": "sequence_pool"}, dense(1)]),
]


@pytest.mark.parametrize("info,layers", NETWORKS)
def test_normalised_plans_rebuild_to_themselves(info, layers):
    plan = nn.build({"layers": copy.deepcopy(layers)}, {"pretrain": None}, info)
    again = nn.build(plan.network, plan.training, info)
    assert again.network == plan.network and again.training == plan.training
    assert "pretrain" not in plan.training                     # absent when null
    from nn.layers import LAYERS
    assert all(set(spec) == LAYERS[spec["type"]].fields() for spec in plan.network["layers"])


def test_every_layer_type_has_published_defaults():
    from nn.layers import LAYERS
    for kind, cls in LAYERS.items():
        assert nn.DEFAULTS[kind] == cls.DEFAULTS
    assert nn.DEFAULTS["dense"] == {"activation": "sigmoid", "init": None}   # by activation
    assert nn.DEFAULTS["pretrain"] == {"epochs": 10, "optimizer": None}


BAD = [
    # (data, layers, training, path, words in the message)
    (VEC, [dense(4), {"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "flatten"},
           dense(1)], {}, "network.layers[1]", "conv2d needs (C, H, W) or (H, W) input but "
                                                  "gets (4,)"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 9}, {"type": "flatten"}, dense(1)],
     {}, "network.layers[0].kernel_size", "larger than the padded input"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 3},
           {"type": "flatten"}, dense(1)], {}, "network.layers[0].padding", "smaller"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": [3, 3, 3]}, {"type": "flatten"},
           dense(1)], {}, "network.layers[0].kernel_size", "list of two"),
    (IMG, [{"type": "conv2d", "filters": 0, "kernel_size": 3}, {"type": "flatten"}, dense(1)],
     {}, "network.layers[0].filters", ""),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3, "stride": 0},
           {"type": "flatten"}, dense(1)], {}, "network.layers[0].stride", ""),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "softmax"},
           {"type": "flatten"}, dense(1)], {}, "network.layers[0].activation", "output layer"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3}, dense(1)], {},
     "network.layers[1]", "add a flatten layer"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3}], {}, "network.layers[0].type",
     "last layer must be dense"),
    (IMG, [{"type": "maxpool2d", "pool_size": 9}, {"type": "flatten"}, dense(1)], {},
     "network.layers[0].pool_size", "larger than the input"),
    (IMG, [{"type": "avgpool2d", "padding": 1}, {"type": "flatten"}, dense(1)], {},
     "network.layers[0].padding", "unknown field"),
    (VEC, [{"type": "rnn", "units": 3}, dense(1)], {}, "network.layers[0]",
     "rnn needs (T, D) input but gets (16,)"),
    (SEQ, [{"type": "rnn", "units": 3, "activation": "softmax"}, dense(1)], {},
     "network.layers[0].activation", ""),
    (SEQ, [{"type": "lstm", "units": 3, "activation": "tanh"}, dense(1)], {},
     "network.layers[0].activation", "unknown field"),
    (SEQ, [{"type": "rnn", "units": 3, "return_sequences": True}, dense(1)], {},
     "network.layers[1]", "pool the sequence"),
    (SEQ, [{"type": "self_attention", "heads": 3}, {"type": "sequence_pool"}, dense(1)], {},
     "network.layers[0].heads", "do not divide the input dimension 4"),
    (SEQ, [{"type": "transformer_encoder", "heads": 3}, {"type": "sequence_pool"}, dense(1)],
     {}, "network.layers[0].heads", "divide"),
    (SEQ, [{"type": "transformer_encoder", "norm": "sandwich"}, {"type": "sequence_pool"},
           dense(1)], {}, "network.layers[0].norm", ""),
    (SEQ, [{"type": "transformer_encoder", "activation": "softmax"},
           {"type": "sequence_pool"}, dense(1)], {}, "network.layers[0].activation", ""),
    (SEQ, [{"type": "sequence_pool", "mode": "first"}, dense(1)], {},
     "network.layers[0].mode", ""),
    (SEQ, [{"type": "positional_encoding", "mode": "rotary"}, {"type": "flatten"}, dense(1)],
     {}, "network.layers[0].mode", ""),
    (VEC, [{"type": "positional_encoding"}, dense(1)], {}, "network.layers[0]", "(T, D)"),
    (SEQ, [{"type": "layer_norm", "eps": 0}, {"type": "flatten"}, dense(1)], {},
     "network.layers[0].eps", ""),
    (FLOATS, [{"type": "embedding", "vocab_size": 20, "dim": 4}, {"type": "sequence_pool"},
              dense(1)], {}, "network.layers[0]", "not all non-negative integers"),
    (nn.describe(-np.ones((4, 3)), [0, 1, 0, 1]),
     [{"type": "embedding", "vocab_size": 20, "dim": 4}, {"type": "flatten"}, dense(1)], {},
     "network.layers[0]", "integer token ids"),
    (TOK, [{"type": "embedding", "vocab_size": 5, "dim": 4}, {"type": "sequence_pool"},
           dense(1)], {}, "network.layers[0].vocab_size", "up to 6"),
    (TOK, [dense(3), {"type": "embedding", "vocab_size": 7, "dim": 4}, dense(1)], {},
     "network.layers[1].type", "first layer"),
    (SEQ, [{"type": "embedding", "vocab_size": 7, "dim": 4}, dense(1)], {},
     "network.layers[0]", "embedding needs (T,) token ids input but gets (5, 4)"),
    (TOK, [{"type": "embedding", "vocab_size": 7, "dim": 4}, {"type": "flatten"}, dense(1)],
     {"standardize": True}, "training.standardize", "token ids"),
    (IMG, [{"type": "conv2d", "filters": 100_000, "kernel_size": 8}, {"type": "flatten"},
           dense(1000), dense(1)], {}, "network.layers", "parameters"),
    # outputs per time step
    (NEXT, [{"type": "embedding", "vocab_size": 8, "dim": 4}, {"type": "sequence_pool"},
            SOFTMAX8], CE, "network.layers[2]", "a label per time step (6,)"),
    (NEXT, [{"type": "embedding", "vocab_size": 8, "dim": 4}, SOFTMAX8], {},
     "training.loss", "cross_entropy"),
    (NEXT, [{"type": "embedding", "vocab_size": 8, "dim": 4}, dense(8)], CE,
     "network.layers[1].activation", "softmax"),
    (NEXT, [{"type": "embedding", "vocab_size": 8, "dim": 4}, dense(7, "softmax")], CE,
     "network.layers[1].units", "8 classes"),
    # the perceptron and pretraining
    (SEQ, [dense(1, "step")], {"algorithm": "perceptron"}, "network.layers", "(D,) inputs"),
    (VEC, [dense(4), dense(1)], {"pretrain": {"epochs": 0}}, "training.pretrain.epochs", ""),
    (VEC, [dense(4), dense(1)], {"pretrain": {"learning_rate": 0.1}},
     "training.pretrain.learning_rate", "unknown field"),
    (VEC, [dense(4), dense(1)], {"pretrain": {"optimizer": {"type": "adam", "beta1": 1}}},
     "training.pretrain.optimizer.beta1", ""),
    (VEC, [dense(4), dense(1)], {"pretrain": []}, "training.pretrain", "object"),
    (VEC, [dense(1)], {"pretrain": {}}, "training.pretrain", "hidden dense layer"),
    (IMG, [{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "flatten"}, dense(4),
           dense(1)], {"pretrain": {}}, "training.pretrain", "network.layers[0] is conv2d"),
    (VEC, [dense(1, "step")], {"algorithm": "perceptron", "pretrain": {}},
     "training.pretrain", "perceptron"),
]


@pytest.mark.parametrize("info,layers,training,path,words", BAD)
def test_bad_structures_name_the_field(info, layers, training, path, words):
    with pytest.raises(nn.SpecError) as e:
        nn.build({"layers": layers}, training, info)
    assert e.value.path == path, str(e.value)
    assert words in e.value.message, e.value.message


def test_pretrain_defaults_and_normal_form():
    plan = nn.build({"layers": [dense(4), {"type": "dropout"}, dense(3), dense(1)]},
                    {"pretrain": {}, "optimizer": {"type": "sgd", "learning_rate": 0.5}}, VEC)
    assert plan.training["pretrain"] == {"epochs": 10, "optimizer": plan.training["optimizer"]}
    assert plan.pretrain_epochs_total == 20 and plan.epochs_total == 100
    adam = nn.build(plan.network, {"pretrain": {"epochs": 3, "optimizer": {"type": "adam"}}},
                    VEC).training["pretrain"]
    assert adam == {"epochs": 3, "optimizer": {"type": "adam", "learning_rate": 0.001,
                                               "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}
