"""nn/budget.py: a run's multiply-adds counted by hand, its peak memory measured.

The memory estimate must be an upper bound of what describe + build + train really allocate
(the caller's arrays of the data set included), and not a wild one: each representative plan
trains in a fresh Python process under tracemalloc (NumPy reports its arrays to it), after a
warm-up run so that lazy imports are not counted, holding its latest checkpoint as a worker
does; the test asks actual <= estimate <= 3 x actual.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import nn
from nn import budget
from nn.driver import measure
from nn.layers import LAYERS
from nn.prepare import prepare
from tests.nn.conftest import dense, plan_for


def _layer(spec: dict, in_shape: tuple[int, ...]):
    return LAYERS[spec["type"]].parse(dict(spec), in_shape, "layer")


# ---- multiply-adds, by hand ----------------------------------------------------------------

@pytest.mark.parametrize("spec,in_shape,macs", [
    # each of the 5 units sums 3 products
    ({"type": "dense", "units": 5}, (3,), 5 * 3),
    # the same at each of 4 time steps
    ({"type": "dense", "units": 5}, (4, 3), 4 * 5 * 3),
    # 6 x 6 outputs (padding 1) of 4 filters, each a sum over a 3 x 3 window of 2 channels
    ({"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1}, (2, 6, 6),
     6 * 6 * 4 * 3 * 3 * 2),
    # stride 2 without padding on 7 x 7: 3 x 3 outputs; a (H, W) image has one channel
    ({"type": "conv2d", "filters": 4, "kernel_size": 3, "stride": 2}, (7, 7), 3 * 3 * 4 * 9),
    # 5 steps of x_t Wx (3 x 4) and h Wh (4 x 4)
    ({"type": "rnn", "units": 4}, (5, 3), 5 * (3 * 4 + 4 * 4)),
    # the same with 4 gates
    ({"type": "lstm", "units": 4, "return_sequences": True}, (5, 3), 5 * 4 * (3 * 4 + 4 * 4)),
    # q, k, v and the output projection (6 positions x 8 x 8 each), the 6 x 6 scores of 4
    # features per head for 2 heads, and as many for weighting the values
    ({"type": "self_attention", "heads": 2}, (6, 8),
     4 * 6 * 8 * 8 + 2 * (2 * 6 * 6 * 4)),
    # the attention's, and the feed-forward's 8 -> 16 -> 8 at each of 6 positions
    ({"type": "transformer_encoder", "heads": 2, "ff_units": 16}, (6, 8),
     4 * 6 * 8 * 8 + 2 * 6 * 6 * 8 + 6 * (8 * 16 + 16 * 8)),
    ({"type": "maxpool2d"}, (2, 6, 6), 0),
    ({"type": "embedding", "vocab_size": 9, "dim": 4}, (6,), 0),
    ({"type": "layer_norm"}, (6, 8), 0),
])
def test_forward_multiply_adds_of_each_layer(spec, in_shape, macs):
    assert _layer(spec, in_shape).cost().macs == macs


def test_a_runs_multiply_adds_and_steps():
    x, y = np.random.default_rng(1).normal(size=(40, 2)), np.arange(40) % 2
    plan = plan_for([dense(4), dense(1)], {"epochs": 7, "validation_fraction": 0.25,
                                          "batch_size": 8}, x, y)
    # 20 of each class, 5 of each to validation: 30 training samples, and a probe of all 30.
    assert budget.split_sizes(plan) == (30, 10)
    est = budget.estimate(plan)
    per_sample = 2 * 4 + 4 * 1
    # a training sample and a probe sample forward and backward (3x), a validation one forward
    assert est.multiply_adds == 7 * (3 * per_sample * (30 + 30) + per_sample * 10)
    # 4 batches, the probe and one validation chunk per epoch
    assert est.steps == 7 * (4 + 1 + 1)
    assert est.seconds == budget.REFERENCE.seconds(est.calls, est.multiply_adds, est.values)
    assert budget.estimate(budget.with_training(plan, epochs=14)).multiply_adds \
        == 2 * est.multiply_adds


def test_pretraining_adds_its_autoencoders():
    x, y = nn.generate("gaussian", 50, 0, seed=1)
    layers = [dense(4), dense(3), dense(1)]
    plain = budget.estimate(plan_for(layers, {"epochs": 2, "stats": False}, x, y))
    pre = budget.estimate(plan_for(layers, {"epochs": 2, "stats": False,
                                            "pretrain": {"epochs": 3}}, x, y))
    # layer 0: 2 -> 4 -> 2 on the data; layer 1: 4 -> 3 -> 4 on layer 0's outputs (once)
    ae = 3 * 50 * 3 * (2 * 2 * 4) + 3 * 50 * 3 * (2 * 4 * 3) + 50 * 2 * 4
    assert pre.multiply_adds - plain.multiply_adds == ae


def test_split_sizes_are_the_split_prepare_makes(blobs):
    X, y = blobs
    plan = plan_for([dense(3, "softmax")], {"loss": "cross_entropy",
                                            "validation_fraction": 0.33}, X, y)
    data = prepare(plan, X, y)
    assert budget.split_sizes(plan) == (len(data.x), len(data.x_val))


def test_validation_in_chunks_measures_what_one_pass_does(blobs):
    X, y = blobs
    plan = plan_for([dense(8, "tanh"), dense(3, "softmax")], {"loss": "cross_entropy"}, X, y)
    data = prepare(plan, X, y)
    params = nn.train(plan, X, y).weights
    layers = list(plan.layers)
    whole = measure(layers, "cross_entropy", params, data.x, data.t, data.y, len(X))
    chunks = measure(layers, "cross_entropy", params, data.x, data.t, data.y, 7)
    assert chunks == pytest.approx(whole, rel=1e-12)


def test_evaluation_chunks_hold_a_batch_and_at_most_eval_bytes():
    x, y = nn.generate("xor", 40, 0, seed=1)
    plan = plan_for([dense(1000, "relu"), dense(1)], {"batch_size": 2}, x, y)
    per_row = max(l.cost().infer for l in plan.layers)       # one layer runs at a time
    rows = budget.eval_rows(plan.layers, 2, 8)
    assert rows * per_row * 8 <= budget.EVAL_BYTES < (rows + 1) * per_row * 8
    assert budget.eval_rows(plan.layers, 10**6, 8) == 10**6


def test_memory_grows_with_the_batch_and_the_dtype():
    x, y = nn.generate("xor", 2000, 0, seed=1)
    net = [dense(256, "relu"), dense(1)]
    one, full = (budget.estimate(plan_for(net, {"batch_size": b}, x, y)).memory_bytes
                 for b in (1, None))
    assert full - one > 2000 * 4 * 256 * 8              # z, a and their gradients per sample
    f32 = budget.estimate(plan_for(net, {"batch_size": None, "dtype": "float32"}, x, y))
    assert f32.memory_bytes < 0.7 * full


# ---- peak memory, measured -----------------------------------------------------------------

CASES = {
    "dense": ("xor", 4000, {}, [dense(256, "relu"), dense(2, "softmax")],
              {"loss": "cross_entropy", "batch_size": 500, "validation_fraction": 0.2,
               "optimizer": {"type": "adam"}}),
    "dense-full-batch": ("circle", 3000, {}, [dense(256), dense(1)], {"batch_size": None}),
    "dense-general": ("xor", 4000, {}, [dense(256, "tanh"), {"type": "dropout"},
                                        dense(2, "softmax")],
                      {"loss": "cross_entropy", "batch_size": 1000,
                       "validation_fraction": 0.2, "early_stopping": {"patience": 5}}),
    "conv2d": ("glyphs", 1000, {"size": 12},
               [{"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1},
                {"type": "maxpool2d"}, {"type": "flatten"}, dense(10, "softmax")],
               {"loss": "cross_entropy", "batch_size": 200, "validation_fraction": 0.2,
                "optimizer": {"type": "adam"}}),
    "lstm": ("parity", 2000, {"length": 10},
             [{"type": "lstm", "units": 64, "return_sequences": True},
              {"type": "sequence_pool"}, dense(2, "softmax")],
             {"loss": "cross_entropy", "batch_size": 500, "validation_fraction": 0.2}),
    "rnn": ("parity", 1000, {"length": 10}, [{"type": "rnn", "units": 128},
                                             dense(2, "softmax")],
            {"loss": "cross_entropy", "batch_size": None, "dtype": "float32"}),
    "transformer_encoder": ("next_token", 800, {"length": 12, "vocab_size": 16},
                            [{"type": "embedding", "vocab_size": 16, "dim": 32},
                             {"type": "positional_encoding"},
                             {"type": "transformer_encoder", "heads": 4, "causal": True},
                             dense(16, "softmax")],
                            {"loss": "cross_entropy", "batch_size": 200,
                             "validation_fraction": 0.2, "optimizer": {"type": "adam"}}),
    "seq2seq": ("reverse", 1500, {"length": 12, "vocab_size": 16},
                {"encoder": {"layers": [{"type": "embedding", "vocab_size": 16, "dim": 32},
                                        {"type": "positional_encoding"},
                                        {"type": "transformer_encoder", "heads": 4}]},
                 "decoder": {"layers": [{"type": "embedding", "vocab_size": 16, "dim": 32},
                                        {"type": "positional_encoding"},
                                        {"type": "transformer_decoder", "heads": 4},
                                        dense(16, "softmax")]}},
                {"loss": "cross_entropy", "batch_size": 200, "validation_fraction": 0.2,
                 "optimizer": {"type": "adam"}}),
    "pretraining": ("gaussian", 4000, {}, [dense(128), dense(64), dense(1)],
                    {"batch_size": 100, "epochs": 1, "validation_fraction": 0.2,
                     "pretrain": {"epochs": 2, "optimizer": {"type": "adam"}}}),
    # each layer's inputs are made once the autoencoder below has let go of its arrays
    "pretraining-deep": ("gaussian", 4000, {}, [dense(128), dense(128), dense(128), dense(1)],
                         {"batch_size": 100, "epochs": 1, "validation_fraction": 0.2,
                          "pretrain": {"epochs": 2, "optimizer": {"type": "adam"}}}),
    "standardize-float32": ("spiral", 50000, {}, [dense(8, "tanh"), dense(1)],
                            {"batch_size": 32, "epochs": 1, "standardize": True,
                             "validation_fraction": 0.3, "dtype": "float32"}),
}

PROBE = """
import json, sys, tracemalloc
import nn
from nn import budget

