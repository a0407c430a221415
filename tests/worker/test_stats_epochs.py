"""The worker has the engine compute statistics only for the epochs a run keeps (and each
phase's latest): what it stores is what every-epoch statistics thinned afterwards store,
however the run ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from flask import Flask

import nn
from service import dataio, db, statstore
from service.models import Dataset
from tests.worker.rows import get_run, in_context, set_run
from tests.worker.test_training import _expected_stats, _stored_stats, _thinned
from worker import progress as progress_module
from worker.progress import Progress
from worker.training import train_run

T = 4  # thinned after epoch 4: every 2nd epoch to 8, every 4th to 16, ...


def _every_epoch(run_id: str, epochs: int) -> list[nn.EpochReport]:
    """The engine's reports, statistics on every epoch, for the run's first `epochs` epochs."""
    run = get_run(run_id)
    with db.session_scope() as session:
        dataset = session.get(Dataset, run.dataset_id)
        (inputs, targets), task = dataio.decode(dataset.data), dataset.task
    plan = nn.build(run.network, {**run.training, "epochs": epochs},
                    nn.describe(inputs, targets, task=task))
    reports: list[nn.EpochReport] = []
    nn.train(plan, inputs, targets, on_epoch=reports.append)
    return reports


def _computed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(phase, epoch) of every report that reaches the worker with statistics."""
    seen: list[tuple[str, int]] = []
    on_epoch = Progress.on_epoch

    def records(self: Progress, report: nn.EpochReport) -> None:
        if report.layer_stats:
            seen.append((report.phase, report.epoch))
        on_epoch(self, report)

    monkeypatch.setattr(Progress, "on_epoch", records)
    return seen


def test_early_stopping_stores_the_rules_epochs_and_the_last(
    make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = make_run(training={"epochs": 3000, "validation_fraction": 0.2,
                                "early_stopping": {"patience": 20, "min_delta": 1e-3}},
                      stats_thinned_after=T)
    computed = _computed(monkeypatch)
    assert train_run(run_id) == "succeeded"
    run = get_run(run_id)
    last = run.epochs_completed
    assert run.metrics["epochs_completed"] == last < 3000
    reports = _every_epoch(run_id, last)
    assert _stored_stats(run_id) == _expected_stats(_thinned(reports, T))
    assert {("train", last)} < set(computed) <= {
        (r.phase, r.epoch) for r in _thinned(reports, T)}  # no statistics thrown away


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_stopped_run_stores_its_last_epochs_statistics(
    app: Flask, make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    """Stopped at an epoch's end or within the next: the last completed epoch's statistics
    come after its row (on_stats) and are stored with the rule's."""
    monkeypatch.setattr(progress_module, "CALIBRATE_SECONDS", 0.0)  # no calibration stop
    run_id = make_run(training={"epochs": 100_000}, stats_thinned_after=T)
    late: list[tuple[str, int]] = []
    on_stats = Progress.on_stats

    def records(self: Progress, report: nn.EpochReport) -> None:
        late.append((report.phase, report.epoch))
        on_stats(self, report)

    monkeypatch.setattr(Progress, "on_stats", records)
    if how == "timeout":
        app.config["RUN_TIME_LIMIT_SECONDS"] = 0.7
        assert train_run(run_id) == "failed"
    else:
        outcome: list[str] = []
        worker = threading.Thread(target=in_context(lambda: outcome.append(train_run(run_id))))
        worker.start()
        deadline = time.monotonic() + 30
        while get_run(run_id).epochs_completed < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        set_run(run_id, status="cancelling", cancel_requested=True)  # what the API does
        worker.join(timeout=30)
        assert outcome == ["cancelled"]
    last = get_run(run_id).epochs_completed
    assert 0 < last < 100_000
    assert late == ([] if statstore.kept(last, T) else [("train", last)])
    stored = _stored_stats(run_id)
    assert stored == _expected_stats(_thinned(_every_epoch(run_id, last), T))
    assert stored[0][-1][:2] == ("train", last)
