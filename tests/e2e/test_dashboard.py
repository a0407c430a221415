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
    assert _drawn(page, "attention", tmp_path / "attention.png") > 2_000
    page.screenshot(path=shots / "dashboard-seq2seq.png", full_page=True)
    assert page.errors == []
