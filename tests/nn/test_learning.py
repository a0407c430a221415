"""What each deep structure is for, shown on a task it solves and a simpler net does not
(measured numbers: bench/STRUCTURES.md). Named for learning behaviour, not a module: each
test builds and trains a whole net."""
import itertools

import numpy as np
import pytest

import nn
from tests.nn.conftest import dense

ADAM = {"type": "adam", "learning_rate": 0.005}


def accuracy(model: nn.Model, X, y) -> float:
    return float(np.mean(np.array(model.predict(X)["labels"]) == y))


def fit(layers, X, y, task=None, callbacks=None, **training):
    training = {"loss": "cross_entropy", "optimizer": ADAM, "batch_size": 32, "seed": 0,
                "stats": False, **training}
    plan = nn.build({"layers": layers}, training, nn.describe(X, y, task))
    return nn.train(plan, X, y, **(callbacks or {}))


@pytest.mark.slow     # ~2 s with one BLAS thread; > 10 s with a threaded BLAS on a busy machine
def test_cnn_reads_shifted_noisy_glyphs():
    """10 digit glyphs at 16 offsets in 8 x 8 images, pixel noise 0.15: a small CNN reaches
    >= 95% on held-out images; a dense net of more parameters stays clearly below it."""
    X, y = nn.generate("glyphs", 3000, 15, seed=1)
    (Xt, yt), (Xe, ye) = (X[:2000], y[:2000]), (X[2000:], y[2000:])
    cnn = fit([{"type": "conv2d", "filters": 16, "kernel_size": 3},
               {"type": "conv2d", "filters": 32, "kernel_size": 3},
               {"type": "maxpool2d", "pool_size": 2}, {"type": "flatten"},
               dense(10, "softmax", init={"type": "glorot"})], Xt, yt, epochs=12,
              batch_size=64)
    mlp = fit([{"type": "flatten"}, dense(128, "relu", init={"type": "he"}),
               dense(10, "softmax", init={"type": "glorot"})], Xt, yt, epochs=12,
              batch_size=64)
    cnn_acc, mlp_acc = accuracy(cnn.model, Xe, ye), accuracy(mlp.model, Xe, ye)
    assert cnn_acc >= 0.95, cnn_acc
    assert mlp_acc <= cnn_acc - 0.02, (mlp_acc, cnn_acc)


def test_lstm_learns_parity_and_a_dense_net_does_not():
    """Parity of bit strings up to 10 long, trained on 600, tested on every string of 10 bits
    the training set does not contain (~800): the LSTM applies one rule at every step and
    generalises; the dense net sees each input position separately, fits its training set
    and is near chance on the rest."""
    X, y = nn.generate("parity", 600, 0, seed=1, length=10)
    seen = {tuple(row) for row in X[..., 0].astype(int)}
    unseen = np.array([s for s in itertools.product([0, 1], repeat=10) if s not in seen],
                      dtype=float)[..., None]
    truth = unseen.sum(axis=(1, 2)).astype(int) % 2
    adam = {"type": "adam", "learning_rate": 0.01}
    lstm = fit([{"type": "lstm", "units": 16}, dense(2, "softmax", init={"type": "glorot"})],
               X, y, batch_size=16, epochs=30, optimizer=adam)
    mlp = fit([{"type": "flatten"}, dense(64, "tanh", init={"type": "glorot"}),
               dense(2, "softmax", init={"type": "glorot"})], X, y, batch_size=16,
              epochs=150, optimizer=adam)
    assert len(unseen) > 700
    assert lstm.metrics["train_accuracy"] >= 0.99 and accuracy(lstm.model, unseen, truth) >= 0.95
    assert mlp.metrics["train_accuracy"] >= 0.95 and accuracy(mlp.model, unseen, truth) <= 0.75


