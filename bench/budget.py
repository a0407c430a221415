"""Fit the time model of nn/budget.py (its REFERENCE rates) on this machine.

    .venv/bin/python bench/budget.py [--repeats N] [--out bench/BUDGET.md]

First the calls each layer type claims (nn/layers' Cost.calls, the per-batch cost) against
the time of a forward and backward pass over one sample of tiny size: their ratio should be
about the same for every type (the time of one call).

Then the workloads: plans that nn/budget.py estimates as three counts, calls, multiply-adds
and values (the element-wise work), picked so that each count dominates some of them:
per-sample SGD on small nets, wide products, wide element-wise layers, convolutions,
recurrent and attention layers, pretraining, with statistics on as the service trains.
Each is trained `repeats` times in-process with one BLAS thread (the workers' setting;
round-robin, so a noisy neighbour slows them alike); the rates are the least-squares fit of
the medians in relative error, with no negative rate. BUDGET.md gets the machine, both
tables, the fitted rates, and the ratio of the fit's and REFERENCE's estimates to each
workload's median seconds.

Seconds are CPU seconds of this process (time.process_time): with one BLAS thread they are
what a core of its own would take, which is what the reference machine is, while the wall
time of this shared 2-core machine is mostly other people's work (its load averages are in
the header). A neighbour still costs some CPU time (caches, the other hyperthread), so the
per-layer times are the fastest of the repeats.
"""
import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")              # before numpy is imported

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from common import ROOT, command, machine, median, spread, table, warn_overrides  # noqa: E402

sys.path.insert(0, str(ROOT))
import nn  # noqa: E402
from nn import budget  # noqa: E402
from nn.layers import LAYERS  # noqa: E402

OUT = ROOT / "bench" / "BUDGET.md"


def dense(units: int, activation: str = "sigmoid") -> dict:
    return {"type": "dense", "units": units, "activation": activation}


CE = {"loss": "cross_entropy"}
ADAM = {"optimizer": {"type": "adam", "learning_rate": 0.01}}
# name: (generator kind, samples, generator parameters, layers, training)
WORKLOADS = {
    "xor-online": ("xor", 500, {}, [dense(4), dense(1)],
                   {"optimizer": {"type": "sgd", "learning_rate": 0.5}, "epochs": 40}),
    "deep-online": ("gaussian", 500, {}, [dense(4)] * 6 + [dense(1)],
                    {"optimizer": {"type": "sgd", "learning_rate": 0.1}, "epochs": 10}),
    "adam-online": ("circle", 500, {}, [dense(16, "tanh"), dense(1)], {**ADAM, "epochs": 10}),
    "mlp-batch": ("spiral", 4000, {}, [dense(64, "relu"), dense(64, "relu"),
                                       dense(2, "softmax")],
                  {**CE, **ADAM, "batch_size": 32, "epochs": 4, "validation_fraction": 0.2}),
    "wide-products": ("glyphs", 2000, {"size": 24}, [{"type": "flatten"}, dense(512, "relu"),
                                                    dense(512, "relu"), dense(10, "softmax")],
                      {**CE, "batch_size": 128, "epochs": 3}),
    "wide-products-f32": ("glyphs", 2000, {"size": 24},
                          [{"type": "flatten"}, dense(512, "relu"), dense(512, "relu"),
                           dense(10, "softmax")],
                          {**CE, "batch_size": 128, "epochs": 3, "dtype": "float32"}),
    "wide-elementwise": ("xor", 4000, {}, [dense(2000, "relu"), dense(1)],
                         {"batch_size": 256, "epochs": 2}),
    "dropout-general": ("xor", 4000, {}, [dense(1000, "tanh"), {"type": "dropout"},
                                          dense(2, "softmax")],
                        {**CE, "batch_size": 64, "epochs": 2}),
    "cnn-online": ("glyphs", 300, {}, [{"type": "conv2d", "filters": 4, "kernel_size": 3},
                                       {"type": "flatten"}, dense(10, "softmax")],
                   {**CE, "epochs": 2}),
    "cnn-batch": ("glyphs", 1000, {"size": 16},
                  [{"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": 1},
                   {"type": "maxpool2d"},
                   {"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": 1},
                   {"type": "maxpool2d"}, {"type": "flatten"}, dense(10, "softmax")],
                  {**CE, **ADAM, "batch_size": 64, "epochs": 2, "validation_fraction": 0.2}),
    "cnn-pixels": ("glyphs", 1000, {"size": 32},
                   [{"type": "conv2d", "filters": 8, "kernel_size": 1}, {"type": "avgpool2d"},
                    {"type": "flatten"}, dense(10, "softmax")],
                   {**CE, "batch_size": 50, "epochs": 2}),
    "lstm-small": ("parity", 400, {"length": 8}, [{"type": "lstm", "units": 8},
                                                  dense(2, "softmax")],
                   {**CE, **ADAM, "batch_size": 16, "epochs": 5}),
    "lstm-wide": ("parity", 1000, {"length": 32}, [{"type": "lstm", "units": 128},
                                                   dense(2, "softmax")],
                  {**CE, **ADAM, "batch_size": 100, "epochs": 1}),
    "rnn-online": ("parity", 200, {"length": 8}, [{"type": "rnn", "units": 8},
                                                  dense(2, "softmax")],
                   {**CE, "epochs": 3}),
    "transformer": ("next_token", 1000, {"length": 32, "vocab_size": 16},
                    [{"type": "embedding", "vocab_size": 16, "dim": 64},
                     {"type": "positional_encoding"},
                     {"type": "transformer_encoder", "heads": 4, "causal": True},
                     dense(16, "softmax")],
                    {**CE, **ADAM, "batch_size": 32, "epochs": 1}),
    "pretraining": ("gaussian", 2000, {}, [dense(64), dense(64), dense(1)],
                    {"batch_size": 10, "epochs": 2,
                     "pretrain": {"epochs": 2, "optimizer": ADAM["optimizer"]}}),
}


