"""Check HTTP responses against openapi.yaml, for any test that talks to the API.

    from tests.openapi_check import assert_matches_spec
    assert_matches_spec("GET", "/v1/runs/{run_id}", 200, "application/json", body)

`assert_matches_spec` fails when the status is not documented for the operation, when the
content type is not documented for that status, or when the body does not match the
documented schema (JSON Schema 2020-12, `$ref`s resolved inside the spec).
`SpecCheckingClient` is a Flask test client that does this for every response it gets,
finding the path template from the URL; `check_requests_response` does it for a
`requests.Response` from a running server. JSON bodies are parsed strictly: NaN or Infinity
anywhere fails the test. A `text/event-stream` body is checked event by event against the
schema the response documents for one event (`check_events`); a streamed response
(`buffered=False`) is checked when the test calls `check_events` on what it read.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask.testing import FlaskClient
from werkzeug.datastructures import Headers

from service.schemas import spec, validator

BINARY_TYPES = {"application/x-npz", "application/octet-stream", "application/onnx",
                "application/yaml", "text/yaml", "text/plain", "text/html", "text/csv"}
EVENT_STREAM = "text/event-stream"


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(obj: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local $ref (Response objects may be references)."""
    while "$ref" in obj:
        pointer = obj["$ref"]
        node: Any = spec()
        for part in pointer.lstrip("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        obj = node
    return obj, pointer


def operation(method: str, template: str) -> dict[str, Any]:
    paths = spec()["paths"]
    assert template in paths, f"{template} is not in openapi.yaml"
    op = paths[template].get(method.lower())
    assert op is not None, f"{method} {template} is not in openapi.yaml"
    return op


def assert_matches_spec(
    method: str, path_template: str, status: int, content_type: str | None, body: Any
) -> None:
    """The response (status, content type, parsed JSON body or raw bytes) is documented."""
    op = operation(method, path_template)
    responses = op["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, (
        f"{method} {path_template} answered {status}, which openapi.yaml does not document "
        f"(documented: {', '.join(responses)}); body: {body!r:.500}"
    )
    response, pointer = _resolve(
        responses[key], _pointer("paths", path_template, method.lower(), "responses", key)
    )
    content = response.get("content")
    if not content:
        assert not body, f"{method} {path_template} {status} must have no body, got {body!r:.200}"
        return
    media = (content_type or "").split(";")[0].strip()
    assert media in content, (
        f"{method} {path_template} {status} answered {media!r}; documented: {', '.join(content)}"
    )
    if media in BINARY_TYPES:
        return
    if media == EVENT_STREAM:
        check_events(path_template, parse_events((body or b"").decode()))
        return
    schema = validator(f"{pointer}/content/{media.replace('/', '~1')}/schema")
    errors = sorted(schema.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    assert not errors, (
        f"{method} {path_template} {status} body does not match openapi.yaml:\n"
        + "\n".join(f"  at {list(e.absolute_path)}: {e.message:.300}" for e in errors[:10])
    )


def parse_events(text: str) -> list[dict[str, Any]]:
    """Server-sent events -> [{"id", "event", "data"}] with `data` parsed as JSON; comments
    and events without data (`retry:`) are left out. An unfinished last event too."""
    found = []
    for block in text.split("\n\n")[:-1]:
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            found.append({"id": fields.get("id"), "event": fields.get("event", "message"),
                          "data": json.loads(fields["data"])})
    return found


def check_events(path_template: str, events: list[dict[str, Any]]) -> None:
    """Each event is one of the variants of the schema the operation's 200 documents for
    one event (`event` const, `data` as its contentSchema says)."""
    media = operation("GET", path_template)["responses"]["200"]["content"][EVENT_STREAM]
    schema, _ = _resolve(media["schema"], "")
    variants = {v["properties"]["event"]["const"]: v for v in schema["oneOf"]}
    for event in events:
        assert event["event"] in variants, f"undocumented event {event['event']!r}"
        assert isinstance(event["id"], str), event
        ref = variants[event["event"]]["properties"]["data"]["contentSchema"]["$ref"]
        errors = list(validator(ref).iter_errors(event["data"]))
        assert not errors, (event, [e.message for e in errors[:5]])


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


def template_for(path: str) -> str | None:
    """The spec's path template matching a concrete path, or None."""
    for template in spec()["paths"]:
        if _template_regex(template).match(path):
            return template
    return None


def _not_json(name: str) -> Any:
    raise AssertionError(f"the answer holds {name}, which is not JSON")


def strict_json(data: bytes | str) -> Any:
    """json.loads that fails on NaN, Infinity and -Infinity (Python writes and reads them;
    JSON and most clients' parsers do not)."""
    return json.loads(data, parse_constant=_not_json)


def _parse(content_type: str, data: bytes) -> Any:
    media = content_type.split(";")[0].strip()
    if media in BINARY_TYPES or media == EVENT_STREAM or not data:
        return data or None
    return strict_json(data)


def check_response(method: str, path: str, status: int, content_type: str, data: bytes) -> None:
    """Check a response for a concrete path. Unrouted paths and undocumented methods must
    still answer a Problem."""
    template = template_for(path)
    documented = template is not None and method.lower() in spec()["paths"][template]
    if documented:
        assert_matches_spec(method, template, status, content_type, _parse(content_type, data))
        return
    assert status in (404, 405), f"{method} {path} is not in openapi.yaml but answered {status}"
    assert content_type.startswith("application/problem+json"), content_type
    errors = list(validator("#/components/schemas/Problem").iter_errors(strict_json(data)))
    assert not errors, errors


def check_requests_response(response: Any) -> None:
    """check_response for a `requests.Response` (tests against a running server)."""
    from urllib.parse import urlsplit

    check_response(
        response.request.method, urlsplit(response.url).path, response.status_code,
        response.headers.get("Content-Type", ""), response.content,
    )


class SpecCheckingClient(FlaskClient):
    """A Flask test client that checks every response against openapi.yaml.

    With `api_key` (tests/service/conftest.py's apps give their tenant's key by default) it
    sends `Authorization: Bearer <api_key>` unless the request has its own Authorization or
    X-API-Key header; `app.test_client(api_key=None)` sends none."""

    def __init__(self, *args: Any, api_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_key = api_key

    def open(self, *args: Any, **kwargs: Any):  # noqa: ANN201 - werkzeug TestResponse
        if self.api_key is not None and (not args or isinstance(args[0], str)):
            headers = Headers(kwargs.pop("headers", None) or {})
            if "Authorization" not in headers and "X-API-Key" not in headers:
                headers["Authorization"] = f"Bearer {self.api_key}"
            kwargs["headers"] = headers
        response = super().open(*args, **kwargs)
        request = response.request
        # werkzeug spools a large body to a temporary file, closed with the response only
        # when it follows redirects: close it with the response always.
        response.call_on_close(request.input_stream.close)
        if request.method not in ("HEAD", "OPTIONS"):
            # A stream is the test's to read (and to check_events), not ours to drain.
            streamed = kwargs.get("buffered") is False and response.status_code == 200
            check_response(request.method, request.path, response.status_code,
                           response.content_type or "", b"" if streamed else response.get_data())
            if not streamed:
                response.close()  # read whole above; this closes a file it was sent from
        return response
