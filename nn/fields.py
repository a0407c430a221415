"""Typed readers for spec fields: each returns the value or its default, or raises SpecError
naming the field's JSON path. bool is never accepted as a number."""
import math
from typing import Any

from .errors import SpecError

MISSING: Any = object()


def obj(value, path: str, allowed: set[str]) -> dict:
    """value must be a JSON object whose keys are all in `allowed`."""
    if not isinstance(value, dict):
        raise SpecError(path, "must be an object")
    for key in value:
        if key not in allowed:
            raise SpecError(f"{path}.{key}", f"unknown field (expected one of: "
                                             f"{', '.join(sorted(allowed))})")
    return value


def get(d: dict, key: str, path: str, default):
    """d[key], or default; a missing field without a default is a SpecError."""
    if key in d:
        return d[key]
    if default is MISSING:
        raise SpecError(f"{path}.{key}", "is required")
    return default


def as_integer(v: Any) -> int | None:
    """v as an int when it is one: JSON (and JSON Schema's `integer`) has numbers only, so
    2.0 is the integer 2; None for anything else (bool is no number)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v if isinstance(v, int) else None


def integer(d: dict, key: str, path: str, default=MISSING, lo: int | None = None,
            hi: int | None = None, nullable: bool = False) -> int | None:
    v = get(d, key, path, default)
    p = f"{path}.{key}"
    if v is None and nullable:
        return None
    v = as_integer(v)
    if v is None:
        raise SpecError(p, "must be an integer" + (" or null" if nullable else ""))
    if lo is not None and v < lo or hi is not None and v > hi:
        raise SpecError(p, f"must be in [{lo}, {hi}], got {v}" if hi is not None
                        else f"must be >= {lo}, got {v}")
    return v


def number(d: dict, key: str, path: str, default=MISSING, lo: float | None = None,
           hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> float:
    v = get(d, key, path, default)
    p = f"{path}.{key}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(p, "must be a finite number")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise SpecError(p, f"must be in {left}{lo if lo is not None else '-inf'}, "
                           f"{hi if hi is not None else 'inf'}{right}, got {v}")
    return float(v)


def boolean(d: dict, key: str, path: str, default=MISSING) -> bool:
    v = get(d, key, path, default)
    if not isinstance(v, bool):
        raise SpecError(f"{path}.{key}", "must be true or false")
    return v


def choice(d: dict, key: str, path: str, options: tuple[str, ...], default=MISSING) -> str:
    v = get(d, key, path, default)
    if v not in options or not isinstance(v, str):
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(options)}, not {v!r}")
    return v
