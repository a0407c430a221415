"""What a run will cost before it runs: its peak memory, its multiply-adds, its batches and
the seconds they take on the reference machine, from the plan alone (no data, no weights).

Each layer says what one sample costs it (nn/layers/base.py's Cost: forward multiply-adds,
the values it keeps from forward to backward, the values it needs besides while it runs,
its calls per batch, and the values of an eval-mode forward pass); this module combines
them with the plan: the data set's size and split, the batch, the dtype, the optimizer's
slots, the validation passes, the statistics' probe, checkpoints, pretraining. The memory
is an upper bound of what `describe`, `build` and `train` allocate at their peak, the
caller's arrays of the data set included (tests/nn/test_budget.py measures real runs
against it: within 1.1x to 2x); what the caller holds besides (a stored blob, say) is the
caller's to add.

Peak memory = parameters + data + the largest of what exists only at times: a training
batch's activations (one batch, or the whole training split without batch_size), a
validation chunk's, the epoch's metrics over every training output, preparing the data, and
a pretrained layer's autoencoder with its inputs; then MARGIN and OVERHEAD_BYTES on top.
The dense engine keeps its batches' buffers from the first to the end of training, beside
the validation chunks.

- parameters: the weights and gradients laid flat, the gradients as backward returns them,
  the epoch's snapshot (kept to roll a diverged epoch back), the optimizer's slots (SGD
  with momentum 1, Adam 2, and Adam's scratch), the best weights (early stopping),
  checkpoints (the one being written, its copy, the one the caller has yet to store, and
  the one it resumed from), and the statistics' float64 vectors of every weight and
  gradient.
- data: the caller's float64 inputs and its targets; the inputs in the run's dtype, split
  into training and validation; the encoded targets and labels, and each epoch's shuffled
  copies of them; the epoch's outputs (for its loss); the epoch's shuffled inputs when
  they are copied at once (nn/engines/__init__.py's COPY_BYTES); the dense engine's rows and
  targets.
- validation (and the initial metrics with `epochs: 0`) runs forward in chunks of at least
  a batch and at most EVAL_BYTES at the pass's peak (eval_rows()), so it never needs much
  more than training.

Time (Rates): a cost per call (the per-batch costs of Python and NumPy, which dominate
per-sample SGD on small nets: each layer's calls, the loop's and the optimizer's per batch,
or the dense engine's own cost model; an epoch's bookkeeping), per multiply-add, and per
value a pass allocates (the element-wise work: activations, derivatives, copies). A
training sample costs its forward multiply-adds three times (backward does twice the
forward's), a validation sample once; each epoch also runs the statistics' probe batch
forward and backward. REFERENCE is one core with one BLAS thread (the workers' setting) of
the AMD EPYC (Zen 5, AVX-512) VM this project is benchmarked on: bench/budget.py's fit
there divided by about 1.5 (its largest overestimate, 1.25x, and run-to-run noise), so that
no workload of its 16 is overestimated (they come out at about 0.3 to 0.9 of their CPU
time: bench/BUDGET.md); a run refused for time would have timed out there, and most that
would time out by 3x are refused.
"""
import math
import sys
from dataclasses import dataclass, replace
from typing import NamedTuple

from .data import split_counts
from .engines import COPY_BYTES, dense
from .layers import Cost, Layer
from .network import infer_values
from .optim import make_optimizer
from .spec import Plan, autoencoder, pretrained_layers
from .stats import probe_size

# Validation forward passes take at most this many bytes of activations (or one batch's).
EVAL_BYTES = 32 << 20
# The counts are exact for the dense engine's buffers and the layers' code as it is written;
# this much more covers what they do not see: Python's objects (the plan, caches, reports)
# and NumPy's iterator buffers, or a NumPy that elides fewer temporaries.
MARGIN = 1.1
OVERHEAD_BYTES = 256 << 10
STATS_BYTES = 32          # per parameter: the statistics' float64 vectors (and scratch)
# Calls (Cost.calls' unit) of a training batch beyond its layers' (the loss's gradient,
# slicing, gathering the gradients, polling), of each optimizer's step, of the perceptron's
# sample, of the statistics' step and of an epoch's bookkeeping (metrics, the snapshot, the
# report); a batch of the dense engine's buffers, per layer and one more; of its compiled
# kernel (whose calls are one per KERNEL_ROWS rows: its arithmetic is the multiply-adds).
STEP_CALLS = 20
OPTIMIZER_CALLS = {"sgd": 3, "momentum": 5, "adam": 13}
PERCEPTRON_CALLS = 8
STATS_CALLS = 40
EPOCH_CALLS = 100
BUFFER_CALLS = 16
KERNEL_CALLS = 1


