"""Helpers for the engine's tests: small specs and data sets."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    # One BLAS thread, as bench/suite.py measures: the engine's matrices are small, and on a
    # 2-CPU machine a threaded BLAS makes a CNN epoch several times slower. (Only effective
    # when numpy is not imported yet, e.g. `pytest tests/nn`.)
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nn  # noqa: E402


def dense(units: int, activation: str = "sigmoid", **extra) -> dict:
    return {"type": "dense", "units": units, "activation": activation, **extra}


def plan_for(layers: list[dict], training: dict, X, y, task=None) -> nn.Plan:
    return nn.build({"layers": layers}, training, nn.describe(X, y, task))


@pytest.fixture
def xor_data():
    return nn.generate("xor", 200, 0, seed=3)


@pytest.fixture
def blobs():
    """Three Gaussian blobs in 2-D, 300 points, classes 'a', 'b', 'c'."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = np.repeat(np.arange(3), 100)
    X = centres[y] + rng.normal(0, 1.0, (300, 2))
    return X, np.array(["a", "b", "c"])[y]


def step(opt, params, grads, lr: float) -> None:
    """One optimizer step of params with grads, as training takes it (through a Flat)."""
    from nn.optim import Flat
    flat = Flat(params)
    flat.adopt(params)
    flat.gather(grads)
    opt.step_flat(flat, lr)
