"""Greedy layer-wise autoencoder pretraining of a dense stack (Hinton & Salakhutdinov 2006,
Bengio et al. 2007), as the textbook shows it, before the whole net is fine-tuned by backprop.

For each hidden dense layer l in turn (every dense layer but the output layer, input side
first), with pretrain.epochs epochs per layer:
- its input h is the output of layers 0..l-1 as they are now (already pretrained; eval mode,
  so a dropout layer scales by its keep probability), over the training split (and the
  validation split, for val_loss);
- an autoencoder learns to reproduce h: the encoder is layer l itself (its W, b and
  activation), the decoder a linear dense layer with its own, untied weights W' (H, D),
  b' (D,), drawn with layer l's init from a generator seeded by (seed, 0, 3, l); loss squared
  error 1/2 ||h_hat - h||^2 per sample (mean over a batch), trained by backprop in minibatches
  of training.batch_size, shuffled (if training.shuffle) by a generator seeded by
  (seed, 0, 4, p) for pretraining epoch p;
- the optimizer is pretrain.optimizer (by default training.optimizer), fresh for every layer,
  without weight decay or learning-rate schedule. Plain SGD hardly moves the deeper layers
  (their inputs vary little, so reconstructing the mean is almost free and the gradient is
  tiny); Adam, which rescales every gradient, pretrains them well;
- afterwards the encoder's weights stay (they are layer l's initial weights for the
  fine-tuning) and the decoder is dropped.

Pretraining epochs are numbered 1..L E across the L layers and reported through on_epoch with
phase "pretrain" and `layer` = l: train_loss is the reconstruction loss measured on the fly,
val_loss that on the validation split after the epoch (None without one), accuracies None,
layer_stats the encoder's row (gradient of the reconstruction loss on the probe batch).
Checkpoints keep the pretraining epoch, the current decoder and its optimizer's state, so a
run resumed within pretraining is bit-identical too.
"""
import numpy as np

from . import budget, driver, engines, network
from .checkpoint import TrainState
from .driver import Metrics, Poll, measure, metrics
from .optim import make_optimizer
from .prepare import Prepared
from .spec import Plan, autoencoder, pretrained_layers
from .stats import LayerStats

LOSS = "squared_error"


class Pretraining:
    """One hidden layer's pretraining epochs as a driver.Phase: its autoencoder on h, the
    layer's input; pretraining epoch p shuffled by a generator seeded by (seed, 0, 4, p)."""
    name = "pretrain"

    def __init__(self, plan: Plan, data: Prepared, state: TrainState, index: int) -> None:
        tr = self.tr = plan.training
        self.plan, self.data, self.state, self.layer = plan, data, state, index
        self.ae = ae = autoencoder(plan.layers[index])
        below = list(plan.layers[:index])
        rows = budget.eval_rows(below, budget.batch_rows(plan), data.x.dtype.itemsize)
        self.h, self.h_val = (network.infer(below, state.params[:index], x, rows)
                              for x in (data.x, data.x_val))
        self.ae_rows = budget.eval_rows(ae, budget.batch_rows(plan), self.h.dtype.itemsize)
        settings = {"optimizer": tr["pretrain"]["optimizer"], "weight_decay": 0.0,
                    "engine": tr["engine"], "algorithm": "backprop",
                    "batch_size": tr["batch_size"]}
        self.opt = make_optimizer(settings)
        if state.decoder is None:                   # the layer's first epoch
            state.decoder = ae[1].init(np.random.default_rng([tr["seed"], 0, 3, index]),
                                       self.h.dtype)
        else:
            self.opt.load_state(state.opt_state)
        self.engine = engines.choose(settings, ae, LOSS, self.opt, self.h.dtype)
        self.stats_on = tr["stats"]
        self.reporter = LayerStats(ae)
        self.probe = self.h[data.probe]
        self.zbuf = np.empty_like(self.h)
        self.xs = None

    def trained(self):
        return [self.state.params[self.layer], self.state.decoder]

    def restore(self, snapshot) -> None:
        self.state.params[self.layer], self.state.decoder = snapshot

    def finite(self) -> bool:
        return self.engine.finite(self.trained())

    def learning_rate(self, e: int) -> float:
        return self.tr["pretrain"]["optimizer"]["learning_rate"]

    def train(self, e: int, lr: float, poll: Poll) -> bool:
        rng = np.random.default_rng([self.tr["seed"], 0, 4, e])
        self.xs = self.h[rng.permutation(len(self.h))] if self.tr["shuffle"] else self.h
        return self.engine.epoch(self.trained(), self.opt, self.xs, self.xs, None,
                                 self.tr["batch_size"], lr, self.zbuf, rng, poll)

    def measure(self) -> Metrics:
        train_loss, _ = metrics(LOSS, "linear", self.zbuf, self.xs, None)
        val_loss, _ = measure(self.ae, LOSS, self.trained(), self.h_val, self.h_val, None,
                              self.ae_rows)
        return Metrics(train_loss, val_loss, None, None)

    def diverged(self, e: int, m: Metrics) -> str:
        return (f"pretraining diverged at pretraining epoch {e} (layer {self.layer}): the "
                f"reconstruction loss became non-finite; try a smaller learning rate in "
                f"pretrain.optimizer")

    def stats(self) -> list[dict]:
        """The encoder's row, for the reconstruction loss on the probe rows."""
        row = self.engine.stats(self.reporter, self.trained(), self.probe, self.probe)[0]
        return [{**row, "layer": self.layer, "name": f"dense_{self.layer}"}]

    def record(self, e: int, m: Metrics) -> None:
        state = self.state
        state.pretrain_epoch = e
        state.opt_state = self.opt.state()
        if e % self.tr["pretrain"]["epochs"] == 0:      # the layer is done: drop its decoder
            state.decoder, state.opt_state = None, {}

    def save(self) -> int:
        return 0                                        # no training epoch completed yet

    def more(self, e: int) -> bool:
        return e < self.plan.pretrain_epochs_total or self.plan.epochs_total > 0


def run(plan: Plan, data: Prepared, state: TrainState, poll: Poll, hooks: driver.Hooks
        ) -> tuple[str | None, dict | None]:
    """Run the pretraining epochs left in state (updating it) -> (interrupted reason, error)."""
    per_layer = plan.training["pretrain"]["epochs"]
    hidden = pretrained_layers(plan.layers)
    while state.pretrain_epoch < plan.pretrain_epochs_total:
        j = state.pretrain_epoch // per_layer
        phase = Pretraining(plan, data, state, hidden[j])
        answer = driver.run(phase, range(state.pretrain_epoch + 1, (j + 1) * per_layer + 1),
                            state, data.fingerprint, poll, hooks)
        del phase                         # its inputs go before the next layer's are made
        if answer != (None, None):
            return answer
    return None, None
