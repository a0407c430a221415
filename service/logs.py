"""One log format for every process: the API, gunicorn, the Celery worker and beat.

LOG_FORMAT "json" writes one JSON object a line, for a log collector:

    {"ts": "2026-11-28T10:15:02.123Z", "level": "INFO", "logger": "worker.training",
     "message": "run 5c1e...: succeeded", "run_id": "5c1e...", "dataset_id": "9a0b..."}

with `run_id`, `dataset_id` and `request_id` wherever they are known, and any `extra=` a call
passes. "text" writes the same as one readable line, the ids at its end (`backprop up`).

The ids come from a context variable, so every line logged while they are bound carries them,
whichever library logs it: a request binds its `request_id` (from X-Request-ID, or a new one,
echoed in the response) and the ids in its URL; a worker binds `run_id` (`bound`) and then
`dataset_id` (`bind`) while it trains a run.

Who installs the handler: gunicorn's config (service/gunicorn_conf.py, `dict_config`) for the
API, `setup_logging` in worker/app.py for Celery; `create_app` only adds the request hooks,
so tests and embedding applications keep their own logging.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask, Response

REQUEST_ID_HEADER = "X-Request-ID"
# The ids a line may carry, in the order they are written.
IDS = ("request_id", "run_id", "prediction_id", "dataset_id")

_ids: ContextVar[dict[str, str] | None] = ContextVar("backprop_log_ids", default=None)
# A LogRecord's own attributes; anything else on a record came from `extra=`.
_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName"}

log = logging.getLogger("service.requests")


@contextmanager
def bound(**ids: str) -> Iterator[None]:
    """Every line logged in this block (in this thread or task) carries `ids`."""
    token = _ids.set({**(_ids.get() or {}), **ids})
    try:
        yield
    finally:
        _ids.reset(token)


def bind(**ids: str) -> None:
    """Add `ids` to the current `bound` block or request (outside one: nothing)."""
    current = _ids.get()
    if current is not None:
        current.update(ids)


def current() -> dict[str, str]:
    return dict(_ids.get() or {})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_ids.get() or {})
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line a record, `TIME LEVEL logger: message [k=v k=v]`, any traceback below it.

    Values are written bare when they are plain tokens, else JSON-quoted, and control
    characters in the message are escaped: a client's text (an X-Request-ID may be any
    printable text, a path anything) can neither close the brackets and forge a field such as
    `run_id`, nor start a line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escape, record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = {**(_ids.get() or {}), **_extra(record)}
        if fields:
            line += " [" + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items()) + "]"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


# A value that needs no quotes: no space, bracket, '=', quote, backslash (and printable).
_BARE = re.compile(r"[^\s\[\]=\"'\\]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def _text_value(value: Any) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) and text.isprintable() else json.dumps(text)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items()
            if k not in _RECORD_ATTRS and not k.startswith("_")}


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"LOG_FORMAT must be 'json' or 'text', not {fmt!r}")


def configure(fmt: str, level: str | int = "INFO") -> None:
    """This process's logging: one stderr handler on the root logger, in `fmt`."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def dict_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """`configure` as a logging.config.dictConfig dict (gunicorn's `logconfig_dict`): its own
    loggers, which it gives handlers of their own, only propagate to the root's. Its access
    lines are off: the app logs one per request (`service.requests`), with its request id."""
    formatter(fmt)  # fail at start on a bad value
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"service.logs.{'Json' if fmt == 'json' else 'Text'}"
                                         "Formatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "service",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
    }


def init_app(app: Flask) -> None:
    """Request ids, and one line per request (method, path, status, duration)."""
    # Flask is imported here, not with the module: gunicorn's master imports this module for
    # its formatters (dict_config) and must not import Flask before its gevent workers patch
    # the standard library (service/gunicorn_conf.py).
    from flask import g, request

    def begin() -> None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        # Taken as given when it looks like an id (a proxy's); otherwise a new one.
        request_id = given if 0 < len(given) <= 200 and given.isprintable() \
            else uuid.uuid4().hex
        ids = {"request_id": request_id}
        for name in ("run_id", "prediction_id", "dataset_id"):
            if request.view_args and name in request.view_args:
                ids[name] = str(request.view_args[name])
        g.log_token = _ids.set(ids)
        g.log_started = time.perf_counter()

    def answered(response: Response) -> Response:
        ids = _ids.get() or {}
        if "request_id" in ids:
            response.headers[REQUEST_ID_HEADER] = ids["request_id"]
            ms = (time.perf_counter() - g.log_started) * 1000
            log.info("%s %s %d", request.method, request.path, response.status_code,
                     extra={"status": response.status_code, "duration_ms": round(ms, 1)})
        return response

    def end(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            _ids.reset(token)

    app.before_request(begin)
    app.after_request(answered)
    app.teardown_request(end)
