"""The perceptron rule on step units."""
import numpy as np

import nn
from tests.nn.conftest import dense, plan_for

PERCEPTRON = {"algorithm": "perceptron", "epochs": 100, "seed": 0,
              "optimizer": {"type": "sgd", "learning_rate": 0.1}}


def test_converges_on_linearly_separable_data():
    X, y = nn.generate("gaussian", 200, 0, seed=1)          # noise 0: separable
    assert (y == (X.sum(1) > 0)).all()
    reports = []
    r = nn.train(plan_for([dense(1, "step")], PERCEPTRON, X, y), X, y, on_epoch=reports.append)
    assert r.stop_reason == "converged" and r.epochs_completed < 100
    assert reports[-1].train_accuracy == 1.0 and reports[-1].train_loss == 0.0
    assert r.model.predict(X)["labels"] == y.tolist()
    stats = reports[-1].layer_stats[0]
    assert stats["grad_norm"] is None and stats["weight_norm"] > 0


def test_does_not_converge_on_xor():
    X, y = nn.generate("xor", 100, 0, seed=1)
    r = nn.train(plan_for([dense(1, "step")], {**PERCEPTRON, "epochs": 30}, X, y), X, y)
    assert r.stop_reason == "not_converged" and r.epochs_completed == 30
    assert r.metrics["train_accuracy"] < 0.9


def test_multiclass_one_unit_per_class():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 6], [6, -4], [-6, -4]])
    y = np.repeat([0, 1, 2], 30)
    X = centres[y] + rng.uniform(-1, 1, (90, 2))
    r = nn.train(plan_for([dense(3, "step")], PERCEPTRON, X, y), X, y)
    assert r.stop_reason == "converged"
    assert r.metrics["train_accuracy"] == 1.0


def test_perceptron_resume_is_bit_identical():
    X, y = nn.generate("xor", 100, 0, seed=1)
    plan = plan_for([dense(1, "step")], {**PERCEPTRON, "epochs": 10}, X, y)
    saved = {}
    straight = nn.train(plan, X, y, checkpoint_every=5, on_checkpoint=saved.__setitem__)
    resumed = nn.train(plan, X, y, resume=saved[5])
    assert np.array_equal(straight.weights[0]["W"], resumed.weights[0]["W"])
    assert resumed.stop_reason == "not_converged"
