"""GET /v1/runs/{run_id}/events: the run's epochs and statuses as they are stored, live
(text/event-stream; service/events.py has how)."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, request, stream_with_context

from service import events
from service.api.common import fetch
from service.api.results import MAX_POINTS
from service.auth import tenant_id
from service.db import get_session
from service.errors import validation_error
from service.models import Run
from service.params import arg_choice, arg_int

bp = Blueprint("events", __name__, url_prefix="/v1/runs/<uuid:run_id>")


@bp.get("/events")
def stream(run_id: uuid.UUID) -> Response:
    stats = arg_choice("include", ("layer_stats",)) == "layer_stats"
    max_points = arg_int("max_points", None, 2, MAX_POINTS)
    session = get_session()
    run = fetch(session, Run, run_id, "run")
    first = events.hub(current_app).snapshot(run)
    cursor = _resume_cursor(first)
    if cursor is None:
        cursor = events.Cursor(len(first.rewinds), events.START, None)
    else:
        max_points = None  # a resumed stream goes on row by row: no gap
    stream_id = events.open_stream(session, tenant_id(), current_app.config)
    session.close()  # no connection held while streaming
    body = events.Stream(current_app._get_current_object(),  # type: ignore[attr-defined]
                         run.id, stream_id, cursor, stats, max_points).events(first)
    return Response(stream_with_context(body), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _resume_cursor(first: events.Snapshot) -> events.Cursor | None:
    """The client's Last-Event-ID (the header wins: EventSource sends it on reconnecting to
    the URL it first opened), or ?last_event_id=; None for a fresh stream."""
    header = request.headers.get("Last-Event-ID")
    path, text = ("header.Last-Event-ID", header) if header is not None else (
        "query.last_event_id", request.args.get("last_event_id"))
    if not (text or "").strip():
        return None
    cursor = events.Cursor.parse(text, path)
    if cursor.rewinds > len(first.rewinds):
        raise validation_error(path, "is not an event id of this stream")
    return cursor
