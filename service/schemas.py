"""Request validation against openapi.yaml: one source of truth for request shapes.

The spec is loaded once; `validate("RunCreate", body)` checks `body` against
`components/schemas/RunCreate` with JSON Schema Draft 2020-12 and raises one 422 listing
every bad field by its JSON path. Messages are rewritten to short sentences that never echo
the (possibly huge) offending value. For `oneOf` unions discriminated by a `const` property
(layer `type`, optimizer `type`, ...) the errors of the variant the client chose are
reported, not "is not valid under any of the given schemas".
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from flask import has_request_context, request
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service import offload
from service.errors import json_path, validation_errors

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC_URI = "urn:backprop:openapi"
MAX_ERRORS = 50


@functools.cache
def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


@functools.cache
def spec() -> dict[str, Any]:
    """openapi.yaml as a dict (loaded once per process; libyaml's loader when PyYAML has
    it, which is six times faster than the pure-Python one)."""
    return yaml.load(spec_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def registry() -> Registry:
    """A JSON Schema registry holding the spec, so `#/components/...` references resolve."""
    return Registry().with_resource(SPEC_URI, Resource(spec(), specification=DRAFT202012))


@functools.cache
def validator(ref: str) -> Draft202012Validator:
    """A validator for a JSON pointer into the spec, e.g. "#/components/schemas/Run"."""
    return _Validator({"$ref": SPEC_URI + ref}, registry=registry())


# ---- a fast `items` for big arrays of plain values ----------------------------------------
#
# jsonschema spends ~15 us per array element; a data set of a million rows would take
# minutes. When an `items` schema uses only the keywords below, a compiled Python predicate
# checks the elements, and only the first failing element goes through jsonschema (for its
# error message). Validity is unchanged; an array reports its first bad element only.

_FLAT_KEYWORDS = {"type", "minLength", "maxLength", "minItems", "items", "description", "title"}
_PY_TYPES: dict[str, Callable[[Any], bool]] = {
    "number": lambda v: type(v) in (int, float),
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "array": lambda v: type(v) is list,
    "null": lambda v: v is None,
}
_ITEMS = Draft202012Validator.VALIDATORS["items"]


@functools.cache
def _predicate(schema_json: str) -> Callable[[Any], bool] | None:
    """A predicate equivalent to a "flat" schema (given as canonical JSON), else None."""
    schema = json.loads(schema_json)
    if not isinstance(schema, dict) or not set(schema) <= _FLAT_KEYWORDS or "type" not in schema:
        return None
    names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
    if not all(n in _PY_TYPES for n in names):
        return None
    type_ok = [_PY_TYPES[n] for n in names]
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    min_items = schema.get("minItems", 0)
    inner = _predicate(json.dumps(schema["items"], sort_keys=True)) if "items" in schema else None
    if "items" in schema and inner is None:
        return None

    def check(v: Any) -> bool:
        if not any(ok(v) for ok in type_ok):
            return False
        if type(v) is str:
            return lo <= len(v) and (hi is None or len(v) <= hi)
        if type(v) is list:
            return len(v) >= min_items and (inner is None or all(map(inner, v)))
        return True

    return check


def _fast_items(
    validator: Any, items: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    check = _predicate(json.dumps(items, sort_keys=True)) if isinstance(items, dict) else None
    if check is None or not isinstance(instance, list):
        yield from _ITEMS(validator, items, instance, schema)
        return
    prefix = len(schema.get("prefixItems", ()))
    for index in range(prefix, len(instance)):
        if not check(instance[index]):
            yield from validator.descend(instance[index], items, path=index)
            return


@functools.cache
def _resolved(ref: str) -> Any:
    """What a `$ref` points at. openapi.yaml has no `$id`, so every reference resolves
    against the one spec document and always to the same schema: remembered, where
    `referencing` would walk the JSON pointer at every use (half the time of validating a
    small body)."""
    return registry().resolver(SPEC_URI).lookup(ref)


def _cached_ref(
    validator: Any, ref: str, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    resolved = _resolved(ref)  # what jsonschema's own `$ref` does, with the lookup cached
    yield from validator.descend(instance, resolved.contents, resolver=resolved.resolver)


_Validator = validators.extend(Draft202012Validator, {"items": _fast_items, "$ref": _cached_ref})


@functools.cache
def query_parameters(template: str, method: str) -> frozenset[str] | None:
    """The query parameters the spec declares for an operation (None: not in the spec)."""
    item = spec()["paths"].get(template)
    if item is None or method.lower() not in item:
        return None
    params = [*item.get("parameters", []), *item[method.lower()].get("parameters", [])]
    resolved = [_follow(p) for p in params]
    return frozenset(p["name"] for p in resolved if p["in"] == "query")


def _follow(obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        node: Any = spec()
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj


def errors_for(name: str, instance: Any) -> list[dict[str, str]]:
    """Every violation of `components/schemas/<name>` by `instance`, as path + message."""
    found = {}
    for error in validator(f"#/components/schemas/{name}").iter_errors(instance):
        for path, message in _explain(error):
            found.setdefault((path, message), None)
    ordered = sorted(found, key=lambda pm: pm[0])
    return [{"path": p, "message": m} for p, m in ordered[:MAX_ERRORS]]


def validate(name: str, instance: Any) -> None:
    """Raise a 422 problem when `instance` does not match `components/schemas/<name>`.
    `instance` is (a part of) the request's body: the walk through it, which takes seconds
    for millions of numbers, runs off the event loop when the body is large."""
    errors = offload.run(errors_for, name, instance, size=_body_size())
    if errors:
        raise validation_errors(errors)


def _body_size() -> int:
    return (request.content_length or 0) if has_request_context() else 0


# ---- messages ---------------------------------------------------------------------------

_TYPE_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
    "null": "null",
}


def _types(value: str | list[str]) -> str:
    names = [value] if isinstance(value, str) else value
    return " or ".join(_TYPE_NAMES.get(n, n) for n in names)


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    """One ValidationError -> (JSON path, message) pairs."""
    path = list(error.absolute_path)
    v, expected, instance = error.validator, error.validator_value, error.instance
    if "propertyNames" in error.relative_schema_path and isinstance(instance, str):
        # a key of the object at `path` (jsonschema reports it at the object's path)
        yield json_path([*path, instance[:100]]), "is not an allowed key: " + next(
            (m for _, m in _explain_key(error)), "see the schema")
    elif v in ("oneOf", "anyOf") and error.context:
        yield from _explain_union(error, path)
    elif v == "required":
        for key in expected:
            if isinstance(instance, dict) and key not in instance:
                yield json_path([*path, key]), "is required"
    elif v == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        allowed = ", ".join(sorted(known)) or "none"
        for key in instance:
            if key not in known:
                yield json_path([*path, key]), f"is not a known field (known: {allowed})"
    elif v == "type":
        yield json_path(path), f"must be {_types(expected)}"
    elif v == "enum":
        yield json_path(path), "must be one of " + ", ".join(json.dumps(e) for e in expected)
    elif v == "const":
        yield json_path(path), f"must be {json.dumps(expected)}"
    else:
        yield json_path(path), _MESSAGES.get(v, _fallback)(expected, instance, error)


def _explain_key(error: ValidationError) -> Iterator[tuple[str, str]]:
    """What a refused object key breaks (its length, pattern...)."""
    if error.validator == "maxLength":
        yield "", f"keys have at most {error.validator_value} characters"
    elif error.validator == "minLength":
        yield "", "keys must not be empty"
    elif error.validator == "pattern":
        yield "", f"keys match the pattern {error.validator_value}"


def _fallback(_expected: Any, _instance: Any, error: ValidationError) -> str:
    return error.message if len(error.message) <= 200 else error.message[:200] + "..."


_MESSAGES = {
    "minimum": lambda x, *_: f"must be >= {x}",
    "maximum": lambda x, *_: f"must be <= {x}",
    "exclusiveMinimum": lambda x, *_: f"must be > {x}",
    "exclusiveMaximum": lambda x, *_: f"must be < {x}",
    "minItems": lambda x, *_: "must not be empty" if x == 1 else f"must have at least {x} items",
    "maxItems": lambda x, *_: f"must have at most {x} items",
    "minLength": lambda x, *_: "must not be empty" if x == 1 else f"needs at least {x} characters",
    "maxLength": lambda x, *_: f"must have at most {x} characters",
    "minProperties": lambda x, *_: f"must have at least {x} fields",
    "maxProperties": lambda x, *_: f"must have at most {x} fields",
    "pattern": lambda x, *_: f"must match the pattern {x}",
    "uniqueItems": lambda *_: "must not contain duplicates",
    "not": lambda *_: "is not allowed here",
    "oneOf": lambda *_: "matches more than one of the allowed forms",
}


def _explain_union(error: ValidationError, path: list) -> Iterator[tuple[str, str]]:
    """Report the variant the client meant: the one whose discriminator matched.

    A branch is ruled out when the instance has the wrong JSON type for it, or when its
    `const` on a direct property (the discriminator, e.g. "type") failed.
    """
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    wrong_type, wrong_tag, candidates = [], {}, []
    for index, errs in sorted(branches.items()):
        type_miss = [e for e in errs if e.validator == "type" and not e.relative_path]
        tag_miss = [e for e in errs if e.validator == "const" and len(e.relative_path) == 1]
        if type_miss:
            wrong_type.append(type_miss[0].validator_value)
        elif tag_miss:
            for e in tag_miss:
                wrong_tag.setdefault(e.relative_path[0], []).append(e.validator_value)
        else:
            candidates.append(errs)
    if candidates:  # the intended variant (or the closest one): explain its errors
        for sub in min(candidates, key=len):
            yield from _explain(sub)
    elif wrong_tag:
        for key, values in wrong_tag.items():
            choices = ", ".join(json.dumps(v) for v in dict.fromkeys(values))
            yield json_path([*path, key]), f"must be one of {choices}"
    elif wrong_type:
        flat = [t for ts in wrong_type for t in ([ts] if isinstance(ts, str) else ts)]
        yield json_path(path), f"must be {_types(list(dict.fromkeys(flat)))}"
    else:
        yield json_path(path), "does not match any of the allowed forms"
