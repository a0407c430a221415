"""What the deep structures learn, and how fast: the demonstrations of tests/nn/
test_learning.py over several data seeds, with their wall-clock times.

    python bench/structures.py [--seeds 3] [--out bench/STRUCTURES.md]

Each row: the held-out accuracy (or training accuracy where the point is trainability) of
the structure and of the simpler net it is compared with, min / mean / max over the seeds,
and the median seconds of one training run (one BLAS thread, as bench/suite.py).
"""
import argparse
import itertools
import os
import pathlib
import platform
import statistics
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import nn  # noqa: E402
from nn.seq2seq import EOS, PAD  # noqa: E402

GLOROT = {"type": "glorot"}
THROUGH_THE_SERVICE = "## Through the service"


def dense(units, activation="sigmoid", **extra):
    return {"type": "dense", "units": units, "activation": activation, **extra}


def fit(layers, X, y, task=None, **training):
    training = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.005},
                "batch_size": 32, "seed": 0, "stats": False, **training}
    t0 = time.perf_counter()
    r = nn.train(nn.build({"layers": layers}, training, nn.describe(X, y, task)), X, y)
    return r, time.perf_counter() - t0


def acc(r, X, y):
    return float(np.mean(np.array(r.model.predict(X)["labels"]) == y))


def cnn(seed):
    X, y = nn.generate("glyphs", 3000, 15, seed=seed)
    (Xt, yt), (Xe, ye) = (X[:2000], y[:2000]), (X[2000:], y[2000:])
    a, t = fit([{"type": "conv2d", "filters": 16, "kernel_size": 3},
                {"type": "conv2d", "filters": 32, "kernel_size": 3},
                {"type": "maxpool2d"}, {"type": "flatten"}, dense(10, "softmax", init=GLOROT)],
               Xt, yt, epochs=12, batch_size=64)
    b, _ = fit([{"type": "flatten"}, dense(128, "relu", init={"type": "he"}),
                dense(10, "softmax", init=GLOROT)], Xt, yt, epochs=12, batch_size=64)
    return acc(a, Xe, ye), acc(b, Xe, ye), t


def parity(seed):
    X, y = nn.generate("parity", 600, 0, seed=seed, length=10)
    seen = {tuple(row) for row in X[..., 0].astype(int)}
    unseen = np.array([s for s in itertools.product([0, 1], repeat=10) if s not in seen],
                      dtype=float)[..., None]
    truth = unseen.sum(axis=(1, 2)).astype(int) % 2
    adam = {"type": "adam", "learning_rate": 0.01}
    a, t = fit([{"type": "lstm", "units": 16}, dense(2, "softmax", init=GLOROT)], X, y,
               batch_size=16, epochs=30, optimizer=adam)
    b, _ = fit([{"type": "flatten"}, dense(64, "tanh", init=GLOROT),
                dense(2, "softmax", init=GLOROT)], X, y, batch_size=16, epochs=150,
               optimizer=adam)
    return acc(a, unseen, truth), acc(b, unseen, truth), t


def position(seed):
    X, y = nn.generate("max_position", 1500, 0, seed=seed, length=8)
    (Xt, yt), (Xe, ye) = (X[:1000], y[:1000]), (X[1000:], y[1000:])
    out = []
    for pe in (True, False):
        layers = [dense(16, "linear", init=GLOROT)] + \
            ([{"type": "positional_encoding"}] if pe else []) + \
            [{"type": "transformer_encoder", "heads": 2, "ff_units": 32},
             {"type": "sequence_pool", "mode": "mean"}, dense(8, "softmax", init=GLOROT)]
        r, t = fit(layers, Xt, yt, epochs=15)
        out.append((acc(r, Xe, ye), t))
    return out[0][0], out[1][0], out[0][1]


def next_token(seed):
    X, y = nn.generate("next_token", 1500, 0, seed=seed, length=12, vocab_size=16)
    (Xt, yt), (Xe, ye) = (X[:1000], y[:1000]), (X[1000:], y[1000:])
    embed = {"type": "embedding", "vocab_size": 16, "dim": 16}
    causal = [embed, {"type": "positional_encoding"},
              {"type": "transformer_encoder", "heads": 2, "ff_units": 32, "causal": True},
              dense(16, "softmax", init=GLOROT)]
    per_step = [embed, dense(32, "relu", init={"type": "he"}), dense(16, "softmax", init=GLOROT)]
    scores = []
    for layers in (causal, per_step):
        r, t = fit(layers, Xt, yt, "classification", epochs=10,
                   optimizer={"type": "adam", "learning_rate": 0.01})
        labels = np.array(r.model.predict(Xe)["labels"])
        scores.append((float(np.mean(labels[:, 1:] == ye[:, 1:])), t))
    return scores[0][0], scores[1][0], scores[0][1]