# layer spec, per-sample input shape: tiny, so that the per-batch cost is all there is
LAYER_CASES = {
    "dense": ({"type": "dense", "units": 4}, (4,)),
    "dropout": ({"type": "dropout"}, (4,)),
    "conv2d": ({"type": "conv2d", "filters": 2, "kernel_size": 3}, (1, 6, 6)),
    "conv2d, padding": ({"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1},
                        (1, 6, 6)),
    "maxpool2d": ({"type": "maxpool2d"}, (2, 4, 4)),
    "avgpool2d": ({"type": "avgpool2d"}, (2, 4, 4)),
    "rnn, T 1": ({"type": "rnn", "units": 4}, (1, 2)),
    "rnn, T 16": ({"type": "rnn", "units": 4}, (16, 2)),
    "lstm, T 1": ({"type": "lstm", "units": 4}, (1, 2)),
    "lstm, T 16": ({"type": "lstm", "units": 4}, (16, 2)),
    "embedding": ({"type": "embedding", "vocab_size": 5, "dim": 4}, (4,)),
    "sequence_pool": ({"type": "sequence_pool"}, (4, 4)),
    "self_attention": ({"type": "self_attention"}, (4, 4)),
    "layer_norm": ({"type": "layer_norm"}, (4, 4)),
    "transformer_encoder": ({"type": "transformer_encoder"}, (4, 4)),
}


def layer_seconds(spec: dict, shape: tuple[int, ...], passes: int = 1000) -> float:
    """Seconds of one forward and backward pass over one sample."""
    rng = np.random.default_rng(0)
    layer = LAYERS[spec["type"]].parse(dict(spec), shape, "layer")
    params = layer.init(rng, np.float64)
    x = rng.integers(0, 4, (1, *shape)).astype(float) if spec["type"] == "embedding" \
        else rng.normal(size=(1, *shape))
    dout = rng.normal(size=(1, *layer.out_shape))
    t0 = time.process_time()
    for _ in range(passes):
        _, cache = layer.forward(x, params, train=True, rng=rng)
        layer.backward(dout, cache, True)
    return (time.process_time() - t0) / passes


def plan_and_data(name: str) -> tuple[nn.Plan, np.ndarray, np.ndarray]:
    kind, n, params, layers, training = WORKLOADS[name]
    x, y = nn.generate(kind, n, 10 if kind in ("glyphs", "gaussian") else 0, seed=1,
                       **params)
    task = "classification" if kind == "next_token" else None
    plan = nn.build({"layers": layers}, {"seed": 1, **training}, nn.describe(x, y, task))
    return plan, x, y


def fit(rows: list[tuple[int, int, int, int]], seconds: list[float]) -> budget.Rates:
    """Least squares in relative error (each row divided by its seconds), dropping any
    count whose rate comes out negative. rows: calls, multiply-adds, values, itemsize (the
    last two weighted by itemsize / 8, as Rates.seconds does)."""
    a = np.array([(c, m * s / 8, v * s / 8) for c, m, v, s in rows], dtype=float) \
        / np.array(seconds)[:, None]
    keep = [0, 1, 2]
    while True:
        coef, *_ = np.linalg.lstsq(a[:, keep], np.ones(len(rows)), rcond=None)
        if (coef >= 0).all():
            break
        keep.pop(int(np.argmin(coef)))
    rates = [0.0, 0.0, 0.0]
    for i, c in zip(keep, coef):
        rates[i] = float(c)
    return budget.Rates(*rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    warn_overrides()
    names = [n for n in WORKLOADS if not args.only or n in args.only.split(",")]
    head = machine()
    layer_times = {name: min(layer_seconds(*case) for _ in range(args.repeats))
                   for name, case in LAYER_CASES.items()}
    runs = {name: plan_and_data(name) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for plan, x, y in runs.values():                # warm-up
        nn.train(budget.with_training(plan, epochs=1), x, y)
    for r in range(args.repeats):
        for name, (plan, x, y) in runs.items():
            t0 = time.process_time()
            nn.train(plan, x, y)
            times[name].append(time.process_time() - t0)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    estimates = {name: budget.estimate(plan) for name, (plan, _, _) in runs.items()}
    counts = [(e.calls, e.multiply_adds, e.values,
               4 if plan.training["dtype"] == "float32" else 8)
              for e, (plan, _, _) in zip(estimates.values(), runs.values())]
    medians = [median(times[name]) for name in names]
    fitted = fit(counts, medians)
    lines = ["# The time model of nn/budget.py, fitted", "",
             f"Written by `{command()}`; bench/budget.py says how. CPU seconds, medians of "
             f"{args.repeats} runs each, statistics on, one BLAS thread.", "", *head, "",
             "A layer's calls (Cost.calls) against the fastest of its passes over one sample "
             "(us):", ""]
    rows = []
    for name, (spec, shape) in LAYER_CASES.items():
        calls = LAYERS[spec["type"]].parse(dict(spec), shape, "layer").cost().calls
        rows.append([name, calls, f"{layer_times[name] * 1e6:.1f}",
                     f"{layer_times[name] * 1e6 / calls:.2f}"])
    lines += table(["layer", "calls", "us per pass", "us per call"], rows)
    lines += ["", "Rates (seconds per call, per multiply-add, per value):", "",
              f"- fitted here: call {fitted.call:.3g}, multiply-add {fitted.mac:.3g}, value "
              f"{fitted.value:.3g} (about {1 / fitted.mac / 1e9 if fitted.mac else 0:.2g} "
              "G multiply-adds/s)",
              f"- nn/budget.py's REFERENCE: call {budget.REFERENCE.call:.3g}, multiply-add "
              f"{budget.REFERENCE.mac:.3g}, value {budget.REFERENCE.value:.3g}", ""]
    rows = []
    for name, (calls, macs, values, size), med in zip(names, counts, medians):
        rows.append([name, f"{calls:.3g}", f"{macs:.3g}", f"{values:.3g}", f"{med:.3g}",
                     spread(times[name]),
                     f"{fitted.seconds(calls, macs, values, size) / med:.2f}",
                     f"{budget.REFERENCE.seconds(calls, macs, values, size) / med:.2f}"])
    lines += table(["workload", "calls", "multiply-adds", "values", "median s", "min..max",
                    "fit / measured", "REFERENCE / measured"], rows)
    worst = max(fitted.seconds(*c) / m for c, m in zip(counts, medians))
    lines += ["", f"The fit overestimates a workload by at most {worst:.2f}x; REFERENCE is the "
              "fit divided by a little more than that (run-to-run noise), rounded, so that it "
              "never overestimates here: a run refused for time would have timed out."]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
