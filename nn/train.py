"""The training loop: epochs of (minibatch) backprop or the perceptron rule, with metrics,
per-layer statistics, early stopping, checkpoints, divergence and cooperative stopping.

Randomness: the initial weights come from a generator seeded by (seed, 0), the validation
split from (seed, 0, 1), the probe batch from (seed, 0, 2), and epoch e's shuffle and dropout
masks from (seed, e), so a resumed run is bit-identical to one that never stopped.

train_loss and train_accuracy of an epoch are measured on the fly, Keras style: each sample's
output as the network computed it in train mode during the epoch (before its own update),
averaged over the epoch. val_loss and val_accuracy are measured after the epoch in eval mode.
"""
import math
from dataclasses import asdict, dataclass
from time import perf_counter
from typing import Callable

import numpy as np

from . import checkpoint, network
from .activations import ACTIVATIONS
from .checkpoint import TrainState
from .losses import LOSSES, evaluate
from .model import Model, model_meta
from .optim import learning_rate, make_optimizer
from .perceptron import count_errors, perceptron_epoch
from .prepare import prepare
from .spec import Plan
from .stats import layer_stats
from .targets import decode
from .weights import Weights, check_weights

POLL_INTERVAL_S = 0.25


@dataclass
class EpochReport:
    epoch: int
    phase: str
    train_loss: float
    val_loss: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    duration_s: float
    learning_rate: float
    layer_stats: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    weights: Weights
    best_weights: Weights | None
    best_epoch: int | None
    epochs_completed: int
    stop_reason: str | None
    error: dict | None
    metrics: dict
    model: Model
    best_model: Model | None


class _Poll:
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


def _metrics(plan: Plan, z: np.ndarray, t: np.ndarray, y: np.ndarray | None
             ) -> tuple[float, float | None]:
    """Mean loss and accuracy of output pre-activations z: (N, K) against targets t."""
    act = plan.layers[-1].activation
    a = ACTIVATIONS[act].forward(z)
    loss, _ = evaluate(plan.training["loss"], z, a, t)
    acc = None if y is None else float(np.mean(decode(a, act)[0] == y))
    return loss, acc


def _evaluate(plan: Plan, params: Weights, x: np.ndarray, t: np.ndarray, y) -> tuple:
    if len(x) == 0:
        return None, None
    _, caches = network.forward(list(plan.layers), params, x, train=False)
    return _metrics(plan, network.output_z(caches), t, y)


def _probe_stats(plan: Plan, params: Weights, x: np.ndarray, t: np.ndarray) -> list[dict]:
    layers = list(plan.layers)
    out, caches = network.forward(layers, params, x, train=False)
    grads = None
    if plan.training["algorithm"] == "backprop":
        loss = LOSSES[plan.training["loss"]]
        _, d = loss.fn(network.output_z(caches) if loss.fused else out, t)
        grads = network.backward(layers, d, caches, wrt_z=loss.fused)
    return layer_stats(layers, params, grads, caches)


def _backprop_epoch(plan: Plan, params: Weights, opt, xs, ts, rng, lr: float,
                    zbuf: np.ndarray, poll: _Poll) -> bool:
    layers = list(plan.layers)
    loss = LOSSES[plan.training["loss"]]
    n = len(xs)
    batch = min(plan.training["batch_size"] or n, n)
    for k, s in enumerate(range(0, n, batch)):
        out, caches = network.forward(layers, params, xs[s:s + batch], train=True, rng=rng)
        z = caches[-1].z
        zbuf[s:s + batch] = z
        d = loss.grad(z, out, ts[s:s + batch])
        opt.step(params, network.backward(layers, d, caches, wrt_z=loss.fused), lr)
        if k & 15 == 15 and poll():
            return False
    return True


def _finite(*values) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def _weights_finite(w: Weights) -> bool:
    return all(np.isfinite(v).all() for p in w for v in p.values())


def _track_best(state: TrainState, value: float, es: dict | None) -> None:
    """Best epoch so far by the monitored loss; with early stopping keep its weights and stop
    after `patience` epochs without an improvement of more than min_delta."""
    min_delta = es["min_delta"] if es else 0.0
    if state.best_value is None or value < state.best_value - min_delta:
        state.best_value, state.best_epoch, state.wait = value, state.epoch, 0
        if es:
            state.best_params = network.copy_weights(state.params)
        return
    state.wait += 1
    if es and state.wait >= es["patience"]:
        state.stop_reason = "early_stopping"


