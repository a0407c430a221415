"""What an epoch of backprop is, shared by training (nn/train.py) and autoencoder pretraining
(nn/pretrain.py): minibatch steps over the shuffled data, the loss and accuracy measured on the
fly and after the epoch, and the report the `on_epoch` callback receives.
"""
import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from . import network
from .activations import ACTIVATIONS
from .layers import Layer
from .losses import LOSSES, cross_entropy_hits, evaluate
from .network import Weights
from .optim import Flat
from .targets import labels

# Training data larger than this is not copied in each epoch's shuffled order (188 MB for
# 60,000 MNIST-sized rows: time, and as much memory again); each batch takes its rows
# instead, which for small data costs more calls than the one copy saves (nn/train.py, and
# the dense engine, nn/fastpath.py).
COPY_BYTES = 1 << 23


def copied(x: np.ndarray) -> bool:
    """Whether an epoch takes x's rows in its shuffled order in one copy (else batch by
    batch)."""
    return x.nbytes <= COPY_BYTES


@dataclass
class EpochReport:
    epoch: int
    phase: str                    # "train", or "pretrain" for autoencoder pretraining epochs
    train_loss: float
    val_loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    duration_s: float
    learning_rate: float
    layer_stats: list[dict]
    layer: int | None = None      # pretraining: the index of the layer being pretrained

    def to_dict(self) -> dict:
        return asdict(self)


def backprop_epoch(layers: list[Layer], loss_name: str, batch_size: int | None,
                   params: Weights, opt, xs: np.ndarray, ts: np.ndarray,
                   rng: np.random.Generator, lr: float, zbuf: np.ndarray,
                   poll: Callable[[], bool], engine=None, order: np.ndarray | None = None
                   ) -> bool:
    """One pass of minibatch backprop over (xs, ts) in their order, or with order over
    (xs[order], ts): the rows are then taken batch by batch, never the whole data at once
    (the engine takes small data's in one copy: copied()); each batch's output
    pre-activations go to zbuf (before its update). -> False when poll() asked to stop.
    engine: nn/fastpath.py's engine() for these layers, which does the same, to rounding,
    faster."""
    if engine is not None:
        return engine.epoch(params, opt, xs, ts, batch_size, lr, zbuf, poll, order)
    loss = LOSSES[loss_name]
    n = len(ts)
    batch = min(batch_size or n, n)
    flat = Flat(params)                        # one optimizer step for all the arrays
    flat.adopt(params)
    for k, s in enumerate(range(0, n, batch)):
        x = xs[s:s + batch] if order is None else xs[order[s:s + batch]]
        out, caches = network.forward(layers, params, x, train=True, rng=rng)
        z = network.output_z(caches)
        zbuf[s:s + batch] = z
        d = loss.grad(z, out, ts[s:s + batch])
        flat.gather(network.backward(layers, d, caches, wrt_z=loss.fused))
        opt.step_flat(flat, lr)
        if k & 15 == 15 and poll():
            return False
    return True


def metrics(loss_name: str, activation: str, z: np.ndarray, t: np.ndarray,
            y: np.ndarray | None) -> tuple[float, float | None]:
    """Mean loss and accuracy (of every label, per time step too) of output
    pre-activations z against targets t."""
    if loss_name == "cross_entropy":             # (softmax outputs): from z, in one pass
        loss, hits = cross_entropy_hits(z, t)    # t: y's class indices (targets.encode)
        if y is None or hits is not None:
            return loss, None if y is None else hits / y.size
        a = z                    # tied maxima: argmax z decides (softmax keeps the order)
    else:
        a = ACTIVATIONS[activation].forward(z)
        loss = evaluate(loss_name, z, a, t)
    acc = None if y is None else np.count_nonzero(labels(a, activation) == y) / y.size
    return loss, acc


def measure(layers: list[Layer], loss_name: str, params: Weights, x: np.ndarray,
            t: np.ndarray, y: np.ndarray | None, rows: int) -> tuple[float | None, float | None]:
    """Loss and accuracy in eval mode, forward in chunks of `rows` samples (nn/budget.py's
    eval_rows); (None, None) without samples."""
    if len(x) == 0:
        return None, None
    z = network.infer(layers, params, x, rows, z=True)
    return metrics(loss_name, layers[-1].activation, z, t, y)


def finite(*values) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def weights_finite(w: Weights) -> bool:
    return all(np.isfinite(v).all() for p in w for v in p.values())
