"""Data sets: describe and check them, encode labels, split them, standardise inputs."""
from dataclasses import dataclass

import numpy as np

from .errors import SpecError
from .seq2seq import check_sources, check_targets


@dataclass(frozen=True)
class DataInfo:
    """What `build` needs to know about a data set.

    input_shape: the per-sample shape: (D,) features, (C, H, W) or (H, W) images, (T, D)
    sequences, (T,) token ids.
    classes: sorted, JSON-serialisable labels (int, str or bool) for classification, else None.
    class_counts: labels per class (same order), when known; lets `build` check the split.
    target_shape: the per-sample shape of the targets: () one label, or (T,) a label per time
    step (class_counts then count time steps); regression: (target_dim,).
    token_range: (min, max) of the inputs when every input value is an integer, else None;
    lets `build` check an embedding's vocab_size.
    max_abs: the largest |value| of the inputs and of regression targets; lets `build`
    refuse float32 for data beyond its range.
    vocab_sizes: seq2seq (task "seq2seq": input_shape (T_src,), target_shape (T_tgt,)):
    (max source id + 1, max target id + 1), the least vocab_size of each stack's embedding.
    """
    input_shape: tuple[int, ...]
    n_samples: int
    task: str                     # "classification" | "regression"
    classes: list | None
    target_dim: int
    class_counts: list[int] | None = None
    target_shape: tuple[int, ...] = ()
    token_range: tuple[int, int] | None = None
    max_abs: float = 0.0
    vocab_sizes: tuple[int, int] | None = None


