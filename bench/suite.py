"""The benchmark suite: our engine (training.engine "auto") against its own reference engine,
a plain NumPy loop, PyTorch on the CPU and scikit-learn's MLPClassifier, statistics on and
off; then the service's own cost (bench/service.py).

    .venv/bin/python bench/suite.py [--quick] [--repeats N] [--only name,...] [--threads N]
                                    [--out bench/RESULTS.md] [--profile name]

Names: xor-online, deep-sigmoid, digits-mlp, big-mlp, cnn-digits, service. It rewrites its
sections of bench/RESULTS.md; bench/README.md says how to install the benchmark-only
packages and how to read the results.

The same work everywhere: the initial weights are nn's own (nn.train with epochs 0), given
to the NumPy loop and to PyTorch; with shuffle on and no validation split, nn visits the
training rows of epoch e in the order np.random.default_rng([seed, e]).permutation(n)
(nn/train.py), and so do they. The proof is the final weights: after the warm-up run each
variant's weights are compared with nn's (max |difference|, in the results). scikit-learn
cannot take our weights or our order: it trains the same architecture with the same
hyperparameters from its own initialisation, and its test accuracy is reported beside ours.

Timing: one warm-up run of every variant at a small size (the agreement check), then
`repeats` timed runs, round-robin over the variants so that a noisy neighbour slows them
alike; medians and min..max. PyTorch's per-sample loops are timed on a twentieth of the
epochs, the reference engine's on a tenth (samples/s is what is compared; a per-sample step
costs the same in every epoch).
"""
import argparse
import cProfile
import importlib
import importlib.util
import os
import pathlib
import pstats
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from common import ROOT, RESULTS, command, machine, median, spread, table, verdict, \
    warn_overrides, write_section

sys.path.insert(0, str(ROOT))
import nn  # noqa: E402
from service import statstore  # noqa: E402
from service.config import DEFAULTS as SERVICE_CONFIG  # noqa: E402

try:
    import torch
except ImportError:                               # benchmark-only: bench/README.md
    torch = None
try:
    import sklearn
    from sklearn.neural_network import MLPClassifier
except ImportError:
    sklearn = None
try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

WORKLOADS = ("xor-online", "deep-sigmoid", "digits-mlp", "big-mlp", "cnn-digits")
NN_ON, NN_OFF, NN_REF, LOOP, TORCH, SKLEARN, GEMM = (
    "nn, stats on", "nn, stats off", "nn reference engine, stats on", "NumPy loop", "PyTorch",
    "scikit-learn", "np.matmul only")
# A long run as the service trains it: statistics of the epochs its thinning keeps (and the
# last), T from RUN_MAX_STATS_EPOCHS (2,000) for LONG_EPOCHS (T = 402 for 100,000).
LONG_EPOCHS = 100_000
NN_LONG = f"nn, {LONG_EPOCHS:,} epochs, stats as the service keeps them"
Out = tuple[list | None, float | None]        # (final weights in nn's layout, test accuracy)


# ---- the statistics' share of a run, measured within the run --------------------------------

_Training = importlib.import_module("nn.train").Training   # its stats(): the statistics step
_probe_stats = _Training.stats
_stats_spent = [0.0]


def _timed_probe_stats(self):
    t0 = time.perf_counter()
    try:
        return _probe_stats(self)
    finally:
        _stats_spent[0] += time.perf_counter() - t0


_Training.stats = _timed_probe_stats


# ---- threads ------------------------------------------------------------------------------

@contextmanager
def threads(n: int):
    """n BLAS threads (numpy, scipy: threadpoolctl) and n PyTorch threads."""
    if torch is not None:
        torch.set_num_threads(n)
    if threadpoolctl is None:
        yield
        return
    with threadpoolctl.threadpool_limits(n):
        yield


def blas_info() -> str:
    if threadpoolctl is None:
        return "threadpoolctl not installed"
    return "; ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, "
                     f"{os.path.basename(i['filepath'])}, {i['num_threads']} threads by default)"
                     for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")


