"""Operations: GET /metrics (Prometheus), request ids, and the one log format."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from service import db, logs
from service.models import Epoch, Run
from tests.openapi_check import SpecCheckingClient
from tests.service.helpers import create_run, create_xor_dataset, finish_run, trained_model


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_come_from_the_rows(any_app: Flask, any_client: SpecCheckingClient) -> None:
    dataset = create_xor_dataset(any_client)
    runs = [create_run(any_client, dataset["id"]) for _ in range(3)]
    finish_run(any_app, runs[0]["id"], epochs=3,
               artifacts={"final": trained_model(runs[0]).to_npz()})
    with db.session_scope(any_app) as session:
        run = session.get(Run, runs[0]["id"])
        run.started_at = run.created_at + timedelta(seconds=1.5)  # waited 1.5 s
        run.heartbeat_at = run.finished_at
        for epoch, seconds in ((1, 0.002), (2, 0.02), (3, 0.2)):
            session.execute(sa.update(Epoch).where(Epoch.run_seq == run.seq, Epoch.epoch == epoch)
                            .values(duration_s=seconds))

    assert any_client.post(f"/v1/runs/{runs[0]['id']}/predict",
                           json={"inputs": [[0.0, 1.0]]}).status_code == 200
    answer = any_client.get("/metrics", headers={"Authorization": ""})  # no key needed
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    got = _samples(answer.get_data(as_text=True))

    assert got[("backprop_runs", (("status", "queued"),))] == 2
    assert got[("backprop_runs", (("status", "succeeded"),))] == 1
    assert got[("backprop_runs", (("status", "failed"),))] == 0
    assert got[("backprop_oldest_queued_run_age_seconds", ())] >= 0
    wait = "backprop_queue_wait_seconds"
    assert got[(f"{wait}_gcount", ())] == 1 and got[(f"{wait}_gsum", ())] == pytest.approx(1.5)
    assert got[(f"{wait}_bucket", (("le", "1.0"),))] == 0
    assert got[(f"{wait}_bucket", (("le", "2.0"),))] == 1
    epoch = "backprop_epoch_duration_seconds"
    assert got[(f"{epoch}_gcount", ())] == 3
    assert [got[(f"{epoch}_bucket", (("le", le),))] for le in ("0.001", "0.005", "0.05", "0.5")] \
        == [0, 1, 2, 3]
    assert got[("backprop_predict_latency_seconds_count", ())] >= 1
    assert got[("backprop_http_requests_total", (("endpoint", "runs.create"),
                                                 ("method", "POST"), ("status", "202")))] >= 3


def test_metrics_answer_on_the_metrics_port_only(any_app: Flask) -> None:
    """With METRICS_PORT, GET /metrics is a 404 on any other port of the server (the
    listening socket's, in SERVER_PORT; a Host header does not change it)."""
    any_app.config["METRICS_PORT"] = 9100
    client = any_app.test_client(api_key=None)
    on = {"environ_overrides": {"SERVER_PORT": "9100"}}
    assert client.get("/metrics", **on).status_code == 200
    assert client.get("/metrics").status_code == 404  # the test client's port 80
    answer = client.get("/metrics", headers={"Host": "localhost:9100"})
    assert answer.status_code == 404 and answer.get_json()["code"] == "not_found"
    assert client.get("/healthz").status_code == 200


def test_a_request_id_is_echoed_or_made(client: SpecCheckingClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = client.get("/v1/runs", headers={"X-Request-ID": "x" * 500})  # too long: replaced
    assert len(made.headers["X-Request-ID"]) == 32


def test_request_lines_carry_their_ids(
    client: SpecCheckingClient, caplog: pytest.LogCaptureFixture,
) -> None:
    dataset = create_xor_dataset(client)
    caplog.set_level(logging.INFO, logger="service.requests")
    client.get(f"/v1/datasets/{dataset['id']}", headers={"X-Request-ID": "req-7"})
    (record,) = [r for r in caplog.records if r.name == "service.requests"]
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == f"GET /v1/datasets/{dataset['id']} 200"
    assert (line["status"], line["level"], line["logger"]) == (200, "INFO", "service.requests")
    assert line["ts"].endswith("Z") and line["duration_ms"] >= 0


def test_the_formats_carry_the_bound_ids() -> None:
    record = logging.LogRecord("worker.training", logging.WARNING, __file__, 1,
                               "run %s: %s", ("r1", "lease lost"), None)
    with logs.bound(run_id="r1"):
        logs.bind(dataset_id="d1")
        line = json.loads(logs.JsonFormatter().format(record))
        text = logs.TextFormatter().format(record)
    assert line == {"ts": line["ts"], "level": "WARNING", "logger": "worker.training",
                    "message": "run r1: lease lost", "run_id": "r1", "dataset_id": "d1"}
    assert text.endswith("WARNING worker.training: run r1: lease lost [run_id=r1 dataset_id=d1]")
    assert "run_id" not in json.loads(logs.JsonFormatter().format(record))  # unbound again
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.formatter("xml")


# A text line's fields as a reader parses them: the bracketed block that ends the line, each
# value bare or JSON-quoted.
_FIELD = r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]"]+)'


def _text_fields(line: str) -> dict[str, str]:
    block = re.search(rf" \[((?:{_FIELD} ?)+)\]$", line)
    assert block is not None, line
    return {k: json.loads(v) if v.startswith('"') else v
            for k, v in re.findall(_FIELD, block.group(1))}


class _Lines(logging.Handler):
    """Formats as a record is logged, while the request's ids are bound."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.TextFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_request_id_cannot_forge_a_text_field(any_client: SpecCheckingClient) -> None:
    handler = _Lines()
    requests = logging.getLogger("service.requests")
    requests.addHandler(handler)
    requests.setLevel(logging.INFO)
    forged = ["x] [run_id=evil", 'x" run_id=evil', "x run_id=evil"]
    try:
        for request_id in forged:
            any_client.get("/v1/runs", headers={"X-Request-ID": request_id})
        any_client.get("/v1/runs/x%0A2026-01-01 INFO worker.training: forged [run_id=evil]")
    finally:
        requests.removeHandler(handler)
    *given, odd_path = handler.lines
    for line, request_id in zip(given, forged, strict=True):
        assert _text_fields(line)["request_id"] == request_id
        assert "run_id" not in _text_fields(line)
    assert "\n" not in odd_path and "run_id" not in _text_fields(odd_path)
    assert "/v1/runs/x\\n2026" in odd_path  # the newline, escaped


def test_plain_text_values_stay_bare() -> None:
    record = logging.LogRecord("service.requests", logging.INFO, __file__, 1, "GET / 200", (),
                               None)
    record.duration_ms = 1.5
    with logs.bound(request_id="abc-123.x:y/z"):
        text = logs.TextFormatter().format(record)
    assert text.endswith("[request_id=abc-123.x:y/z duration_ms=1.5]")
