"""RFC 9457 problem details: the one way this service reports an error.

Every error response is `application/problem+json`:

    {"type": "https://backprop.example/problems/<code>", "title": "...", "status": 422,
     "detail": "...", "code": "<code>", "errors": [{"path": "...", "message": "..."}]}

`code` is the stable machine-readable name clients switch on; `errors` appears on
validation errors and names each bad field by its JSON path (`json_path`). Views raise
`ApiError`; werkzeug's HTTP errors (unknown route, wrong method, body too large) and any
unexpected exception go through the same renderer, so nothing else ever answers an error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from flask import Flask, Response
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://backprop.example/problems/"
PROBLEM_JSON = "application/problem+json"

# werkzeug's HTTP status -> our stable code.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts: Iterable[str | int]) -> str:
    """["network", "layers", 1, "units"] -> "network.layers[1].units".

    The format of `nn.SpecError.path`: dotted keys from the body's root, `[i]` for array
    indices; a key that is not an identifier is written `["key"]`. The root is "".
    """
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


class ApiError(Exception):
    """An error the client caused (or must know about), rendered as problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}
        self.extra = extra


def validation_error(path: str, message: str) -> ApiError:
    """A 422 naming one bad field."""
    return validation_errors([{"path": path, "message": message}])


def validation_errors(errors: Sequence[dict[str, str]]) -> ApiError:
    first = errors[0]
    where = f"{first['path']}: " if first["path"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, "validation_error", f"{where}{first['message']}{more}", errors=errors)


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what} with id {ident}")


def size(n: float) -> str:
    """Bytes as a message shows them, in binary units: 512 B, 3.2 MiB, 75.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: Sequence[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """The problem+json response."""
    from http import HTTPStatus

    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = list(errors)
    body.update(extra)
    resp = Response(json.dumps(body, allow_nan=False), status=status, mimetype=PROBLEM_JSON)
    resp.headers.update(headers or {})
    return resp


def _api_error(e: ApiError) -> Response:
    return problem(
        e.status, e.code, e.detail, title=e.title, errors=e.errors, headers=e.headers, **e.extra
    )


def _http_error(e: HTTPException) -> Response:
    status = e.code or 500
    code = _HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    headers = {}
    if status == 405 and getattr(e, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(e.valid_methods))
    detail = e.description or e.name
    if status == 413:
        detail = "the request body is larger than this server accepts"
    return problem(status, code, detail, headers=headers)


def _unexpected(e: Exception) -> Response:
    if isinstance(e, HTTPException):  # Flask routes these here only if no handler matched
        return _http_error(e)
    if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        # The database is down, unreachable, over its statement timeout or out of pooled
        # connections: nothing the client did, and worth trying again shortly.
        log.warning("database unavailable: %s", type(getattr(e, "orig", None) or e).__name__)
        return problem(503, "database_unavailable", "the database is unavailable; try again "
                       "shortly", headers={"Retry-After": "5"})
    log.exception("unhandled error")
    return problem(500, "internal_error", "an unexpected error occurred; it has been logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