# ---- the plain NumPy loops (the baseline) ------------------------------------------------

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax_grad(z, t):
    """dL/dz of the mean softmax cross-entropy over the batch: (softmax(z) - onehot(t)) / B."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(t)), t] -= 1
    return p / len(t)


def numpy_mlp(weights, X, T, epochs, lr, momentum, batch, seed, hidden, loss) -> Out:
    """Dense layers, `hidden` activation ("sigmoid" | "relu"), a sigmoid output with the
    squared error 1/2 sum (a - t)^2 or a softmax output with cross-entropy; minibatch SGD,
    optional momentum (v <- mu v + g, w <- w - lr v)."""
    Ws = [p["W"].copy() for p in weights]
    bs = [p["b"].copy() for p in weights]
    vel = [np.zeros_like(a) for a in Ws + bs]
    for e in range(1, epochs + 1):
        order = np.random.default_rng([seed, e]).permutation(len(X))
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            x, t = X[idx], T[idx]
            acts = [x]
            for W, b in zip(Ws[:-1], bs[:-1]):
                z = acts[-1] @ W + b
                acts.append(sigmoid(z) if hidden == "sigmoid" else np.maximum(z, 0))
            z = acts[-1] @ Ws[-1] + bs[-1]
            if loss == "cross_entropy":
                d = softmax_grad(z, t)
            else:
                a = sigmoid(z)
                d = (a - t) * a * (1 - a) / len(t)
            for k in range(len(Ws) - 1, -1, -1):
                grads = (acts[k].T @ d, d.sum(axis=0))
                if k:
                    h = acts[k]
                    d = (d @ Ws[k].T) * (h * (1 - h) if hidden == "sigmoid" else h > 0)
                for j, (w, g) in enumerate(zip((Ws[k], bs[k]), grads)):
                    if momentum:
                        v = vel[k + j * len(Ws)]
                        v *= momentum
                        v += g
                        g = v
                    w -= lr * g
    return [{"W": W, "b": b} for W, b in zip(Ws, bs)], None


def numpy_cnn(weights, X, y, epochs, lr, momentum, batch, seed) -> Out:
    """conv F x kh x kw (stride 1, no padding) + ReLU, max-pool 2, flatten, dense softmax
    with cross-entropy. X: (N, H, W) one channel. Feature maps are kept (B, H, W, F)."""
    Wc, bc, Wd, bd = (weights[0]["W"].copy(), weights[0]["b"].copy(), weights[3]["W"].copy(),
                      weights[3]["b"].copy())
    F, _, kh, kw = Wc.shape
    params = [Wc, bc, Wd, bd]
    vel = [np.zeros_like(p) for p in params]
    for e in range(1, epochs + 1):
        order = np.random.default_rng([seed, e]).permutation(len(X))
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            x, t = X[idx], y[idx]
            B = len(x)
            cols = sliding_window_view(x, (kh, kw), axis=(1, 2))      # (B, Ho, Wo, kh, kw)
            Ho, Wo = cols.shape[1:3]
            cols = cols.reshape(B * Ho * Wo, kh * kw)
            z = cols @ Wc.reshape(F, -1).T + bc                       # (B Ho Wo, F)
            a = np.maximum(z, 0).reshape(B, Ho // 2, 2, Wo // 2, 2, F)
            blocks = a.transpose(0, 1, 3, 5, 2, 4).reshape(B, Ho // 2, Wo // 2, F, 4)
            arg = blocks.argmax(axis=-1)[..., None]                   # first max, as nn
            pooled = np.take_along_axis(blocks, arg, axis=-1)[..., 0]  # (B, Ho/2, Wo/2, F)
            h = pooled.transpose(0, 3, 1, 2).reshape(B, -1)           # nn's (F, H, W) order
            d = softmax_grad(h @ Wd + bd, t)
            dh = (d @ Wd.T).reshape(B, F, Ho // 2, Wo // 2).transpose(0, 2, 3, 1)
            dblocks = np.zeros_like(blocks)
            np.put_along_axis(dblocks, arg, dh[..., None], axis=-1)
            da = dblocks.reshape(B, Ho // 2, Wo // 2, F, 2, 2).transpose(0, 1, 4, 2, 5, 3)
            dz = da.reshape(B * Ho * Wo, F) * (z > 0)
            grads = [(dz.T @ cols).reshape(Wc.shape), dz.sum(axis=0), h.T @ d, d.sum(axis=0)]
            for p, g, v in zip(params, grads, vel):
                if momentum:
                    v *= momentum
                    v += g
                    g = v
                p -= lr * g
    return [{"W": Wc, "b": bc}, {}, {}, {"W": Wd, "b": bd}], None


def matmul_only(weights, X, epochs, batch) -> Out:
    """Only the matrix products of minibatch training, on its shapes: per batch and layer
    x W forward, a^T d and d W^T backward, 6 x batch x sum(fan_in x fan_out) flops in all."""
    Ws = [p["W"] for p in weights if p]
    for _ in range(epochs):
        for s in range(0, len(X), batch):
            acts = [X[s:s + batch]]
            for W in Ws:
                acts.append(acts[-1] @ W)
            d = acts.pop()
            for W, a in zip(reversed(Ws), reversed(acts)):
                a.T @ d
                d = d @ W.T
    return None, None


# ---- PyTorch, as a user writes it ----------------------------------------------------------

def torch_net(network: dict, weights: list):
    """nn's layers as torch modules holding nn's initial weights -> (model, the module of
    each nn layer with parameters, else None). A softmax output is left to the loss."""
    acts = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
    mods, holders = [], []
    for spec, p in zip(network["layers"], weights):
        kind = spec["type"]
        if kind == "dense":
            m = torch.nn.Linear(*p["W"].shape)
            m.weight = torch.nn.Parameter(torch.from_numpy(p["W"].T.copy()))
        elif kind == "conv2d":
            m = torch.nn.Conv2d(p["W"].shape[1], p["W"].shape[0], p["W"].shape[2:])
            m.weight = torch.nn.Parameter(torch.from_numpy(p["W"].copy()))
        elif kind == "maxpool2d":
            m = torch.nn.MaxPool2d(spec["pool_size"])
        elif kind == "flatten":
            m = torch.nn.Flatten()
        else:
            raise ValueError(f"no PyTorch counterpart for {kind}")
        if p:
            m.bias = torch.nn.Parameter(torch.from_numpy(p["b"].copy()))
        mods.append(m)
        holders.append(m if p else None)
        if spec.get("activation") in acts:
            mods.append(acts[spec["activation"]]())
    return torch.nn.Sequential(*mods), holders


def torch_train(network, weights, X, T, epochs, lr, momentum, batch, seed, loss) -> Out:
    model, holders = torch_net(network, weights)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if loss == "cross_entropy":
        loss_fn = torch.nn.functional.cross_entropy
    else:
        def loss_fn(out, t):
            return 0.5 * ((out - t) ** 2).sum(dim=1).mean()
    Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
    for e in range(1, epochs + 1):
        order = torch.from_numpy(np.random.default_rng([seed, e]).permutation(len(X)))
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            loss_fn(model(Xt[idx]), Tt[idx]).backward()
            opt.step()
    out = []
    for m in holders:
        if m is None:
            out.append({})
            continue
        W = m.weight.detach().numpy()
        out.append({"W": (W.T if isinstance(m, torch.nn.Linear) else W).copy(),
                    "b": m.bias.detach().numpy().copy()})
    return out, None


# ---- scikit-learn ---------------------------------------------------------------------------

def sklearn_mlp(X, y, X_test, y_test, epochs, lr, momentum, batch, seed, hidden) -> Out:
    """MLPClassifier with our hyperparameters, every epoch run (tol 0, no early stop, no L2)."""
    clf = MLPClassifier(hidden_layer_sizes=hidden, activation="relu", solver="sgd", alpha=0.0,
                        batch_size=batch, learning_rate="constant", learning_rate_init=lr,
                        momentum=momentum, nesterovs_momentum=False, max_iter=epochs,
                        shuffle=True, random_state=seed, tol=0.0,
                        n_iter_no_change=epochs + 1, early_stopping=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # ConvergenceWarning: max_iter is the point
        clf.fit(X, y)
    return None, (None if X_test is None else float(clf.score(X_test, y_test)))


# ---- workloads ----------------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    title: str
    n: int                                    # training rows
    epochs: int
    check: tuple[int, int]                    # (epochs, rows) of the warm-up / agreement run
    threads: int
    variants: dict[str, Callable[[int, int], Out]] = field(default_factory=dict)
    divide: dict[str, int] = field(default_factory=dict)   # variant: timed on epochs / this
    accuracy: Callable[[list], float] | None = None        # test accuracy of final weights
    skip: str | None = None
    notes: list[str] = field(default_factory=list)
    stats_shares: list[float] = field(default_factory=list)
    long_shares: list[float] = field(default_factory=list)    # NN_LONG's
    scale: dict[str, int] = field(default_factory=dict)    # variant: timed on epochs x this
    gflop: float | None = None                # per full run (big-mlp)
    weights: list | None = None               # nn's initial weights


def dense(units: int, activation: str, init: str | None = None) -> dict:
    return {"type": "dense", "units": units, "activation": activation,
            **({"init": {"type": init}} if init else {})}


def workload(name, title, X, y, layers, training, epochs, check, threads, *, test=None,
             loop=None, torch_x=None, sklearn_hidden=None) -> Workload:
    """The nn variants, and those of the others that apply, on (X, y).
    loop(weights, X, T, epochs, lr, momentum, batch, seed) -> Out: the NumPy loop; torch_x: X
    as PyTorch takes it;
    sklearn_hidden: MLPClassifier's hidden_layer_sizes when it can do the same job."""
    w = Workload(name, title, len(X), epochs, check, threads)
    info = nn.describe(X, y)
    net = {"layers": layers}
    try:
        nn.build(net, {**training, "epochs": 0}, info)
    except nn.SpecError as e:
        w.skip = f"nn.build rejects this network ({e}); the workload runs once it builds"
        return w

    def plan(epochs, n, stats, engine="auto"):
        return nn.build(net, {**training, "epochs": epochs, "stats": stats, "engine": engine},
                        info if n == len(X) else nn.describe(X[:n], y[:n]))

    t0 = time.perf_counter()
    init = nn.train(plan(0, len(X), False), X, y)
    w.notes.append(f"nn.train with epochs 0 (data checks and casts, the fingerprint, the "
                   f"initial weights and their loss on the training rows): "
                   f"{time.perf_counter() - t0:.3f} s")
    weights = w.weights = init.weights
    if test is not None:
        meta = nn.model_meta(plan(0, len(X), False))
        w.accuracy = lambda ws: float(np.mean(np.asarray(nn.Model(
            init.model.network, ws, meta).predict(test[0])["labels"]) == test[1]))

    def engine(stats, which="auto", shares=w.stats_shares, thinned=False):
        def run(epochs, n):
            _stats_spent[0] = 0.0
            picked = partial(statstore.kept, thinned_after=statstore.thinned_after(
                epochs, SERVICE_CONFIG["RUN_MAX_STATS_EPOCHS"])) if thinned else None
            t0 = time.perf_counter()
            r = nn.train(plan(epochs, n, stats, which), X[:n], y[:n], stats_epochs=picked)
            if stats and which == "auto":
                shares.append(_stats_spent[0] / (time.perf_counter() - t0 - _stats_spent[0]))
            return r.weights, None
        return run

    w.variants = {NN_ON: engine(True), NN_OFF: engine(False),
                  NN_REF: engine(True, "reference")}
    if training["batch_size"] == 1:             # per-sample: the statistics' worst case
        w.variants[NN_LONG] = engine(True, shares=w.long_shares, thinned=True)
        w.scale[NN_LONG] = LONG_EPOCHS // epochs
    tr, opt = training, training["optimizer"]
    dtype = np.dtype(tr.get("dtype", "float64"))
    lr, mu, batch, seed = opt["learning_rate"], opt.get("momentum", 0.0), tr["batch_size"], \
        tr["seed"]
    T = y if tr["loss"] == "cross_entropy" else y[:, None].astype(dtype)
    if loop is not None:
        w.variants[LOOP] = lambda e, n: loop(weights, X[:n], T[:n], e, lr, mu, batch, seed)
    if torch is not None:
        Xt = X if torch_x is None else torch_x
        w.variants[TORCH] = lambda e, n: torch_train(init.model.network, weights, Xt[:n],
                                                     T[:n], e, lr, mu, batch, seed, tr["loss"])
        if batch == 1:
            w.divide[TORCH] = 20
    if batch == 1:                 # per-sample: the reference's epochs cost as much each
        w.divide[NN_REF] = 10
    else:
        w.notes.append("PyTorch is not installed (bench/README.md): its rows are missing")
    if sklearn_hidden is not None and sklearn is not None:
        X_test, y_test = test if test is not None else (None, None)
        w.variants[SKLEARN] = lambda e, n: sklearn_mlp(X[:n], y[:n], X_test, y_test, e, lr,
                                                       mu, batch, seed, sklearn_hidden)
    elif sklearn_hidden is None:
        w.notes.append("scikit-learn: n/a (MLPClassifier has no squared-error sigmoid output "
                       "or convolution; it cannot do the same job)")
    return w


