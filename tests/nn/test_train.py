"""The training loop: reproducibility, resume, stopping, divergence, reports, checkpoints."""
import json

import numpy as np
import pytest

import nn
from tests.nn.conftest import dense, plan_for


def same(a: nn.Weights, b: nn.Weights) -> bool:
    return len(a) == len(b) and all(
        p.keys() == q.keys() and all(np.array_equal(p[k], q[k]) for k in p)
        for p, q in zip(a, b))


DROPOUT_NET = [dense(8, "tanh"), {"type": "dropout", "drop_prob": 0.3}, dense(1)]


@pytest.mark.parametrize("optimizer", [
    {"type": "sgd", "learning_rate": 0.2, "momentum": 0.9, "nesterov": True},
    {"type": "sgd", "learning_rate": 0.2, "momentum": 0.5},
    {"type": "adam", "learning_rate": 0.01}])
def test_resume_is_bit_identical(xor_data, optimizer):
    X, y = xor_data
    training = {"optimizer": optimizer, "batch_size": 4, "epochs": 20, "seed": 11,
                "validation_fraction": 0.2, "early_stopping": {"patience": 50},
                "lr_schedule": {"type": "step", "step_size": 5, "gamma": 0.7},
                "weight_decay": 1e-3}
    plan = plan_for(DROPOUT_NET, training, X, y)
    straight = nn.train(plan, X, y)
    checkpoints = {}
    first = nn.train(nn.build(plan.network, {**training, "epochs": 20}, plan.data), X, y,
                     checkpoint_every=5, on_checkpoint=lambda e, b: checkpoints.update({e: b}),
                     should_stop=lambda: None)
    assert sorted(checkpoints) == [5, 10, 15, 20] and same(first.weights, straight.weights)
    reports = []
    resumed = nn.train(plan, X, y, resume=checkpoints[10], on_epoch=reports.append)
    assert [r.epoch for r in reports] == list(range(11, 21))
    assert same(resumed.weights, straight.weights)
    assert same(resumed.best_weights, straight.best_weights)
    assert resumed.metrics == straight.metrics and resumed.epochs_completed == 20


def test_resume_refuses_another_plan(xor_data):
    X, y = xor_data
    plan = plan_for(DROPOUT_NET, {"epochs": 2, "seed": 1}, X, y)
    saved = []
    nn.train(plan, X, y, checkpoint_every=1, on_checkpoint=lambda e, b: saved.append(b))
    other = plan_for(DROPOUT_NET, {"epochs": 2, "seed": 2}, X, y)
    with pytest.raises(ValueError, match="another plan"):
        nn.train(other, X, y, resume=saved[0])
    with pytest.raises(ValueError, match="not a checkpoint"):
        nn.train(plan, X, y, resume=b"junk")


def test_resume_lets_running_out_of_memory_through(xor_data, monkeypatch):
    """Not junk: the worker fails the run with out_of_memory, not internal_error."""
    X, y = xor_data
    plan = plan_for(DROPOUT_NET, {"epochs": 2, "seed": 1}, X, y)
    saved = []
    nn.train(plan, X, y, checkpoint_every=1, on_checkpoint=lambda e, b: saved.append(b))

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("Unable to allocate 1.00 GiB")

    monkeypatch.setattr(np, "load", out_of_memory)
    with pytest.raises(MemoryError):
        nn.train(plan, X, y, resume=saved[0])


def test_same_seed_same_weights_other_seed_other_weights(xor_data):
    X, y = xor_data
    training = {"epochs": 5, "seed": 3, "batch_size": 8}
    a = nn.train(plan_for(DROPOUT_NET, training, X, y), X, y)
    b = nn.train(plan_for(DROPOUT_NET, training, X, y), X, y)
    c = nn.train(plan_for(DROPOUT_NET, {**training, "seed": 4}, X, y), X, y)
    assert same(a.weights, b.weights) and not same(a.weights, c.weights)


