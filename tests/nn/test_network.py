"""nn/network.py: the chunked eval-mode forward pass (infer) against forward, and its memory."""
import tracemalloc

import numpy as np
import pytest

from nn import network
from nn.spec import parse_network
from tests.nn.conftest import dense

CNN = [{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1}, {"type": "maxpool2d"},
       {"type": "flatten"}, dense(8, "tanh"), dense(3, "softmax")]


def _net(specs: list[dict], in_shape: tuple[int, ...]):
    _, layers = parse_network({"layers": specs}, in_shape)
    return layers, network.init_params(layers, np.random.default_rng(0), np.float64)


@pytest.mark.parametrize("z", [False, True])
def test_infer_is_the_eval_forward_pass(z):
    layers, params = _net(CNN, (2, 8, 8))
    x = np.random.default_rng(1).normal(size=(20, 2, 8, 8))
    out, caches = network.forward(layers, params, x, train=False)
    want = network.output_z(caches) if z else out
    assert np.array_equal(network.infer(layers, params, x, z=z), want)
    assert np.array_equal(network.infer(layers, params, x, 20, z=z), want)
    for rows in (1, 7):
        assert np.allclose(network.infer(layers, params, x, rows, z=z), want, rtol=1e-12, atol=0)
    doubled = network.infer(layers, params, x, 7, prepare=lambda chunk: 2 * chunk)
    assert np.allclose(doubled, network.forward(layers, params, 2 * x, train=False)[0],
                       rtol=1e-12, atol=0)


def test_infer_holds_one_layer_at_a_time():
    """Each cache goes as its layer returns: a chunk's peak is its rows times the largest
    layer's Cost.infer (infer_values), not every layer's cache as training keeps them."""
    layers, params = _net([dense(256, "tanh")] * 8 + [dense(10, "softmax")], (256,))
    x = np.random.default_rng(1).normal(size=(400, 256))
    rows = 100
    tracemalloc.start()
    try:
        out = network.infer(layers, params, x, rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (400, 10)
    assert peak <= rows * network.infer_values(layers) * 8 + out.nbytes + 16384