RELU_LOOP = partial(numpy_mlp, hidden="relu", loss="cross_entropy")


def digits(dtype):
    """scikit-learn's bundled 8x8 digits (1797 images, no download) scaled to [0, 1], or
    generated 8x8 images when scikit-learn is missing; a fixed 80/20 split."""
    if sklearn is not None:
        from sklearn.datasets import load_digits
        d = load_digits()
        X, y, source = d.images / 16.0, d.target, "scikit-learn's load_digits"
    else:
        X, y = nn.generate("glyphs", 1797, 15, seed=0)
        source = "nn.generate('glyphs') (scikit-learn missing)"
        X = X.reshape(len(X), 8, 8)
    perm = np.random.default_rng(0).permutation(len(X))
    cut = int(0.8 * len(X))
    tr, te = perm[:cut], perm[cut:]
    X = X.astype(dtype)
    return X[tr], y[tr], X[te], y[te], source


def build(name: str, quick: bool) -> Workload:
    cores = os.cpu_count() or 1
    if name in ("xor-online", "deep-sigmoid"):
        xor = name == "xor-online"
        epochs = (100 if xor else 20) if quick else (1000 if xor else 200)
        X, y = nn.generate("xor" if xor else "gaussian", 200, 0 if xor else 30, seed=0)
        # the textbook's small uniform init, as these workloads were measured with
        layers = [dense(4, "sigmoid", "uniform")] * (1 if xor else 6) + \
            [dense(1, "sigmoid", "uniform")]
        lr = 0.5 if xor else 0.3
        training = {"loss": "squared_error", "batch_size": 1, "seed": 0,
                    "optimizer": {"type": "sgd", "learning_rate": lr}}
        title = (f"{'2-4-1' if xor else '2-(4 x 6)-1'} sigmoid, squared error, per-sample SGD "
                 f"(lr {lr}), {'XOR' if xor else 'Gaussian noise 30'}, 200 points, "
                 f"{epochs} epochs, float64")
        return workload(name, title, X, y, layers, training, epochs,
                        (max(2, epochs // 50), 200), 1,
                        loop=partial(numpy_mlp, hidden="sigmoid", loss="squared_error"))
    if name == "digits-mlp":
        epochs = 5 if quick else 30
        X, y, Xe, ye, source = digits(np.float32)
        X, Xe = X.reshape(len(X), -1), Xe.reshape(len(Xe), -1)
        layers = [dense(128, "relu", "he"), dense(64, "relu", "he"),
                  dense(10, "softmax", "glorot")]
        training = {"loss": "cross_entropy", "batch_size": 32, "seed": 0, "dtype": "float32",
                    "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9}}
        title = (f"64-128-64-10 ReLU, softmax cross-entropy, minibatch 32, SGD lr 0.05 "
                 f"momentum 0.9, {epochs} epochs, float32; {source}, {len(X)} train / "
                 f"{len(Xe)} test")
        return workload(name, title, X, y, layers, training, epochs, (2, len(X)), 1,
                        test=(Xe, ye), sklearn_hidden=(128, 64), loop=RELU_LOOP)
    if name == "big-mlp":
        rows = 10_240 if quick else 60_000
        rng = np.random.default_rng(0)
        X = rng.standard_normal((rows, 784), dtype=np.float32)
        y = rng.integers(0, 10, rows)
        layers = [dense(1024, "relu", "he"), dense(1024, "relu", "he"),
                  dense(10, "softmax", "glorot")]
        training = {"loss": "cross_entropy", "batch_size": 256, "seed": 0, "dtype": "float32",
                    "optimizer": {"type": "sgd", "learning_rate": 0.01}}
        title = (f"784-1024-1024-10 ReLU, softmax cross-entropy, minibatch 256, SGD lr 0.01, "
                 f"one epoch of {rows:,} random rows, float32")
        w = workload(name, title, X, y, layers, training, 1, (1, 2560), cores,
                     sklearn_hidden=(1024, 1024), loop=RELU_LOOP)
        w.gflop = 6 * rows * (784 * 1024 + 1024 * 1024 + 1024 * 10) / 1e9
        w.variants[GEMM] = lambda e, n: matmul_only(w.weights, X[:n], e, 256)
        return w
    if name == "cnn-digits":
        epochs = 3 if quick else 20
        X, y, Xe, ye, source = digits(np.float32)
        layers = [{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
                  {"type": "maxpool2d", "pool_size": 2}, {"type": "flatten"},
                  dense(10, "softmax", "glorot")]
        training = {"loss": "cross_entropy", "batch_size": 32, "seed": 0, "dtype": "float32",
                    "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9}}
        title = (f"conv 8x3x3 ReLU, max-pool 2, dense 10 softmax, cross-entropy, minibatch 32, "
                 f"SGD lr 0.05 momentum 0.9, {epochs} epochs, float32; {source} as 8x8 "
                 f"images, {len(X)} train / {len(Xe)} test")
        return workload(name, title, X, y, layers, training, epochs, (2, len(X)), 1,
                        test=(Xe, ye), torch_x=X[:, None], loop=numpy_cnn)
    raise ValueError(name)


# ---- measuring ------------------------------------------------------------------------------

def timed(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each callable, `repeats` rounds, round-robin."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(p[k].astype(np.float64) - q[k]))) for p, q in zip(a, b)
               for k in p)


def gemm_peak() -> list[tuple[str, list[float]]]:
    """float32 np.matmul GFLOP/s for the big-mlp shapes and two square ones (7 timings each)."""
    rng = np.random.default_rng(0)
    out = []
    for m, k, n in ((256, 784, 1024), (256, 1024, 1024), (1024, 1024, 1024),
                    (2048, 2048, 2048)):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        reps = max(1, int(2e9 // (2 * m * k * n)))      # ~2 GFLOP per timing
        times = timed({"": lambda: [np.matmul(a, b, out=c) for _ in range(reps)]}, 7)[""]
        out.append((f"{m}x{k} @ {k}x{n}", [2 * m * k * n * reps / t / 1e9 for t in times]))
    return out


@dataclass
class Measured:
    w: Workload
    times: dict[str, list[float]]
    epochs: dict[str, int]
    rate: dict[str, float]                    # samples/s of the median run
    accuracy: dict[str, float | None]
    diffs: dict[str, tuple[float | None, float | None]]   # vs nn stats off: check, full run
    threads: int
    peaks: list[tuple[str, list[float]]] = field(default_factory=list)   # GFLOP/s per shape


def measure(w: Workload, repeats: int, n_threads: int | None) -> Measured:
    print(f"{w.name}: {w.title}", flush=True)
    n_threads = n_threads or w.threads
    with threads(n_threads):
        check = {name: fn(*w.check)[0] for name, fn in w.variants.items()}   # warm-up
        w.stats_shares.clear()
        w.long_shares.clear()
        epochs = {name: max(1, w.epochs * w.scale.get(name, 1) // w.divide.get(name, 1))
                  for name in w.variants}
        last: dict[str, Out] = {}

        def call(name):
            return lambda: last.__setitem__(name, w.variants[name](epochs[name], w.n))

        before = gemm_peak() if w.gflop else []         # before and after the timed runs
        times = timed({name: call(name) for name in w.variants}, repeats)
        peaks = [(s, g + g2) for (s, g), (_, g2) in zip(before, gemm_peak())] \
            if w.gflop else []
    rate = {name: epochs[name] * w.n / median(t) for name, t in times.items()}
    accuracy = {name: out[1] if out[1] is not None or w.accuracy is None or out[0] is None
                else w.accuracy(out[0]) for name, out in last.items()}
    ref_check, ref_full = check[NN_OFF], last[NN_OFF][0]
    diffs = {name: (None if check[name] is None else max_diff(ref_check, check[name]),
                    None if out[0] is None or epochs[name] != w.epochs
                    else max_diff(ref_full, out[0]))
             for name, out in last.items() if name != NN_OFF}
    for name, t in times.items():
        print(f"  {name}: median {median(t):.3f} s, {rate[name]:,.0f} samples/s", flush=True)
    return Measured(w, times, epochs, rate, accuracy, diffs, n_threads, peaks)


# ---- reporting ------------------------------------------------------------------------------

def stats_cost(m: Measured) -> tuple[float | None, float]:
    """(in-run share of the statistics step, median, or None; stats on vs off medians - 1)."""
    share = median(m.w.stats_shares) if m.w.stats_shares else None
    return share, median(m.times[NN_ON]) / median(m.times[NN_OFF]) - 1


def speedup(m: Measured, other: str, stat=median) -> float | None:
    """nn (stats on) samples/s / other's, of the medians (or of the fastest runs: min)."""
    if other not in m.times:
        return None
    return stat(m.times[other]) / m.epochs[other] / (stat(m.times[NN_ON]) / m.epochs[NN_ON])


def targets(results: dict[str, Measured]) -> list[list]:
    """Rows: workload, target, measured, verdict."""
    rows = []

    def ratio(name, other, need):
        if name not in results:
            return
        r, best = speedup(results[name], other), speedup(results[name], other, min)
        rows.append([name, f">= {need}x {other}", "–" if r is None else
                     f"{r:.2f}x (fastest runs: {best:.2f}x)",
                     verdict(None if r is None else r >= need)])

    def rate(name, need):
        if name in results:
            r = results[name].rate[NN_ON]
            rows.append([name, f">= {need:,} samples/s", f"{r:,.0f}", verdict(r >= need)])

    rate("xor-online", 1_000_000)
    ratio("xor-online", TORCH, 250)
    ratio("xor-online", LOOP, 2.4)
    rate("deep-sigmoid", 300_000)
    for name in ("xor-online", "deep-sigmoid", "digits-mlp", "big-mlp"):   # dense stacks
        ratio(name, NN_REF, 1)
    ratio("digits-mlp", TORCH, 4)
    ratio("digits-mlp", SKLEARN, 2.5)
    m = results.get("digits-mlp")
    if m is not None and SKLEARN in m.accuracy:
        ours, theirs = m.accuracy[NN_ON], m.accuracy[SKLEARN]
        rows.append(["digits-mlp", "test accuracy >= scikit-learn's - 1 point",
                     f"{ours:.3f} vs {theirs:.3f}", verdict(ours >= theirs - 0.01)])
    m = results.get("big-mlp")
    if m is not None:
        # medians against medians, as every target here (the peak's best beside them)
        achieved = m.w.gflop / median(m.times[NN_ON])
        peak, best = max(median(g) for _, g in m.peaks), max(max(g) for _, g in m.peaks)
        rows.append(["big-mlp", ">= 75% of the float32 GEMM peak",
                     f"{achieved:.1f} of {peak:.1f} GFLOP/s = {achieved / peak:.0%} (medians; "
                     f"fastest run vs the peak's best: "
                     f"{m.w.gflop / min(m.times[NN_ON]) / best:.0%}; "
                     f"{speedup(m, GEMM):.0%} of {GEMM}'s rate in the same rounds)",
                     verdict(achieved >= 0.75 * peak)])
        r, best = speedup(m, TORCH), speedup(m, TORCH, min)
        rows.append(["big-mlp", "no slower than PyTorch", "–" if r is None else
                     f"{r:.2f}x (fastest runs: {best:.2f}x)",
                     verdict(None if r is None else r >= 1)])
    ratio("cnn-digits", TORCH, 3)
    for name, m in results.items():
        share, ab = stats_cost(m)
        cost = ab if share is None else share
        rows.append([name, "statistics cost <= 5%",
                     f"{cost:+.1%}" + ("" if share is None else f" in-run (A/B {ab:+.1%})"),
                     verdict(cost <= 0.05)])
        if m.w.long_shares:
            long = median(m.w.long_shares)
            rows.append([name, f"statistics cost <= 5%, {LONG_EPOCHS:,} epochs as the "
                         f"service keeps them", f"{long:+.1%} in-run", verdict(long <= 0.05)])
    return rows


def section(m: Measured) -> list[str]:
    w = m.w
    lines = [f"### {w.name}", "", w.title + ".", ""]
    rows = []
    for name, t in m.times.items():
        r = speedup(m, name)
        check, full = m.diffs.get(name, (0.0, 0.0))
        rows.append([name, m.epochs[name], f"{median(t):.3f}", spread(t), f"{m.rate[name]:,.0f}",
                     "–" if m.accuracy[name] is None else f"{m.accuracy[name]:.3f}",
                     f"{r:.2f}x", "–" if check is None else f"{check:.1e}",
                     "–" if full is None else f"{full:.1e}"])
    lines += table(["variant", "epochs timed", "median s", "min..max s", "samples/s",
                    "test accuracy", "nn (stats on) speed / this",
                    f"max abs dw, {w.check[0]} epochs", "max abs dw, timed run"], rows)
    share, ab = stats_cost(m)
    lines += ["", "- statistics cost: " + (f"{share:.1%} of the rest of the run in the "
              f"statistics step (median over the stats-on runs); " if share is not None
              else "") + f"stats on vs off medians {ab:+.1%}"]
    if w.long_shares:
        T = statstore.thinned_after(LONG_EPOCHS, SERVICE_CONFIG["RUN_MAX_STATS_EPOCHS"])
        lines.append(f"- {NN_LONG}: T = {T}, statistics of "
                     f"{statstore.kept_count(LONG_EPOCHS, T):,} epochs; "
                     f"{median(w.long_shares):.1%} of the rest of the run in the statistics "
                     f"step (median)")
    if m.peaks:
        lines.append(f"- achieved: {w.gflop / median(m.times[NN_ON]):.1f} GFLOP/s nn (stats "
                     f"on), " + ", ".join(f"{w.gflop / median(m.times[n]):.1f} {n}"
                                          for n in m.times if n != NN_ON)
                     + f" (6 x rows x sum fan_in x fan_out = {w.gflop:.0f} GFLOP per epoch)")
        lines.append(f"- float32 np.matmul peak with {m.threads} threads (7 timings before "
                     f"and 7 after the timed runs; median, best): " + ", ".join(
            f"{s} {median(g):.1f}, {max(g):.1f}" for s, g in m.peaks) + " GFLOP/s")
    lines += [f"- {note}" for note in w.notes] + [""]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    ap.add_argument("--only", help="comma-separated: " + ", ".join(WORKLOADS + ("service",)))
    ap.add_argument("--threads", type=int, help="BLAS and PyTorch threads for every workload "
                    "(default: 1, and every core for big-mlp)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--profile", metavar="NAME", help="only profile nn (stats on) on workload "
                    "NAME with cProfile and print where the time goes")
    args = ap.parse_args(argv)
    if args.profile:
        w = build(args.profile, args.quick)
        profile = cProfile.Profile()
        with threads(args.threads or w.threads):
            profile.runcall(w.variants[NN_ON], w.epochs, w.n)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    repeats = args.repeats
    names = args.only.split(",") if args.only else [*WORKLOADS, "service"]
    unknown = set(names) - set(WORKLOADS) - {"service"}
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    head = machine()
    warn_overrides()
    t_start = time.perf_counter()
    results, skipped = {}, []
    for name in (n for n in WORKLOADS if n in names):
        w = build(name, args.quick)
        if w.skip:
            print(f"{name}: skipped: {w.skip}", flush=True)
            skipped += [f"### {name}", "", f"Skipped: {w.skip}.", ""]
            continue
        results[name] = measure(w, repeats, args.threads)
    if results or skipped:
        versions = ", ".join(f"{mod.__name__} {mod.__version__}" for mod in
                             (torch, sklearn, threadpoolctl) if mod is not None)
        lines = ["## Engine workloads", "", f"Command: `{command()}` (from the repository root;"
                 f" one warm-up run, then {repeats} timed runs per variant, round-robin; "
                 f"{time.perf_counter() - t_start:.0f} s in all).", "", *head,
                 f"- {versions}; BLAS: {blas_info()}",
                 "- threads (BLAS via threadpoolctl, and torch.set_num_threads): "
                 + (f"{args.threads} everywhere" if args.threads else
                    f"1, and {os.cpu_count()} for big-mlp and its GEMM peak"),
                 f"- load average at the end: "
                 f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", "",
                 "### Targets", "", *table(["workload", "target", "measured", "result"],
                                           targets(results)), ""]
        for m in results.values():
            lines += section(m)
        write_section("suite", lines + skipped, pathlib.Path(args.out))
    if "service" in names:                        # bench/service.py, not the service package
        spec = importlib.util.spec_from_file_location("bench_service",
                                                      ROOT / "bench" / "service.py")
        service_bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(service_bench)
        service_bench.main(["--quick"] * args.quick + ["--out", args.out])


if __name__ == "__main__":
    main()
