"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against the
embedded service (`backprop up` in an empty folder), as a newcomer would use it.

Screenshots go to this test's folder; with BACKPROP_SCREENSHOTS=docs/screenshots they replace
the ones the README shows (`BACKPROP_SCREENSHOTS=docs/screenshots scripts/test
tests/e2e/test_dashboard.py`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e import flow
from tests.procs import BIN, ROOT, Procs, clean_env
from tests.service.helpers import seq2seq_network

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches out (this machine reaches only package registries).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # the longest a page waits for a run, on a loaded two-core machine
LR = "training.optimizer.learning_rate"
UNITS = "network.layers[0].units"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`backprop up` in an empty folder: (its URL, the key it printed)."""
    home = tmp_path_factory.mktemp("newcomer")
    procs = Procs(home / "logs", clean_env(BACKPROP_VAR_DIR=str(home / "var")), cwd=home)
    port = free_port()
    try:
        procs.start("up", [str(BIN / "backprop"), "up", "--port", str(port)])
        base = f"http://127.0.0.1:{port}"
        procs.wait_http(f"{base}/readyz", timeout=60)
        key = (home / "var" / "api-key").read_text().strip()
        banner = procs.wait_for("the banner", lambda: f"{base}/#key={key}" in procs.report(
            "up", lines=10_000), 30)
        assert banner
        yield base, key
    finally:
        procs.stop_all()
        print(procs.report())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/services installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A laptop-sized page that records console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = os.environ.get("BACKPROP_SCREENSHOTS")
    return ROOT / folder if folder else tmp_path


def _start_demo(page: Any, base: str, key: str, demo: str, **fields: str) -> str:
    """Log in from the URL fragment, open the form from the runs page, pick a demo, change
    `fields`, train; the new run's id."""
    page.goto(f"{base}/#key={key}")
    page.get_by_role("heading", name="Runs").wait_for()
    assert "key=" not in page.url  # the key left the address bar
    page.get_by_role("link", name="New run").first.click()
    page.get_by_role("button", name=demo, exact=True).click()
    for name, value in fields.items():
        page.fill(f"#f-{name}", value)
    page.get_by_role("button", name="Train", exact=True).click()
    page.wait_for_url(f"{base}/runs/*")
    return page.url.rsplit("/", 1)[1]


def _until(page: Any, what: str, probe: Any) -> Any:
    """Poll `probe()` until it is truthy (Python-side: the page's Content-Security-Policy
    forbids the eval that page.wait_for_function needs, and stays on here)."""
    for _ in range(TIMEOUT_MS // 100):
        found = probe()
        if found:
            return found
        page.wait_for_timeout(100)
    pytest.fail(f"timed out waiting for {what}")


def _data(page: Any, chart: str, name: str) -> str | None:
    return page.get_attribute(f"[data-chart={chart}]", f"data-{name}")


def _points(page: Any) -> int:
    return int(_data(page, "loss", "points") or 0)


def _drawn(page: Any, chart: str, path: Path) -> int:
    """The chart's screenshot, saved; its size in bytes (a blank one compresses to little)."""
    page.locator(f"[data-chart={chart}]").screenshot(path=path)
    return path.stat().st_size


def test_a_422_is_shown_next_to_its_field(service: tuple[str, str], page: Any) -> None:
    base, key = service
    page.goto(f"{base}/new#key={key}")
    page.get_by_role("button", name="XOR · 1 × 4 sigmoid", exact=True).click()
    page.fill("#f-noise", "99")
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator("#f-noise[aria-invalid=true]").wait_for()
    assert "50" in page.text_content("#e-noise")  # the generator's bound, by its field
    page.fill("#f-noise", "0")
    page.fill("#f-units", "0")
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator("#f-units[aria-invalid=true]").wait_for()
    assert page.text_content("#e-units")
    assert page.url.endswith("/new")
    # Chromium logs each 4xx answer; the two 422s, shown by their fields, are all there is.
    assert page.errors == ["Failed to load resource: the server responded with a status of "
                           "422 (UNPROCESSABLE ENTITY)"] * 2


def test_xor_trains_live_from_the_form(service: tuple[str, str], page: Any, shots: Path,
                                       tmp_path: Path) -> None:
    """The first demo, started from the form: the loss curve gains points while the run
    trains (from its event stream), then the boundary, the heatmap and the network are
    drawn, on a laptop screen, without a console error."""
    base, key = service
    # Long enough to be watched with the compiled dense engine (about a million samples/s).
    _start_demo(page, base, key, "XOR · 1 × 4 sigmoid", epochs="30000")
    first = _until(page, "the first points of the loss curve", lambda: _points(page))
    _until(page, "the loss curve to grow", lambda: _points(page) > first)
    assert page.locator("h1 .badge.running").count() == 1, "it grew only once the run ended"
    page.locator("h1 .badge.succeeded").wait_for()
    _until(page, "the final boundary",
           lambda: (_data(page, "boundary", "weights") or "").startswith("final"))
    _until(page, "the network", lambda: _data(page, "network", "links") == "12")  # 2x4 + 4x1
    assert _points(page) > first
    assert json.loads(_data(page, "gradients", "last") or "[]")[0] is not None
    for chart in ("boundary", "gradients", "network", "loss", "accuracy"):
        assert _drawn(page, chart, tmp_path / f"{chart}.png") > 5_000, chart
    page.screenshot(path=shots / "dashboard-xor.png", full_page=True)
    assert page.errors == []


def test_the_vanishing_gradient_in_one_picture(service: tuple[str, str], page: Any,
                                               shots: Path, tmp_path: Path) -> None:
    """The second demo (Gaussian noise 30, six hidden layers of 4 sigmoid units): the
    heatmap's gradients shrink layer by layer toward the input."""
    base, key = service
    _start_demo(page, base, key, "Gaussian 30 · 6 × 4 sigmoid")
    page.locator("h1 .badge.succeeded").wait_for()
    _until(page, "the final boundary",
           lambda: (_data(page, "boundary", "weights") or "").startswith("final"))
    last = json.loads(_data(page, "gradients", "last") or "[]")
    assert len(last) == 7 and None not in last  # log10 mean |dL/dW|, input layer first
    assert last[-1] == max(last)
    assert max(last[:3]) < min(last[3:])  # the first layers get the least
    assert last[0] < last[-1] - 2  # over 100 times less at the input (Glorot's init: ~1,000)
    assert _drawn(page, "gradients", tmp_path / "gradients.png") > 5_000
    page.screenshot(path=shots / "dashboard-vanishing.png", full_page=True)
    page.get_by_role("link", name="Runs").click()  # both demos listed, with their links
    _until(page, "the runs", lambda: page.locator("tbody .badge.succeeded").count() >= 2)
    page.screenshot(path=shots / "dashboard-runs.png")
    page.locator("tbody a").nth(1).click()  # a data set
    page.get_by_role("heading", name="Data set").wait_for()
    assert _drawn(page, "data", tmp_path / "data.png") > 5_000
    assert page.errors == []


def _sweep(base: str, key: str, generator: dict[str, Any], **body: Any) -> tuple[flow.Api, str]:
    """A data set from `generator` and a sweep over it, through the API: (the API, its id)."""
    api = flow.Api(base, key)
    dataset = api.post("/v1/datasets", {"name": generator["kind"], "generator": generator}, 201)
    sweep = api.post("/v1/sweeps", {"dataset_id": dataset["id"], **body}, 202)
    return api, sweep["id"]


def _scatter(page: Any, parameter: str, name: str) -> str | None:
    return page.get_attribute(f"[data-parameter='{parameter}']", f"data-{name}")


def test_a_sweep_live_its_pictures_and_leaderboard(service: tuple[str, str], page: Any,
                                                   shots: Path, tmp_path: Path) -> None:
    """The XOR demo over 3 learning rates x 4 widths: the page follows the sweep while its
    children train (points added, counts moving), then shows one scatter per parameter (the
    learning rate on a log axis, the units on a linear one), the leaderboard in two pages,
    each child linked to its run page; the sweeps list and the runs list link to it."""
    base, key = service
    api, sweep_id = _sweep(
        base, key, {**flow.XOR, "n_samples": 200}, name="xor lr x units",
        network=flow.XOR_NET, training={**flow.XOR_TRAINING, "epochs": 400},
        parameters={LR: [0.03, 0.3, 3.0], UNITS: [2, 4, 8, 16]}, max_concurrent=2)
    page.goto(f"{base}/sweeps/{sweep_id}#key={key}")
    page.get_by_role("heading", name="Sweep xor lr x units").wait_for()
    assert page.locator("h1 .badge.running, h1 .badge.queued").count() == 1  # not settled yet
    _until(page, "a first child's point", lambda: int(_scatter(page, LR, "points") or 0))
    seen = int(_scatter(page, LR, "points") or 0)
    assert seen < 12, "every child had finished before the page was drawn"
    page.locator("h1 .badge.succeeded").wait_for()
    _until(page, "every child's point", lambda: _scatter(page, LR, "points") == "12")
    assert _scatter(page, LR, "scale") == "log" and _scatter(page, UNITS, "scale") == "linear"
    assert _scatter(page, UNITS, "points") == "12"
    sweep = api.get(f"/v1/sweeps/{sweep_id}")
    best = page.locator("[data-best]")
    assert best.get_attribute("data-best") == sweep["best_run_id"]
    assert page.locator(f"[data-parameter='{LR}'] circle[data-style=best]").count() == 1
    board = api.get(f"/v1/sweeps/{sweep_id}/leaderboard?limit=100")["items"]
    rows = page.locator(".board tbody tr")
    assert rows.count() == 10
    assert [rows.nth(i).get_attribute("data-run") for i in range(10)] == [
        r["run_id"] for r in board[:10]]
    page.locator(f"[data-parameter='{LR}']").screenshot(path=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 3_000
    page.screenshot(path=shots / "dashboard-sweep.png", full_page=True)
    page.get_by_role("button", name="Next").click()
    _until(page, "the second page", lambda: rows.count() == 2)
    assert [rows.nth(i).get_attribute("data-run") for i in range(2)] == [
        r["run_id"] for r in board[10:]]
    rows.nth(1).get_by_role("link").click()  # the last child's run page
    page.get_by_role("heading", name=f"Run {board[-1]['run_id'][:8]}").wait_for()
    page.get_by_role("link", name="Sweeps", exact=True).click()
    page.get_by_role("link", name="xor lr x units").click()  # back from the sweeps list
    page.get_by_role("heading", name="Sweep xor lr x units").wait_for()
    page.goto(f"{base}/?sweep_id={sweep_id}")  # its runs, each linking back to it
    _until(page, "the children", lambda: page.locator("tbody .badge.succeeded").count() == 12)
    assert page.locator(f"tbody a[href='/sweeps/{sweep_id}']").count() == 12
    assert page.errors == []


def test_a_sweep_over_whole_networks(service: tuple[str, str], page: Any, shots: Path) -> None:
    """The vanishing-gradient demo over depth and activation, each child a whole list of
    layers: a scatter with one category per network, named by its layers, and ASHA's
    stopped children drawn as such."""
    base, key = service
    hidden = [[{"type": "dense", "units": 4, "activation": act}] * depth
              for act in ("sigmoid", "relu") for depth in (2, 4, 6)]
    networks = [layers + [{"type": "dense", "units": 1, "activation": "sigmoid"}]
                for layers in hidden]
    _api, sweep_id = _sweep(
        base, key, {"kind": "gaussian", "noise": 30, "seed": 1}, name="depth x activation",
        network={"layers": networks[0]}, parameters={"network.layers": networks},
        training={"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.1},
                  "batch_size": 1, "epochs": 45, "seed": 1, "validation_fraction": 0.2},
        metric="val_loss", max_concurrent=2,
        early_stopping={"type": "asha", "min_epochs": 5, "reduction_factor": 3})
    page.goto(f"{base}/sweeps/{sweep_id}#key={key}")
    page.locator("h1 .badge.succeeded").wait_for()
    chart = "[data-parameter='network.layers']"
    _until(page, "every child's point",
           lambda: page.get_attribute(chart, "data-points") == "6")
    assert page.get_attribute(chart, "data-scale") == "category"
    labels = page.locator(f"{chart} .axis text").all_text_contents()
    assert "6 × 4 sigmoid" in labels and "2 × 4 relu" in labels  # the output layer left out
    stopped = int(page.get_attribute("[data-stopped]", "data-stopped") or 0)
    assert stopped >= 1
    assert page.locator(f"{chart} circle[data-style=stopped]").count() == stopped
    rows = page.locator(".board tbody tr")
    assert rows.count() == 6
    # the vanishing gradient: released after the 2- and 4-layer sigmoid stacks, which are
    # both ahead of it at epoch 5, it stops at that rung
    deep = next(t for t in rows.all_text_contents() if "6 × 4 sigmoid" in t)
    assert "stopped early" in deep
    page.screenshot(path=shots / "dashboard-sweep-depth.png", full_page=True)
    assert page.errors == []


def test_chromium_is_debians() -> None:
    """Playwright's own browser download is not used (nor reachable here)."""
    assert shutil.which("chromium") == CHROMIUM


def test_a_seq2seq_run_shows_its_cross_attention(service: tuple[str, str], page: Any,
                                                 shots: Path, tmp_path: Path) -> None:
    """An encoder-decoder run on `reverse`, made through the API: once it has succeeded its
    page decodes the data set's first sample and draws the cross-attention map, target step
    by source position, and reversal draws the anti-diagonal (each output step looks further
    left in the source than the one before)."""
    base, key = service
    api = flow.Api(base, key)
    dataset = api.post("/v1/datasets", {"name": "reverse", "generator": {
        "kind": "reverse", "length": 6, "vocab_size": 10, "n_samples": 2000, "seed": 1}}, 201)
    training = {"loss": "cross_entropy", "optimizer": {"type": "adam", "learning_rate": 0.003},
                "batch_size": 32, "epochs": 15, "seed": 1, "validation_fraction": 0.2}
    run = api.post("/v1/runs", {"dataset_id": dataset["id"], "training": training,
                                "network": seq2seq_network(10, dim=32, heads=4)}, 202)
    page.goto(f"{base}/runs/{run['id']}#key={key}")
    page.locator("h1 .badge.succeeded").wait_for()
    shape = json.loads(_until(page, "the attention map", lambda: _data(page, "attention", "shape")))
    source = [v for v in api.get(f"/v1/datasets/{dataset['id']}/samples?limit=1")["items"][0]
              ["input"] if v != 0]
    assert shape == [len(source) + 1, len(source)]  # every output step and EOS
    centres = json.loads(_data(page, "attention", "centres") or "[]")[:len(source)]
    assert all(a > b for a, b in zip(centres, centres[1:])), centres
    argmax = json.loads(_data(page, "attention", "argmax") or "[]")
    assert argmax[0] == len(source) - 1 and argmax[len(source) - 1] == 0, argmax
    assert "sequences" in (page.text_content("[data-chart=accuracy]") or "")  # exact match
    # no layer of it has a sigmoid, tanh or ReLU of its own: the chart says so, no legend
    acts = page.text_content("[data-chart=activations]") or ""
    assert "no sigmoid, tanh or ReLU layer" in acts and "saturated" not in acts, acts
    assert _drawn(page, "attention", tmp_path / "attention.png") > 2_000
    page.screenshot(path=shots / "dashboard-seq2seq.png", full_page=True)
    assert page.errors == []
