"""The training loop: epochs of (minibatch) backprop or the perceptron rule, with metrics,
per-layer statistics, early stopping, checkpoints, divergence and cooperative stopping; when
the plan says so, greedy layer-wise autoencoder pretraining first (nn/pretrain.py).

Randomness: the initial weights come from a generator seeded by (seed, 0), the validation
split from (seed, 0, 1), the probe batch from (seed, 0, 2), and epoch e's shuffle and dropout
masks from (seed, e), so a resumed run is bit-identical to one that never stopped.
(Pretraining: nn/pretrain.py.)

train_loss and train_accuracy of an epoch are measured on the fly, Keras style: each sample's
output as the network computed it in train mode during the epoch (before its own update),
averaged over the epoch. val_loss and val_accuracy are measured after the epoch in eval mode.
"""
from dataclasses import dataclass
from time import perf_counter
from typing import Callable

import numpy as np

from . import budget, checkpoint, fastpath, network, pretrain
from .checkpoint import TrainState
from .epoch import EpochReport, backprop_epoch, copied, finite, measure, metrics, \
    weights_finite
from .losses import LOSSES
from .model import Model, model_meta
from .optim import learning_rate, make_optimizer
from .perceptron import count_errors, perceptron_epoch
from .prepare import Prepared, prepare
from .spec import Plan
from .stats import LayerStats
from .weights import Weights, check_weights

POLL_INTERVAL_S = 0.25

__all__ = ["EpochReport", "TrainResult", "train"]


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


@dataclass
class Snapshot:
    model: Model                  # the checkpoint's model, or the seeded initial one
    validation: np.ndarray        # (N_val,) indices of the validation split's rows in the data


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


def _evaluate(plan: Plan, params: Weights, x: np.ndarray, t: np.ndarray, y, rows: int
              ) -> tuple:
    return measure(list(plan.layers), plan.training["loss"], params, x, t, y, rows)


def _probe_stats(stats: LayerStats, plan: Plan, params: Weights, x: np.ndarray,
                 t: np.ndarray, fast: fastpath.DenseStack | None = None) -> list[dict]:
    layers = list(plan.layers)
    if fast is not None:                           # the engine's own probe pass
        outputs, grads, acts = fast.probe(params, x, t)
        return stats(params, grads, outputs, None, flat=fast.flat, acts=acts)
    outputs: list = []
    out, caches = network.forward(layers, params, x, train=False, outputs=outputs)
    grads = traces = None
    if plan.training["algorithm"] == "backprop":
        loss = LOSSES[plan.training["loss"]]
        d = loss.grad(network.output_z(caches), out, t)       # as training computes it
        traces = [{} for _ in layers]
        grads = network.backward(layers, d, caches, wrt_z=loss.fused, traces=traces)
    return stats(params, grads, outputs, caches, traces)


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


def _epochs(plan: Plan, data: Prepared, state: TrainState, poll: _Poll,
            on_epoch: Callable[[EpochReport], None] | None, checkpoint_every: int,
            on_checkpoint: Callable[[int, bytes], None] | None, rows: int
            ) -> tuple[str | None, dict | None]:
    """The training epochs left in state -> (interrupted reason, error); validation runs
    forward in chunks of `rows` samples."""
    tr = plan.training
    layers = list(plan.layers)
    opt = make_optimizer(tr, [l.decayed() for l in layers])
    if state.opt_state:
        opt.load_state(state.opt_state)
    es = tr["early_stopping"]
    perceptron = tr["algorithm"] == "perceptron"
    monitor = "val_loss" if len(data.x_val) else "train_loss"
    zbuf = np.empty((len(data.x), *layers[-1].out_shape), dtype=data.x.dtype)
    probe_x, probe_t = data.x[data.probe], data.t[data.probe]
    act = layers[-1].activation
    fast = fastpath.engine(tr, layers, tr["loss"], opt, data.x.dtype)
    reporter = LayerStats(layers)
    while state.stop_reason is None and state.epoch < plan.epochs_total:
        t0 = perf_counter()
        e = state.epoch + 1
        rng = np.random.default_rng([tr["seed"], e])
        lr = learning_rate(tr, e)
        snapshot = network.copy_weights(state.params)
        order = rng.permutation(len(data.x)) if tr["shuffle"] else None
        pick = slice(None) if order is None else order
        ts = data.t[pick]
        if perceptron:
            done = perceptron_epoch(state.params, data.x[pick], ts, lr, zbuf, poll)
        elif fast is None and (order is None or copied(data.x)):
            done = backprop_epoch(layers, tr["loss"], tr["batch_size"], state.params, opt,
                                  data.x[pick], ts, rng, lr, zbuf, poll)   # one shuffled copy
        else:           # large data batch by batch; the engine takes its rows itself
            done = backprop_epoch(layers, tr["loss"], tr["batch_size"], state.params, opt,
                                  data.x, ts, rng, lr, zbuf, poll, fast, order)
        if not done:
            state.params = snapshot
            return poll.answer, None
        ys = None if data.y is None else data.y[pick]
        train_loss, train_acc = metrics(tr["loss"], act, zbuf, ts, ys)
        val_loss, val_acc = _evaluate(plan, state.params, data.x_val, data.t_val, data.y_val,
                                      rows)
        if not (finite(train_loss, val_loss) and weights_finite(state.params)):
            state.params = snapshot
            return "diverged", {"code": "diverged", "message": f"training diverged at epoch "
                                f"{e}: the loss became non-finite (train {train_loss}, "
                                f"validation {val_loss}); try a smaller learning rate"}
        stats = _probe_stats(reporter, plan, state.params, probe_x, probe_t, fast) \
            if tr["stats"] else []
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
            return poll.answer, None
    return None, None


