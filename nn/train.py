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
from collections.abc import Callable

import numpy as np

from . import budget, checkpoint, driver, engines, network, pretrain, seq2seq
from .checkpoint import TrainState
from .driver import EpochReport, Metrics, Poll, measure, metrics
from .engines.seq2seq import Seq2Seq, stat_names
from .model import Model, model_meta
from .optim import learning_rate, make_optimizer
from .perceptron import count_errors
from .prepare import Prepared, prepare
from .spec import Plan
from .stats import LayerStats
from .weights import Weights, check_weights

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


class Training:
    """The training epochs as a driver.Phase: the whole net on the training split, epoch e
    shuffled and with dropout masks from a generator seeded by (seed, e)."""
    name, layer = "train", None

    def __init__(self, plan: Plan, data: Prepared, state: TrainState, rows: int) -> None:
        tr = self.tr = plan.training
        self.plan, self.data, self.state, self.rows = plan, data, state, rows
        self.layers = list(plan.layers)
        self.opt = make_optimizer(tr, [l.decayed() for l in self.layers])
        if state.opt_state:
            self.opt.load_state(state.opt_state)
        self.n_enc = n_enc = plan.encoder_layers
        if n_enc:                                  # encoder-decoder: its own engine, always
            self.engine = Seq2Seq(self.layers, n_enc)
        else:
            self.engine = engines.choose(tr, self.layers, tr["loss"], self.opt, data.x.dtype)
        self.stats_on = tr["stats"]
        self.reporter = LayerStats(self.layers, stat_names(self.layers, n_enc) if n_enc
                                   else None)
        self.monitor = "val_loss" if len(data.x_val) else "train_loss"
        # the outputs in the plan's dtype (a seq2seq run's inputs are int64 token ids)
        self.zbuf = np.empty((len(data.x), *self.layers[-1].out_shape), dtype=tr["dtype"])
        self.probe_x, self.probe_t = data.x[data.probe], data.t[data.probe]
        self.ts = self.ys = None

    def trained(self) -> Weights:
        return self.state.params

    def restore(self, snapshot: Weights) -> None:
        self.state.params = snapshot

    def finite(self) -> bool:
        return self.engine.finite(self.state.params)

    def learning_rate(self, e: int) -> float:
        return learning_rate(self.tr, e)

    def train(self, e: int, lr: float, poll: Poll) -> bool:
        tr, data = self.tr, self.data
        rng = np.random.default_rng([tr["seed"], e])
        order = rng.permutation(len(data.x)) if tr["shuffle"] else None
        pick = slice(None) if order is None else order
        self.ts = data.t[pick]
        self.ys = None if data.y is None else data.y[pick]
        return self.engine.epoch(self.state.params, self.opt, data.x, self.ts, order,
                                 tr["batch_size"], lr, self.zbuf, rng, poll)

    def measure(self) -> Metrics:
        d = self.data
        if self.n_enc:
            train = seq2seq.summary(seq2seq.scores(self.zbuf, self.ts))
            val = seq2seq_metrics(self.plan, self.state.params, d.x_val, d.t_val, self.rows)
            return Metrics(train[0], val[0], train[1], val[1], train[2], val[2])
        train_loss, train_acc = metrics(self.tr["loss"], self.layers[-1].activation,
                                        self.zbuf, self.ts, self.ys)
        val_loss, val_acc = measure(self.layers, self.tr["loss"], self.state.params, d.x_val,
                                    d.t_val, d.y_val, self.rows)
        return Metrics(train_loss, val_loss, train_acc, val_acc)

    def diverged(self, e: int, m: Metrics) -> str:
        return (f"training diverged at epoch {e}: the loss became non-finite (train "
                f"{m.train_loss}, validation {m.val_loss}); try a smaller learning rate")

    def stats(self) -> list[dict]:
        return self.engine.stats(self.reporter, self.state.params, self.probe_x, self.probe_t)

    def record(self, e: int, m: Metrics) -> None:
        state = self.state
        state.epoch = e
        state.last = m.record()
        _track_best(state, m.val_loss if self.monitor == "val_loss" else m.train_loss,
                    self.tr["early_stopping"])
        if self.tr["algorithm"] == "perceptron" and count_errors(self.zbuf, self.ts) == 0:
            state.stop_reason = "converged"

    def save(self) -> int:
        self.state.opt_state = self.opt.state()
        return self.state.epoch

    def more(self, e: int) -> bool:
        return self.state.stop_reason is None and e < self.plan.epochs_total


def seq2seq_metrics(plan: Plan, params: Weights, x: np.ndarray, t: np.ndarray, rows: int
                    ) -> tuple[float | None, float | None, float | None]:
    """(loss per real target token, token accuracy, exact match), teacher forced in eval
    mode; Nones without samples."""
    if len(x) == 0:
        return None, None, None
    return seq2seq.summary(seq2seq.evaluate(list(plan.layers), plan.encoder_layers, params, x,
                                            t, rows))


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
          on_checkpoint: Callable[[int, bytes], None] | None = None,
          stats_epochs: Callable[[int], bool] | None = None,
          on_stats: Callable[[EpochReport], None] | None = None) -> TrainResult:
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
    poll = Poll(should_stop)
    hooks = driver.Hooks(on_epoch, checkpoint_every, on_checkpoint, stats_epochs, on_stats)
    rows = budget.eval_rows(layers, budget.batch_rows(plan), dtype.itemsize)
    interrupted: str | None = None
    error = None
    with np.errstate(all="ignore"):
        if state.epoch == 0 and state.pretrain_epoch < plan.pretrain_epochs_total:
            interrupted, error = pretrain.run(plan, data, state, poll, hooks)
        if interrupted is None and state.stop_reason is None:
            interrupted, error = driver.run(
                Training(plan, data, state, rows), range(state.epoch + 1, plan.epochs_total + 1),
                state, data.fingerprint, poll, hooks)
        if not state.last and plan.encoder_layers:   # no epoch ran: the initial weights'
            train_m = seq2seq_metrics(plan, state.params, data.x, data.t, rows)
            val_m = seq2seq_metrics(plan, state.params, data.x_val, data.t_val, rows)
            state.last = Metrics(train_m[0], val_m[0], train_m[1], val_m[1], train_m[2],
                                 val_m[2]).record()
        if not state.last:                         # no epoch ran: measure the initial weights
            loss = tr["loss"]
            train_loss, train_acc = measure(layers, loss, state.params, data.x, data.t, data.y,
                                            rows)
            val_loss, val_acc = measure(layers, loss, state.params, data.x_val, data.t_val,
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
