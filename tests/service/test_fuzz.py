"""Schemathesis fuzzes every operation of openapi.yaml against the app (in process, SQLite).

Checks: no 5xx, every status, content type, header and body as documented, and requests
that violate the schema are refused with a 4xx. Requests carry the tenant's API key (the
admin key under /v1/admin); schemathesis also checks that they are refused without it.

A request the schema allows is never refused for its shape: a 422 to one names only fields
whose check no JSON Schema can express (SEMANTIC: a network spec against its data set, a
cursor the list never returned, a host that does not resolve...). Anything else the
server refuses, the spec must refuse first.

In every other schema-valid case, path ids and `dataset_id` in bodies are pointed at a real
data set and a trained run, so generated specs reach the engine's semantic checks and
predictions. More examples: BACKPROP_FUZZ_EXAMPLES=500 pytest tests/service/test_fuzz.py.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.test import Client, TestResponse

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


# What a 422 to a schema-valid request may name, by operation ("*": any): (path, message)
# regular expressions of its errors. Each is a check that depends on stored state or on
# relations between values that the spec cannot state.
DECODING = [("max_length|beam_size|attention", "applies to seq2seq runs only")]
WEBHOOK_HOSTS = "does not resolve|is .*, a loopback, private|not appear to be an IPv4 or IPv6"
SEMANTIC: dict[str, list[tuple[str, str]]] = {
    "*": [(r"query\.cursor", "is not a cursor this list returned")],
    # Samples all of one shape, targets of one kind with 2 classes or more, a file that is
    # CSV or NPZ with the right columns or arrays.
    "POST /v1/datasets": [(r"(inputs|targets)\b.*", ""), ("file", ""),
                          (r"generator\.n_samples", "at least 2 classes"),  # by chance
                          ("task", "a seq2seq data set is uploaded as JSON rows or as an")],
    # The network and training built against the data set; ids that exist.
    "POST /v1/runs": [(r"(network|training|initial_weights)\b.*", ""),
                      ("dataset_id", "no data set with this id"),
                      ("init_from_run", "no run with this id|has no final weights")],
    "PATCH /v1/runs/{run_id}": [("tags", r"the run would have \d+ tags")],
    # The model's input shape; decoding settings for a run that is not seq2seq.
    "POST /v1/runs/{run_id}/predict": [(r"inputs\b.*", ""), *DECODING],
    "POST /v1/models/{name}/predict": [(r"inputs\b.*", ""), *DECODING],
    # Runs, aliases and data sets that exist, with the weights asked for, of the right shape.
    "PUT /v1/models/{name}": [("run_id", "no run with this id"),
                              ("weights", "has no (final|best) weights")],
    "POST /v1/predictions": [("run_id", "no run with this id"),
                             ("model", "no model with this name|has no (final|best) weights"),
                             ("weights", "has no (final|best) weights"),
                             ("dataset_id", "no data set with this id|samples have the shape")],
    # A sweep's children, each built as a run (a path must exist in the spec; each value
    # must make a valid run); a grid's size; a validation metric needs a validation split;
    # a distribution's range the right way round.
    "POST /v1/sweeps": [(r"parameters\['.*'\](\[\d+\]|\.\w+)?", ""),
                        ("dataset_id", "no data set with this id"),
                        ("parameters", "combinations"),
                        ("metric", "needs a validation split")],
    "GET /v1/runs/{run_id}/epochs": [(r"query\.to_epoch", "must be >= from_epoch")],
    "GET /v1/runs/{run_id}/layer-stats": [(r"query\.to_epoch", "must be >= from_epoch")],
    "GET /v1/runs/{run_id}/events": [(r"header\.Last-Event-ID|query\.last_event_id",
                                      "is not an event id of this stream")],
    # Hosts that resolve, to public addresses; an IPv6 literal's address (RFC 4291's
    # grammar is beyond a pattern one can read).
    "POST /v1/webhooks": [("url", WEBHOOK_HOSTS)],
    "PATCH /v1/webhooks/{webhook_id}": [("url", WEBHOOK_HOSTS)],
}


def _semantic(operation: str, error: dict[str, str]) -> bool:
    return any(re.fullmatch(path, error["path"]) and re.search(message, error["message"])
               for path, message in [*SEMANTIC["*"], *SEMANTIC.get(operation, [])])


class _ClosingClient(Client):
    """Reads an answer whole and closes it, as a server does: schemathesis leaves it open, and
    with it the file the dashboard's page is sent from. Event streams are schemathesis' own."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        if response.mimetype != "text/event-stream":
            response.get_data()
            response.close()
        return response


APP = _fuzz_app()
_CLIENT = _ClosingClient(APP)
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
    if case.headers and "Idempotency-Key" in case.headers:  # each request a new one
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    key = ADMIN_KEY if case.path.startswith("/v1/admin/") else APP.config["FUZZ_KEY"]
    response = case.call_and_validate(session=_CLIENT,
                                      headers={"Authorization": f"Bearer {key}"},
                                      excluded_checks=[positive_data_acceptance])
    if positive and response.status_code == 422:
        errors = response.json().get("errors", [])
        operation = f"{case.method} {case.path}"
        assert errors and all(_semantic(operation, e) for e in errors), (
            f"{operation} refused a request its schema allows; make the spec refuse it: "
            f"{errors} (query {case.query}, body {str(case.body)[:300]})")
    gaps = [r for r in caplog.records if "engine failed" in r.getMessage()]
    assert not gaps, f"the engine raised something other than SpecError: {gaps[0].exc_info}"