def _initial_params(plan: Plan) -> Weights:
    """The weights training starts from without initial_weights: drawn from the seed."""
    return network.init_params(list(plan.layers), np.random.default_rng([plan.training["seed"], 0]),
                               np.dtype(plan.training["dtype"]))


def snapshot(plan: Plan, inputs, targets, state: bytes | None = None) -> Snapshot:
    """What training does with the data: the rows of its validation split, and the model a
    checkpoint (`state`, from on_checkpoint) holds, or without one the model of the initial
    weights drawn from the seed, with the standardisation fitted on the training split.
    ValueError when `state` is not a checkpoint of this plan and data."""
    data = prepare(plan, inputs, targets)
    if state is not None:
        params = checkpoint.load(state, data.fingerprint).params
    else:
        params = _initial_params(plan)
    return Snapshot(Model(plan.network, params, model_meta(plan, data.standardizer)),
                    data.val_idx)


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
        state = TrainState(0, _initial_params(plan))
    perceptron = tr["algorithm"] == "perceptron"
    monitor = "val_loss" if len(data.x_val) else "train_loss"
    poll = _Poll(should_stop)
    rows = budget.eval_rows(layers, budget.batch_rows(plan), dtype.itemsize)
    interrupted: str | None = None
    error = None
    with np.errstate(all="ignore"):
        if state.epoch == 0 and state.pretrain_epoch < plan.pretrain_epochs_total:
            interrupted, error = pretrain.run(plan, data, state, poll, on_epoch,
                                              checkpoint_every, on_checkpoint)
        if interrupted is None:
            interrupted, error = _epochs(plan, data, state, poll, on_epoch, checkpoint_every,
                                         on_checkpoint, rows)
        if not state.last:                         # no epoch ran: measure the initial weights
            train_loss, train_acc = _evaluate(plan, state.params, data.x, data.t, data.y, rows)
            val_loss, val_acc = _evaluate(plan, state.params, data.x_val, data.t_val,
                                          data.y_val, rows)
            state.last = {"train_loss": train_loss, "val_loss": val_loss,
                          "train_accuracy": train_acc, "val_accuracy": val_acc}
    stop_reason = interrupted or state.stop_reason
    if stop_reason is None and perceptron and plan.epochs_total > 0:
        stop_reason = "not_converged"
    meta = model_meta(plan, data.standardizer)
    best = state.best_params
    final = {**state.last, "best_epoch": state.best_epoch, "best_loss": state.best_value,
             "monitor": monitor, "epochs_completed": state.epoch}
    return TrainResult(
        weights=state.params, best_weights=best, best_epoch=state.best_epoch,
        epochs_completed=state.epoch, stop_reason=stop_reason, error=error, metrics=final,
        model=Model(plan.network, state.params, meta),
        best_model=None if best is None else Model(plan.network, best, meta))