def test_textbook_per_sample_sgd_step():
    """batch_size 1 with shuffle off: one epoch is the textbook's loop, sample by sample."""
    X = np.array([[0.0, 1.0], [1.0, 0.5], [0.3, 0.2]])
    y = np.array([1, 0, 1])
    training = {"epochs": 1, "seed": 0, "shuffle": False,
                "optimizer": {"type": "sgd", "learning_rate": 0.7}}
    plan = plan_for([dense(3), dense(1)], training, X, y)
    w0 = nn.train(nn.build(plan.network, {**training, "epochs": 0}, plan.data), X, y).weights
    W1, b1, W2, b2 = (w0[0]["W"].copy(), w0[0]["b"].copy(), w0[1]["W"].copy(),
                      w0[1]["b"].copy())
    sig = lambda h: 1 / (1 + np.exp(-h))
    for x, b in zip(X, y):                        # the slides' eps and weight updates
        g1 = sig(x @ W1 + b1)
        g2 = sig(g1 @ W2 + b2)
        eps2 = (g2 - b) * g2 * (1 - g2)
        eps1 = (W2 @ eps2) * g1 * (1 - g1)
        W2 -= 0.7 * np.outer(g1, eps2)
        b2 -= 0.7 * eps2
        W1 -= 0.7 * np.outer(x, eps1)
        b1 -= 0.7 * eps1
    w = nn.train(plan, X, y).weights
    for got, want in [(w[0]["W"], W1), (w[0]["b"], b1), (w[1]["W"], W2), (w[1]["b"], b2)]:
        assert np.allclose(got, want, rtol=1e-12, atol=1e-14)


def test_initial_weights_are_uniform_small_and_seeded(xor_data):
    X, y = xor_data
    uniform = {"type": "uniform"}                       # the textbook's, one init away
    plan = plan_for([dense(50, init=uniform), dense(1, init=uniform)], {"epochs": 0, "seed": 9},
                    X, y)
    r = nn.train(plan, X, y)
    W = r.weights[0]["W"]
    assert np.abs(W).max() <= 0.1 and np.abs(W).max() > 0.09
    init_rng = np.random.default_rng([9, 0])            # the contract: seeded by (seed, 0)
    assert np.array_equal(W, init_rng.uniform(-0.1, 0.1, (2, 50)))
    assert r.stop_reason is None and r.epochs_completed == 0
    assert r.metrics["train_loss"] is not None
    again = nn.train(plan, X, y, initial_weights=r.weights)
    assert same(again.weights, r.weights)                         # epochs 0: unchanged


def test_default_init_follows_the_activation(xor_data):
    """Glorot for sigmoid, tanh, linear and softmax, He for ReLU (nn/init.py), written into
    the normalised plan; the weights are drawn so."""
    X, y = xor_data
    layers = [dense(50, "sigmoid"), dense(40, "relu"), dense(30, "tanh"), dense(20, "linear"),
              dense(2, "softmax")]
    plan = plan_for(layers, {"epochs": 0, "seed": 4}, X, y)
    inits = [spec["init"] for spec in plan.network["layers"]]
    glorot, he = {"type": "glorot"}, {"type": "he", "distribution": "normal"}
    assert inits == [glorot, he, glorot, glorot, glorot]
    w = nn.train(plan, X, y).weights
    for (fan_in, fan_out), p in zip([(2, 50), (30, 20), (20, 2)], (w[0], w[3], w[4])):
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert 0.9 * limit < np.abs(p["W"]).max() <= limit and not p["b"].any()
    assert np.std(w[1]["W"]) == pytest.approx(np.sqrt(2 / 50), rel=0.1)
    conv = nn.build({"layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3,
                                 "activation": "tanh"}, {"type": "flatten"}, dense(2)]},
                    {}, nn.describe(np.zeros((4, 5, 5)), np.array([0, 1, 0, 1])))
    assert conv.network["layers"][0]["init"] == glorot
    perceptron = plan_for([dense(1, "step")], {"algorithm": "perceptron"}, X, y)
    assert perceptron.network["layers"][0]["init"] == {"type": "uniform", "scale": 0.1}


def test_bad_initial_weights(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4), dense(1)], {"epochs": 1}, X, y)
    w = nn.train(nn.build(plan.network, {"epochs": 0}, plan.data), X, y).weights
    w[1] = {"W": np.zeros((3, 1)), "b": np.zeros(1)}
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, X, y, initial_weights=w)
    assert e.value.path == "initial_weights.layers[1].W"


def test_divergence_stops_with_the_epoch(xor_data):
    X, y = xor_data
    X = X * 1e3
    plan = plan_for([dense(4, "relu"), dense(1, "linear")],
                    {"epochs": 50, "seed": 0, "optimizer": {"type": "sgd", "learning_rate": 1e6}},
                    X, y)
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append)
    assert r.stop_reason == "diverged"
    assert r.error["code"] == "diverged"
    assert f"epoch {r.epochs_completed + 1}" in r.error["message"]
    assert len(reports) == r.epochs_completed
    assert all(np.isfinite(v).all() for p in r.weights for v in p.values())
    json.dumps(r.metrics)