class Rates(NamedTuple):
    """A machine's speed: seconds per call, per float64 multiply-add, per float64 value;
    float32 products and element-wise work go about twice as fast (twice the numbers per
    vector instruction and per byte of memory traffic: bench/BUDGET.md measured 2.3x)."""
    call: float
    mac: float
    value: float

    def seconds(self, calls: int, macs: int, values: int, itemsize: int = 8) -> float:
        return self.call * calls + (self.mac * macs + self.value * values) * itemsize / 8


REFERENCE = Rates(call=2.5e-7, mac=2.5e-11, value=5e-10)


@dataclass(frozen=True)
class Estimate:
    """memory_bytes: the peak. Over the whole run: multiply_adds; steps, the batches
    (validation chunks and probe passes too); calls (Cost.calls); values, those the passes
    allocate; seconds on the REFERENCE machine. parts: the memory's terms in bytes (module
    docstring), before the margin. layers: each layer's bytes of the parameter and batch
    terms, in spec order (which layer makes a run large)."""
    memory_bytes: int
    multiply_adds: int
    steps: int
    calls: int
    values: int
    seconds: float
    parts: dict[str, int]
    layers: tuple[int, ...]


def split_sizes(plan: Plan) -> tuple[int, int]:
    """(training, validation) samples, as nn/data.py's split draws them."""
    data, frac = plan.data, plan.training["validation_fraction"]
    stratified = data.task == "classification" and not data.target_shape \
        and data.class_counts is not None
    n_val = sum(split_counts(data.n_samples, frac, data.class_counts if stratified else None))
    return data.n_samples - n_val, n_val


def batch_rows(plan: Plan) -> int:
    """Samples per training batch (all of the training split without batch_size)."""
    n_train, _ = split_sizes(plan)
    return max(1, min(plan.training["batch_size"] or n_train, n_train))