def _max_position(X, y, positional: bool) -> nn.TrainResult:
    layers = [dense(16, "linear", init={"type": "glorot"})]
    layers += [{"type": "positional_encoding"}] if positional else []
    layers += [{"type": "transformer_encoder", "heads": 2, "ff_units": 32},
               {"type": "sequence_pool", "mode": "mean"},
               dense(8, "softmax", init={"type": "glorot"})]
    return fit(layers, X, y, epochs=15)


def test_a_transformer_needs_positional_encoding_to_tell_positions_apart():
    """Which of 8 positions holds the largest value: with sinusoidal positional encoding the
    encoder learns it; without, attention and mean pooling cannot tell positions apart and
    stay at chance (1/8)."""
    X, y = nn.generate("max_position", 1500, 0, seed=2, length=8)
    (Xt, yt), (Xe, ye) = (X[:1000], y[:1000]), (X[1000:], y[1000:])
    with_pe = accuracy(_max_position(Xt, yt, True).model, Xe, ye)
    without = accuracy(_max_position(Xt, yt, False).model, Xe, ye)
    assert with_pe >= 0.9, with_pe
    assert without <= 0.25, without


def test_a_causal_transformer_learns_the_next_token():
    """Arithmetic token sequences x_t = s + k t (mod 16): a causal encoder predicts every
    next token from the ones before it (the first step's k is unknowable: ~1/3 there); a
    net without attention sees one token at a time and cannot infer k."""
    X, y = nn.generate("next_token", 1500, 0, seed=3, length=12, vocab_size=16)
    (Xt, yt), (Xe, ye) = (X[:1000], y[:1000]), (X[1000:], y[1000:])
    embed = {"type": "embedding", "vocab_size": 16, "dim": 16}
    out = dense(16, "softmax", init={"type": "glorot"})
    adam = {"type": "adam", "learning_rate": 0.01}
    causal = fit([embed, {"type": "positional_encoding"},
                  {"type": "transformer_encoder", "heads": 2, "ff_units": 32, "causal": True},
                  out], Xt, yt, "classification", epochs=10, optimizer=adam)
    per_step = fit([embed, dense(32, "relu", init={"type": "he"}), out], Xt, yt,
                   "classification", epochs=10, optimizer=adam)
    labels = np.array(causal.model.predict(Xe)["labels"])
    assert np.mean(labels[:, 1:] == ye[:, 1:]) >= 0.95
    assert np.mean(labels[:, 0] == ye[:, 0]) <= 0.6
    alone = np.array(per_step.model.predict(Xe)["labels"])
    assert np.mean(alone[:, 1:] == ye[:, 1:]) <= 0.5


def test_pretraining_makes_a_deep_sigmoid_stack_trainable():
    """The Playground's Gaussian, noise 30, six hidden layers of 4 sigmoid units: from small
    random weights per-sample SGD stalls at chance; after greedy layer-wise autoencoder
    pretraining the same SGD fine-tuning trains it in the same 20 epochs."""
    X, y = nn.generate("gaussian", 500, 30, seed=0)
    init = {"type": "uniform", "scale": 0.5}
    net = {"layers": [dense(4, init=init)] * 6 + [dense(1, init=init)]}
    training = {"optimizer": {"type": "sgd", "learning_rate": 0.03}, "batch_size": 1,
                "epochs": 20, "seed": 0, "validation_fraction": 0.5, "stats": False}
    pretrain = {"epochs": 10, "optimizer": {"type": "adam", "learning_rate": 0.01}}
    info = nn.describe(X, y)
    plain = nn.train(nn.build(net, training, info), X, y)
    reports: list = []
    pre = nn.train(nn.build(net, {**training, "pretrain": pretrain}, info), X, y,
                   on_epoch=reports.append)
    assert [r.phase for r in reports].count("pretrain") == 60
    assert plain.metrics["train_accuracy"] <= 0.6 and plain.metrics["train_loss"] > 0.12
    assert pre.metrics["train_accuracy"] >= 0.9 and pre.metrics["val_accuracy"] >= 0.9
    assert pre.metrics["train_loss"] < 0.8 * plain.metrics["train_loss"]
