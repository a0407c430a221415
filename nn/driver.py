"""The one epoch loop, for training (nn/train.py) and autoencoder pretraining
(nn/pretrain.py): each gives a Phase, which knows its data, engine and state; run() is what
happens in every epoch, in this order:

1. snapshot the weights the phase trains;
2. the engine's pass over the data in the epoch's order (stopped: roll back, return);
3. the epoch's losses and accuracies (train on the fly, validation after);
4. a non-finite loss or weight: roll back, end the run as diverged;
5. the per-layer statistics on the probe rows, if stats_epochs accepts the epoch or it is
   the phase's last (known before or after step 6);
6. the phase records the epoch (state, best weights, early stopping);
7. the report to on_epoch, every checkpoint_every epochs a checkpoint to on_checkpoint;
8. should_stop, polled.

A phase that stops (2, 4 or 8) after a report without statistics hands that epoch's to
on_stats: the weights are still (or, rolled back, again) those the epoch left, and the
statistics read nothing else (a fixed probe, eval mode, no random draws), so they are the
figures the epoch would have reported.
"""
import math
from dataclasses import asdict, dataclass, replace
from time import perf_counter
from typing import NamedTuple, Protocol
from collections.abc import Callable

import numpy as np

from . import checkpoint, network
from .activations import ACTIVATIONS
from .checkpoint import TrainState
from .layers import Layer
from .losses import cross_entropy_hits, evaluate
from .network import Weights
from .targets import labels

POLL_INTERVAL_S = 0.25


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
    # seq2seq: the fraction of sequences whose every non-PAD target token is right (teacher
    # forced); None for other tasks
    train_exact_match: float | None = None
    val_exact_match: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Metrics(NamedTuple):
    train_loss: float
    val_loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    train_exact_match: float | None = None
    val_exact_match: float | None = None

    def record(self) -> dict:
        """The metrics a run's state keeps (and its final metrics show): the exact matches
        only where they apply."""
        return {k: v for k, v in self._asdict().items()
                if v is not None or k not in EXACT_MATCH}


EXACT_MATCH = ("train_exact_match", "val_exact_match")


class Poll:
    """Asks should_stop at most every POLL_INTERVAL_S; remembers the answer."""

    def __init__(self, should_stop: Callable[[], str | None] | None) -> None:
        self.fn = should_stop
        self.answer: str | None = None
        self.next = perf_counter() + POLL_INTERVAL_S

    def __call__(self, force: bool = False) -> bool:
        if self.fn is None:
            return False
        now = perf_counter()
        if not force and now < self.next:
            return False
        self.next = now + POLL_INTERVAL_S
        self.answer = self.fn()
        return self.answer is not None


class Phase(Protocol):
    name: str                     # EpochReport.phase
    layer: int | None             # EpochReport.layer
    stats_on: bool

    def trained(self) -> Weights: ...                       # what an epoch changes
    def restore(self, snapshot: Weights) -> None: ...
    def finite(self) -> bool: ...                           # trained() all finite
    def learning_rate(self, e: int) -> float: ...
    def train(self, e: int, lr: float, poll: Poll) -> bool: ...   # False: stopped
    def measure(self) -> Metrics: ...
    def diverged(self, e: int, m: Metrics) -> str: ...      # the error's message
    def stats(self) -> list[dict]: ...
    def record(self, e: int, m: Metrics) -> None: ...
    def save(self) -> int: ...    # state ready for a checkpoint -> on_checkpoint's epoch
    def more(self, e: int) -> bool: ...                     # whether epochs follow


# Which epochs compute their statistics (besides each phase's last); None: every epoch.
StatsEpochs = Callable[[int], bool] | None


@dataclass
class Hooks:
    """What run() reports to: nn.train's callbacks (docs/engine-api.md)."""
    on_epoch: Callable[[EpochReport], None] | None = None
    checkpoint_every: int = 0
    on_checkpoint: Callable[[int, bytes], None] | None = None
    stats_epochs: StatsEpochs = None
    on_stats: Callable[[EpochReport], None] | None = None


def run(phase: Phase, epochs: range, state: TrainState, fingerprint: str, poll: Poll,
        hooks: Hooks) -> tuple[str | None, dict | None]:
    """The phase's epochs -> (the reason they were interrupted, the error), or (None, None)."""
    every, pick = hooks.checkpoint_every, hooks.stats_epochs
    bare: EpochReport | None = None      # the latest report, if it went without statistics

    def stopped(answer: str | None, error: dict | None = None):
        if bare is not None and hooks.on_stats is not None:
            hooks.on_stats(replace(bare, layer_stats=phase.stats()))
        return answer, error

    for e in epochs:
        t0 = perf_counter()
        lr = phase.learning_rate(e)
        snapshot = network.copy_weights(phase.trained())
        if not phase.train(e, lr, poll):
            phase.restore(snapshot)
            return stopped(poll.answer)
        m = phase.measure()
        if not (losses_finite(m.train_loss, m.val_loss) and phase.finite()):
            phase.restore(snapshot)
            return stopped("diverged", {"code": "diverged", "message": phase.diverged(e, m)})
        computed = phase.stats_on and (pick is None or pick(e) or e == epochs[-1])
        stats = phase.stats() if computed else []
        phase.record(e, m)
        more = phase.more(e)
        if phase.stats_on and not computed and not more:     # early stopping, converged
            stats, computed = phase.stats(), True
        report = EpochReport(e, phase.name, *m[:4], perf_counter() - t0, lr, stats,
                             phase.layer, *m[4:])
        bare = report if phase.stats_on and not computed else None
        if hooks.on_epoch is not None:
            hooks.on_epoch(report)
        if every and hooks.on_checkpoint is not None and e % every == 0:
            hooks.on_checkpoint(phase.save(), checkpoint.dump(state, fingerprint))
        if not more:
            break
        if poll(force=True):
            return stopped(poll.answer)
    return None, None


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


def losses_finite(*values: float | None) -> bool:
    return all(v is None or math.isfinite(v) for v in values)
