"""The end-to-end flow, over real HTTP, shared by the deployment and the embedded tests.

Every answer is checked against openapi.yaml (tests/openapi_check.py).
"""

from __future__ import annotations

import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import requests

import nn
from tests.conftest import free_port
from tests.openapi_check import check_events, check_response, parse_events
from tests.procs import BIN, Procs, children

FINISHED = ("succeeded", "failed", "cancelled")
XOR = {"kind": "xor", "n_samples": 500, "noise": 0, "seed": 1}
XOR_NET = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid"},
                      {"type": "dense", "units": 1, "activation": "sigmoid"}]}
# The textbook's per-sample SGD; 200 epochs of 400 samples take a few seconds.
XOR_TRAINING = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.5},
                "batch_size": 1, "epochs": 200, "seed": 1, "validation_fraction": 0.2}
RUN_SECONDS = 90  # the longest any run here may take, on a loaded two-core machine
# A worker's WORKER_MEMORY_LIMIT_BYTES in the out-of-memory tests, and a run far past it: a
# full batch of 4000 samples through 2000 units, 61 MiB for each of the forward pass's arrays.
SMALL_MEMORY_LIMIT = 64 * 2**20
WIDE_NET = {"layers": [{"type": "dense", "units": 2000, "activation": "relu"},
                       {"type": "dense", "units": 1, "activation": "sigmoid"}]}


class Api:
    """The service's HTTP API at `base` (e.g. http://127.0.0.1:8123), called with `key`
    (`Authorization: Bearer <key>`) when one is given."""

    def __init__(self, base: str, key: str | None = None) -> None:
        self.base = base
        self.key = key
        self.http = requests.Session()
        if key is not None:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> requests.Response:
        answer = self.http.request(method, self.base + path, timeout=30, **kwargs)
        assert answer.status_code == expect, (
            f"{method} {path}: {answer.status_code}, expected {expect}: {answer.text[:1000]}")
        check_response(method, urlsplit(path).path, answer.status_code,
                       answer.headers.get("Content-Type", ""), answer.content)
        return answer

    def get(self, path: str, expect: int = 200, **kwargs: Any) -> Any:
        return self.call("GET", path, expect, **kwargs).json()

    def post(self, path: str, body: dict[str, Any], expect: int = 200) -> Any:
        return self.call("POST", path, expect, json=body).json()


