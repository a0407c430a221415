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
def test_probe_act_stats_are_numpys(dtype):
    """probe_stats' act_* columns: three identity layers (linear, W 1, b 0) each output the
    rows' values, counted as sigmoid, tanh and relu."""
    x = np.array([0.005, 0.5, 0.995, 0.98, -0.995, 0.0, 0.999, 1e-9, 2.0, 0.0], dtype)
    wg = np.zeros(12, dtype)
    w, g = wg[:6], wg[6:]
    w[::2] = 1.0
    sizes, linear = np.ones(4, np.int64), np.full(3, kernel.LINEAR, np.int64)
    z, a, d = (np.zeros(4, dtype) for _ in range(3))
    out = np.empty((4, 4))
    kernel.probe_stats(w, g, sizes, np.array([0, 2, 4]), np.array([1, 3, 5]), linear,
                       kernel.SQUARED_ERROR, x[:, None], np.zeros((10, 1), dtype),
                       np.zeros(10, np.int64), z, a, d, np.zeros(1, dtype), wg,
                       np.array([0]), np.array([6]), np.array([1, 2, 3]), out)
    assert out[0, 1:] == pytest.approx([x.astype(np.float64).mean()] * 3, rel=1e-12)
    want = [np.abs(x - 0.5) > 0.49, np.abs(x) > 0.99, x == 0]
    assert out[1, 1:].tolist() == [np.count_nonzero(hit) / x.size for hit in want]
