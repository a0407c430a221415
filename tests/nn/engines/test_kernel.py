"""The compiled kernel's reductions for the statistics (nn/engines/kernel.py) against NumPy's
definitions (nn/stats.py), NaN and infinities included."""
import numpy as np
import pytest

from nn.engines import kernel


def test_array_stats_are_numpys():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(7) * 3, np.array([5.0]), rng.standard_normal(40) + 100,
             np.array([1.0, np.nan, 2.0]), np.array([np.inf, -1.0])]
    x = np.concatenate(parts)
    counts = np.array([len(p) for p in parts], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = np.empty((4, len(parts)))
    kernel.array_stats(x, starts, counts, out)
    for j, p in enumerate(parts):
        with np.errstate(invalid="ignore"):                 # inf - inf in the std
            want = [np.abs(p).mean(), np.sqrt(np.dot(p, p)), np.abs(p).max(), p.std()]
        assert out[:, j] == pytest.approx(want, rel=1e-12, nan_ok=True), j


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_act_stats_are_numpys(dtype):
    a = np.array([0.005, 0.5, 0.995, 0.98, -0.995, 0.0, 0.5, 0.999, 0.0, 0.0, 1e-9, 2.0], dtype)
    bounds = np.array([[0, 4], [4, 8], [8, 12]], np.int64)
    out = np.empty((2, 3))
    kernel.act_stats(a, bounds, np.array([1, 2, 3], np.int64), out)
    assert out[0] == pytest.approx([a[:4].mean(), a[4:8].mean(), a[8:].mean()], rel=1e-6)
    assert out[1].tolist() == [0.5, 0.5, 0.5]