def reverse(seed):
    """README example 6's network, data and training; scored by greedy decoding of fresh
    sequences the data set does not hold."""
    X, y = nn.generate("reverse", 4000, 0, seed=seed, length=8, vocab_size=12)
    fresh, truth = nn.generate("reverse", 2000, 0, seed=seed + 1000, length=8, vocab_size=12)
    seen = {tuple(row) for row in X.astype(int).tolist()}
    rows = [(x, t) for x, t in zip(fresh.astype(int).tolist(), truth.tolist())
            if tuple(x) not in seen]
    inputs = [[v for v in x if v != PAD] for x, _ in rows]
    expected = [[v for v in t if v not in (PAD, EOS)] for _, t in rows]
    training = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.003},
                "batch_size": 32, "epochs": 40, "seed": 0, "stats": False,
                "validation_fraction": 0.2, "early_stopping": {"patience": 5}}
    out = []
    for pe in (True, False):
        stack = lambda *top: {"layers": [{"type": "embedding", "vocab_size": 12, "dim": 32}] +
                              ([{"type": "positional_encoding"}] if pe else []) + list(top)}
        network = {"encoder": stack({"type": "transformer_encoder", "heads": 4}),
                   "decoder": stack({"type": "transformer_decoder", "heads": 4},
                                    dense(12, "softmax"))}
        t0 = time.perf_counter()
        r = nn.train(nn.build(network, training, nn.describe(X, y, "seq2seq")), X, y)
        t = time.perf_counter() - t0
        decoded = r.model.decode(inputs)["outputs"]
        out.append((float(np.mean([d == e for d, e in zip(decoded, expected)])), t))
    return out[0][0], out[1][0], out[0][1]


def pretraining(seed):
    X, y = nn.generate("gaussian", 500, 30, seed=seed)
    init = {"type": "uniform", "scale": 0.5}
    net = {"layers": [dense(4, init=init)] * 6 + [dense(1, init=init)]}
    training = {"optimizer": {"type": "sgd", "learning_rate": 0.03}, "batch_size": 1,
                "epochs": 20, "seed": 0, "validation_fraction": 0.5, "stats": False}
    pre = {"epochs": 10, "optimizer": {"type": "adam", "learning_rate": 0.01}}
    info = nn.describe(X, y)
    t0 = time.perf_counter()
    a = nn.train(nn.build(net, {**training, "pretrain": pre}, info), X, y)
    t = time.perf_counter() - t0
    b = nn.train(nn.build(net, training, info), X, y)
    return a.metrics["train_accuracy"], b.metrics["train_accuracy"], t


DEMOS = [
    ("CNN on glyphs (8x8, noise 15; 2000 train / 1000 test; 12 epochs, batch 64)",
     "held-out accuracy",
     "CNN 16-32 3x3 + maxpool", "dense 128 relu", cnn),
    ("parity of <= 10 bits (600 train; every unseen 10-bit string)", "held-out accuracy",
     "LSTM 16, 30 epochs", "dense 64 tanh, 150 epochs", parity),
    ("position of the max of 8 values (1000 train / 500 test; 15 epochs)", "held-out accuracy",
     "transformer + sinusoidal PE", "transformer, no PE", position),
    ("next token, x_t = s + k t mod 16 (T 12; 1000 train / 500 test; 10 epochs)",
     "held-out accuracy at t >= 1", "causal transformer", "no attention (per-step dense)",
     next_token),
    ("reverse, 2 to 8 of 9 symbols (4000: 3200 train; ~1500 unseen; <= 40 epochs, early stopping)",
     "held-out exact match, greedy decoding", "encoder-decoder transformer (README 5)",
     "the same, no positional encoding", reverse),
    ("Gaussian noise 30, 6 x 4 sigmoid, per-sample SGD 0.03, 20 epochs",
     "final train accuracy", "pretrained (10 Adam epochs per layer)", "random init", pretraining),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("STRUCTURES.md")))
    args = ap.parse_args()
    seeds = list(range(args.seeds))
    lines = ["# Deep structures: what they learn", "",
             f"Command: `{' '.join(['python', 'bench/structures.py'] + sys.argv[1:])}` (data "
             f"seeds {seeds}; training seed 0).", "",
             f"- numpy {np.__version__}, Python {platform.python_version()}, "
             f"{platform.machine()}, {os.cpu_count()} CPUs, one BLAS thread",
             f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", "",
             "| task | measure | structure | min / mean / max | compared with | "
             "min / mean / max | seconds (structure, median) |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{min(v):.3f} / {statistics.mean(v):.3f} / {max(v):.3f}"
    for title, measure, a_name, b_name, demo in DEMOS:
        runs = [demo(s) for s in seeds]
        a, b, t = zip(*runs)
        lines.append(f"| {title} | {measure} | {a_name} | {fmt(a)} | {b_name} | {fmt(b)} | "
                     f"{statistics.median(t):.2f} |")
        print(lines[-1], flush=True)
    lines += ["", "The tests (tests/nn/test_learning.py, tests/nn/test_seq2seq.py) run "
              "one seed of each and assert the gap.", ""]
    # Measurements made by hand through the service (README example 6) are kept as written.
    out = pathlib.Path(args.out)
    kept = out.read_text().partition(THROUGH_THE_SERVICE)
    tail = kept[1] + kept[2] if kept[1] else ""
    out.write_text("\n".join(lines) + ("\n" + tail if tail else ""))


if __name__ == "__main__":
    main()