def train(plan: Plan, inputs, targets, *,
          initial_weights: Weights | None = None,
          resume: bytes | None = None,
          on_epoch: Callable[[EpochReport], None] | None = None,
          should_stop: Callable[[], str | None] | None = None,
          checkpoint_every: int = 0,
          on_checkpoint: Callable[[int, bytes], None] | None = None) -> TrainResult:
    """Train plan on (inputs, targets); see docs/engine-api.md."""
    tr = plan.training
    data = prepare(plan, inputs, targets)
    layers = list(plan.layers)
    dtype = np.dtype(tr["dtype"])
    if resume is not None:
        state = checkpoint.load(resume, data.fingerprint)
    elif initial_weights is not None:
        state = TrainState(0, check_weights(initial_weights, layers, "initial_weights.layers",
                                            dtype))
    else:
        state = TrainState(0, network.init_params(
            layers, np.random.default_rng([tr["seed"], 0]), dtype))
    opt = make_optimizer(tr)
    if state.opt_state:
        opt.load_state(state.opt_state)
    es = tr["early_stopping"]
    perceptron = tr["algorithm"] == "perceptron"
    monitor = "val_loss" if len(data.x_val) else "train_loss"
    zbuf = np.empty((len(data.x), layers[-1].n_out), dtype=dtype)
    probe_x, probe_t = data.x[data.probe], data.t[data.probe]
    poll = _Poll(should_stop)
    interrupted: str | None = None
    error = None
    with np.errstate(all="ignore"):
        while state.stop_reason is None and state.epoch < plan.epochs_total:
            t0 = perf_counter()
            e = state.epoch + 1
            rng = np.random.default_rng([tr["seed"], e])
            lr = learning_rate(tr, e)
            snapshot = network.copy_weights(state.params)
            order = rng.permutation(len(data.x)) if tr["shuffle"] else slice(None)
            xs, ts = data.x[order], data.t[order]
            if perceptron:
                done = perceptron_epoch(state.params, xs, ts, lr, zbuf, poll)
            else:
                done = _backprop_epoch(plan, state.params, opt, xs, ts, rng, lr, zbuf, poll)
            if not done:
                state.params, interrupted = snapshot, poll.answer
                break
            ys = None if data.y is None else data.y[order]
            train_loss, train_acc = _metrics(plan, zbuf, ts, ys)
            val_loss, val_acc = _evaluate(plan, state.params, data.x_val, data.t_val, data.y_val)
            if not (_finite(train_loss, val_loss) and _weights_finite(state.params)):
                state.params, interrupted = snapshot, "diverged"
                error = {"code": "diverged", "message": f"training diverged at epoch {e}: the "
                         f"loss became non-finite (train {train_loss}, validation {val_loss}); "
                         "try a smaller learning rate"}
                break
            stats = _probe_stats(plan, state.params, probe_x, probe_t) if tr["stats"] else []
            state.epoch = e
            state.last = {"train_loss": train_loss, "val_loss": val_loss,
                          "train_accuracy": train_acc, "val_accuracy": val_acc}
            _track_best(state, val_loss if monitor == "val_loss" else train_loss, es)
            if perceptron and count_errors(zbuf, ts) == 0:
                state.stop_reason = "converged"
            if on_epoch is not None:
                on_epoch(EpochReport(e, "train", train_loss, val_loss, train_acc, val_acc,
                                     perf_counter() - t0, lr, stats))
            if checkpoint_every and on_checkpoint is not None and e % checkpoint_every == 0:
                state.opt_state = opt.state()
                on_checkpoint(e, checkpoint.dump(state, data.fingerprint))
            if state.stop_reason is None and e < plan.epochs_total and poll(force=True):
                interrupted = poll.answer
                break
    stop_reason = interrupted or state.stop_reason
    if stop_reason is None and perceptron and plan.epochs_total > 0:
        stop_reason = "not_converged"
    if not state.last:                             # no epoch ran: measure the initial weights
        train_loss, train_acc = _evaluate(plan, state.params, data.x, data.t, data.y)
        val_loss, val_acc = _evaluate(plan, state.params, data.x_val, data.t_val, data.y_val)
        state.last = {"train_loss": train_loss, "val_loss": val_loss,
                      "train_accuracy": train_acc, "val_accuracy": val_acc}
    meta = model_meta(plan, data.standardizer)
    best = state.best_params
    metrics = {**state.last, "best_epoch": state.best_epoch, "best_loss": state.best_value,
               "monitor": monitor, "epochs_completed": state.epoch}
    return TrainResult(
        weights=state.params, best_weights=best, best_epoch=state.best_epoch,
        epochs_completed=state.epoch, stop_reason=stop_reason, error=error, metrics=metrics,
        model=Model(plan.network, state.params, meta),
        best_model=None if best is None else Model(plan.network, best, meta))
