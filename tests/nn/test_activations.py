"""The activation table (nn/activations.py): every form of an entry computes the same f."""
import math

import numpy as np
import pytest

from nn.activations import ACTIVATIONS, sigmoid


def test_sigmoid_keeps_full_relative_precision_for_large_negative_inputs():
    """(1 + tanh(z/2)) / 2 cancels to 0 below z = -20 or so; e^z / (1 + e^z) is the value
    there, computed another way."""
    z = np.array([-5.0, -20.0, -37.0, -100.0, -700.0])
    exact = np.array([math.exp(v) / (1.0 + math.exp(v)) for v in z])
    assert np.all(np.abs(sigmoid(z) - exact) <= 4e-16 * exact)
    assert sigmoid(np.array([-800.0]))[0] == 0.0 and sigmoid(np.array([800.0]))[0] == 1.0
    assert sigmoid(np.array([-80.0], np.float32))[0] == pytest.approx(math.exp(-80), rel=1e-6)


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.forward_into])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_forms_agree_with_the_layers_forms(name, dtype):
    """forward_into and grad_into over transposes (units, n), axis 0, against forward and
    backward over rows (n, units)."""
    act = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((7, 5)) * 4).astype(dtype)
    da = rng.standard_normal((7, 5)).astype(dtype)
    a = act.forward(z.copy())
    zT = np.ascontiguousarray(z.T)
    out, scratch, mask = np.empty_like(zT), np.empty_like(zT), np.empty(zT.shape, bool)
    aT = act.forward_into(zT, out, scratch, mask, 0)
    assert np.allclose(aT.T, a, rtol=1e-6, atol=0)
    dT = act.grad_into(np.ascontiguousarray(da.T), zT, aT, scratch, mask, 0)
    assert np.allclose(dT.T, act.backward(da, z, a), rtol=1e-5, atol=1e-7)
