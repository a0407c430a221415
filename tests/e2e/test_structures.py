"""The deep structures end to end: `backprop up` (SQLite, its real worker), a CNN, an LSTM, a
causal Transformer and a pretrained deep sigmoid stack created, trained and read through the
API, and their stored weights answering predictions on held-out inputs, also as ONNX."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import nn
from service import cli
from tests.e2e import flow
from tests.e2e.compose import compose
from tests.procs import Procs, children

ADAM = {"type": "adam", "learning_rate": 0.01}
GLOROT = {"type": "glorot"}
CNN = {"layers": [{"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": 1},
                  {"type": "maxpool2d"}, {"type": "flatten"},
                  {"type": "dense", "units": 10, "activation": "softmax", "init": GLOROT}]}
LSTM = {"layers": [{"type": "lstm", "units": 8},
                   {"type": "dense", "units": 2, "activation": "softmax", "init": GLOROT}]}
TRANSFORMER = {"layers": [{"type": "embedding", "vocab_size": 8, "dim": 8},
                          {"type": "positional_encoding"},
                          {"type": "transformer_encoder", "heads": 2, "ff_units": 16,
                           "causal": True},
                          {"type": "dense", "units": 8, "activation": "softmax", "init": GLOROT}]}
# The vanishing-gradient demo: Gaussian noise 30, six hidden layers of 4 sigmoid units.
SMALL_INIT = {"type": "uniform", "scale": 0.5}
DEEP = {"layers": [{"type": "dense", "units": 4, "activation": "sigmoid", "init": SMALL_INIT}] * 6
        + [{"type": "dense", "units": 1, "activation": "sigmoid", "init": SMALL_INIT}]}
DEEP_TRAINING = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.03},
                 "batch_size": 1, "epochs": 10, "seed": 0, "validation_fraction": 0.5}
PRETRAIN = {"epochs": 5, "optimizer": ADAM}


def _classifier(epochs: int, batch_size: int) -> dict[str, Any]:
    return {"loss": "cross_entropy", "optimizer": ADAM, "batch_size": batch_size,
            "epochs": epochs, "seed": 1}


def _up(procs: Procs, tmp_path: Path) -> tuple[flow.Api, int]:
    """`backprop up` in an empty folder, in an environment that sets no BLAS threads; the
    API with the local key, and the process id of `up`."""
    for name in cli.BLAS_THREADS:
        procs.env.pop(name, None)
    api, _ = flow.start_up(procs, tmp_path)
    return api, procs.procs["up"].pid


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _worker_pid(up: int) -> int:
    """The celery worker `up` started (its other children: gunicorn, celery beat)."""
    for pid, argv in children(up).items():
        if "celery" in argv and "worker" in argv:
            return pid
    raise AssertionError("no celery worker under backprop up")


def _generate(api: flow.Api, **generator: Any) -> str:
    return api.post("/v1/datasets", {"name": generator["kind"], "generator": generator}, 201)["id"]


def _upload_npz(api: flow.Api, name: str, inputs: np.ndarray, targets: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.savez(buf, inputs=inputs, targets=targets)
    return api.call("POST", "/v1/datasets", 201, data={"name": name},
                    files={"file": (f"{name}.npz", buf.getvalue())}).json()


def _labels(api: flow.Api, run_id: str, inputs: np.ndarray) -> np.ndarray:
    return np.array(api.post(f"/v1/runs/{run_id}/predict", {"inputs": inputs.tolist()})["labels"])


def _last_stats(api: flow.Api, run: dict) -> list[dict]:
    """The layer-stat rows of the run's last training epoch, each checked against the
    run's stored weights: one entry in `params` per array of its layer, in its order."""
    last = run["epochs_total"]
    rows = api.get(f"/v1/runs/{run['id']}/layer-stats",
                   params={"phase": "train", "from_epoch": last, "to_epoch": last})["items"]
    weights = api.get(f"/v1/runs/{run['id']}/weights")["layers"]
    assert [r["layer"] for r in rows] == [i for i, arrays in enumerate(weights) if arrays]
    for row in rows:
        assert [p["param"] for p in row["params"]] == list(weights[row["layer"]]), row
        assert all(p["grad_norm"] > 0 and p["weight_norm"] > 0 for p in row["params"]), row
    return rows


