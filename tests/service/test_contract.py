"""openapi.yaml is a valid OpenAPI 3.1 document and agrees with the app and the engine."""

from __future__ import annotations

import re

import pytest
import yaml
from flask import Flask
from openapi_spec_validator import validate as validate_openapi

import nn
from service.models import PARAM_STAT_FIELDS, RUN_STATUSES, STAT_FIELDS
from service.schemas import SPEC_PATH, errors_for, spec, validator

IGNORED_METHODS = {"HEAD", "OPTIONS"}
# The dashboard's scripts and style: files of the page, not operations of the API.
NOT_API = {"dashboard.asset"}


def test_spec_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SPEC_PATH.read_text())
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


def _routed(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_API:
            continue
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
    """Ids are UUIDs in the routes and in the spec; a model alias's name is the one path
    parameter that is not an id (its pattern, ModelName, needs no escaping)."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_API:
            continue
        for name, converter in rule._converters.items():  # noqa: SLF001 - werkzeug has no API
            expected = "UnicodeConverter" if rule.rule.startswith("/v1/models/") else \
                "UUIDConverter"
            assert type(converter).__name__ == expected, (rule.rule, name)
    for path, item in spec()["paths"].items():
        for param in item.get("parameters", []):
            ref = param["$ref"].rsplit("/", 1)[-1]
            schema = spec()["components"]["parameters"][ref]["schema"]
            if path.startswith("/v1/models/"):
                assert schema == {"$ref": "#/components/schemas/ModelName"}, path
            else:
                assert schema["format"] == "uuid", path


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


def _pointer(*parts: str) -> str:
    """A JSON pointer into the spec (RFC 6901 escapes)."""
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def test_every_json_answer_has_examples_that_match_its_schema() -> None:
    """Every 2xx JSON answer shows what it looks like, and what it shows is valid."""
    checked = 0
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, response in op["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    if not status.startswith("2") or "json" not in media_type:
                        continue
                    examples = media.get("examples", {})
                    assert examples, (method, path, status)
                    where = ("paths", path, method, "responses", status, "content", media_type,
                             "schema")
                    check = validator(_pointer(*where))
                    for example in examples.values():
                        name = example["$ref"].rsplit("/", 1)[-1]
                        value = spec()["components"]["examples"][name]["value"]
                        assert [e.message for e in check.iter_errors(value)] == [], name
                        checked += 1
    assert checked >= 30


def _schema(name: str) -> dict:
    return spec()["components"]["schemas"][name]


def _defaults(name: str) -> dict:
    return {k: v["default"] for k, v in _schema(name)["properties"].items() if "default" in v}


def _variants(name: str) -> dict[str, dict]:
    """A discriminated union's variants by their `type` const."""
    out = {}
    for ref in _schema(name)["oneOf"]:
        variant = _schema(ref["$ref"].rsplit("/", 1)[-1])
        out[variant["properties"]["type"]["const"]] = variant
    return out


def test_spec_layers_are_the_engines() -> None:
    """One Layer variant per engine layer type, with the same fields, required fields and
    defaults (nn.layers.LAYERS is the engine's registry; nn.DEFAULTS its defaults)."""
    from nn.layers import LAYERS

    variants = _variants("Layer")
    assert set(variants) == set(LAYERS)
    assert set(_schema("Layer")["discriminator"]["mapping"]) == set(LAYERS)
    for kind, cls in LAYERS.items():
        variant = variants[kind]
        assert set(variant["properties"]) == cls.fields(), kind
        assert set(variant.get("required", [])) == {"type", *cls.REQUIRED}, kind
        documented = {k: v["default"] for k, v in variant["properties"].items() if "default" in v}
        expected = {k: v for k, v in nn.DEFAULTS[kind].items() if k != "init"}
        assert documented == expected, kind


def test_spec_defaults_are_the_engines() -> None:
    """Every other default openapi.yaml documents is the one nn applies."""
    training = dict(nn.DEFAULTS["training"])
    documented = _defaults("TrainingSpec")
    assert documented.pop("optimizer", None) is None
    assert training.pop("optimizer") == {"type": "sgd"}
    assert documented == training
    assert set(_schema("TrainingSpec")["properties"]) == {*nn.DEFAULTS["training"], "pretrain"}
    for kind, schema in (("sgd", "SgdOptimizer"), ("adam", "AdamOptimizer")):
        assert _defaults(schema) == nn.DEFAULTS["optimizer"][kind]
    for kind, schema in (("step", "StepSchedule"), ("exponential", "ExponentialSchedule")):
        assert _defaults(schema) == nn.DEFAULTS["lr_schedule"][kind]
    assert _defaults("EarlyStopping") == nn.DEFAULTS["early_stopping"]
    assert _defaults("Pretrain") == nn.DEFAULTS["pretrain"]
    assert set(_variants("Init")) == set(nn.DEFAULTS["init"])
    assert _defaults("UniformInit") == nn.DEFAULTS["init"]["uniform"]
    assert _defaults("HeInit") == nn.DEFAULTS["init"]["he"]


def test_spec_generators_are_the_engines() -> None:
    """One Generator variant per engine kind, discriminated by `kind`, each with only its
    own fields and the engine's defaults for that kind."""
    import inspect

    from nn.generators import KINDS

    signature = inspect.signature(nn.generate).parameters
    union = _schema("Generator")
    names = {}
    for ref in union["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        kind = _schema(name)["properties"]["kind"]["const"]
        names[kind] = name
        assert union["discriminator"]["mapping"][kind] == ref["$ref"]
    assert set(names) == set(KINDS)
    for kind, name in names.items():
        assert _schema(name)["required"] == ["kind"], kind
        assert _schema(name)["additionalProperties"] is False, kind
        assert _defaults(name) == {
            "n_samples": signature["n_samples"].default, "noise": signature["noise"].default,
            "seed": None, **nn.DEFAULTS["generator"].get(kind, {})}, kind
        nn.generate(kind, 4, 0, 1)  # every documented kind exists
    with pytest.raises(nn.SpecError):
        nn.generate("moons", 4, 0, 1)


def test_spec_enumerations_are_the_services() -> None:
    schemas = spec()["components"]["schemas"]
    assert schemas["RunStatus"]["enum"] == list(RUN_STATUSES)
    detail = {"params", "grad_norm_by_time"}
    stat_fields = set(schemas["LayerStat"]["properties"]) - {"epoch", "phase", "layer", "name"}
    assert stat_fields == set(STAT_FIELDS) | detail
    assert set(schemas["ParamStat"]["properties"]) == {"param", *PARAM_STAT_FIELDS}


NORMALISED_CASES = [
    ((2,), [{"type": "dense", "units": 3, "activation": "relu", "init": {"type": "he"}},
            {"type": "dropout"}, {"type": "dense", "units": 2, "activation": "softmax"}]),
    ((8, 8), [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": 1},
              {"type": "maxpool2d"}, {"type": "avgpool2d", "pool_size": [2, 1], "stride": 1},
              {"type": "flatten"}, {"type": "dense", "units": 2, "activation": "softmax"}]),
    ((5, 1), [{"type": "rnn", "units": 3, "return_sequences": True}, {"type": "lstm", "units": 3},
              {"type": "layer_norm"}, {"type": "dense", "units": 2, "activation": "softmax"}]),
    ((6,), [{"type": "embedding", "vocab_size": 10, "dim": 4},
            {"type": "positional_encoding", "mode": "learned"},
            {"type": "self_attention", "heads": 2, "causal": True},
            {"type": "transformer_encoder", "heads": 2},
            {"type": "sequence_pool", "mode": "last"},
            {"type": "dense", "units": 2, "activation": "softmax"}]),
]


@pytest.mark.parametrize(("input_shape", "layers"), NORMALISED_CASES)
def test_normalised_specs_validate_against_the_request_schemas(input_shape, layers) -> None:  # noqa: ANN001
    """What the engine stores (every default filled in) is itself a valid request."""
    info = nn.DataInfo(input_shape, 8, "classification", [0, 1], 1, [4, 4], (), (0, 9))
    training = {"loss": "cross_entropy", "optimizer": {"type": "adam"},
                "lr_schedule": {"type": "step"}, "early_stopping": {}}
    if len(input_shape) == 1 and layers[0]["type"] == "dense":
        training["pretrain"] = {"epochs": 2}
    plan = nn.build({"layers": layers}, training, info)
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
    assert as_yaml.mimetype == "application/yaml"
    as_text = client.get("/v1/openapi.yaml", headers={"Accept": "text/yaml, */*;q=0.1"})
    assert as_text.mimetype == "text/yaml" and as_text.get_data() == as_yaml.get_data()
    as_json = client.get("/v1/openapi.json")
    assert as_json.get_json() == spec()
