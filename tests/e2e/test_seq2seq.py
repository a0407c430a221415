"""Task seq2seq through the deployment (docker-compose.yml's commands on PostgreSQL and
Redis, a real worker): padded rows uploaded and `reverse` generated, an encoder-decoder run
trained by the worker with its epoch rows (exact match) streamed live, and decoded by
predict with its cross-attention; bad fields are 422s naming them."""

from __future__ import annotations

import numpy as np

from nn.seq2seq import EOS
from tests.e2e import flow
from tests.e2e.test_deployment import deploy
from tests.procs import Procs
from tests.service.helpers import seq2seq_network

VOCAB = 8
NETWORK = seq2seq_network(VOCAB, dim=16, heads=2, ff_units=32)
TRAINING = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.01},
            "batch_size": 32, "epochs": 6, "seed": 1, "validation_fraction": 0.2}
REVERSE = {"kind": "reverse", "n_samples": 400, "length": 5, "vocab_size": VOCAB, "seed": 1}


def test_a_seq2seq_run_trains_and_decodes(pg_url: str, redis_prefix: str,
                                          procs: Procs) -> None:
    api = deploy(procs, pg_url, redis_prefix)
    rows = api.post("/v1/datasets", {"name": "rows", "task": "seq2seq",
                                     "inputs": [[5, 7, 3], [4, 6]],
                                     "targets": [[3, 7, 5], [6, 4]]}, 201)
    assert (rows["task"], rows["input_shape"]) == ("seq2seq", [3])
    stored = api.get(f"/v1/datasets/{rows['id']}/samples")["items"]
    assert [s["target"] for s in stored] == [[3, 7, 5, EOS], [6, 4, EOS, 0]]
    bad = api.call("POST", "/v1/datasets", 422, json={
        "name": "bad", "task": "seq2seq", "inputs": [[5, 7], [4, 1.5]], "targets": [[3], [4]]})
    assert [e["path"] for e in bad.json()["errors"]] == ["inputs[1][1]"]

    dataset = api.post("/v1/datasets", {"name": "reverse", "generator": REVERSE}, 201)
    assert dataset["task"] == "seq2seq"
    run = api.post("/v1/runs", {"dataset_id": dataset["id"], "network": NETWORK,
                                "training": TRAINING}, 202)
    follow = flow.Follow(api, run["id"])
    done = flow.wait_until(api, procs, run["id"])
    assert done["status"] == "succeeded", done
    epochs = flow.epoch_rows(api, run["id"])
    assert len(epochs) == TRAINING["epochs"]
    assert all(0 <= e["train_exact_match"] <= 1 and 0 <= e["val_exact_match"] <= 1
               for e in epochs)
    assert epochs[-1]["train_accuracy"] > epochs[0]["train_accuracy"]
    assert flow.replayed(follow.join()) == epochs  # live events carry the same rows

    url = f"/v1/runs/{run['id']}/predict"
    inputs = [[5, 7, 3], [4, 6, 6, 3]]
    answer = api.post(url, {"inputs": inputs, "max_length": 8, "attention": True})
    assert len(answer["outputs"]) == len(answer["scores"]) == 2
    for source, out, maps in zip(inputs, answer["outputs"], answer["attention"]):
        assert all(3 <= v < VOCAB for v in out)
        weights = np.array(maps)  # (layer, head, target step, source position)
        assert weights.shape[:2] == (1, 2) and weights.shape[3] == len(source)
        np.testing.assert_allclose(weights.sum(axis=-1), 1, atol=1e-6)
    beam = api.post(url, {"inputs": inputs, "max_length": 8, "beam_size": 3})
    assert len(beam["outputs"]) == 2
    refused = api.call("POST", url, 422, json={"inputs": [[5, 2]]})
    assert [e["path"] for e in refused.json()["errors"]] == ["inputs[0][1]"]
    job = api.call("POST", "/v1/predictions", 422, json={"run_id": run["id"],
                                                         "dataset_id": dataset["id"]})
    assert [e["path"] for e in job.json()["errors"]] == ["run_id"]
