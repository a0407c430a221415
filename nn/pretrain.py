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
from time import perf_counter

import numpy as np

from . import budget, checkpoint, fastpath, network
from .checkpoint import TrainState
from .epoch import EpochReport, backprop_epoch, finite, measure, metrics, weights_finite
from .layers import Layer
from .losses import squared_error
from .optim import make_optimizer
from .prepare import Prepared
from .spec import Plan, autoencoder, pretrained_layers
from .stats import layer_stats

LOSS = "squared_error"


def _stats(ae: list[Layer], params: list, h: np.ndarray, index: int) -> list[dict]:
    """The encoder's statistics row for the reconstruction loss on the probe batch h."""
    outputs: list = []
    out, caches = network.forward(ae, params, h, train=False, outputs=outputs)
    _, d = squared_error(out, h)
    grads = network.backward(ae, d, caches, wrt_z=False)
    row = layer_stats(ae[:1], params[:1], grads[:1], outputs[:1], caches[:1])[0]
    return [{**row, "layer": index, "name": f"dense_{index}"}]


def run(plan: Plan, data: Prepared, state: TrainState, poll, on_epoch, checkpoint_every: int,
        on_checkpoint) -> tuple[str | None, dict | None]:
    """Run the pretraining epochs left in state (updating it) -> (interrupted reason, error)."""
    tr = plan.training
    per_layer = tr["pretrain"]["epochs"]
    settings = {"optimizer": tr["pretrain"]["optimizer"], "weight_decay": 0.0}
    lr = settings["optimizer"]["learning_rate"]
    hidden = pretrained_layers(plan.layers)
    total = plan.pretrain_epochs_total
    while state.pretrain_epoch < total:
        j = state.pretrain_epoch // per_layer
        index = hidden[j]
        ae = autoencoder(plan.layers[index])
        below = list(plan.layers[:index])
        rows = budget.eval_rows(below, budget.batch_rows(plan), data.x.dtype.itemsize)
        h, h_val = (network.infer(below, state.params[:index], x, rows)
                    for x in (data.x, data.x_val))
        ae_rows = budget.eval_rows(ae, budget.batch_rows(plan), h.dtype.itemsize)
        opt = make_optimizer(settings)
        if state.decoder is None:                   # the layer's first epoch
            state.decoder = ae[1].init(np.random.default_rng([tr["seed"], 0, 3, index]),
                                       h.dtype)
        else:
            opt.load_state(state.opt_state)
        zbuf = np.empty_like(h)
        fast = fastpath.engine(tr, ae, LOSS, opt, h.dtype)
        for p in range(state.pretrain_epoch + 1, (j + 1) * per_layer + 1):
            t0 = perf_counter()
            params = [state.params[index], state.decoder]
            snapshot = network.copy_weights(params)
            rng = np.random.default_rng([tr["seed"], 0, 4, p])
            xs = h[rng.permutation(len(h))] if tr["shuffle"] else h
            if not backprop_epoch(ae, LOSS, tr["batch_size"], params, opt, xs, xs, rng, lr,
                                  zbuf, poll, fast):
                state.params[index], state.decoder = snapshot
                return poll.answer, None
            train_loss, _ = metrics(LOSS, "linear", zbuf, xs, None)
            val_loss, _ = measure(ae, LOSS, params, h_val, h_val, None, ae_rows)
            if not (finite(train_loss, val_loss) and weights_finite(params)):
                state.params[index], state.decoder = snapshot
                return "diverged", {"code": "diverged", "message": f"pretraining diverged at "
                                    f"pretraining epoch {p} (layer {index}): the "
                                    f"reconstruction loss became non-finite; try a smaller "
                                    f"learning rate in pretrain.optimizer"}
            stats = _stats(ae, params, h[data.probe], index) if tr["stats"] else []
            state.pretrain_epoch = p
            state.opt_state = opt.state()
            if p % per_layer == 0:                  # the layer is done: drop its decoder
                state.decoder, state.opt_state = None, {}
            if on_epoch is not None:
                on_epoch(EpochReport(p, "pretrain", train_loss, val_loss, None, None,
                                     perf_counter() - t0, lr, stats, layer=index))
            if checkpoint_every and on_checkpoint is not None and p % checkpoint_every == 0:
                on_checkpoint(0, checkpoint.dump(state, data.fingerprint))
            if (p < total or plan.epochs_total > 0) and poll(force=True):
                return poll.answer, None
        del h, h_val, xs, zbuf, fast        # before the next layer's inputs are made
    return None, None
