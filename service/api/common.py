"""Small helpers the blueprints share."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from flask import Response, jsonify
from sqlalchemy.orm import Session

from service.errors import not_found

T = TypeVar("T")


def fetch(session: Session, model: type[T], ident: uuid.UUID | str, what: str) -> T:
    """The row with this primary key, or a 404 problem naming `what`."""
    row = session.get(model, str(ident))
    if row is None:
        raise not_found(what, str(ident))
    return row


def json_response(body: Any, status: int = 200, location: str | None = None) -> Response:
    resp = jsonify(body)
    resp.status_code = status
    if location is not None:
        resp.headers["Location"] = location
    return resp
