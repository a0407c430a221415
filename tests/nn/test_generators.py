"""nn/generators.py: the TensorFlow Playground's data sets, and their errors."""
import numpy as np
import pytest

import nn


KINDS = ["xor", "circle", "gaussian", "spiral"]


@pytest.mark.parametrize("kind", KINDS)
def test_generator_shape_balance_and_determinism(kind):
    X, y = nn.generate(kind, seed=4)
    assert X.shape == (500, 2) and X.dtype == np.float64
    assert y.shape == (500,) and y.dtype == np.int64 and set(y.tolist()) <= {0, 1}
    assert 0.4 < y.mean() < 0.6
    X2, y2 = nn.generate(kind, seed=4)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, _ = nn.generate(kind, seed=5)
    assert not np.array_equal(X, X3)
    Xo, yo = nn.generate(kind, n_samples=7, seed=1)
    assert Xo.shape == (7, 2)
    if kind != "xor":                             # odd: class 1 gets the extra point
        assert yo.sum() == 4


def test_xor_follows_the_playground():
    X, y = nn.generate("xor", 2000, 0, seed=0)
    assert np.all(np.abs(X) >= 0.3) and np.all(np.abs(X) <= 5.3)   # padding 0.3
    assert np.array_equal(y, (X[:, 0] * X[:, 1] >= 0).astype(int))  # noise 0: exact labels
    Xn, yn = nn.generate("xor", 2000, 50, seed=0)
    flipped = np.mean(yn != (Xn[:, 0] * Xn[:, 1] >= 0))
    assert 0.05 < flipped < 0.4          # noise jitters the labelling point, not the point


def test_circle_follows_the_playground():
    X, y = nn.generate("circle", 1000, 0, seed=0)
    r = np.hypot(X[:, 0], X[:, 1])
    assert np.array_equal(y, (r < 2.5).astype(int))
    assert np.all((r <= 2.5) | ((r >= 3.5) & (r <= 5)))


def test_gaussian_variance_follows_the_slider():
    for noise, var in [(0, 0.5), (30, 2.6), (50, 4.0)]:     # d3 scale [0, .5] -> [.5, 4]
        X, y = nn.generate("gaussian", 20000, noise, seed=0)
        assert np.allclose(X[y == 1].mean(axis=0), [2, 2], atol=0.1)
        assert np.allclose(X[y == 0].mean(axis=0), [-2, -2], atol=0.1)
        assert X[y == 1].var(axis=0) == pytest.approx([var, var], rel=0.06)


def test_spiral_noise_range():
    X0, y0 = nn.generate("spiral", 500, 0, seed=0)
    assert np.hypot(X0[:, 0], X0[:, 1]).max() < 5
    X1, y1 = nn.generate("spiral", 500, 50, seed=0)
    assert np.array_equal(y0, y1)                 # same draws for order, only jitter differs
    jitter = np.abs(X1 - X0)
    assert jitter.max() <= 0.5 and jitter.max() > 0.4   # U(-1, 1) * 0.5


@pytest.mark.parametrize("kwargs,path", [
    ({"kind": "moons"}, "generator.kind"),
    ({"kind": "xor", "n_samples": 1}, "generator.n_samples"),
    ({"kind": "xor", "n_samples": True}, "generator.n_samples"),
    ({"kind": "xor", "n_samples": 10**6}, "generator.n_samples"),
    ({"kind": "xor", "noise": 51}, "generator.noise"),
    ({"kind": "xor", "noise": -1}, "generator.noise"),
    ({"kind": "xor", "noise": "5"}, "generator.noise"),
    ({"kind": "xor", "seed": -3}, "generator.seed"),
    ({"kind": "xor", "seed": 1.5}, "generator.seed"),
])
def test_generator_errors(kwargs, path):
    with pytest.raises(nn.SpecError) as e:
        nn.generate(**kwargs)
    assert e.value.path == path
