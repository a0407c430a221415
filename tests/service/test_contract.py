"""openapi.yaml is a valid OpenAPI 3.1 document and agrees with the app and the engine."""

from __future__ import annotations

import re

import pytest
import yaml
from flask import Flask
from openapi_spec_validator import validate as validate_openapi

import nn
from service.models import RUN_STATUSES, STAT_FIELDS
from service.schemas import SPEC_PATH, errors_for, spec

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def test_spec_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SPEC_PATH.read_text())
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def _routed(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        template = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        out |= {(m, template) for m in rule.methods - IGNORED_METHODS}
    return out


def _documented() -> set[tuple[str, str]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return {
        (m.upper(), path) for path, item in spec()["paths"].items() for m in item if m in methods
    }


def test_every_route_is_documented_and_every_documented_operation_is_routed(app: Flask) -> None:
    routed, documented = _routed(app), _documented()
    assert routed - documented == set(), "routes missing from openapi.yaml"
    assert documented - routed == set(), "openapi.yaml operations the app does not serve"


def test_path_parameters_are_uuids_in_both(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        for name, converter in rule._converters.items():  # noqa: SLF001 - werkzeug has no API
            assert type(converter).__name__ == "UUIDConverter", (rule.rule, name)
    for path, item in spec()["paths"].items():
        for param in item.get("parameters", []):
            ref = param["$ref"].rsplit("/", 1)[-1]
            assert spec()["components"]["parameters"][ref]["schema"]["format"] == "uuid", path


def test_every_operation_documents_its_errors_as_problems() -> None:
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response.get("$ref", "")
                    assert ref.startswith("#/components/responses/") or (
                        "application/problem+json" in response["content"]
                    ), (method, path, status)
            if path.startswith("/v1/") and "openapi" not in path:
                assert "500" in op["responses"], (method, path)


def _defaults(name: str) -> dict:
    props = spec()["components"]["schemas"][name]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


def test_spec_defaults_are_the_engines() -> None:
    """Every default openapi.yaml documents is the one nn/spec.py applies."""
    training = dict(nn.DEFAULTS["training"])
    documented = _defaults("TrainingSpec")
    assert documented.pop("optimizer", None) is None
    assert training.pop("optimizer") == {"type": "sgd"}
    assert documented == training
    for kind, schema in (("sgd", "SgdOptimizer"), ("adam", "AdamOptimizer")):
        assert _defaults(schema) == nn.DEFAULTS["optimizer"][kind]
    for kind, schema in (("step", "StepSchedule"), ("exponential", "ExponentialSchedule")):
        assert _defaults(schema) == nn.DEFAULTS["lr_schedule"][kind]
    assert _defaults("EarlyStopping") == nn.DEFAULTS["early_stopping"]
    assert _defaults("UniformInit") == nn.DEFAULTS["init"]["uniform"]
    assert _defaults("HeInit") == nn.DEFAULTS["init"]["he"]
    assert _defaults("DenseLayer") == {"activation": nn.DEFAULTS["dense"]["activation"]}
    assert _defaults("DropoutLayer") == nn.DEFAULTS["dropout"]


def test_spec_enumerations_are_the_services() -> None:
    schemas = spec()["components"]["schemas"]
    assert schemas["RunStatus"]["enum"] == list(RUN_STATUSES)
    stat_fields = set(schemas["LayerStat"]["properties"]) - {"epoch", "phase", "layer", "name"}
    assert stat_fields == set(STAT_FIELDS)
    generator_kinds = schemas["Generator"]["properties"]["kind"]["enum"]
    for kind in generator_kinds:
        nn.generate(kind, 4, 0, 1)  # every documented kind exists
    with pytest.raises(nn.SpecError):
        nn.generate("moons", 4, 0, 1)


def test_normalised_specs_validate_against_the_request_schemas() -> None:
    """What the engine stores (every default filled in) is itself a valid request."""
    info = nn.DataInfo((2,), 8, "classification", [0, 1], 1, [4, 4])
    network = {"layers": [{"type": "dense", "units": 3, "activation": "relu",
                           "init": {"type": "he"}},
                          {"type": "dropout"},
                          {"type": "dense", "units": 2, "activation": "softmax"}]}
    training = {"loss": "cross_entropy", "optimizer": {"type": "adam"},
                "lr_schedule": {"type": "step"}, "early_stopping": {}}
    plan = nn.build(network, training, info)
    assert errors_for("NetworkSpec", plan.network) == []
    assert errors_for("TrainingSpec", plan.training) == []


def test_layer_stats_description_is_the_engines() -> None:
    """The endpoint repeats nn/stats.py's account of how statistics are measured, verbatim
    (after its summary line). On failure: copy that docstring into openapi.yaml again."""
    import nn.stats

    def words(text: str) -> str:
        return " ".join(text.split())

    engine = words(nn.stats.__doc__.split("\n\n", 1)[1])
    operation = spec()["paths"]["/v1/runs/{run_id}/layer-stats"]["get"]
    assert engine in words(operation["description"])


def test_the_spec_is_served(client) -> None:  # noqa: ANN001
    as_yaml = client.get("/v1/openapi.yaml")
    assert as_yaml.status_code == 200
    assert yaml.safe_load(as_yaml.get_data(as_text=True)) == spec()
    as_json = client.get("/v1/openapi.json")
    assert as_json.get_json() == spec()