def run(kind, n, params, layers, training):
    held = []                                  # the newest checkpoint, as a worker keeps it

    def keep(epoch, state):
        held[:] = [state]

    x, y = nn.generate(kind, n, 0, seed=1, **params)
    task = {"next_token": "classification", "reverse": "seq2seq"}.get(kind)
    network = layers if isinstance(layers, dict) else {"layers": layers}
    plan = nn.build(network, {"seed": 1, "epochs": 2, **training}, nn.describe(x, y, task))
    result = nn.train(plan, x, y, checkpoint_every=1, on_checkpoint=keep)
    result.model.to_npz()
    return plan

run("xor", 40, {}, [{"type": "dense", "units": 2}, {"type": "dense", "units": 1}], {})
for name, (kind, n, params, layers, training) in json.load(sys.stdin).items():
    tracemalloc.start()
    plan = run(kind, n, params, layers, training)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"case": name, "peak": peak,
                      "estimate": budget.estimate(plan).memory_bytes}), flush=True)
"""


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, int]]:
    out = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(CASES),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return {r["case"]: (r["peak"], r["estimate"]) for r in rows}


@pytest.mark.parametrize("case", CASES)
def test_the_memory_estimate_bounds_the_measured_peak(measured, case):
    peak, estimate = measured[case]
    assert peak > 4 << 20                     # large enough to be about the run
    assert peak <= estimate <= 3 * peak, (case, peak, estimate, estimate / peak)
