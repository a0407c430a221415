"""nn/driver.py: the epoch's loss and accuracy."""
import numpy as np
import pytest

from nn.driver import metrics


@pytest.mark.parametrize("shape", [(300, 10), (40, 7, 5), (50, 2)])
def test_cross_entropy_metrics_in_one_pass_match_argmax(shape):
    """The epoch's loss and accuracy from one shifted copy of z equal log-sum-exp and argmax
    (first of tied maxima) on the same numbers: ties, NaN rows and labels per step too."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape).astype(np.float32)
    t = rng.integers(0, shape[-1], shape[:-1])
    flat = z.reshape(-1, shape[-1])
    for cut in (None, "ties", "nan"):
        if cut == "ties":
            flat[::3] = np.round(flat[::3])               # many rows with two equal maxima
            flat[1::7] = 0.0
        if cut == "nan":
            flat[5, 1] = np.nan
        loss, acc = metrics("cross_entropy", "softmax", z, t, t)
        zs = flat - flat.max(axis=1, keepdims=True)
        ref = np.mean(np.log(np.exp(zs).sum(axis=1)) - zs[np.arange(len(zs)), t.reshape(-1)])
        assert loss == pytest.approx(float(ref), rel=1e-6, nan_ok=True)
        assert acc == np.count_nonzero(z.argmax(axis=-1) == t) / t.size