def _array(values, path: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except ValueError as e:                       # ragged nested lists
        raise SpecError(path, f"not a rectangular array ({e})") from None


def check_inputs(inputs, path: str = "inputs", min_rows: int = 0, dtype=np.float64
                 ) -> np.ndarray:
    """-> (N, ...) float64, or dtype (at least 2-D: N samples of any shape; not a copy when
    it is already so); SpecError for ragged, non-numeric, empty, too few or non-finite
    inputs."""
    x = _array(inputs, path)
    if x.dtype.kind not in "biuf":
        raise SpecError(path, "must be numbers")
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise SpecError(path, f"must be an array (N, D) or (N, ...) of N samples, got shape "
                              f"{x.shape}")
    if len(x) < min_rows:
        raise SpecError(path, f"needs at least {min_rows} row(s)")
    x = x.astype(dtype, copy=False)
    # a finite sum means every value is finite (NaN and inf propagate), and takes half the
    # time of isfinite(x).all(); an infinite one may be overflow: then look at each value
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(x, axis=None)
    if not np.isfinite(total) and not np.isfinite(x).all():
        raise SpecError(path, "contains NaN or infinite values")
    return x


def check_shape(x: np.ndarray, input_shape, path: str = "inputs") -> np.ndarray:
    """x (N, ...) must hold samples of input_shape; -> x, or x with a trailing axis of 1
    added when its samples leave it out (sequences of one feature, e.g. (N, T) for (T, 1))."""
    shape = tuple(input_shape)
    if x.shape[1:] + (1,) == shape:
        return x.reshape(*x.shape, 1)
    if x.shape[1:] != shape:
        if len(shape) == 1 and x.ndim == 2:
            raise SpecError(path, f"each row must have {shape[0]} values, got {x.shape[1]}")
        raise SpecError(path, f"each sample has shape {x.shape[1:]}; the plan expects {shape}")
    return x


def _label_kind(v) -> str | None:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return "int"
    if isinstance(v, str):
        return "str"
    return None


def _values(targets, y: np.ndarray) -> list:
    """The labels as a flat list of Python values; a list is read as given (numpy would
    coerce [0, "a"]); (N, T) labels per time step are flattened row by row."""
    if not isinstance(targets, (list, tuple)):
        return y.ravel().tolist()
    if y.ndim == 2:
        return [v for row in targets for v in row]
    return list(targets)


def token_range(x: np.ndarray, lo: float, hi: float) -> tuple[int, int] | None:
    """(min, max) = (lo, hi) of x when every value of x is an integer (token ids), else
    None."""
    if not np.array_equal(x, np.floor(x)) or max(abs(lo), abs(hi)) > 2**53:
        return None
    return int(lo), int(hi)


def _classes(values: list) -> tuple[list, list[int]]:
    kinds = {_label_kind(v) for v in values}
    if None in kinds:
        raise SpecError("targets", "class labels must be integers, strings or booleans")
    if len(kinds) > 1:
        raise SpecError("targets", f"class labels mix types: {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    if kind == "int":
        values = [int(v) for v in values]
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    classes = sorted(counts)
    return classes, [counts[c] for c in classes]


def describe(inputs, targets, task: str | None = None) -> DataInfo:
    """inputs (N, ...); targets (N,) labels or numbers, (N, K) numbers, or with task
    "classification" (N, T) labels, one per time step -> DataInfo.

    task None: strings, bools and integers (N,) mean classification, anything else regression.
    task "seq2seq": inputs (N, T_src) and targets (N, T_tgt) token ids (nn/seq2seq.py).
    """
    if task == "seq2seq":
        return _describe_seq2seq(inputs, targets)
    x = check_inputs(inputs, min_rows=1)
    y = _array(targets, "targets")
    if task not in (None, "classification", "regression"):
        raise SpecError("task", "must be 'classification', 'regression', 'seq2seq' or null")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise SpecError("targets", f"must have shape ({len(x)},) or ({len(x)}, K), "
                                   f"got {y.shape}")
    lo, hi = float(x.min()), float(x.max())
    shape, tokens, max_abs = tuple(x.shape[1:]), token_range(x, lo, hi), max(-lo, hi)
    if task is None:
        task = "classification" if y.ndim == 1 and y.dtype.kind in "biuUSO" else "regression"
    if task == "regression":
        if y.dtype.kind not in "biuf" or y.ndim == 2 and y.shape[1] == 0:
            raise SpecError("targets", "regression targets must be numbers")
        if not np.isfinite(y.astype(np.float64)).all():
            raise SpecError("targets", "contains NaN or infinite values")
        dim = 1 if y.ndim == 1 else y.shape[1]
        max_abs = max(max_abs, float(np.abs(y.astype(np.float64)).max()))
        return DataInfo(shape, len(x), task, None, dim, None, (dim,), tokens, max_abs)
    if y.ndim == 2 and y.shape[1] == 0:
        raise SpecError("targets", "labels per time step need at least one time step")
    classes, counts = _classes(_values(targets, y))
    if len(classes) < 2:
        raise SpecError("targets", "classification needs at least 2 classes")
    return DataInfo(shape, len(x), task, classes, 1, counts, tuple(y.shape[1:]), tokens,
                    max_abs)


def _describe_seq2seq(inputs, targets) -> DataInfo:
    x = check_sources(inputs)
    t = check_targets(targets, len(x))
    hi = int(max(x.max(), t.max()))
    return DataInfo((x.shape[1],), len(x), "seq2seq", None, t.shape[1], None, (t.shape[1],),
                    (int(x.min()), int(x.max())), float(hi),
                    (int(x.max()) + 1, int(t.max()) + 1))


def encode_labels(targets, classes: list, path: str = "targets") -> np.ndarray:
    """Labels (N,) or (N, T) -> int64 indices into classes, same shape."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        y = _array(targets, path)
        values = _values(targets, y)
        return np.fromiter((index[v] for v in values), np.int64,
                           count=len(values)).reshape(y.shape)
    except (KeyError, TypeError) as e:
        raise SpecError(path, f"label {e} is not one of the classes {classes}") from None


def split_counts(n: int, fraction: float, class_counts: list[int] | None) -> list[int]:
    """Validation samples per class (or one entry for regression): round(fraction * n_c)."""
    counts = class_counts if class_counts is not None else [n]
    return [int(np.floor(fraction * c + 0.5)) for c in counts]


def stratified_split(y: np.ndarray | None, n: int, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (train indices, validation indices), both sorted (the data's own order).

    y: (N,) class indices (stratified: round(fraction * n_c) of each class c to validation),
    or None for regression (round(fraction * N) at random).
    """
    if fraction == 0:
        return np.arange(n), np.arange(0)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in range(y.max() + 1)]
    val = [rng.permutation(g)[:k] for g, k in zip(groups, split_counts(
        n, fraction, None if y is None else [len(g) for g in groups]))]
    is_val = np.zeros(n, dtype=bool)
    is_val[np.concatenate(val)] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def fit_standardizer(x: np.ndarray) -> dict:
    """Mean and std per input value (a column of (N, D), a pixel of (N, C, H, W); std 0 -> 1),
    as (nested) JSON lists of the per-sample shape, for Model.meta."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = x.mean(axis=0), x.std(axis=0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        # values near float64's limit overflow the sums and squares: scale each by its
        # largest |value| first (only then, so that other data standardise, and resumed
        # runs fingerprint, to the same last bit as before)
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        mean, std = (x / scale).mean(axis=0) * scale, (x / scale).std(axis=0) * scale
    return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def standardize(x: np.ndarray, params: dict | None) -> np.ndarray:
    """x: (N, ...) -> (x - mean) / std, or x itself when params is None."""
    if params is None:
        return x
    return (x - np.asarray(params["mean"])) / np.asarray(params["std"])