def test_should_stop_between_epochs_keeps_weights(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4), dense(1)], {"epochs": 100, "seed": 0}, X, y)
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append,
                 should_stop=lambda: "cancelled" if len(reports) >= 3 else None)
    assert r.stop_reason == "cancelled" and r.epochs_completed == 3 and r.error is None
    three = nn.train(nn.build(plan.network, {"epochs": 3, "seed": 0}, plan.data), X, y)
    assert same(r.weights, three.weights)


def test_should_stop_within_a_long_epoch(monkeypatch):
    monkeypatch.setattr(nn.driver, "POLL_INTERVAL_S", 0.0)
    X, y = nn.generate("xor", 10_000, 0, seed=0)      # polled several times an epoch
    plan = plan_for([dense(4), dense(1)], {"epochs": 5, "seed": 0}, X, y)
    calls = []
    r = nn.train(plan, X, y, should_stop=lambda: calls.append(1) or
                 ("deadline" if len(calls) > 3 else None))
    assert r.stop_reason == "deadline" and r.epochs_completed == 0
    init = nn.train(nn.build(plan.network, {"epochs": 0, "seed": 0}, plan.data), X, y)
    assert same(r.weights, init.weights)           # the interrupted epoch is rolled back


def test_epoch_report_fields(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4, "relu"), {"type": "dropout", "drop_prob": 0.2}, dense(4, "tanh"),
                     dense(1)], {"epochs": 2, "seed": 0, "validation_fraction": 0.25}, X, y)
    reports = []
    nn.train(plan, X, y, on_epoch=reports.append)
    r = reports[0]
    assert r.epoch == 1 and r.phase == "train" and r.learning_rate == 0.1
    assert 0 <= r.train_accuracy <= 1 and 0 <= r.val_accuracy <= 1
    assert r.val_loss > 0 and r.train_loss > 0 and r.duration_s > 0
    assert [s["layer"] for s in r.layer_stats] == [0, 2, 3]
    assert [s["name"] for s in r.layer_stats] == ["dense_0", "dense_2", "dense_3"]
    relu, tanh, sig = r.layer_stats
    assert relu["act_dead_fraction"] is not None and relu["act_saturated_fraction"] is None
    assert tanh["act_saturated_fraction"] is not None and tanh["act_dead_fraction"] is None
    assert 0 <= sig["act_saturated_fraction"] <= 1
    for row in r.layer_stats:
        assert row["grad_norm"] > 0 and row["weight_max_abs"] >= row["weight_mean_abs"]
    json.dumps(r.to_dict())
    reports = []
    nn.train(nn.build(plan.network, {"epochs": 1, "stats": False}, plan.data), X, y,
             on_epoch=reports.append)
    assert reports[0].layer_stats == []


def test_stats_match_a_direct_computation(xor_data):
    """grad_mean_abs is |dL/dW| of the mean loss over the probe batch (32 of the 100 rows)."""
    from nn.prepare import prepare
    X, y = xor_data[0][:100], xor_data[1][:100]
    plan = plan_for([dense(3), dense(1)], {"epochs": 1, "seed": 0}, X, y)
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append)
    probe = prepare(plan, X, y).probe
    assert len(probe) == 32
    X, y = X[probe], y[probe]
    (W1, b1), (W2, b2) = [(p["W"], p["b"]) for p in r.weights]
    sig = lambda h: 1 / (1 + np.exp(-h))
    g1 = sig(X @ W1 + b1)
    g2 = sig(g1 @ W2 + b2)
    eps2 = (g2 - y[:, None]) * g2 * (1 - g2) / len(X)
    eps1 = (eps2 @ W2.T) * g1 * (1 - g1)
    out, hidden = reports[0].layer_stats[1], reports[0].layer_stats[0]
    assert out["grad_mean_abs"] == pytest.approx(np.abs(g1.T @ eps2).mean())
    assert hidden["grad_norm"] == pytest.approx(np.linalg.norm(X.T @ eps1))
    assert hidden["act_mean"] == pytest.approx(g1.mean())
    assert out["weight_std"] == pytest.approx(W2.std())


def test_probe_batch_is_a_fixed_seeded_subset():
    from nn.prepare import prepare
    X, y = nn.generate("xor", 1000, 0, seed=0)
    plan = plan_for([dense(2), dense(1)], {"seed": 5, "validation_fraction": 0.2}, X, y)
    a, b = prepare(plan, X, y), prepare(plan, X, y)
    assert len(a.probe) == 32 and np.array_equal(a.probe, b.probe)
    assert np.all(np.diff(a.probe) > 0) and a.probe.max() < len(a.x) == 800
    small = prepare(plan_for([dense(2), dense(1)], {"seed": 5}, X[:20], y[:20]), X[:20], y[:20])
    assert np.array_equal(small.probe, np.arange(20))               # every sample


