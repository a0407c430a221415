"""The data of a run as the training loop wants it: checked against the plan, targets
encoded for the loss, split into training and validation (stratified, seeded by
(seed, 0, 1)), standardised with the training split's statistics, and the statistics' probe
batch chosen (seeded by (seed, 0, 2)). The fingerprint (plan + data) guards resumes.
"""
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Callable

import numpy as np

from .data import DataInfo, check_inputs, check_shape, encode_labels, fit_standardizer, \
    standardize, stratified_split
from .errors import SpecError
from .seq2seq import check_sources, check_targets
from .spec import Plan, check_split
from .stats import probe_size
from .targets import encode


@dataclass
class Prepared:
    x: np.ndarray                 # (N_train, *input_shape) standardised, in the plan's dtype
    t: np.ndarray                 # targets as the loss wants them
    y: np.ndarray | None          # (N_train,) or (N_train, T) class indices; None: regression
    x_val: np.ndarray
    t_val: np.ndarray
    y_val: np.ndarray | None
    probe: np.ndarray             # indices into the training split
    val_idx: np.ndarray           # the validation split's rows: indices into the data
    standardizer: dict | None
    hasher: Callable[[], str]     # -> the fingerprint (the fingerprint property)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the normalised plan and the prepared data (all rows, in their order)."""
        return self.hasher()


def prepare(plan: Plan, inputs, targets) -> Prepared:
    """Check the data against the plan, encode targets, split, standardise, pick the probe."""
    if plan.data.task == "seq2seq":
        x, t = _seq2seq(plan, inputs, targets)
        return _split(plan, x, t, t, None)
    x, y, t = _features(plan, inputs, targets)
    strata = y if y is not None and y.ndim == 1 else None     # labels per step: not stratified
    return _split(plan, x, y, t, strata)


def _seq2seq(plan: Plan, inputs, targets) -> tuple[np.ndarray, np.ndarray]:
    """-> (sources, targets) (N, T) int64 token ids, checked against the plan."""
    x = check_sources(inputs)
    t = check_targets(targets, len(x))
    for name, a, shape in (("inputs", x, plan.data.input_shape),
                           ("targets", t, plan.data.target_shape)):
        if a.shape[1:] != tuple(shape):
            raise SpecError(name, f"rows of {a.shape[1]} token ids; the plan expects "
                                  f"{shape[0]}")
    plan.layers[0].check_inputs(x)
    plan.layers[plan.encoder_layers].check_inputs(t, "targets")
    check_split(plan.training, DataInfo(plan.data.input_shape, len(x), "seq2seq", None,
                                        t.shape[1]))
    return x, t


def _features(plan: Plan, inputs, targets) -> tuple:
    """-> (inputs, labels or None, the targets as the loss takes them)."""
    tr, info, out = plan.training, plan.data, plan.layers[-1]
    dtype = np.dtype(tr["dtype"])
    # float64 for fitting the standardisation; otherwise straight to the plan's dtype (one
    # copy of a large data set instead of three)
    x = check_shape(check_inputs(inputs, min_rows=1,
                                 dtype=np.float64 if tr["standardize"] else dtype),
                    info.input_shape)
    plan.layers[0].check_inputs(x)
    if info.task == "classification":
        y = encode_labels(targets, info.classes)
        if y.shape != (len(x), *info.target_shape):
            raise SpecError("targets", f"has labels of shape {y.shape} for {len(x)} samples; "
                                       f"the plan expects {(len(x), *info.target_shape)}")
        counts = np.bincount(y.ravel(), minlength=len(info.classes)).tolist()
        check_split(tr, DataInfo(info.input_shape, len(x), info.task, info.classes, 1, counts,
                                 info.target_shape))
        t = encode(y, len(info.classes), out.out_shape[-1], out.activation, tr["loss"], dtype)
    else:
        y = None
        try:
            t = np.asarray(targets, dtype=np.float64).reshape(len(x), -1)
        except (ValueError, TypeError):
            t = np.zeros((0, 0))
        if t.shape != (len(x), info.target_dim) or not np.isfinite(t).all():
            raise SpecError("targets", f"must be {len(x)} rows of {info.target_dim} finite "
                                       "numbers")
        check_split(tr, DataInfo(info.input_shape, len(x), info.task, None, t.shape[1]))
        t = t.astype(dtype)
    return x, y, t


def _split(plan: Plan, x: np.ndarray, y, t: np.ndarray, strata) -> Prepared:
    """Split (stratified by strata when given), standardise, pick the probe. Token ids of
    seq2seq data stay int64."""
    tr = plan.training
    seed = tr["seed"]
    dtype = x.dtype if plan.data.task == "seq2seq" else np.dtype(tr["dtype"])
    train_idx, val_idx = stratified_split(strata, len(x), tr["validation_fraction"],
                                          np.random.default_rng([seed, 0, 1]))
    std = fit_standardizer(x[train_idx]) if tr["standardize"] else None
    # the caller's array itself when it needs no change (training only reads it): a copy of
    # a large data set is time and as much memory again
    xs = standardize(x, std).astype(dtype, copy=False)
    n = len(train_idx)
    size = probe_size(n)
    probe = np.arange(n) if n <= size else np.sort(
        np.random.default_rng([seed, 0, 2]).choice(n, size, replace=False))

    def fingerprint() -> str:
        # the engine is how, not what: a run resumes under either to rounding
        what = {k: v for k, v in tr.items() if k != "engine"}
        h = hashlib.sha256(json.dumps([plan.network, what], sort_keys=True).encode())
        h.update(np.ascontiguousarray(xs))                    # the bytes, without a copy
        h.update(np.ascontiguousarray(t))
        return h.hexdigest()

    def split(a: np.ndarray | None) -> tuple:
        """(training rows, validation rows); all of a without a validation split."""
        if a is None:
            return None, None
        return (a if n == len(a) else a[train_idx]), a[val_idx]

    (x_train, x_val), (t_train, t_val), (y_train, y_val) = split(xs), split(t), split(y)
    # Hashing costs about 0.1 s per 200 MB: only a checkpoint or a resume needs it, so it
    # waits until asked, unless the split made copies (then xs goes now, not kept for it)
    lazy = fingerprint if n == len(xs) else (lambda digest=fingerprint(): digest)
    return Prepared(x_train, t_train, y_train, x_val, t_val, y_val, probe, val_idx, std, lazy)
