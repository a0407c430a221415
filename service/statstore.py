"""How per-layer statistics are stored: which epochs keep them, and in what form.

Which epochs (the thinning rule). A run keeps the statistics of every epoch up to its
`stats_thinned_after` T, then of epoch e > T when e is a multiple of 2^k, k = ceil(log2(e / T)):
every 2nd epoch up to 2T, every 4th up to 4T, every 8th up to 8T, ... (half as dense each
time the epoch number doubles, T/2 epochs per doubling), and always the last epoch of each
phase. The engine computes statistics of these epochs only (nn.train's stats_epochs), the
epoch at which a phase stops included; a stored epoch the rule does not keep is deleted when
a later one of its phase is written (the run went on: resumed, or past a calibration stop),
so once the run ends its last epoch is there. The rule depends on the epoch
number and T alone, so a run resumed after its worker died, whose epochs past the last
checkpoint are deleted and trained again, keeps exactly the epochs an uninterrupted run
keeps. T is fixed when the run is created (`thinned_after`): the largest T for which a phase
of the run's epochs keeps at most RUN_MAX_STATS_EPOCHS, or None (every epoch) when it has no
more epochs than that. With the default 2,000 a run of 100,000 epochs keeps epochs 1..402
and 1,597 more, the densest early on, where a gradient vanishes.

What was thinned away leaves no trace (no min/max envelope of the dropped epochs): every
epoch's loss row stays, and that is where an unstable stretch shows; the statistics change
slowly between neighbouring epochs once T is past, and an envelope would triple what a row
holds and have to be carried across flushes and resumes.

The form (EpochStats). One row per (run, phase, epoch) holds every layer's statistics:

- `layout`: the layers in order, `;`-separated, each `layer:name:params[:T]`, where params
  are the layer's weight arrays, `,`-separated, and T, present for rnn and lstm rows, the
  number of grad_norm_by_time figures; one array may be starred (`W*`) when the row's own
  grad_* and weight_* are exactly that array's (a dense layer's are its W's), so they are
  stored once. A 2-4-1 net: `0:dense_0:W*,b;1:dense_1:W*,b`.
- `figures`: every number, little-endian float32, layer after layer: the row's own 8
  PARAM_STAT_FIELDS (unless an array is starred), its 3 act_* figures, each array's 8
  PARAM_STAT_FIELDS, then the T by-time figures. Null, NaN and infinities are stored as NaN
  and read back as null (the API answered null for all three before). A row holding a
  finite figure outside float32's normal range (|x| > 3.4e38 or 0 < |x| < 1.2e-38: a
  gradient vanished through a hundred sigmoid layers) stores all its figures as float64;
  the length of `figures` tells which.

Why float32: the statistics are measured on a probe batch of at most 128 samples, so their
own sampling noise is many orders of magnitude above float32's relative rounding (6e-8), and
7 significant digits are more than a chart or a comparison of layers uses. A figure reads
back as the shortest decimal that is the same float32 (0.1234567, not 0.12345670163631439):
what was stored, without digits it does not have. A dense layer's statistics are 19 figures
(3 act_*, 8 for W, 8 for b), 76 bytes, and 14 characters of layout; with its share of the
row, about 115 bytes an epoch on SQLite and 130 on PostgreSQL in the issue's 5-layer demo,
where before migration 0005 a row of 11 float columns and a JSON array of its arrays'
statistics took about 880 and 980 (bench/STORAGE.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa

from service.models import PARAM_STAT_FIELDS, STAT_FIELDS, EpochStats

OWN = len(PARAM_STAT_FIELDS)  # a layer's own grad_* and weight_*, and those of each array
ACT = len(STAT_FIELDS) - OWN  # act_mean, act_saturated_fraction, act_dead_fraction
FLOAT32_MIN = float(np.finfo(np.float32).tiny)  # the smallest normal float32
SEPARATORS = set(";:,*")


# ---- which epochs ----------------------------------------------------------------------

def kept(epoch: int, thinned_after: int | None) -> bool:
    """Whether the rule keeps this epoch's statistics (see the module docstring; a phase's
    latest epoch is kept besides, by the writer)."""
    if thinned_after is None or epoch <= thinned_after:
        return True
    stride = 2
    while epoch > thinned_after * stride:
        stride *= 2
    return epoch % stride == 0


def kept_before(epoch: int, thinned_after: int | None) -> int:
    """The last epoch before `epoch` whose statistics the rule keeps (0: none)."""
    e = epoch - 1
    if thinned_after is None or e <= thinned_after:
        return max(e, 0)
    stride = 2
    while e > thinned_after * stride:
        stride *= 2
    # e's band (T stride / 2, T stride] keeps the multiples of stride; below it the band's
    # floor T stride / 2 is kept (a multiple of stride / 2, or at most T)
    return max(e - e % stride, thinned_after * stride // 2)


def kept_count(epochs: int, thinned_after: int | None) -> int:
    """How many of epochs 1..`epochs` keep their statistics once a phase of that many epochs
    has ended: those of the rule, and the last."""
    if thinned_after is None or epochs <= thinned_after:
        return epochs
    count, low, stride = thinned_after, thinned_after, 2
    while low < epochs:  # the multiples of stride in (low, min(epochs, 2 low)]
        high = min(epochs, thinned_after * stride)
        count += high // stride - low // stride
        low, stride = high, stride * 2
    return count + (0 if kept(epochs, thinned_after) else 1)


def thinned_after(epochs: int, budget: int) -> int | None:
    """The run's T: the largest for which `epochs` epochs keep at most `budget` (None: every
    epoch, there being no more than `budget`). The rule keeps about T (1 + log2(epochs / T)
    / 2) epochs, so a budget below about log2(epochs) + 2 cannot be met: T is then 1."""
    if epochs <= budget:
        return None
    low, high = 1, epochs  # kept_count grows with T (by at most a few epochs out of step)
    while low < high:
        middle = (low + high + 1) // 2
        if kept_count(epochs, middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


# ---- the form ----------------------------------------------------------------------------

class Layer(NamedTuple):
    """One layer of a layout."""

    layer: int
    name: str
    params: tuple[str, ...]
    same: int | None  # the array whose statistics are the row's own, or None
    by_time: int | None  # how many grad_norm_by_time figures; None: not a recurrent layer

    @property
    def size(self) -> int:
        """How many figures the layer has in `figures`."""
        own = OWN if self.same is None else 0
        return own + ACT + OWN * len(self.params) + (self.by_time or 0)


def pack(rows: Sequence[dict[str, Any]]) -> tuple[str, bytes]:
    """An epoch's statistics rows, as the engine reports them (nn/stats.py; a missing figure
    is null), -> (layout, figures)."""
    tokens, values = [], []
    for row in sorted(rows, key=lambda r: r["layer"]):
        own = [row.get(f) for f in PARAM_STAT_FIELDS]
        arrays = [[p.get(f) for f in PARAM_STAT_FIELDS] for p in row.get("params") or ()]
        same = next((j for j, figures in enumerate(arrays) if _equal(figures, own)), None)
        names = [_name(p["param"]) + ("*" if j == same else "")
                 for j, p in enumerate(row.get("params") or ())]
        by_time = row.get("grad_norm_by_time")
        token = f"{int(row['layer'])}:{_name(row['name'])}:{','.join(names)}"
        tokens.append(token if by_time is None else f"{token}:{len(by_time)}")
        values += own if same is None else ()
        values += (row.get(f) for f in STAT_FIELDS[OWN:])
        values += (v for figures in arrays for v in figures)
        values += by_time or ()
    return ";".join(tokens), _encode(values)


def rows(stats: EpochStats, detail: bool = True) -> list[dict[str, Any]]:
    """The stored epoch's rows as GET /v1/runs/{run_id}/layer-stats answers them, in layer
    order; `detail` False leaves out `params` and `grad_norm_by_time`."""
    layers = parse(stats.layout)
    values = _decode(stats.figures, sum(layer.size for layer in layers))
    out, i = [], 0
    for layer in layers:
        own = None
        if layer.same is None:
            own, i = values[i:i + OWN], i + OWN
        act, i = values[i:i + ACT], i + ACT
        arrays = [values[i + OWN * j:i + OWN * (j + 1)] for j in range(len(layer.params))]
        i += OWN * len(layer.params)
        by_time = values[i:i + layer.by_time] if layer.by_time is not None else None
        i += layer.by_time or 0
        row: dict[str, Any] = {"epoch": stats.epoch, "phase": stats.phase,
                               "layer": layer.layer, "name": layer.name}
        row.update(zip(STAT_FIELDS, (*(own if own is not None else arrays[layer.same]), *act)))
        if detail:
            row["params"] = [{"param": name, **dict(zip(PARAM_STAT_FIELDS, figures))}
                             for name, figures in zip(layer.params, arrays)]
            row["grad_norm_by_time"] = by_time
        out.append(row)
    return out


@functools.lru_cache(maxsize=1024)
def parse(layout: str) -> tuple[Layer, ...]:
    """A layout's layers (a run's rows share a few layouts: each is parsed once)."""
    layers = []
    for token in layout.split(";") if layout else ():
        layer, name, params, *by_time = token.split(":")
        names = tuple(p.rstrip("*") for p in params.split(",")) if params else ()
        same = next((j for j, p in enumerate(params.split(",")) if p.endswith("*")), None)
        layers.append(Layer(int(layer), name, names, same if params else None,
                            int(by_time[0]) if by_time else None))
    return tuple(layers)


def has_layer(layout: sa.ColumnElement[str], layer: int) -> sa.ColumnElement[bool]:
    """SQL: the layout holds layer `layer` (a token starts "<layer>:" at the start or after
    a ";")."""
    return sa.or_(layout.like(f"{layer}:%"), layout.like(f"%;{layer}:%"))


def _name(name: str) -> str:
    if not name or SEPARATORS & set(name):
        raise ValueError(f"a statistics row cannot store the name {name!r}")
    return name


def _equal(a: list[Any], b: list[Any]) -> bool:
    """Would a and b be stored and read back the same (None, NaN and infinities alike)?"""
    return all(x == y or not _finite(x) and not _finite(y) for x, y in zip(a, b))


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(x)


def _encode(values: Iterable[float | None]) -> bytes:
    """float32 when every finite figure is 0 or in float32's normal range, else float64."""
    exact = np.array([np.nan if v is None else v for v in values], dtype="<f8")
    with np.errstate(over="ignore"):
        narrow = exact.astype("<f4")
    magnitude = np.abs(exact[np.isfinite(exact)])
    if np.isfinite(narrow[np.isfinite(exact)]).all() and (
            (magnitude == 0) | (magnitude >= FLOAT32_MIN)).all():
        return narrow.tobytes()
    return exact.tobytes()


def _decode(figures: bytes, n: int) -> list[float | None]:
    """`figures` as n Python floats (None for NaN and infinities); float32 ones as the
    shortest decimal that is the same float32."""
    if len(figures) == 4 * n:
        values = np.frombuffer(figures, "<f4").astype(str).astype(np.float64).tolist()
    elif len(figures) == 8 * n:
        values = np.frombuffer(figures, "<f8").tolist()
    else:
        raise ValueError(f"{len(figures)} bytes of statistics for {n} figures")
    return [v if math.isfinite(v) else None for v in values]
