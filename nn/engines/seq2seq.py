"""The encoder-decoder engine: backprop through both stacks (nn/seq2seq.py), teacher forced,
the loss the mean over each batch's real (non-PAD) target tokens. There is no fast variant:
training.engine "auto" runs this for every encoder-decoder plan. Same contract as the
reference engine (nn/engines/__init__.py); zbuf receives each batch's logits (N, T_tgt, V).
"""
from typing import Callable

import numpy as np

from .. import network, seq2seq
from ..layers import Layer
from ..network import Weights
from ..optim import Flat, Optimizer
from ..stats import LayerStats
from . import copied


def stat_names(layers: list[Layer], n_enc: int) -> list[str]:
    """Statistics row names: "encoder.<kind>_<i>", "decoder.<kind>_<i>", i within the stack."""
    return [f"encoder.{l.kind}_{i}" if i < n_enc else f"decoder.{l.kind}_{i - n_enc}"
            for i, l in enumerate(layers)]


class Seq2Seq:
    def __init__(self, layers: list[Layer], n_enc: int) -> None:
        self.layers, self.n_enc = layers, n_enc

    def epoch(self, params: Weights, opt: Optimizer, x: np.ndarray, ts: np.ndarray,
              order: np.ndarray | None, batch_size: int | None, lr: float, zbuf: np.ndarray,
              rng: np.random.Generator, poll: Callable[[], bool]) -> bool:
        """Minibatch steps over the sources x (N, T_src) in order, targets ts (N, T_tgt)
        already in that order; each batch's logits into zbuf before its update. -> False when
        poll() asked to stop."""
        if order is not None and copied(x):
            x, order = x[order], None
        n = len(ts)
        batch = min(batch_size or n, n)
        flat = Flat(params)
        flat.adopt(params)
        for k, s in enumerate(range(0, n, batch)):
            xb = x[s:s + batch] if order is None else x[order[s:s + batch]]
            t = ts[s:s + batch]
            a, run = seq2seq.forward(self.layers, self.n_enc, params, xb,
                                     seq2seq.teacher_input(t), train=True, rng=rng)
            z = seq2seq.logits(run)
            zbuf[s:s + batch] = z
            dz = seq2seq.loss_grad(z, a, t)
            flat.gather(seq2seq.backward(self.layers, self.n_enc, dz, run))
            opt.step_flat(flat, lr)
            if k & 15 == 15 and poll():
                return False
        return True

    def finite(self, params: Weights) -> bool:
        return network.weights_finite(params)

    def stats(self, reporter: LayerStats, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> list[dict]:
        """The statistics rows of the probe rows: an eval-mode forward, then the gradient of
        the training loss over them."""
        outputs: list = []
        a, run = seq2seq.forward(self.layers, self.n_enc, params, x, seq2seq.teacher_input(t),
                                 train=False, outputs=outputs)
        dz = seq2seq.loss_grad(seq2seq.logits(run), a, t)
        traces = [{} for _ in self.layers]
        grads = seq2seq.backward(self.layers, self.n_enc, dz, run, traces)
        return reporter(params, grads, outputs, run.caches, traces)
