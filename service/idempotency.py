"""`Idempotency-Key` on the POSTs that create something (data sets, runs).

A client that sends `Idempotency-Key: <its own unique string>` may retry the request as
often as it likes: the first success is stored, and every retry with the same key and the
same request (same tenant, method, path and body) gets that first answer back (status,
body, Location, plus `Idempotent-Replayed: true`) without creating anything. The same key
with a different request is a 422 `idempotency_key_reused`. Keys are kept for
IDEMPOTENCY_TTL_SECONDS and purged lazily after that. Only successes are stored: a request
that failed created nothing, so its retry simply runs again.

The same body means: byte for byte for JSON; for multipart uploads the same fields and the
same file contents and names (the multipart boundary, which clients draw at random, does
not count).

Concurrency: the key row is inserted in the same transaction as the rows the request
creates (`commit`), under the primary key (tenant_id, key). Of two concurrent requests with
one key, the second's insert waits for the first's transaction (PostgreSQL's unique index,
SQLite's write lock) and then fails; it rolls back everything it did and replays the first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Response, current_app, g, request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from service.auth import tenant_id
from service.db import get_session, session_scope
from service.errors import ApiError, validation_error
from service.models import IdempotencyKey, utcnow

HEADER = "Idempotency-Key"
PATH = "header.Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as a header carries it intact
# Expired keys are purged at most this often per process (they are ignored at once).
PURGE_EVERY_SECONDS = 60.0
STORED_HEADERS = ("Content-Type", "Location")

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Response])


@dataclass(frozen=True)
class Pending:
    key: str
    request_sha256: str


def idempotent(view: F) -> F:
    """Replay a stored answer before the view runs; otherwise let the view run and record
    its answer with `commit`."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not _KEY.fullmatch(key):
            raise validation_error(PATH, "must be 1 to 255 visible ASCII characters")
        pending = Pending(key, _fingerprint())
        g.idempotency = pending
        _purge_expired()
        stored = _stored(get_session(), key)
        if stored is not None:
            return _replay(stored, pending)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def commit(session: Session, response: Response) -> Response | None:
    """Commit the request's transaction, recording `response` under its Idempotency-Key.

    None: committed, send `response`. A Response: a concurrent request with the same key
    committed first; everything this one added was rolled back, send the returned replay.
    An IntegrityError that is not about the key is raised for the caller to handle.
    """
    pending: Pending | None = g.get("idempotency")
    if pending is None:
        session.commit()
        return None
    mine = (IdempotencyKey.tenant_id == tenant_id(), IdempotencyKey.key == pending.key)
    session.execute(sa.delete(IdempotencyKey).where(*mine, IdempotencyKey.created_at < _cutoff()))
    session.add(IdempotencyKey(
        tenant_id=tenant_id(), key=pending.key, request_sha256=pending.request_sha256,
        status=response.status_code, body=response.get_data(), created_at=utcnow(),
        headers={h: response.headers[h] for h in STORED_HEADERS if h in response.headers},
    ))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        stored = _stored(session, pending.key)
        if stored is None:
            raise
        return _replay(stored, pending)
    return None


def _stored(session: Session, key: str) -> IdempotencyKey | None:
    return session.scalars(sa.select(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id(), IdempotencyKey.key == key,
        IdempotencyKey.created_at >= _cutoff(),
    )).one_or_none()


def _replay(stored: IdempotencyKey, pending: Pending) -> Response:
    if stored.request_sha256 != pending.request_sha256:
        detail = (f"Idempotency-Key {pending.key!r} was sent before with a different request; "
                  "use a new key for a new request")
        message = "was already used for a different request"
        raise ApiError(422, "idempotency_key_reused", detail,
                       errors=[{"path": PATH, "message": message}])
    response = Response(stored.body, status=stored.status, headers=stored.headers)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _fingerprint() -> str:
    """SHA-256 of what makes two requests the same request (see the module docstring)."""
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    if request.mimetype == "multipart/form-data":
        fields = sorted((str(k), v) for k, v in request.form.items(multi=True))
        files = []
        for name, upload in request.files.items(multi=True):
            content = upload.stream.read()
            upload.stream.seek(0)
            files.append((str(name), upload.filename or "", hashlib.sha256(content).hexdigest()))
        digest.update(json.dumps(["multipart", fields, sorted(files)]).encode())
    else:
        digest.update(f"{request.mimetype}\n".encode())
        digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def _cutoff() -> datetime:
    return utcnow() - timedelta(seconds=float(current_app.config["IDEMPOTENCY_TTL_SECONDS"]))


def _purge_expired() -> None:
    """Delete expired keys (every tenant's), at most every PURGE_EVERY_SECONDS per app;
    best effort: a failure is logged and tried again later."""
    state = current_app.extensions.setdefault("idempotency_purge", {"at": None})
    now = time.monotonic()
    if state["at"] is not None and now - state["at"] < PURGE_EVERY_SECONDS:
        return
    state["at"] = now
    try:
        with session_scope() as session:
            session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < _cutoff()))
    except SQLAlchemyError:
        log.warning("could not purge expired idempotency keys", exc_info=True)
