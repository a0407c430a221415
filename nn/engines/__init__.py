"""Engines: what runs one epoch of backprop, and the statistics' probe pass.

`reference` trains every layer type layer by layer and is the yardstick; `dense` is the fast
engine for stacks of dense layers on vector inputs, chosen when the plan's training.engine is
"auto" and checked against the reference to rounding (tests/nn/engines/). Both keep the same
contract: `epoch` (the batches in the epoch's order; each batch's output z into zbuf before
its update; False when poll() asked to stop) and `stats` (the per-layer statistics rows).
"""
import numpy as np

from ..layers import Layer
from ..optim import Optimizer

# Training data larger than this is not copied in each epoch's shuffled order (188 MB for
# 60,000 MNIST-sized rows); each batch takes its rows instead.
COPY_BYTES = 1 << 23


def copied(x: np.ndarray) -> bool:
    """Whether an epoch takes x's rows in its shuffled order in one copy (else batch by
    batch)."""
    return x.nbytes <= COPY_BYTES


def choose(training: dict, layers: list[Layer], loss: str, optimizer: Optimizer, dtype):
    """The engine the plan asks for on these layers: the dense one where it applies."""
    from . import dense, reference
    if training["algorithm"] == "perceptron":
        from ..perceptron import Perceptron
        return Perceptron(layers)
    if dense.applies(training, layers):
        return dense.engine(training, layers, loss, optimizer, dtype)
    return reference.Reference(layers, loss)
