"""The reference engine: backprop layer by layer through each layer's forward and backward,
for every layer type. It is the yardstick the fast engine is tested against, so it stays
the plainest statement of the algorithm.
"""
from collections.abc import Callable

import numpy as np

from .. import network
from ..layers import Layer
from ..losses import LOSSES
from ..network import Weights
from ..optim import Flat, Optimizer
from ..stats import LayerStats
from . import copied


class Reference:
    def __init__(self, layers: list[Layer], loss: str) -> None:
        self.layers, self.loss = layers, LOSSES[loss]

    def epoch(self, params: Weights, opt: Optimizer, x: np.ndarray, ts: np.ndarray,
              order: np.ndarray | None, batch_size: int | None, lr: float, zbuf: np.ndarray,
              rng: np.random.Generator, poll: Callable[[], bool]) -> bool:
        """Minibatch steps over x's rows in order (all when None), targets ts already in
        that order; each batch's output z into zbuf before its update. -> False when poll()
        asked to stop."""
        if order is not None and copied(x):            # one shuffled copy beats many takes
            x, order = x[order], None
        n = len(ts)
        batch = min(batch_size or n, n)
        flat = Flat(params)                            # one optimizer step for every array
        flat.adopt(params)
        for k, s in enumerate(range(0, n, batch)):
            xb = x[s:s + batch] if order is None else x[order[s:s + batch]]
            flat.gather(self.batch(params, xb, ts[s:s + batch], rng, zbuf[s:s + batch]))
            opt.step_flat(flat, lr)
            if k & 15 == 15 and poll():
                return False
        return True

    def batch(self, params: Weights, xb: np.ndarray, tb: np.ndarray,
              rng: np.random.Generator, zout: np.ndarray) -> Weights:
        """One batch forward (its output z into zout) and backward -> the gradients."""
        out, caches = network.forward(self.layers, params, xb, train=True, rng=rng)
        z = network.output_z(caches)
        zout[...] = z
        d = self.loss.grad(z, out, tb)
        return network.backward(self.layers, d, caches, wrt_z=self.loss.fused)

    def finite(self, params: Weights) -> bool:
        return network.weights_finite(params)

    def stats(self, reporter: LayerStats, params: Weights, x: np.ndarray, t: np.ndarray
              ) -> list[dict]:
        """The statistics rows of the probe rows (x, t): forward in eval mode, then the
        gradient of the mean training loss, as training computes it."""
        outputs: list = []
        out, caches = network.forward(self.layers, params, x, train=False, outputs=outputs)
        d = self.loss.grad(network.output_z(caches), out, t)
        traces = [{} for _ in self.layers]
        grads = network.backward(self.layers, d, caches, wrt_z=self.loss.fused, traces=traces)
        return reporter(params, grads, outputs, caches, traces)
