"""nn/data.py: describe, label encoding, split, standardisation (the generators:
test_generators.py)."""
import numpy as np
import pytest

import nn
from nn.data import encode_labels, fit_standardizer, standardize, stratified_split


def test_describe_classification_and_regression():
    info = nn.describe([[0, 1], [1, 0], [2, 2]], ["b", "a", "b"])
    assert info == nn.DataInfo((2,), 3, "classification", ["a", "b"], 1, [1, 2],
                               target_shape=(), token_range=(0, 2), max_abs=2.0)
    assert nn.describe(np.zeros((3, 1)), [True, False, True]).classes == [False, True]
    assert nn.describe(np.zeros((3, 1)), np.array([2, 0, 7])).classes == [0, 2, 7]
    assert nn.describe(np.zeros((3, 1)), [1.0, 0.0, 1.0], "classification").classes == [0, 1]
    assert nn.describe(np.zeros((3, 1)), [0.5, 1.5, 2.0]).task == "regression"
    reg = nn.describe(np.zeros((3, 1)), np.zeros((3, 4)))
    assert reg.task == "regression" and reg.target_dim == 4 and reg.classes is None
    assert nn.describe(np.zeros((3, 1)), [1, 2, 3], "regression").task == "regression"


@pytest.mark.parametrize("inputs,targets,task,path", [
    ([[0, 1], [1]], [0, 1], None, "inputs"),
    ([[0, np.nan], [1, 1]], [0, 1], None, "inputs"),
    ([[0, np.inf], [1, 1]], [0, 1], None, "inputs"),
    ([0, 1], [0, 1], None, "inputs"),
    ([["a", "b"], ["c", "d"]], [0, 1], None, "inputs"),
    (np.zeros((2, 0)), [0, 1], None, "inputs"),
    (np.zeros((0, 2)), [], "regression", "inputs"),
    ([[0], [1]], [0, 1, 1], None, "targets"),
    ([[0], [1]], [[0, 1], [1]], None, "targets"),
    ([[0], [1]], [0, 0], None, "targets"),                     # one class
    ([[0], [1]], [0, "a"], "classification", "targets"),
    ([[0], [1]], [0.5, 1.0], "classification", "targets"),
    ([[0], [1]], [0.5, np.nan], None, "targets"),
    ([[0], [1]], ["a", "b"], "regression", "targets"),
    ([[0], [1]], [0, 1], "clustering", "task"),
])
def test_describe_errors(inputs, targets, task, path):
    with pytest.raises(nn.SpecError) as e:
        nn.describe(inputs, targets, task)
    assert e.value.path == path


def test_finite_inputs_whose_sum_overflows_are_accepted():
    """The finiteness check sums first; a sum that overflows is not taken for an inf."""
    big = np.full((4, 2), 1e308)
    assert nn.describe(big, [0, 1, 0, 1]).n_samples == 4
    big[3, 1] = -np.inf
    with pytest.raises(nn.SpecError) as e:
        nn.describe(big, [0, 1, 0, 1])
    assert e.value.path == "inputs"


@pytest.mark.parametrize("layers,shape", [
    ([{"type": "dense", "units": 4, "activation": "tanh"}], (40, 3)),           # fast path
    ([{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1, "activation": "relu"},
      {"type": "dropout", "drop_prob": 0.3}, {"type": "flatten"}], (40, 1, 4, 4))])
def test_training_does_not_change_the_callers_inputs(layers, shape):
    """train() may read the caller's array itself (no copy): it never writes it."""
    x = np.random.default_rng(0).standard_normal(shape)
    kept = x.copy()
    y = (x.reshape(len(x), -1)[:, 0] > 0).astype(int)
    for shuffle in (True, False):
        plan = nn.build({"layers": [*layers, {"type": "dense", "units": 2,
                                              "activation": "softmax"}]},
                        {"loss": "cross_entropy", "epochs": 3, "batch_size": 8,
                         "shuffle": shuffle}, nn.describe(x, y))
        nn.train(plan, x, y)
        assert np.array_equal(x, kept)


def test_encode_labels():
    assert encode_labels(["b", "a", "c", "a"], ["a", "b", "c"]).tolist() == [1, 0, 2, 0]
    with pytest.raises(nn.SpecError, match="'z'"):
        encode_labels(["z"], ["a", "b"])


def test_stratified_split_keeps_class_proportions():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    tr, va = stratified_split(y, 100, 0.2, np.random.default_rng(0))
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    assert np.bincount(y[va]).tolist() == [10, 6, 4]
    assert np.all(np.diff(tr) > 0)                # the data's own order is kept
    tr2, va2 = stratified_split(y, 100, 0.2, np.random.default_rng(0))
    assert np.array_equal(va, va2)
    tr3, va3 = stratified_split(None, 100, 0.25, np.random.default_rng(0))
    assert len(va3) == 25 and len(tr3) == 75


def test_standardizer():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    params = fit_standardizer(x)
    assert params == {"mean": [2.0, 5.0], "std": [1.0, 1.0]}   # constant column: std 1
    assert np.allclose(standardize(x, params), [[-1, 0], [1, 0]])
    assert standardize(x, None) is x


def test_standardizer_near_the_float64_limit():
    """Sums and squares of values of 1e300 overflow: still mean 0 and std 1 afterwards."""
    x = np.random.default_rng(0).standard_normal((50, 2)) * 1e300
    z = standardize(x, fit_standardizer(x))
    assert np.allclose(z.mean(axis=0), 0) and np.allclose(z.std(axis=0), 1)
