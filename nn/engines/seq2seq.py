"""The encoder-decoder engine: backprop through both stacks (nn/seq2seq.py), teacher forced,
the loss the mean over each batch's real (non-PAD) target tokens. There is no fast variant:
training.engine "auto" runs this for every encoder-decoder plan. The reference engine's
epoch loop (nn/engines/reference.py) with this batch step; zbuf receives each batch's logits
(N, T_tgt, V).
"""
import numpy as np

from .. import seq2seq
from ..layers import Layer
from ..network import Weights
from ..stats import LayerStats
from .reference import Reference


def stat_names(layers: list[Layer], n_enc: int) -> list[str]:
    """Statistics row names: "encoder.<kind>_<i>", "decoder.<kind>_<i>", i within the stack."""
    return [f"encoder.{l.kind}_{i}" if i < n_enc else f"decoder.{l.kind}_{i - n_enc}"
            for i, l in enumerate(layers)]


class Seq2Seq(Reference):
    """The reference engine's epoch, with the encoder-decoder's batch step and probe."""

    def __init__(self, layers: list[Layer], n_enc: int) -> None:
        super().__init__(layers, "cross_entropy")
        self.n_enc = n_enc

    def batch(self, params: Weights, xb: np.ndarray, tb: np.ndarray,
              rng: np.random.Generator, zout: np.ndarray) -> Weights:
        """Sources xb (B, T_src), targets tb (B, T_tgt): teacher forced forward (the logits
        into zout), the loss over the real target tokens, backward through both stacks."""
        a, run = seq2seq.forward(self.layers, self.n_enc, params, xb,
                                 seq2seq.teacher_input(tb), train=True, rng=rng)
        z = seq2seq.logits(run)
        zout[...] = z
        return seq2seq.backward(self.layers, self.n_enc, seq2seq.loss_grad(z, a, tb), run)

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