def test_probe_size_rule():
    """min(128, max(32, ceil(n / 64))): about a sixty-fourth of an epoch's samples."""
    from nn.stats import probe_size
    assert [probe_size(n) for n in (20, 200, 1437, 2048, 2049, 4096, 8192, 60000)] == \
        [32, 32, 32, 32, 33, 64, 128, 128]


def test_early_stopping_returns_best_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] + rng.normal(0, 1.5, 60) > 0).astype(int)       # noisy: overfits fast
    plan = plan_for([dense(64, "relu", init={"type": "he"}), dense(1)],
                    {"epochs": 500, "seed": 0, "validation_fraction": 0.3,
                     "optimizer": {"type": "adam", "learning_rate": 0.01}, "batch_size": 8,
                     "loss": "binary_cross_entropy", "early_stopping": {"patience": 15}}, X, y)
    reports = []
    r = nn.train(plan, X, y, on_epoch=reports.append)
    assert r.stop_reason == "early_stopping" and r.epochs_completed < 500
    val = [rep.val_loss for rep in reports]
    assert r.best_epoch == 1 + int(np.argmin(val))
    assert r.epochs_completed == r.best_epoch + 15
    assert min(val) <= val[-1] and r.metrics["best_loss"] == min(val)
    assert r.best_model is not None and not same(r.best_weights, r.weights)


