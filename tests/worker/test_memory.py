"""A run past its memory limit fails with out_of_memory, and the process goes on as it was.
(The same in a real Celery worker: tests/e2e/test_faults.py and test_embedded.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from service import dataio
from service.models import utcnow
from tests.worker.rows import add_dataset, add_run, get_run, set_run
from worker import memory
from worker import training as training_module
from worker.training import train_run

MiB = 2**20
# Full batch: every layer's activations are one (4000, 2000) array of 61 MiB, and the
# forward pass keeps several.
WIDE = {"layers": [{"type": "dense", "units": 2000, "activation": "relu"},
                   {"type": "dense", "units": 1, "activation": "sigmoid"}]}


def _resident() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read())[1]) * 1024


@pytest.mark.skipif(not memory.LINUX, reason="RLIMIT_AS and /proc: Linux")
def test_a_run_past_the_limit_fails_and_the_process_goes_on(
    app: Flask, make_run: Callable[..., str],
) -> None:
    app.config["WORKER_MEMORY_LIMIT_BYTES"] = 64 * MiB
    assert train_run(make_run()) == "succeeded"  # the process's caches are warm
    before = (memory.address_space(), _resident())

    wide = add_run(add_dataset(n_samples=4000), WIDE, {"batch_size": None, "epochs": 1})
    with memory.limited(app.config["WORKER_MEMORY_LIMIT_BYTES"]):
        assert train_run(wide) == "failed"
    run = get_run(wide)
    assert (run.status, run.error_code, run.lease_token) == ("failed", "out_of_memory", None)
    assert "Unable to allocate" in run.error_message  # numpy's words: how much, what shape
    assert "a run may take 64.0 MiB (WORKER_MEMORY_LIMIT_BYTES)" in run.error_message
    assert "training.batch_size" in run.error_message  # what to change

    after = (memory.address_space(), _resident())
    assert after[0] - before[0] < 16 * MiB and after[1] - before[1] < 16 * MiB, (before, after)
    with memory.limited(app.config["WORKER_MEMORY_LIMIT_BYTES"]):
        assert train_run(make_run()) == "succeeded"


@pytest.mark.skipif(not memory.LINUX, reason="RLIMIT_AS: Linux")
def test_the_limit_is_counted_from_the_start_and_lifted_after() -> None:
    with memory.limited(64 * MiB):
        with pytest.raises(MemoryError):
            bytearray(80 * MiB)
        block = bytearray(32 * MiB)  # within it
    del block
    large = bytearray(128 * MiB)  # no limit any more
    assert len(large) == 128 * MiB
    with memory.limited(None):
        assert len(bytearray(128 * MiB)) == 128 * MiB


def _out_of_memory(*_args: Any, **_kwargs: Any) -> Any:
    raise MemoryError("Unable to allocate 1.00 GiB for an array with shape (134217728,)")


def test_running_out_while_loading_the_data_fails_the_run_too(
    make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id = make_run()
    monkeypatch.setattr(dataio, "decode", _out_of_memory)
    assert train_run(run_id) == "failed"
    run = get_run(run_id)
    assert (run.error_code, run.lease_token) == ("out_of_memory", None)
    assert "(Unable to allocate 1.00 GiB" in run.error_message


def test_running_out_while_recording_the_outcome_never_leaves_the_run_stuck(
    make_run: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of memory writing the outcome (the final weights, say): the run is recorded as
    out_of_memory once what it held is freed. Out of memory even for that: train_run still
    returns (a MemoryError reaching Celery would stop the worker), and the run is left to
    its lease, so that the next claim resumes it."""
    real = training_module._final_writes
    statuses: list[object] = []

    def first_fails(*args: Any, **kwargs: Any) -> None:
        statuses.append(kwargs["status"])
        if len(statuses) == 1:
            _out_of_memory()
        real(*args, **kwargs)

    run_id = make_run()
    monkeypatch.setattr(training_module, "_final_writes", first_fails)
    assert train_run(run_id) == "failed"
    assert statuses == ["succeeded", "failed"]
    run = get_run(run_id)
    assert (run.status, run.error_code, run.lease_token) == ("failed", "out_of_memory", None)

    run_id = make_run()
    monkeypatch.setattr(training_module, "_final_writes", _out_of_memory)
    assert train_run(run_id) == "lease_lost"
    run = get_run(run_id)
    assert (run.status, run.attempts) == ("running", 1) and run.lease_token is not None
    monkeypatch.setattr(training_module, "_final_writes", real)
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))  # as time passes
    assert train_run(run_id) == "succeeded"  # what the reconciler's message leads to
    assert get_run(run_id).attempts == 2