def test_structures_trained_by_a_worker_answer_through_the_api(
    procs: Procs, tmp_path: Path,
) -> None:
    api, up = _up(procs, tmp_path)
    # The worker runs with one BLAS thread although nobody set it (service/cli.py).
    worker_env = _environ(_worker_pid(up))
    assert all(worker_env.get(name) == "1" for name in cli.BLAS_THREADS), worker_env

    images, digits = nn.generate("glyphs", 600, 10, seed=1)  # (600, 8, 8): an NPZ upload
    uploaded = _upload_npz(api, "glyphs", images, digits)
    assert uploaded["input_shape"] == [8, 8] and uploaded["classes"] == list(range(10))
    specs = {
        "cnn": (uploaded["id"], CNN, _classifier(10, 32)),
        "lstm": (_generate(api, kind="parity", n_samples=400, length=6, seed=1), LSTM,
                 _classifier(20, 16)),
        "transformer": (_generate(api, kind="next_token", n_samples=400, length=8,
                                  vocab_size=8, seed=3), TRANSFORMER, _classifier(8, 32)),
        "pretrained": (_generate(api, kind="gaussian", n_samples=500, noise=30, seed=0), DEEP,
                       {**DEEP_TRAINING, "pretrain": PRETRAIN}),
        "plain": (None, DEEP, DEEP_TRAINING),  # the same stack from random weights
    }
    specs["plain"] = (specs["pretrained"][0], *specs["plain"][1:])
    runs = {name: api.post("/v1/runs", {"dataset_id": dataset, "network": network,
                                        "training": training}, 202)["id"]
            for name, (dataset, network, training) in specs.items()}
    done = {name: flow.wait_until(api, procs, run_id) for name, run_id in runs.items()}
    for name, run in done.items():
        assert run["status"] == "succeeded", (name, run)
        epochs = api.get(f"/v1/runs/{run['id']}/epochs", params={"phase": "train"})["items"]
        assert [e["epoch"] for e in epochs] == list(range(1, run["epochs_total"] + 1)), name

    # CNN: 8 x 8 digit glyphs at random offsets, with pixel noise; chance is 1/10.
    held_out, truth = nn.generate("glyphs", 200, 10, seed=2)
    assert np.mean(_labels(api, runs["cnn"], held_out) == truth) >= 0.9
    conv, dense = _last_stats(api, done["cnn"])
    assert conv["name"] == "conv2d_0" and conv["act_dead_fraction"] is not None
    assert conv["grad_norm_by_time"] is None

    # LSTM: the parity of bit strings; chance is 1/2.
    held_out, truth = nn.generate("parity", 200, 0, seed=2, length=6)
    assert np.mean(_labels(api, runs["lstm"], held_out) == truth) >= 0.9
    lstm, _ = _last_stats(api, done["lstm"])
    assert len(lstm["grad_norm_by_time"]) == 6 and all(g > 0 for g in lstm["grad_norm_by_time"])

    # Causal Transformer: every next token of x_t = (s + k t) mod 8 (the first needs k).
    held_out, truth = nn.generate("next_token", 200, 0, seed=4, length=8, vocab_size=8)
    predicted = _labels(api, runs["transformer"], held_out)
    assert predicted.shape == (200, 8) and np.mean(predicted[:, 1:] == truth[:, 1:]) >= 0.8
    names = [p["param"] for p in _last_stats(api, done["transformer"])[1]["params"]]
    assert names[:4] == ["Wq", "bq", "Wk", "bk"] and "W1" in names and len(names) == 16

    # Pretraining: 6 layers x 5 epochs stored apart from fine-tuning, and the stack that
    # stalls from random weights trains after it.
    pretrain = api.get(f"/v1/runs/{runs['pretrained']}/epochs",
                       params={"phase": "pretrain"})["items"]
    assert [(e["epoch"], e["layer"]) for e in pretrain] == [(p, (p - 1) // 5)
                                                           for p in range(1, 31)]
    assert all(e["train_loss"] > 0 and e["train_accuracy"] is None for e in pretrain)
    first = api.get(f"/v1/runs/{runs['pretrained']}/layer-stats",
                    params={"phase": "pretrain", "to_epoch": 1})["items"]
    assert [(r["layer"], [p["param"] for p in r["params"]]) for r in first] == [(0, ["W", "b"])]
    assert api.get(f"/v1/runs/{runs['plain']}/epochs", params={"phase": "pretrain"})["items"] == []
    held_out, truth = nn.generate("gaussian", 500, 30, seed=5)
    assert np.mean(_labels(api, runs["pretrained"], held_out) == truth) >= 0.85
    assert np.mean(_labels(api, runs["plain"], held_out) == truth) <= 0.65

    # Each as ONNX (Accept: application/onnx) in onnxruntime: predict's outputs, in float32.
    for name, inputs in (("cnn", nn.generate("glyphs", 20, 10, seed=6)[0]),
                         ("lstm", nn.generate("parity", 20, 0, seed=6, length=6)[0]),
                         ("transformer", nn.generate("next_token", 20, 0, seed=6, length=8,
                                                     vocab_size=8)[0]),
                         ("pretrained", nn.generate("gaussian", 20, 30, seed=6)[0])):
        onnx_model = api.call("GET", f"/v1/runs/{runs[name]}/weights", 200,
                              headers={"Accept": "application/onnx"}).content
        session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
        shape = json.loads(session.get_modelmeta().custom_metadata_map["input_shape"])
        x = np.asarray(inputs, dtype=np.float32).reshape(-1, *shape)
        expected = api.post(f"/v1/runs/{runs[name]}/predict", {"inputs": inputs.tolist()})
        np.testing.assert_allclose(session.run(["outputs"], {"inputs": x})[0],
                                   expected["outputs"], rtol=1e-5, atol=1e-5, err_msg=name)

    # Inputs of the wrong shape for each structure: a 422 naming the field.
    for name, wrong in (("cnn", np.zeros((1, 64))), ("lstm", np.zeros((1, 5))),
                        ("transformer", np.zeros((1, 7))), ("pretrained", np.zeros((1, 3)))):
        problem = api.call("POST", f"/v1/runs/{runs[name]}/predict", 422,
                           json={"inputs": wrong.tolist()}).json()
        assert [e["path"] for e in problem["errors"]] == ["inputs"], (name, problem)


def test_workers_get_one_blas_thread_unless_told_otherwise(monkeypatch: Any) -> None:
    """`backprop up` and `backprop worker` (cli.worker_env) and docker-compose.yml's worker
    (whose .env may override it)."""
    for name in cli.BLAS_THREADS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    env = cli.worker_env()
    assert [env[name] for name in cli.BLAS_THREADS] == ["1", "4", "1"]
    worker = compose()["services"]["worker"]["environment"]
    assert {k: v for k, v in worker.items() if not k.startswith("BACKPROP_")} == \
        {name: f"${{{name}:-1}}" for name in cli.BLAS_THREADS}
