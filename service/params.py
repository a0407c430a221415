"""Reading requests: strict JSON bodies and typed query parameters.

JSON bodies must be `application/json` (or `+json`); NaN and Infinity literals and numbers
outside float64 are refused as invalid JSON, so nothing non-finite ever reaches the engine;
a body whose parsed objects would take more than JSON_MAX_MEMORY_BYTES is refused (413)
before it is parsed.
Query-parameter errors are 422s with the path `query.<name>`.
"""

from __future__ import annotations

import gc
import json
import math
import re
import threading
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import Flask, current_app, request

from service import offload
from service.errors import ApiError, size, validation_error, validation_errors
from service.schemas import query_parameters

_INT = re.compile(r"[+-]?[0-9]{1,18}")
# RFC 3339's date-time (what `format: date-time` means), which fromisoformat then reads.
_DATETIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})"
                       r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")
# A \uD800-\uDBFF escape not followed by a low one, or a \uDC00-\uDFFF not preceded by a
# high one: valid JSON, but not text any database can store.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is outside the range of a 64-bit float")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; only finite numbers are accepted")


def loads(raw: bytes) -> Any:
    """json.loads that refuses NaN, Infinity, numbers that overflow float64 and lone
    UTF-16 surrogates (ValueError)."""
    if b"\\u" in raw and _LONE_SURROGATE.search(raw):
        raise ValueError("a \\u escape encodes a lone UTF-16 surrogate, which is not text")
    with _collector_paused():
        return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)


_parsing = 0
_parsing_lock = threading.Lock()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while any thread parses JSON: parsed JSON
    holds no cycles, but each of its lists and dicts counts towards a collection, and those
    collections took three quarters of the parse of a 1M-row data set (3.6 s of 4.2)."""
    global _parsing
    with _parsing_lock:
        _parsing += 1
        gc.disable()
    try:
        yield
    finally:
        with _parsing_lock:
            _parsing -= 1
            if _parsing == 0:
                gc.enable()


# What json.loads makes of a body, from its bytes: an array or object costs about 72 bytes (the
# list or dict and its slot in its parent), an object's key about 120 more (its share of the
# dict's table), and a value about 32 (a float and its slot), counted by the commas between
# values. Measured, rows of numbers take 5-10 times their text, nested single values ("[1],")
# or objects 25 times.
CONTAINER_BYTES, KEY_BYTES, VALUE_BYTES = 72, 120, 32


def parsed_size(raw: bytes) -> int:
    """The estimated memory of json.loads(raw), from counts of bytes (~0.1 s for 64 MB, a few
    percent of parsing it); brackets, colons and commas inside strings count too, so it errs
    high."""
    containers = raw.count(b"[") + raw.count(b"{")
    return (len(raw) + CONTAINER_BYTES * containers + KEY_BYTES * raw.count(b":")
            + VALUE_BYTES * raw.count(b","))


def require_json() -> None:
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json, got {request.mimetype or 'none'}",
        )


def json_body() -> Any:
    """The request's JSON body: 415 for another content type, 400 "invalid_json" if malformed."""
    require_json()
    raw = request.get_data(cache=True)
    need, limit = parsed_size(raw), int(current_app.config["JSON_MAX_MEMORY_BYTES"])
    if need > limit:
        raise ApiError(413, "payload_too_large", f"the JSON body would take about {size(need)} "
                       f"of memory once read; the limit is {size(limit)} "
                       f"(JSON_MAX_MEMORY_BYTES): send fewer values (a large data set as an "
                       f".npz or CSV upload)")
    try:
        return offload.run(loads, raw, size=len(raw))
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, our refusals
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None


def json_object() -> dict[str, Any]:
    """The JSON body, which must be an object (422 at the root otherwise)."""
    body = json_body()
    if not isinstance(body, dict):
        raise validation_error("", "the body must be a JSON object")
    return body


def arg_int(name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    """?name=<integer in [lo, hi]>. A present but empty parameter is an error, not a default."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise validation_error(f"query.{name}", "must be an integer")
    value = int(raw)
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise validation_error(f"query.{name}", f"must be an integer {bound}")
    return value


def arg_choice(name: str, choices: Collection[str], default: str | None = None) -> str | None:
    """?name=<one of choices>."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise validation_error(f"query.{name}", "must be one of " + ", ".join(choices))
    return raw


def arg_choices(name: str, choices: Collection[str]) -> list[str] | None:
    """?name=a,b (a comma-separated list of choices), or None when absent."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    values = raw.split(",")
    bad = [v for v in values if v not in choices]
    if bad:
        raise validation_error(
            f"query.{name}", f"unknown value {bad[0]!r}; use one or more of " + ", ".join(choices)
        )
    return list(dict.fromkeys(values))


def arg_text(name: str, max_length: int) -> str | None:
    """?name=<1 to max_length characters>."""
    raw = request.args.get(name)
    if raw is not None and not 1 <= len(raw) <= max_length:
        raise validation_error(f"query.{name}", f"must have 1 to {max_length} characters")
    return raw


def arg_datetime(name: str) -> datetime | None:
    """?name=<RFC 3339 date-time with its offset>, e.g. 2026-12-06T21:00:00Z."""
    raw = request.args.get(name)
    if raw is None:
        return None
    match = _DATETIME.fullmatch(raw)
    try:  # Python reads at most microseconds, in upper case
        value = datetime.fromisoformat(
            f"{match[1]}T{match[2]}{(match[3] or '')[:7]}{match[4].upper()}") if match else None
    except ValueError:  # a month 13, a 25th hour...
        value = None
    if value is None or value.tzinfo is None:
        raise validation_error(f"query.{name}", "must be a date-time with its offset (RFC "
                               "3339), e.g. 2026-12-06T21:00:00Z")
    return value


def arg_uuid(name: str) -> str | None:
    """?name=<UUID>, canonicalised to the lower-case form ids are stored in."""
    raw = request.args.get(name)
    if raw is None:
        return None
    return parse_uuid(raw, f"query.{name}")


def parse_uuid(value: Any, path: str) -> str:
    """A UUID string in canonical form, or a 422 naming `path`."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise validation_error(path, "must be a UUID")


def init_app(app: Flask) -> None:
    app.before_request(reject_unknown_query_parameters)


def reject_unknown_query_parameters() -> None:
    """A 422 for query parameters the operation does not declare in openapi.yaml: a typo
    such as ?max_point=50 must not be silently ignored."""
    if request.url_rule is None or not request.args:
        return
    template = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", request.url_rule.rule)
    known = query_parameters(template, request.method)
    if known is None:
        return
    unknown = [name for name in request.args if name not in known]
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        message = f"is not a parameter of this operation (known: {allowed})"
        errors = [{"path": f"query.{name}", "message": message} for name in unknown[:20]]
        raise validation_errors(errors)
