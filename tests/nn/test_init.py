"""nn/init.py: the initialisers' ranges and spreads."""
import numpy as np
import pytest


def test_initialisers():
    from nn.init import init_dense
    rng = np.random.default_rng(0)
    u = init_dense(300, 200, {"type": "uniform", "scale": 0.1}, rng, np.float64)
    assert np.abs(u["W"]).max() <= 0.1 and np.abs(u["b"]).max() <= 0.1
    assert u["W"].std() == pytest.approx(0.1 / np.sqrt(3), rel=0.02)      # U(-s, s)
    g = init_dense(300, 200, {"type": "glorot"}, rng, np.float64)
    limit = np.sqrt(6 / 500)
    assert np.abs(g["W"]).max() <= limit and np.abs(g["W"]).max() > 0.99 * limit
    assert not g["b"].any()
    h = init_dense(300, 200, {"type": "he", "distribution": "normal"}, rng, np.float32)
    assert h["W"].dtype == np.float32
    assert h["W"].std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
    hu = init_dense(300, 200, {"type": "he", "distribution": "uniform"}, rng, np.float64)
    assert np.abs(hu["W"]).max() <= np.sqrt(6 / 300)
    assert hu["W"].std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
