"""Model aliases and batch predictions through the real processes. On PostgreSQL and Redis
(docker-compose.yml's commands): both gunicorn workers of the API follow a PUT of an alias
at once; a batch prediction made from the alias survives its worker's SIGKILL, resumed by a
second worker from its first missing chunk, and its result is the run's predict row for
row. On SQLite and the filesystem broker (`backprop up`): a job from an alias, as CSV."""

from __future__ import annotations

import io
import re
import signal
from pathlib import Path

import numpy as np

import nn
from tests.e2e import flow
from tests.e2e.compose import command
from tests.e2e.test_deployment import deploy
from tests.procs import Procs

BIG = {"kind": "xor", "n_samples": 100_000, "noise": 0, "seed": 2}


def test_aliases_and_a_batch_prediction_whose_worker_dies(pg_url: str, redis_prefix: str,
                                                          procs: Procs) -> None:
    # Chunks of 100 rows, so that the job takes long enough to be killed mid-way.
    api = deploy(procs, pg_url, redis_prefix, LEASE_SECONDS=2, RECONCILE_SECONDS=1,
                 REQUEUE_AFTER_SECONDS=2, PREDICTION_CHUNK_ROWS=100)
    dataset = flow.create_xor(api)
    first, second = (flow.start_run(api, dataset, training={"epochs": e})["id"]
                     for e in (5, 50))
    for run_id in (first, second):
        assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    inputs = {"inputs": [[3, 3], [3, -3], [-3, 3], [-3, -3]]}

    api.call("PUT", "/v1/models/xor", 201, json={"run_id": first})
    for run_id in (second, first):  # moved, then rolled back
        api.call("PUT", "/v1/models/xor", 200, json={"run_id": run_id})
        expected = api.post(f"/v1/runs/{run_id}/predict", inputs)
        # requests spread over the API's two gunicorn processes: each follows the PUT
        assert all(api.post("/v1/models/xor/predict", inputs) == expected for _ in range(8))
    assert [v["version"] for v in api.get("/v1/models/xor/versions")["items"]] == [3, 2, 1]
    api.call("DELETE", f"/v1/runs/{first}", 409)

    big = api.post("/v1/datasets", {"name": "big", "generator": BIG}, 201)["id"]
    job = api.post("/v1/predictions", {"model": "xor", "dataset_id": big}, 202)
    job_id = job["id"]
    procs.wait_for("some chunks stored", lambda: 0 < api.get(
        f"/v1/predictions/{job_id}")["rows_done"] < BIG["n_samples"] // 2,
        flow.RUN_SECONDS, interval=0.05)
    procs.stop("worker", signal.SIGKILL)  # the Celery main process and its pool process
    procs.start("worker", command("worker"))
    claimed = procs.wait_for("a second worker to take the job over", lambda: re.search(
        rf"prediction {job_id}: claimed by \S+ \(attempt 2, from chunk (\d+)\)",
        procs.report("worker", lines=1_000_000)), 60, interval=0.2)
    assert int(claimed[1]) > 0  # it went on from the chunks stored, not from the start

    def finished() -> dict | None:
        now = api.get(f"/v1/predictions/{job_id}")
        return now if now["status"] in flow.FINISHED else None

    done = procs.wait_for("the job to finish", finished, flow.RUN_SECONDS)
    assert (done["status"], done["attempts"], done["rows_done"]) == \
        ("succeeded", 2, BIG["n_samples"])
    assert done["result_bytes"] == api.get("/v1/usage")["bytes"]["predictions"]

    npz = api.call("GET", f"/v1/predictions/{job_id}/result", 200,
                   headers={"Accept": "application/x-npz"})
    samples = nn.generate(BIG["kind"], BIG["n_samples"], BIG["noise"], BIG["seed"])[0]
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as result:
        assert result["outputs"].shape == (BIG["n_samples"], 1)
        for start in range(0, BIG["n_samples"], 10_000):  # predict's most rows at a time
            expected = api.post(f"/v1/runs/{first}/predict",
                                {"inputs": samples[start:start + 10_000].tolist()})
            np.testing.assert_array_equal(result["outputs"][start:start + 10_000],
                                          expected["outputs"])
            assert result["labels"][start:start + 10_000].tolist() == expected["labels"]
    too_large = api.call("GET", f"/v1/predictions/{job_id}/result", 406)
    assert too_large.json()["code"] == "result_too_large"
    api.call("DELETE", f"/v1/predictions/{job_id}", 204)
    assert api.get("/v1/usage")["bytes"]["predictions"] == 0
    procs.check()


def test_backprop_up_runs_a_batch_prediction(procs: Procs, tmp_path: Path) -> None:
    """The embedded default (SQLite, the filesystem broker, its own worker): a job from an
    alias, in chunks, answered as CSV row for row as the run's predict."""
    api, _ = flow.start_up(procs, tmp_path, PREDICTION_CHUNK_ROWS=64)
    dataset = flow.create_xor(api)
    run_id = flow.start_run(api, dataset, training={"epochs": 5})["id"]
    assert flow.wait_until(api, procs, run_id)["status"] == "succeeded"
    api.call("PUT", "/v1/models/xor", 201, json={"run_id": run_id})
    job_id = api.post("/v1/predictions", {"model": "xor", "dataset_id": dataset}, 202)["id"]

    def finished() -> dict | None:
        now = api.get(f"/v1/predictions/{job_id}")
        return now if now["status"] in flow.FINISHED else None

    done = procs.wait_for("the job to finish", finished, flow.RUN_SECONDS)
    assert (done["status"], done["rows_done"]) == ("succeeded", flow.XOR["n_samples"])
    text = api.call("GET", f"/v1/predictions/{job_id}/result?format=csv", 200).text
    lines = text.splitlines()
    samples = nn.generate(flow.XOR["kind"], flow.XOR["n_samples"], flow.XOR["noise"],
                          flow.XOR["seed"])[0]
    expected = api.post(f"/v1/runs/{run_id}/predict", {"inputs": samples.tolist()})
    assert lines[0] == "output_0,label,probability_0,probability_1"
    assert [float(line.split(",")[0]) for line in lines[1:]] == \
        [o[0] for o in expected["outputs"]]
    assert [int(line.split(",")[1]) for line in lines[1:]] == expected["labels"]
