"""README.md's walkthrough as a newcomer pastes it: its shell blocks, in order, run by bash
in a folder laid out like a checkout (`.venv`, `var/`) against a real `backprop up`, with
only the port changed and the virtualenv not on PATH; then the figures its prose quotes are
the ones the runs reached."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e import flow
from tests.procs import BIN, ROOT, Procs

README = ROOT / "README.md"
# The variables holding the walkthrough's run ids, written out after its blocks.
RUNS = ("RUN", "RUN2", "RUN2R", "MORE", "SERVED", "CNN", "LSTM", "PRE", "S2S")
SWEEPS = ("SWEEP", "DEPTH")  # and its sweeps' ids
LR = "training.optimizer.learning_rate"
# An accuracy the prose quotes in percent may differ from a run's by this many points (it
# is rounded, and another CPU's last bits may move a sample or two).
POINTS = 2.0


def walkthrough(port: int) -> str:
    """The ```sh blocks from "## Walkthrough" to "## Configuration", for a service on port."""
    text = README.read_text()
    part = text[text.index("## Walkthrough"):text.index("## Configuration")]
    blocks = re.findall(r"```sh\n(.*?)```", part, re.S)
    assert len(blocks) >= 5, "the walkthrough's shell blocks moved"
    script = "\n".join(blocks).replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    ids = " ".join(f'"{name}=${name}"' for name in RUNS + SWEEPS)
    return f"set -euo pipefail\n{script}\nprintf '%s\\n' {ids} > run-ids\n"


def quoted(pattern: str) -> tuple[str, ...]:
    """The groups of pattern in the README's prose (whitespace as one space)."""
    found = re.search(pattern, " ".join(README.read_text().split()))
    assert found, f"the README no longer says {pattern!r}"
    return found.groups()


def near(accuracy: float, percent: str) -> bool:
    return abs(100 * accuracy - float(percent)) <= POINTS


@pytest.mark.slow
@pytest.mark.timeout(900)  # the walkthrough trains about twenty runs and two sweeps
def test_readme_walkthrough_as_written(procs: Procs, tmp_path: Path) -> None:
    procs.cwd = tmp_path
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the checkout's virtualenv
    procs.env["BACKPROP_VAR_DIR"] = str(tmp_path / "var")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.start("up", [str(BIN / "backprop"), "up", "--port", str(port)])
    procs.wait_http(f"{base}/readyz", timeout=60)
    procs.wait_for("the key", lambda: (tmp_path / "var" / "api-key").exists(), 30)

    (tmp_path / "walkthrough.sh").write_text(walkthrough(port))
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN]
    procs.env["PATH"] = os.pathsep.join(path)  # `backprop` only as the README spells it
    procs.run("walkthrough", ["bash", "walkthrough.sh"], timeout=600)
    ids = dict(line.split("=", 1) for line in (tmp_path / "run-ids").read_text().split())

    api = flow.Api(base, (tmp_path / "var" / "api-key").read_text().strip())
    runs = {name: api.get(f"/v1/runs/{ids[name]}") for name in RUNS}
    assert {name: run["status"] for name, run in runs.items()} == dict.fromkeys(RUNS,
                                                                           "succeeded")
    metrics = {name: run["metrics"] for name, run in runs.items()}

    train, val = quoted(r"it labels (\d+)% of its training points and (\d+)% of the held-out")
    assert near(metrics["RUN"]["train_accuracy"], train)
    assert near(metrics["RUN"]["val_accuracy"], val)

    def grads(name: str) -> list[float]:
        rows = api.get(f"/v1/runs/{ids[name]}/layer-stats?from_epoch=5&to_epoch=5")["items"]
        return [row["grad_mean_abs"] for row in rows]

    times, sigmoid_acc, factor, relu_acc = quoted(
        r"first layer gets a gradient about (\d+) times smaller than its output layer's, and "
        r"after 50 epochs it labels (\d+)% .* within a factor of (\d+) of each other, and it "
        r"reaches ([\d.]+)%")
    sigmoid, relu = grads("RUN2"), grads("RUN2R")
    assert float(times) / 2 <= sigmoid[-1] / sigmoid[0] <= 2 * float(times)
    assert max(relu[:-1]) <= float(factor) * min(relu[:-1])
    assert near(metrics["RUN2"]["train_accuracy"], sigmoid_acc)
    assert near(metrics["RUN2R"]["train_accuracy"], relu_acc)

    cnn, cnn_epochs, lstm, lstm_epochs, pre, stack = quoted(
        r"The CNN reaches ([\d.]+)% validation accuracy in (\d+) epochs, the LSTM ([\d.]+)% "
        r"training accuracy in (\d+), and the pretrained stack (\d+)% training accuracy where "
        r"example 2's same stack stayed at (\d+)%")
    assert near(metrics["CNN"]["val_accuracy"], cnn)
    assert runs["CNN"]["epochs_completed"] == int(cnn_epochs)
    assert near(metrics["LSTM"]["train_accuracy"], lstm)
    assert runs["LSTM"]["epochs_completed"] == int(lstm_epochs)
    assert near(metrics["PRE"]["train_accuracy"], pre) and stack == sigmoid_acc
    assert runs["MORE"]["init_from_run"] == ids["RUN"]

    rate, units, loss = quoted(r"the best is a learning rate of ([\d.]+) with (\d+) hidden "
                               r"units \(held-out loss ([\d.]+)\)")
    board = api.get(f"/v1/sweeps/{ids['SWEEP']}/leaderboard")["items"]
    assert len(board) == 9 and {r["status"] for r in board} == {"succeeded"}
    assert board[0]["parameters"] == {LR: float(rate), "network.layers[0].units": int(units)}
    assert round(board[0]["metric"], 4) == float(loss)
    assert {r["parameters"]["network.layers[0].units"] for r in board[-3:]} == {2}  # last
    assert api.get("/v1/models/xor-best")["run_id"] == board[0]["run_id"]
    most, stuck = quoted(r"every stack labels (\d+)% of its training points right but the six "
                         r"sigmoid layers of example 2, which stay at (\d+)%")
    depth = api.get(f"/v1/sweeps/{ids['DEPTH']}/leaderboard")["items"]
    last = depth[-1]["parameters"]["network.layers"]
    assert len(last) == 7 and last[0]["activation"] == "sigmoid"
    assert near(depth[-1]["metric"], stuck) and stuck == sigmoid_acc
    assert all(near(r["metric"], most) for r in depth[:-1])
    s2s_epochs, exact, reached = quoted(
        r"It stops after (\d+) epochs .* with ([\d.]+)% of the 800 held-out sequences, .* "
        r"\(`val_exact_match`; 95% from epoch (\d+)\)")
    assert runs["S2S"]["epochs_completed"] == int(s2s_epochs)
    assert near(metrics["S2S"]["val_exact_match"], exact)
    rows = api.get(f"/v1/runs/{ids['S2S']}/epochs?limit=1000")["items"]
    assert next(r["epoch"] for r in rows if r["val_exact_match"] >= 0.95) == int(reached)
    decoded = api.post(f"/v1/runs/{ids['S2S']}/predict", {"inputs": [[5, 7, 3, 9]]})
    assert decoded["outputs"] == [[9, 3, 7, 5]]
    assert procs.stop("up", signal.SIGINT, timeout=40) == 0, procs.report("up")