def eval_rows(layers: list[Layer] | tuple[Layer, ...], batch: int, itemsize: int) -> int:
    """Samples per forward pass of an evaluation over many (validation, metrics of the
    initial weights, pretraining's inputs): as many as EVAL_BYTES holds at the pass's peak
    (network.infer_values), and at least a training batch (which fits, since training
    runs)."""
    return max(batch, EVAL_BYTES // max(1, infer_values(layers) * itemsize))


def with_training(plan: Plan, **changes) -> Plan:
    """The plan with training fields changed (batch_size, epochs, pretrain: None for none,
    ...), for what-if estimates; nothing is checked again."""
    training = {**plan.training, **changes}
    pretrain = training.get("pretrain")
    return replace(plan, training=training, epochs_total=training["epochs"],
                   pretrain_epochs_total=len(pretrained_layers(plan.layers))
                   * pretrain["epochs"] if pretrain else 0)


def estimate(plan: Plan, rates: Rates = REFERENCE) -> Estimate:
    """The plan's Estimate (module docstring), its seconds at `rates`."""
    parts, shares = _memory(plan)
    peak = parts["parameters"] + parts["data"] + max(
        v for k, v in parts.items() if k not in ("parameters", "data"))
    steps, calls, macs, values = _work(plan)
    return Estimate(int(MARGIN * peak + OVERHEAD_BYTES), macs, steps, calls, values,
                    rates.seconds(calls, macs, values, _sizes(plan).itemsize), parts, shares)


class _Run(NamedTuple):
    """The plan's sizes, as the memory and the work need them."""
    itemsize: int
    n: int
    n_train: int
    n_val: int
    batch: int
    probe: int
    costs: list[Cost]


def _sizes(plan: Plan) -> _Run:
    n_train, n_val = split_sizes(plan)
    probe = min(probe_size(n_train), n_train) if plan.training["stats"] else 0
    itemsize = 4 if plan.training["dtype"] == "float32" else 8
    return _Run(itemsize, plan.data.n_samples, n_train, n_val, batch_rows(plan), probe,
                [l.cost() for l in plan.layers])


def _per_row(costs: list[Cost]) -> int:
    """Values per sample of a step: what every layer keeps, and the largest scratch."""
    return sum(c.kept for c in costs) + max((c.scratch for c in costs), default=0)


def _slots(training: dict) -> int:
    opt = training["optimizer"]
    return 2 if opt["type"] == "adam" else 1 if opt["momentum"] else 0


def _memory(plan: Plan) -> tuple[dict[str, int], tuple[int, ...]]:
    """-> (the memory's terms in bytes, each layer's share)."""
    tr, data, layers = plan.training, plan.data, plan.layers
    r = _sizes(plan)
    s, n, n_train, n_val, b = r.itemsize, r.n, r.n_train, r.n_val, r.batch
    n_in, n_out = math.prod(data.input_shape), math.prod(layers[-1].out_shape)
    slots, best = _slots(tr), 1 if tr["early_stopping"] else 0
    copies = 2 + 1 + 1 + slots + (tr["optimizer"]["type"] == "adam") + best \
        + 4 * (1 + best + slots)
    per_param = copies * s + (STATS_BYTES if tr["stats"] else 0)

    labels = data.task == "classification"
    per_target = math.prod(data.target_shape) if labels else data.target_dim
    label_bytes, label_objects = _labels(plan)
    t_cols = _target_columns(plan)
    fast = dense.applies(tr, layers)
    copied = s != 8 or tr["standardize"] or n_val > 0     # else the caller's inputs serve
    resident = (n * n_in * (8 + (s if copied else 0))           # the caller's; the run's copy
                + n * per_target * label_bytes                  # the caller's targets
                + 2 * n * t_cols * s                            # encoded, and split
                + (2 * n * per_target * 8 if labels else 0))    # labels, and split
    if plan.epochs_total:                           # each epoch's copies and outputs
        resident += (n_train * (t_cols * s + (per_target * 8 if labels else 0) + n_out * s)
                     + (n_train * n_in * s if n_train * n_in * s <= COPY_BYTES else 0))
        if fast:
            resident += n_train * (n_in + 1 + layers[-1].out_shape[-1]) * s

    if fast:                  # a _Pass per batch size: the batch, the last one, the probe
        rest = n_train % b
        batch = (b + rest + (r.probe if r.probe not in (b, rest) else 0)) \
            * _fast_per_row(layers, s)
    else:                     # a batch forward and backward, with its rows and targets
        batch = max(b, r.probe) * (_per_row(r.costs) + n_in + 2 * t_cols
                                   + _seq2seq_row(plan)) * s
    # what the dense engine keeps from its first batch to the end of training
    engine = batch if fast and plan.epochs_total else 0
    chunk = min(max(n_val, n if plan.epochs_total == 0 else 0), eval_rows(layers, b, s))
    parts = {
        "parameters": plan.n_params * per_param,
        "data": resident,
        "batch": batch,
        "validation": engine + chunk * (infer_values(layers) + n_in) * s,
        # the epoch's loss over every output; the probe's activations for the statistics
        "metrics": 3 * n_train * n_out * s
        + r.probe * sum(math.prod(l.out_shape) for l in layers) * 8,
        # the float64 inputs standardised, the training rows their statistics come from,
        # and the cast and split copies made of them; or the labels as Python lists
        "prepare": max(3 * n * n_in * 8 if tr["standardize"] else n * n_in * s,
                       2 * n * per_target * label_objects),
        "pretraining": _pretraining_memory(plan, r, slots),
    }
    shares = tuple(l.n_params * per_param + max(b, r.probe) * (c.kept + c.scratch) * s
                   for l, c in zip(layers, r.costs))
    return parts, shares


def _work(plan: Plan) -> tuple[int, int, int, int]:
    """-> (steps, calls, multiply-adds, values) of the whole run."""
    r = _sizes(plan)
    layers, epochs = plan.layers, plan.epochs_total
    macs_row = sum(c.macs for c in r.costs)
    kept, values_row = sum(c.kept for c in r.costs), _per_row(r.costs)
    forward_calls = sum(c.calls for c in r.costs) // 2
    chunk = eval_rows(layers, r.batch, r.itemsize)
    if epochs == 0:                                 # the initial weights are measured
        steps = -(-r.n // chunk)
        work = [steps, steps * forward_calls, macs_row * r.n, kept * r.n]
    else:
        batches, chunks = -(-r.n_train // r.batch), -(-r.n_val // chunk)
        trained = r.n_train + r.probe
        calls = (batches * _batch_calls(plan, layers, plan.training)
                 + (2 * forward_calls + STATS_CALLS if r.probe else 0)
                 + chunks * forward_calls + EPOCH_CALLS)
        work = [epochs * (batches + (1 if r.probe else 0) + chunks), epochs * calls,
                epochs * (3 * macs_row * trained + macs_row * r.n_val),
                epochs * (values_row * trained + kept * r.n_val)]
    for i, w in enumerate(_pretraining_work(plan, r)):
        work[i] += w
    return tuple(work)


def _batch_calls(plan: Plan, layers, training: dict) -> int:
    """A training batch's calls: the dense engine's (its cost model, nn/engines/dense.py), or
    the layers' and the loop's; and the optimizer's."""
    opt = training["optimizer"]
    step = OPTIMIZER_CALLS["adam" if opt["type"] == "adam" else
                           "momentum" if opt["momentum"] else "sgd"]
    if plan.training["algorithm"] == "perceptron":
        return PERCEPTRON_CALLS
    if not dense.applies(training, layers):
        return sum(l.cost().calls for l in layers) + STEP_CALLS + step
    if dense.uses_kernel(layers, training["batch_size"], make_optimizer(training)):
        return KERNEL_CALLS
    return BUFFER_CALLS * (len(layers) + 1) + step


def _pretrained(plan: Plan):
    """(layers below, the autoencoder) of each pretrained layer, in order."""
    for i in pretrained_layers(plan.layers):
        yield plan.layers[:i], autoencoder(plan.layers[i])


def _pretraining_memory(plan: Plan, r: _Run, slots: int) -> int:
    """The largest pretrained layer's bytes beyond the parameters and data. For layer l
    with input size D: its input over the training and validation splits (the data itself
    for the first layer), made by a chunked forward pass of the layers below; then each
    epoch's shuffled copy and outputs (D values per sample each), the dense engine's
    buffers, and the metrics over every output (two temporaries of D values per sample) or
    a validation chunk; the decoder with copies as the parameters'."""
    if not plan.training.get("pretrain"):
        return 0
    s, b, n_train = r.itemsize, r.batch, r.n_train
    peak = 0
    for below, ae in _pretrained(plan):
        d = ae[0].in_shape[0]
        inputs = r.n * d * s if below else 0
        rows = min(eval_rows(below, b, s), n_train) if below else 0
        forward = rows * infer_values(below) * s
        batch = (b + n_train % b + r.probe) * _fast_per_row(ae, s)
        validation = min(r.n_val, eval_rows(ae, b, s)) * infer_values(ae) * s
        epoch = 2 * n_train * d * s + batch + max(2 * n_train * d * s, validation)
        decoder = ae[1].n_params * (8 + 2 * slots) * s
        peak = max(peak, inputs + max(forward, epoch) + decoder)
    return peak


def _pretraining_work(plan: Plan, r: _Run) -> tuple[int, int, int, int]:
    """(steps, calls, multiply-adds, values) of pretraining: for each pretrained layer, the
    forward pass below it once, then its epochs of the autoencoder."""
    pretrain = plan.training.get("pretrain")
    if not pretrain:
        return 0, 0, 0, 0
    epochs, settings = pretrain["epochs"], {**plan.training, **pretrain, "weight_decay": 0.0}
    steps = calls = macs = values = 0
    for below, ae in _pretrained(plan):
        costs = [l.cost() for l in ae]
        macs += r.n * sum(l.cost().macs for l in below)
        values += r.n * sum(l.cost().kept for l in below)
        ae_macs, trained = sum(c.macs for c in costs), r.n_train + r.probe
        batches = -(-r.n_train // r.batch)
        steps += epochs * (batches + (1 if r.probe else 0) + (1 if r.n_val else 0))
        calls += epochs * (batches * _batch_calls(plan, ae, settings) + EPOCH_CALLS
                           + sum(c.calls for c in costs) + STATS_CALLS)
        macs += epochs * (3 * ae_macs * trained + ae_macs * r.n_val)
        values += epochs * (_per_row(costs) * trained + sum(c.kept for c in costs) * r.n_val)
    return steps, calls, macs, values


def _labels(plan: Plan) -> tuple[int, int]:
    """(bytes per target value in the caller's array: 8, or a NumPy string's 4 per character;
    bytes per label of the Python lists `describe` and `encode_labels` make of them, two at
    a time: a slot, and an object unless CPython shares one (bools, small ints))."""
    classes = plan.data.classes
    if plan.data.task != "classification" or not classes:
        return 8, 0
    if isinstance(classes[0], str):
        return 4 * max(len(c) for c in classes), 8 + max(sys.getsizeof(c) for c in classes)
    shared = all(isinstance(c, bool) or -5 <= c <= 256 for c in classes)
    return 8, 8 + (0 if shared else max(sys.getsizeof(c) for c in classes))


def _seq2seq_row(plan: Plan) -> int:
    """Values per sample a step of an encoder-decoder network needs beyond its layers'
    (nn/seq2seq.py): the decoder's input and both masks, the gradient summed into the
    encoder's output from the cross-attentions, and the loss's gradient of the logits. (The
    attention itself, T_src x T_tgt, is in the decoder layers' Cost.)"""
    if not plan.encoder_layers:
        return 0
    (T_src, D), out = plan.layers[plan.encoder_layers - 1].out_shape, plan.layers[-1].out_shape
    return 3 * out[0] + T_src + T_src * D + math.prod(out)


def _target_columns(plan: Plan) -> int:
    """Values per sample of the targets as the loss takes them (nn/targets.py's encode):
    class indices for cross-entropy, else one column per output unit."""
    if plan.training["loss"] == "cross_entropy":
        return max(1, math.prod(plan.data.target_shape))
    return plan.layers[-1].out_shape[-1]


def _fast_per_row(layers, itemsize: int) -> int:
    """Bytes per row of a nn/engines/dense.py _Pass: each layer's output with a row of ones, z,
    dx, the derivative's scratch and its mask, and the input row with its one."""
    units = sum(l.units for l in layers)
    values = 4 * units + len(layers) + layers[0].in_shape[0] + 2
    return values * itemsize + units
