"""openapi.yaml as another team uses it: openapi-python-client generates a client from the
spec `backprop up` serves (locally, no network), with no warning and with typed bodies and
answers for every operation, and that client alone runs the whole flow against the
service: data sets from arrays, a generator, a CSV and an NPZ upload; a run, polled until
it finishes; pages of epochs and layer statistics; the weights as JSON and as an .npz;
predictions; names and tags; a problem answer."""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import requests
import yaml

import nn
from tests.e2e import flow
from tests.procs import BIN, ROOT, Procs

PACKAGE = "backprop_client"


def _snake(operation_id: str) -> str:
    """The generator's module name for an operationId (createRun -> create_run)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", operation_id).lower()


@pytest.fixture
def generated(procs: Procs, tmp_path: Path) -> Iterator[tuple[ModuleType, dict, flow.Api]]:
    """The service (`backprop up`), the spec it serves, and the client generated from it."""
    (tmp_path / "service").mkdir()
    api, _ = flow.start_up(procs, tmp_path / "service")
    served = requests.get(f"{api.base}/v1/openapi.yaml", timeout=30)
    assert served.status_code == 200
    spec_file = tmp_path / "openapi.yaml"
    spec_file.write_bytes(served.content)
    out = tmp_path / "client"
    out.mkdir()
    # The generator formats its output with ruff (a dependency of it, in the virtualenv).
    env = {**procs.env, "PATH": f"{BIN}:{procs.env.get('PATH', '')}"}
    made = subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", str(spec_file), "--meta",
         "none", "--output-path", str(out / PACKAGE)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    said = made.stdout + made.stderr
    assert made.returncode == 0, said
    assert "warning" not in said.lower() and "error" not in said.lower(), said
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE), yaml.safe_load(served.content), api
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _operations(spec: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                yield method, path, op


def _check_typed(spec: dict) -> None:
    """Every operation's module reads its 2xx answers into a type (a model, a File, a str)
    and takes a typed body."""
    for method, path, op in _operations(spec):
        module = importlib.import_module(
            f"{PACKAGE}.api.{op['tags'][0]}.{_snake(op['operationId'])}")
        source = Path(module.__file__).read_text()
        answers = re.search(r"def _parse_response\(.*?\) -> (.*?):\n", source, re.S)[1]
        if any(s.startswith("2") and r.get("content") for s, r in _resolved(spec, op)):
            assert not re.search(r"\bAny\b", answers), (method, path, answers)
        if "requestBody" in op:
            body = re.search(r"def _get_kwargs\(.*?body: (.*?),\n", source, re.S)[1]
            assert not re.search(r"\b(Any|dict)\b", body), (method, path, body)


def _resolved(spec: dict, op: dict) -> Iterator[tuple[str, dict]]:
    for status, response in op["responses"].items():
        if "$ref" in response:
            response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
        yield status, response


def test_the_whole_flow_with_the_generated_client(generated,  # noqa: ANN001
                                                   request: pytest.FixtureRequest) -> None:
    client_package, spec, api = generated
    _check_typed(spec)
    m = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    ops = {name: importlib.import_module(f"{PACKAGE}.api.{tag}.{name}") for tag, name in (
        ("datasets", "create_dataset"), ("datasets", "get_dataset"), ("runs", "create_run"),
        ("runs", "get_run"), ("runs", "list_runs"), ("runs", "update_run"),
        ("results", "list_epochs"), ("results", "list_layer_stats"), ("results", "get_weights"),
        ("results", "get_weights_npz"), ("results", "predict"))}
    client = client_package.AuthenticatedClient(base_url=api.base, token=api.key,
                                                raise_on_unexpected_status=True)
    request.addfinalizer(lambda: client.__exit__(None, None, None))  # its httpx connections

    def create_dataset(body: Any) -> Any:
        dataset = ops["create_dataset"].sync(client=client, body=body)
        assert isinstance(dataset, m.Dataset), dataset
        return dataset

    # Data sets four ways: arrays, a generator, a CSV and an NPZ upload.
    table = create_dataset(m.DatasetFromArrays(
        name="xor-table", inputs=[[0, 0], [0, 1], [1, 0], [1, 1]], targets=[0, 1, 1, 0]))
    assert (table.n_samples, table.input_shape, table.classes) == (4, [2], [0, 1])
    xor = create_dataset(m.DatasetFromGenerator(
        name="xor", generator=m.XorGenerator(kind="xor", n_samples=500, seed=1)))
    assert xor.source.additional_properties["generator"]["n_samples"] == 500
    glyphs = create_dataset(m.DatasetFromGenerator(
        name="glyphs", generator=m.GlyphsGenerator(kind="glyphs", n_samples=20, size=6)))
    assert glyphs.input_shape == [6, 6]
    inputs, targets = nn.generate("xor", 50, 0, 2)
    csv = "x1,x2,label\n" + "".join(f"{a},{b},{y}\n" for (a, b), y in zip(inputs, targets))
    from_csv = create_dataset(m.DatasetUpload(
        name="xor-csv", file=types.File(payload=io.BytesIO(csv.encode()), file_name="xor.csv"),
        target_column="label"))
    assert (from_csv.n_samples, from_csv.source.kind.value) == (50, "csv")
    npz = io.BytesIO()
    np.savez(npz, inputs=inputs, targets=targets)
    from_npz = create_dataset(m.DatasetUpload(
        name="xor-npz", file=types.File(payload=io.BytesIO(npz.getvalue()),
                                        file_name="xor.npz")))
    assert (from_npz.sha256, from_npz.source.kind.value) == (from_csv.sha256, "npz")
    assert ops["get_dataset"].sync(client=client, dataset_id=from_npz.id).name == "xor-npz"

    # A run, built from typed parts, with a name and tags.
    body = m.RunCreate(
        dataset_id=xor.id, name="xor baseline",
        tags=m.Tags.from_dict({"team": "search", "lr": "0.5"}),
        network=m.NetworkSpec(layers=[
            m.DenseLayer(type_="dense", units=4, activation=m.Activation.SIGMOID),
            m.DenseLayer(type_="dense", units=1, activation=m.Activation.SIGMOID)]),
        training=m.TrainingSpec(
            loss=m.TrainingSpecLoss.SQUARED_ERROR, batch_size=1, epochs=200, seed=1,
            optimizer=m.SgdOptimizer(type_="sgd", learning_rate=0.5),
            validation_fraction=0.2))
    run = ops["create_run"].sync(client=client, body=body)
    assert isinstance(run, m.Run) and run.status == m.RunStatus.QUEUED, run
    assert run.tags.additional_properties == {"team": "search", "lr": "0.5"}

    # Polling, as a client waits: the long poll, until it has finished.
    for _ in range(10):
        run = ops["get_run"].sync(client=client, run_id=run.id, wait=20)
        if run.status.value in flow.FINISHED:
            break
    assert run.status == m.RunStatus.SUCCEEDED, run
    assert run.metrics.additional_properties["train_accuracy"] >= 0.9

    found = ops["list_runs"].sync(client=client, tag=["team:search", "lr:0.5"],
                                  name="xor baseline")
    assert [r.id for r in found.items] == [run.id]
    pinned = ops["update_run"].sync(client=client, run_id=run.id, body=m.RunUpdate(
        pinned=True, tags=m.TagsUpdate.from_dict({"stage": "reviewed", "lr": None})))
    assert pinned.pinned and pinned.tags.additional_properties == {"team": "search",
                                                                   "stage": "reviewed"}

    # Epochs and layer statistics, page by page.
    epochs, cursor = [], None
    while True:
        page = ops["list_epochs"].sync(client=client, run_id=run.id, limit=64,
                                       **({"cursor": cursor} if cursor else {}))
        epochs += page.items
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert [e.epoch for e in epochs] == list(range(1, 201))
    assert epochs[-1].train_loss < epochs[0].train_loss
    stats = ops["list_layer_stats"].sync(client=client, run_id=run.id, from_epoch=200, limit=1)
    assert [s.layer for s in stats.items] == [0] and stats.next_cursor
    rest = ops["list_layer_stats"].sync(client=client, run_id=run.id, from_epoch=200,
                                        cursor=stats.next_cursor)
    assert [s.layer for s in rest.items] == [1] and rest.items[0].grad_mean_abs > 0

    # The weights as JSON and as an .npz; predictions from them.
    weights = ops["get_weights"].sync(client=client, run_id=run.id)
    assert isinstance(weights, m.Weights)
    assert [np.shape(layer.additional_properties["W"]) for layer in weights.layers] == [
        (2, 4), (4, 1)]
    npz_file = ops["get_weights_npz"].sync(client=client, run_id=run.id)
    model = nn.Model.from_npz(npz_file.payload.read())
    corners = [[3, 3], [3, -3], [-3, 3], [-3, -3]]
    answer = ops["predict"].sync(client=client, run_id=run.id,
                                 body=m.PredictRequest(inputs=corners))
    assert isinstance(answer, m.PredictResponse)
    assert answer.labels == [1, 0, 0, 1]
    assert model.predict(np.array(corners, dtype=float))["outputs"] == answer.outputs

    # A problem answer: typed, with the field that was wrong.
    problem = ops["predict"].sync(client=client, run_id=run.id,
                                  body=m.PredictRequest(inputs=[[1, 2, 3]]))
    assert isinstance(problem, m.Problem), problem
    assert (problem.status, problem.code) == (422, "validation_error")
    assert [e.path for e in problem.errors] == ["inputs"]

    # The README's example, as written (but for the address and the key).
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"### Generating a client\n.*?```python\n(.*?)```", readme, re.S)[1]
    for written, here in (('"http://127.0.0.1:8000"', repr(api.base)),
                          ('open("var/api-key").read().strip()', repr(api.key))):
        assert written in snippet
        snippet = snippet.replace(written, here)
    names: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), names)  # noqa: S102 - our own documentation
    names["client"].__exit__(None, None, None)  # as the example's script would, by exiting
