"""Schemathesis fuzzes every operation of openapi.yaml against the app (in process, SQLite).

Checks: no 5xx, every status, content type, header and body as documented, and requests
that violate the schema are refused with a 4xx. Requests carry the tenant's API key (the
admin key under /v1/admin); schemathesis also checks that they are refused without it. Not checked: that every schema-valid request
succeeds (positive_data_acceptance): a schema-valid spec can still disagree with its data
set (3 output units for 2 classes), which is a documented 422.

In every other schema-valid case, path ids and `dataset_id` in bodies are pointed at a real
data set and a trained run, so generated specs reach the engine's semantic checks and predictions. More
examples: BACKPROP_FUZZ_EXAMPLES=500 pytest tests/service/test_fuzz.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service import db
from tests.service.conftest import make_app
from tests.service.helpers import create_run, create_xor_dataset, finish_run, trained_model

EXAMPLES = int(os.environ.get("BACKPROP_FUZZ_EXAMPLES", "25"))


ADMIN_KEY = "fuzz-admin-key-" + "x" * 32


def _fuzz_app() -> Flask:
    """Built at import: schemathesis reads the spec from the app when the module loads."""
    url = f"sqlite:///{tempfile.mkdtemp(prefix='backprop-fuzz-')}/fuzz.db"
    app = make_app(url, MAX_CONTENT_LENGTH=256 * 1024, ADMIN_KEY=ADMIN_KEY)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a bug must show as the 500 it would be
    client = app.test_client()
    app.config["FUZZ_KEY"] = client.api_key
    app.test_client_class = FlaskClient  # schemathesis does the checking here
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(app, run["id"], epochs=5, artifacts={"final": trained_model(run).to_npz()})
    app.config["FUZZ_IDS"] = {"dataset_id": dataset["id"], "run_id": run["id"]}
    return app


APP = _fuzz_app()
_CALLS = itertools.count()
schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    db.engine(APP).dispose()
    shutil.rmtree(Path(APP.config["DATABASE_URL"].removeprefix("sqlite:///")).parent)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True, database=None)
def test_every_operation_keeps_the_contract(case, caplog) -> None:  # noqa: ANN001
    ids = APP.config["FUZZ_IDS"]
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    if next(_CALLS) % 2 and positive and case.method != "DELETE":
        for name, value in ids.items():
            if case.path_parameters and name in case.path_parameters:
                case.path_parameters[name] = value
        if isinstance(case.body, dict) and "dataset_id" in case.body:
            case.body["dataset_id"] = ids["dataset_id"]
    key = ADMIN_KEY if case.path.startswith("/v1/admin/") else APP.config["FUZZ_KEY"]
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"},
                           excluded_checks=[positive_data_acceptance])
    gaps = [r for r in caplog.records if "engine failed" in r.getMessage()]
    assert not gaps, f"the engine raised something other than SpecError: {gaps[0].exc_info}"
