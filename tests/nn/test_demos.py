"""The two TensorFlow Playground demos of the textbook's slides, through the public API.
Named for what they show, not a module: they exercise data, build and train together."""
import math
import statistics

import numpy as np

import nn


def test_xor_one_hidden_layer_of_four_sigmoid_units():
    """XOR, noise 0, 2-4-1 sigmoid, squared error, per-sample SGD (the textbook's algorithm).

    Per-sample SGD sometimes lands in a local minimum (the slides warn about it too), so the
    demo must succeed for at least 2 of 4 seeds; each run stops once it is there."""
    X, y = nn.generate("xor", 500, 0, seed=0)
    net = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"},
                      {"type": "dense", "units": 1, "activation": "sigmoid"}]}
    successes = 0
    for seed in range(4):
        training = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.5},
                    "batch_size": 1, "epochs": 60, "seed": seed, "validation_fraction": 0.5}
        plan = nn.build(net, training, nn.describe(X, y))
        reports = []
        r = nn.train(plan, X, y, on_epoch=reports.append,
                     should_stop=lambda: "reached" if reports[-1].train_accuracy >= 0.95
                     else None)
        if r.stop_reason == "reached":
            successes += 1
            labels = np.array(r.model.predict(X)["labels"])
            assert np.mean(labels == y) >= 0.9
        if successes == 2:
            break
    assert successes == 2


def _gradient_ratios(activation: str) -> list[float]:
    """Gaussian, noise 30, six hidden layers of 4 units, the Playground's U(-0.5, 0.5) init:
    grad_mean_abs of the output layer / that of the first layer, for epochs 1..10."""
    X, y = nn.generate("gaussian", 500, 30, seed=0)
    init = {"type": "uniform", "scale": 0.5}
    hidden = [{"type": "dense", "units": 4, "activation": activation, "init": init}] * 6
    net = {"layers": hidden + [{"type": "dense", "units": 1, "activation": "sigmoid",
                                "init": init}]}
    plan = nn.build(net, {"optimizer": {"type": "sgd", "learning_rate": 0.03}, "batch_size": 1,
                          "epochs": 10, "seed": 0, "validation_fraction": 0.5},
                    nn.describe(X, y))
    ratios = []
    nn.train(plan, X, y, on_epoch=lambda r: ratios.append(
        r.layer_stats[-1]["grad_mean_abs"] / r.layer_stats[0]["grad_mean_abs"]))
    return ratios


def test_deep_sigmoid_gradients_vanish_and_relu_ones_do_not():
    sigmoid = _gradient_ratios("sigmoid")
    relu = _gradient_ratios("relu")
    assert len(sigmoid) == len(relu) == 10
    assert min(sigmoid) >= 100                     # the first layer learns >= 100x slower
    assert max(relu) <= min(sigmoid) / 10          # with ReLU the gap is far smaller


def _hidden_gaps(activation: str) -> list[float]:
    """README walkthrough 2 with the default init (the activation's): Gaussian noise 30, six
    hidden layers of 4 units, squared error, per-sample SGD at 0.1: grad_mean_abs of the last
    hidden layer / that of the first, for epochs 1..10."""
    X, y = nn.generate("gaussian", 500, 30, seed=1)
    hidden = [{"type": "dense", "units": 4, "activation": activation}] * 6
    net = {"layers": hidden + [{"type": "dense", "units": 1, "activation": "sigmoid"}]}
    plan = nn.build(net, {"loss": "squared_error", "batch_size": 1, "epochs": 10, "seed": 1,
                          "optimizer": {"type": "sgd", "learning_rate": 0.1}},
                    nn.describe(X, y))
    gaps = []

    def gap(r) -> None:
        first, last = r.layer_stats[0]["grad_mean_abs"], r.layer_stats[5]["grad_mean_abs"]
        gaps.append(last / first if first else math.inf)     # a dead first layer: no gradient
    nn.train(plan, X, y, on_epoch=gap)
    return gaps


def test_default_init_relu_stack_keeps_its_gradients_and_sigmoid_does_not():
    """With the small uniform init the six ReLU layers kept a gap of 1e5 (half their units
    dead); He's init keeps every hidden layer's gradient within a factor 10 of the others,
    while the sigmoid stack (Glorot) still shows the vanishing gradient (~80x here)."""
    sigmoid, relu = _hidden_gaps("sigmoid"), _hidden_gaps("relu")
    assert statistics.median(sigmoid) >= 20
    assert all(0.1 <= g <= 10 for g in relu), relu
