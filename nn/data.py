"""Data sets: describe and check them, encode labels, split them, standardise inputs."""
from dataclasses import dataclass

import numpy as np

from .errors import SpecError


@dataclass(frozen=True)
class DataInfo:
    """What `build` needs to know about a data set.

    classes: sorted, JSON-serialisable labels (int, str or bool) for classification, else None.
    class_counts: samples per class (same order), when known; lets `build` check the split.
    """
    input_shape: tuple[int, ...]
    n_samples: int
    task: str                     # "classification" | "regression"
    classes: list | None
    target_dim: int
    class_counts: list[int] | None = None


def _array(values, path: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except ValueError as e:                       # ragged nested lists
        raise SpecError(path, f"not a rectangular array ({e})") from None


def check_inputs(inputs, path: str = "inputs", min_rows: int = 0) -> np.ndarray:
    """-> (N, D) float64; SpecError for ragged, non-numeric, too few or non-finite inputs."""
    x = _array(inputs, path)
    if x.dtype.kind not in "biuf":
        raise SpecError(path, "must be numbers")
    if x.ndim != 2 or x.shape[1] == 0:
        raise SpecError(path, f"must be a 2-D array (N, D), got shape {x.shape}")
    if len(x) < min_rows:
        raise SpecError(path, f"needs at least {min_rows} row(s)")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise SpecError(path, "contains NaN or infinite values")
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
    """The labels as Python values; a list is read as given (numpy would coerce [0, "a"])."""
    return list(targets) if isinstance(targets, (list, tuple)) else y.tolist()


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
    """inputs (N, D); targets (N,) labels or numbers, or (N, K) numbers -> DataInfo.

    task None: strings, bools and integers mean classification, floats regression.
    """
    x = check_inputs(inputs, min_rows=1)
    y = _array(targets, "targets")
    if task not in (None, "classification", "regression"):
        raise SpecError("task", "must be 'classification', 'regression' or null")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise SpecError("targets", f"must have shape ({len(x)},) or ({len(x)}, K), "
                                   f"got {y.shape}")
    if task is None:
        task = "classification" if y.ndim == 1 and y.dtype.kind in "biuUSO" else "regression"
    if task == "regression":
        if y.dtype.kind not in "biuf" or y.ndim == 2 and y.shape[1] == 0:
            raise SpecError("targets", "regression targets must be numbers")
        if not np.isfinite(y.astype(np.float64)).all():
            raise SpecError("targets", "contains NaN or infinite values")
        return DataInfo((x.shape[1],), len(x), task, None, 1 if y.ndim == 1 else y.shape[1])
    if y.ndim != 1:
        raise SpecError("targets", "class labels must be a 1-D array (N,)")
    classes, counts = _classes(_values(targets, y))
    if len(classes) < 2:
        raise SpecError("targets", "classification needs at least 2 classes")
    return DataInfo((x.shape[1],), len(x), task, classes, 1, counts)


def encode_labels(targets, classes: list, path: str = "targets") -> np.ndarray:
    """Labels -> (N,) int64 indices into classes."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        values = _values(targets, _array(targets, path))
        return np.fromiter((index[v] for v in values), np.int64, count=len(values))
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
    """Mean and std per input column (std 0 -> 1), as JSON lists for Model.meta."""
    std = x.std(axis=0)
    return {"mean": x.mean(axis=0).tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def standardize(x: np.ndarray, params: dict | None) -> np.ndarray:
    """x: (N, D) -> (x - mean) / std, or x itself when params is None."""
    if params is None:
        return x
    return (x - np.asarray(params["mean"])) / np.asarray(params["std"])