def start_up(procs: Procs, tmp_path: Path, **settings: object) -> tuple[Api, str]:
    """`backprop up` in the empty folder `tmp_path`, with `settings` as BACKPROP_*
    variables; its API with the local key, once it printed its banner, and what it printed."""
    procs.cwd = tmp_path
    procs.env["BACKPROP_VAR_DIR"] = str(tmp_path / "var")
    procs.env.update({f"BACKPROP_{k}": str(v) for k, v in settings.items()})
    port = free_port()
    procs.start("up", [str(BIN / "backprop"), "up", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    procs.wait_http(f"{base}/readyz", timeout=60)
    printed = procs.wait_for("the banner", lambda: (
        text if "Ctrl-C" in (text := (procs.log_dir / "up.log").read_text()) else None), 30)
    worker_log = tmp_path / "var" / "logs" / "worker.log"
    procs.wait_for("the worker", lambda: "ready." in worker_log.read_text(), 60)
    return Api(base, (tmp_path / "var" / "api-key").read_text().strip()), printed


def up_children(procs: Procs) -> dict[str, int]:
    """The processes `up` runs, by name: api (gunicorn), worker, webhooks and beat (celery)."""
    names = {}
    for pid, argv in children(procs.procs["up"].pid).items():
        if "gunicorn" in argv:
            names["api"] = pid
        elif "worker.webhook_worker" in argv:
            names["webhooks"] = pid
        elif "worker.app" in argv:  # not yet when just forked
            names[argv[argv.index("worker.app") + 1]] = pid
    return names


def events(api: Api, run_id: str, last_event_id: str | None = None,
           query: str = "") -> Iterator[dict[str, Any]]:
    """The run's event stream, event by event as they arrive (each checked against
    openapi.yaml), until the server closes it."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    path = f"/v1/runs/{run_id}/events"
    with api.http.get(f"{api.base}{path}{query}", headers=headers, stream=True,
                      timeout=(10, 60)) as answer:
        assert answer.status_code == 200, answer.text[:500]
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        text = ""
        for chunk in answer.iter_content(chunk_size=None, decode_unicode=True):
            text += chunk
            *blocks, text = text.split("\n\n")
            for event in parse_events("".join(b + "\n\n" for b in blocks)):
                check_events("/v1/runs/{run_id}/events", [event])
                yield event


class Follow:
    """A run's event stream read on a thread: every event with when it arrived."""

    def __init__(self, api: Api, run_id: str, last_event_id: str | None = None) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, args=(api, run_id, last_event_id),
                                       daemon=True)
        self.thread.start()

    def _read(self, api: Api, run_id: str, last_event_id: str | None) -> None:
        try:
            for event in events(api, run_id, last_event_id):
                self.got.append((time.monotonic(), event))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def join(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Every event, once the server closed the stream."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"
        if self.error is not None:
            raise self.error
        return [e for _, e in self.got]


def replayed(events_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epoch rows a client holds after these events: each rewind drops the rows after
    the position it names."""
    rows: list[dict[str, Any]] = []
    order = {"pretrain": 0, "train": 1}
    for event in events_:
        data = event["data"]
        if event["event"] == "epoch":
            rows.append(data)
        elif event["event"] == "rewind":
            kept = (order[data["phase"]], data["epoch"])
            rows = [r for r in rows if (order[r["phase"]], r["epoch"]) <= kept]
    return rows


def create_key(procs: Procs, tenant: str) -> str:
    """`backprop create-key --tenant <tenant>` in the processes' environment: the key it
    prints on stdout."""
    answer = subprocess.run([str(BIN / "backprop"), "create-key", "--tenant", tenant],
                            cwd=procs.cwd, env=procs.env, capture_output=True, text=True,
                            timeout=60)
    assert answer.returncode == 0, answer.stderr
    key = answer.stdout.strip()
    assert key.startswith("bp_") and key not in answer.stderr, answer
    return key


def create_xor(api: Api) -> str:
    return api.post("/v1/datasets", {"name": "xor", "generator": XOR}, 201)["id"]


def start_run(api: Api, dataset_id: str, **fields: Any) -> dict[str, Any]:
    training = {**XOR_TRAINING, **fields.pop("training", {})}
    body = {"dataset_id": dataset_id, "network": XOR_NET, "training": training, **fields}
    run = api.post("/v1/runs", body, 202)
    assert run["status"] == "queued"
    return run


def run_out_of_memory(api: Api, procs: Procs) -> dict[str, Any]:
    """A run of WIDE_NET on a worker limited to SMALL_MEMORY_LIMIT: it fails with
    out_of_memory, saying what to change."""
    dataset_id = api.post("/v1/datasets", {"name": "wide", "generator": {
        **XOR, "n_samples": 4000}}, 201)["id"]
    run = api.post("/v1/runs", {"dataset_id": dataset_id, "network": WIDE_NET, "training": {
        **XOR_TRAINING, "batch_size": None, "epochs": 1}}, 202)
    done = wait_until(api, procs, run["id"])
    assert (done["status"], (done["error"] or {}).get("code")) == ("failed", "out_of_memory"), done
    assert "training.batch_size" in done["error"]["message"]
    return done


def epoch_rows(api: Api, run_id: str) -> list[dict[str, Any]]:
    """The run's epoch rows, in order, every page of them."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = api.get(f"/v1/runs/{run_id}/epochs", params=params)
        rows += page["items"]
        if page["next_cursor"] is None:
            return rows
        params["cursor"] = page["next_cursor"]


def epoch_numbers(api: Api, run_id: str) -> list[int]:
    """The numbers of the run's training epochs, in order."""
    return [e["epoch"] for e in epoch_rows(api, run_id) if e["phase"] == "train"]


def wait_until(api: Api, procs: Procs, run_id: str, statuses: tuple[str, ...] = FINISHED,
               timeout: float = RUN_SECONDS) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = api.get(f"/v1/runs/{run_id}")
        return run if run["status"] in statuses else None

    return procs.wait_for(f"run {run_id} to be {' or '.join(statuses)}", reached, timeout)


def watch_training(api: Api, procs: Procs, run_id: str) -> dict[str, Any]:
    """Poll the run and its epochs until it finishes; it must be seen part-way, with rows.
    Its event stream, followed meanwhile, brings the same rows, then its terminal status,
    and ends. (That rows stream while a run trains is checked on a run too long to finish
    first: see full_flow's cancelled run.)"""
    follow = Follow(api, run_id)
    midway: list[tuple[int, int]] = []

    def finished() -> dict[str, Any] | None:
        run = api.get(f"/v1/runs/{run_id}")
        rows = api.get(f"/v1/runs/{run_id}/epochs", params={"limit": 1000})["items"]
        if 0 < run["epochs_completed"] < run["epochs_total"]:
            # Rows are written with the progress counter, in one transaction.
            assert len(rows) >= run["epochs_completed"], (len(rows), run)
            midway.append((run["epochs_completed"], len(rows)))
        if run["status"] in FINISHED:
            return run
        return None

    run = procs.wait_for(f"run {run_id} to finish", finished, RUN_SECONDS, interval=0.05)
    assert midway, "no poll saw the run part-way through with its epochs"
    streamed = follow.join()
    assert streamed[-1]["event"] == "status" and streamed[-1]["data"] == api.get(
        f"/v1/runs/{run_id}")
    statuses = [e["data"]["status"] for e in streamed if e["event"] == "status"]
    assert statuses[-2:] == ["running", run["status"]], statuses
    rows = api.get(f"/v1/runs/{run_id}/epochs", params={"limit": 1000})["items"]
    assert replayed(streamed) == rows
    return run


def xor_accuracy(api: Api, run_id: str) -> tuple[float, list[list[float]]]:
    inputs, labels = nn.generate(XOR["kind"], XOR["n_samples"], XOR["noise"], XOR["seed"])
    answer = api.post(f"/v1/runs/{run_id}/predict", {"inputs": inputs.tolist()})
    return float(np.mean(np.array(answer["labels"]) == labels)), answer["outputs"]


def full_flow(api: Api, procs: Procs) -> None:
    """Train XOR watching it, read what it stored, serve and reuse its weights, cancel."""
    dataset_id = create_xor(api)
    # Long enough to be seen part-way: the reference engine, a few seconds (the dense
    # engine's compiled kernel can finish 500 epochs before the first poll).
    watched = 500
    run = watch_training(api, procs, start_run(
        api, dataset_id, training={"epochs": watched, "engine": "reference"})["id"])
    assert run["status"] == "succeeded", run
    assert run["epochs_completed"] == run["epochs_total"] == watched
    run_id = run["id"]

    epochs = api.get(f"/v1/runs/{run_id}/epochs", params={"limit": 1000})["items"]
    assert [e["epoch"] for e in epochs] == list(range(1, watched + 1))
    stats = api.get(f"/v1/runs/{run_id}/layer-stats",
                    params={"from_epoch": watched, "to_epoch": watched})["items"]
    assert [s["layer"] for s in stats] == [0, 1]
    assert all(s["grad_mean_abs"] is not None and s["weight_norm"] > 0 for s in stats)

    accuracy, outputs = xor_accuracy(api, run_id)
    assert accuracy >= 0.9, accuracy

    weights = api.get(f"/v1/runs/{run_id}/weights")
    assert [np.shape(layer["W"]) for layer in weights["layers"]] == [(2, 4), (4, 1)]
    npz = api.call("GET", f"/v1/runs/{run_id}/weights", 200,
                   headers={"Accept": "application/x-npz"}).content
    with np.load(io.BytesIO(npz), allow_pickle=False) as arrays:
        assert len(arrays.files) > 0
    assert nn.Model.from_npz(npz).predict(nn.generate("xor", 500, 0, 1)[0])["outputs"] == outputs

    # Its weights served by new runs: from the run, and inline as JSON; 0 epochs each.
    for source in ({"init_from_run": run_id}, {"initial_weights": {"layers": weights["layers"]}}):
        copy = start_run(api, dataset_id, training={"epochs": 0}, **source)
        assert wait_until(api, procs, copy["id"])["status"] == "succeeded"
        assert xor_accuracy(api, copy["id"])[1] == outputs

    # A long run, cancelled while it trains, once its stream has brought an epoch: so rows
    # are streamed while a run trains, however fast the engine is.
    long = start_run(api, dataset_id, training={"epochs": 100_000})
    follow = Follow(api, long["id"])
    procs.wait_for("the long run's stream to bring an epoch", lambda: any(
        e["event"] == "epoch" for _, e in follow.got), RUN_SECONDS)
    assert api.post(f"/v1/runs/{long['id']}/cancel", {})["status"] in ("cancelling", "cancelled")
    cancelled = wait_until(api, procs, long["id"], timeout=30)
    assert cancelled["status"] == "cancelled"
    assert 0 < cancelled["epochs_completed"] < 100_000
    streamed = follow.join()
    assert (streamed[-1]["event"], streamed[-1]["data"]) == ("status", cancelled)
    assert replayed(streamed) == epoch_rows(api, long["id"])
