"""service/statstore.py: the thinning rule and the packed form of an epoch's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service import statstore
from service.models import PARAM_STAT_FIELDS, STAT_FIELDS, EpochStats


# ---- which epochs ----------------------------------------------------------------------------

def test_the_rule_keeps_every_epoch_up_to_t_then_half_as_many_each_doubling() -> None:
    kept = [e for e in range(1, 50) if statstore.kept(e, 5)]
    assert kept == [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48]
    assert all(statstore.kept(e, None) for e in range(1, 100))
    # from 2^(k-1) T to 2^k T: T/2 epochs, every 2^k-th
    assert sum(statstore.kept(e, 400) for e in range(25_601, 51_201)) == 200


@pytest.mark.parametrize("epochs", [1, 7, 64, 100, 1000, 4321])
@pytest.mark.parametrize("thinned_after", [1, 2, 3, 10, 99, 500])
def test_kept_count_counts_the_rule_and_the_last(epochs: int, thinned_after: int) -> None:
    kept = [e for e in range(1, epochs + 1) if statstore.kept(e, thinned_after)]
    expected = len(kept) + (kept[-1] != epochs)
    assert statstore.kept_count(epochs, thinned_after) == expected


@pytest.mark.parametrize("budget", [20, 50, 2000])
@pytest.mark.parametrize("epochs", [100, 2001, 5000, 100_000])
def test_thinned_after_is_the_largest_t_within_the_budget(epochs: int, budget: int) -> None:
    t = statstore.thinned_after(epochs, budget)
    if epochs <= budget:
        assert t is None
        return
    assert statstore.kept_count(epochs, t) <= budget < statstore.kept_count(epochs, t + 1)


def test_the_default_budget_on_the_longest_run() -> None:
    """As the docstring says: 100,000 epochs keep 1..402 and 1,597 more."""
    t = statstore.thinned_after(100_000, 2000)
    assert t == 402 and statstore.kept_count(100_000, t) == 402 + 1597
    assert statstore.thinned_after(2000, 2000) is None
    assert statstore.thinned_after(100_000, 5) == 1  # below what the rule can reach


# ---- the form --------------------------------------------------------------------------------

def _row(layer: int, value: float, params: tuple[str, ...] = ("W", "b"), **extra: object) -> dict:
    """An engine row whose own statistics are its first array's (a dense layer's are W's)."""
    arrays = [{"param": p, **{f: value + j + i / 10 for i, f in enumerate(PARAM_STAT_FIELDS)}}
              for j, p in enumerate(params)]
    own = {f: arrays[0][f] for f in PARAM_STAT_FIELDS} if params else {}
    return {"layer": layer, "name": f"dense_{layer}", **own, "act_mean": 0.5,
            "act_saturated_fraction": 0.25, "act_dead_fraction": None, "params": arrays,
            **extra}


def _stored(rows: list[dict], detail: bool = True) -> list[dict]:
    layout, figures = statstore.pack(rows)
    return statstore.rows(EpochStats(phase="train", epoch=7, layout=layout, figures=figures),
                          detail)


def test_a_dense_rows_own_statistics_are_stored_once_as_float32() -> None:
    rows = [_row(0, 0.1), _row(1, 2.0)]
    layout, figures = statstore.pack(rows)
    assert layout == "0:dense_0:W*,b;1:dense_1:W*,b"
    assert len(figures) == 2 * (3 + 8 + 8) * 4
    back = _stored(rows)
    assert [list(r) for r in back] == [
        ["epoch", "phase", "layer", "name", *STAT_FIELDS, "params", "grad_norm_by_time"]] * 2
    assert back[0]["grad_norm"] == 0.2 and back[0]["params"][1]["weight_std"] == 1.8
    assert back[0]["act_dead_fraction"] is None and back[0]["grad_norm_by_time"] is None
    for stored, row in zip(back, rows):
        for f in STAT_FIELDS:  # each figure is its float32, as the shortest decimal
            expected = row[f]
            assert stored[f] == (None if expected is None else float(str(np.float32(expected))))
        assert [p["param"] for p in stored["params"]] == ["W", "b"]


def test_an_lstm_row_keeps_its_own_statistics_and_its_gradient_by_time() -> None:
    row = {**_row(0, 1.0, ("Wx", "Wh", "b")), "name": "lstm_0", "grad_norm": 9.5,
           "grad_norm_by_time": [0.5, float("nan"), None, math.inf]}
    layout, figures = statstore.pack([row, _row(1, 3.0)])
    assert layout == "0:lstm_0:Wx,Wh,b:4;1:dense_1:W*,b"
    lstm, dense = _stored([row, _row(1, 3.0)])
    assert lstm["grad_norm"] == 9.5 and lstm["grad_norm_by_time"] == [0.5, None, None, None]
    assert [p["param"] for p in lstm["params"]] == ["Wx", "Wh", "b"]
    assert lstm["params"][2]["grad_norm"] == 3.1
    assert _stored([row], detail=False) == [
        {k: v for k, v in lstm.items() if k not in ("params", "grad_norm_by_time")}]


def test_figures_out_of_float32_range_keep_the_row_in_float64() -> None:
    for tiny in (1e-60, 5e-39, 1e39, -3.5e38):
        rows = [_row(0, 0.1, grad_mean_abs=tiny), _row(1, 0.2)]
        layout, figures = statstore.pack(rows)
        assert len(figures) == (8 + 3 + 16 + 3 + 16) * 8  # W no longer equals the row's own
        assert layout == "0:dense_0:W,b;1:dense_1:W*,b"
        back = _stored(rows)
        assert back[0]["grad_mean_abs"] == tiny and back[1]["grad_norm"] == 0.2 + 0.1
    # zero, NaN and infinities are no reason to widen
    _, figures = statstore.pack([_row(0, 0.0, grad_norm=math.inf, grad_std=float("nan"))])
    assert len(figures) == (8 + 3 + 16) * 4


def test_rows_without_arrays_and_in_any_order() -> None:
    bare = {"layer": 3, "name": "dense_3", "grad_norm": 1.0}
    back = _stored([_row(5, 0.5), bare])
    assert [r["layer"] for r in back] == [3, 5]
    assert back[0]["params"] == [] and back[0]["grad_norm"] == 1.0
    assert back[0]["weight_norm"] is None


def test_names_that_would_break_the_layout_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot store"):
        statstore.pack([{**_row(0, 0.1), "name": "a;b"}])
    with pytest.raises(ValueError, match="bytes of statistics"):
        statstore.rows(EpochStats(phase="train", epoch=1, layout="0:dense_0:W*,b",
                                  figures=b"\0" * 12))