def test_dropout_narrows_the_train_validation_gap():
    """80 noisy samples, 128 hidden units: without dropout train loss ~0 and val loss large."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 10))
    y = (X[:, 0] + X[:, 1] + rng.normal(0, 1.0, 80) > 0).astype(int)

    def gap(drop_prob):
        layers = [{"type": "dropout", "drop_prob": drop_prob / 4},
                  dense(128, "relu", init={"type": "he"}),
                  {"type": "dropout", "drop_prob": drop_prob}, dense(1)]
        plan = plan_for(layers, {"epochs": 100, "seed": 2, "validation_fraction": 0.5,
                                 "optimizer": {"type": "adam", "learning_rate": 0.01},
                                 "batch_size": 10, "loss": "binary_cross_entropy"}, X, y)
        r = nn.train(plan, X, y)
        train_loss = nn.train(nn.build(plan.network, {**plan.training, "epochs": 0},
                                       plan.data), X, y, initial_weights=r.weights)
        return r.metrics["val_loss"] - train_loss.metrics["train_loss"]

    assert gap(0.5) < 0.7 * gap(0.0)


def test_softmax_cross_entropy_learns_three_classes(blobs):
    X, y = blobs
    plan = plan_for([dense(16, "relu", init={"type": "he"}), dense(3, "softmax")],
                    {"loss": "cross_entropy", "epochs": 30, "seed": 0, "batch_size": 16,
                     "validation_fraction": 0.2, "standardize": True,
                     "optimizer": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9}},
                    X, y)
    r = nn.train(plan, X, y)
    assert r.metrics["val_accuracy"] >= 0.9 and r.metrics["train_accuracy"] >= 0.9
    p = r.model.predict(X[:5])
    assert set(p["labels"]) <= {"a", "b", "c"}
    assert np.allclose(np.sum(p["probabilities"], axis=1), 1)


def test_three_spirals_with_softmax():
    t = np.linspace(0, 1, 100)
    X = np.concatenate([np.stack([t * np.sin(2.5 * np.pi * t + k * 2 * np.pi / 3),
                                  t * np.cos(2.5 * np.pi * t + k * 2 * np.pi / 3)], 1)
                        for k in range(3)])
    y = np.repeat([0, 1, 2], 100)
    plan = plan_for([dense(32, "tanh", init={"type": "glorot"}),
                     dense(32, "tanh", init={"type": "glorot"}), dense(3, "softmax")],
                    {"loss": "cross_entropy", "epochs": 300, "seed": 0, "batch_size": 32,
                     "optimizer": {"type": "adam", "learning_rate": 0.01}, "standardize": True},
                    X, y)
    assert nn.train(plan, X, y).metrics["train_accuracy"] >= 0.95


def test_full_batch_and_no_shuffle_and_float32(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4, "tanh"), dense(1)],
                    {"batch_size": None, "shuffle": False, "epochs": 3, "dtype": "float32",
                     "seed": 0}, X, y)
    r = nn.train(plan, X, y)
    assert r.weights[0]["W"].dtype == np.float32
    assert nn.Model.from_npz(r.model.to_npz()).predict(X[:2])["labels"] == \
        r.model.predict(X[:2])["labels"]


def test_standardisation_is_fitted_on_training_split_and_stored():
    rng = np.random.default_rng(0)
    X = rng.normal([100, -5], [10, 0.1], (100, 2))
    y = (X[:, 0] > 100).astype(int)
    plan = plan_for([dense(1)], {"standardize": True, "epochs": 1, "seed": 0,
                                 "validation_fraction": 0.2}, X, y)
    r = nn.train(plan, X, y)
    s = r.model.meta["standardize"]
    from nn.data import stratified_split
    tr, _ = stratified_split(y, 100, 0.2, np.random.default_rng([0, 0, 1]))
    assert np.allclose(s["mean"], X[tr].mean(axis=0)) and np.allclose(s["std"], X[tr].std(0))
    W, b = r.weights[0]["W"], r.weights[0]["b"]
    z = ((X - s["mean"]) / s["std"]) @ W + b          # predict takes raw inputs
    assert np.allclose(r.model.predict(X)["outputs"], 1 / (1 + np.exp(-z)))


def test_regression():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 2))
    Y = np.stack([X[:, 0] * X[:, 1], X[:, 0] + X[:, 1]], 1)
    plan = plan_for([dense(16, "tanh", init={"type": "glorot"}), dense(2, "linear")],
                    {"epochs": 100, "seed": 0, "batch_size": 16,
                     "optimizer": {"type": "adam", "learning_rate": 0.01}}, X, Y)
    reports = []
    r = nn.train(plan, X, Y, on_epoch=reports.append)
    assert reports[0].train_accuracy is None and r.metrics["train_loss"] < 0.01
    assert set(r.model.predict(X[:2])) == {"outputs"}


def test_lr_schedule_and_weight_decay(xor_data):
    X, y = xor_data
    reports = []
    plan = plan_for([dense(4), dense(1)],
                    {"epochs": 4, "lr_schedule": {"type": "exponential", "gamma": 0.5}}, X, y)
    nn.train(plan, X, y, on_epoch=reports.append)
    assert [r.learning_rate for r in reports] == [0.1, 0.05, 0.025, 0.0125]
    norms = []
    for wd in (0.0, 0.1):
        p = plan_for([dense(4, init={"type": "uniform", "scale": 1.0}), dense(1)],
                     {"epochs": 20, "seed": 0, "weight_decay": wd}, X, y)
        norms.append(np.linalg.norm(nn.train(p, X, y).weights[0]["W"]))
    assert norms[1] < 0.5 * norms[0]


def test_resume_after_a_final_checkpoint_returns_at_once():
    X, y = nn.generate("gaussian", 100, 0, seed=1)
    plan = plan_for([dense(1, "step")], {"algorithm": "perceptron", "epochs": 50, "seed": 0},
                    X, y)
    saved = {}
    r = nn.train(plan, X, y, checkpoint_every=1, on_checkpoint=saved.__setitem__)
    assert r.stop_reason == "converged"
    reports = []
    again = nn.train(plan, X, y, resume=saved[r.epochs_completed], on_epoch=reports.append)
    assert again.stop_reason == "converged" and reports == []
    assert same(again.weights, r.weights)


def test_early_stopping_monitors_train_loss_without_validation(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4), dense(1)], {"epochs": 30, "seed": 0,
                                           "early_stopping": {"patience": 2,
                                                              "min_delta": 10.0}}, X, y)
    r = nn.train(plan, X, y)
    assert r.metrics["monitor"] == "train_loss"
    assert r.stop_reason == "early_stopping" and r.epochs_completed == 3 and r.best_epoch == 1


def test_train_rejects_data_that_does_not_fit_the_plan(xor_data):
    X, y = xor_data
    plan = plan_for([dense(4), dense(1)], {"epochs": 1}, X, y)
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, np.zeros((10, 3)), y[:10])
    assert e.value.path == "inputs"
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, X, np.where(y == 1, 7, 0))
    assert e.value.path == "targets"


def test_predict_no_rows(xor_data):
    X, y = xor_data
    r = nn.train(plan_for([dense(2), dense(1)], {"epochs": 0}, X, y), X, y)
    assert r.model.predict(np.zeros((0, 2))) == {"outputs": [], "labels": [],
                                                 "probabilities": []}


@pytest.mark.parametrize("bad", [["a"] * 50, np.zeros((50, 3)), np.zeros(49),
                                 np.full(50, np.nan)])
def test_train_rejects_bad_regression_targets(bad):
    X = np.zeros((50, 2))
    plan = plan_for([dense(2, "linear")], {"epochs": 1}, X, np.zeros((50, 2)))
    with pytest.raises(nn.SpecError) as e:
        nn.train(plan, X, bad)
    assert e.value.path == "targets"
