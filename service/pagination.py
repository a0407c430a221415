"""Cursor pages for every list, and the even downsampling of long epoch series.

A page is `{"items": [...], "next_cursor": "..." | null}`. The cursor is opaque to clients:
the URL-safe base64 of a JSON array holding the sort key of the page's last row (e.g.
`[created_at, id]`), and the next page is everything strictly after that key in the list's
order (keyset pagination: stable while rows are added, no OFFSET scans).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import current_app, request
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.errors import validation_error
from service.params import arg_int

Key = InstrumentedAttribute  # a mapped column that is part of the sort key


def page_limit() -> int:
    """?limit= (default PAGE_DEFAULT, at most PAGE_MAX)."""
    cfg = current_app.config
    return arg_int("limit", int(cfg["PAGE_DEFAULT"]), 1, int(cfg["PAGE_MAX"]))


def request_cursor() -> str | None:
    """?cursor= (absent or empty: the first page)."""
    return request.args.get("cursor") or None


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[Key]) -> tuple[Any, ...]:
    """The sort key a cursor holds, typed like `keys`; 422 at query.cursor if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("wrong length")
        return tuple(_typed(v, key) for v, key in zip(values, keys))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise validation_error("query.cursor", "is not a cursor this list returned") from None


def _typed(value: Any, key: Key) -> Any:
    column_type = key.type
    python_type = column_type.python_type  # a TypeDecorator's own (a Phase: str), or object
    if python_type is object and isinstance(column_type, sa.types.TypeDecorator):
        python_type = column_type.impl_instance.python_type
    if python_type is datetime:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed
    if python_type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError("not an int")
    if python_type is str and not isinstance(value, str):
        raise TypeError("not a str")
    if isinstance(column_type, sa.types.TypeDecorator):
        column_type.process_bind_param(value, None)  # a ValueError if it cannot store it
    return value


def page(
    session: Session,
    stmt: sa.Select,
    keys: Sequence[Key],
    serialize: Callable[[Any], dict[str, Any]],
    *,
    descending: bool = False,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """One page of `stmt` (a select of one mapped entity) ordered by `keys`.

    `limit` and `cursor` default to the request's `?limit=` and `?cursor=`.
    """
    if limit is None:
        limit = page_limit()
    if cursor is None:
        cursor = request_cursor()
    if cursor:
        after = decode_cursor(cursor, keys)
        row = sa.tuple_(*keys)
        bound = sa.tuple_(*(sa.literal(v, type_=k.type) for v, k in zip(after, keys)))
        stmt = stmt.where(row < bound if descending else row > bound)
    order = [k.desc() if descending else k.asc() for k in keys]
    rows = session.scalars(stmt.order_by(*order).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor([getattr(rows[-1], k.key) for k in keys]) if more else None
    return {"items": [serialize(r) for r in rows], "next_cursor": next_cursor}


def evenly_spaced(values: Sequence[Any], n: int) -> list[Any]:
    """At most n of `values` (in order), evenly spaced, always keeping the first and last.

    With M values and M > n >= 2, the k-th kept value (k = 0 .. n-1) is the one at position
    floor(k (M - 1) / (n - 1) + 1/2); n = 1 keeps the last value only.
    """
    m = len(values)
    if m <= n:
        return list(values)
    if n == 1:
        return [values[-1]]
    return [values[(k * (m - 1) + (n - 1) // 2) // (n - 1)] for k in range(n)]


def downsample_filter(
    session: Session,
    groups: sa.Select,
    max_points: int,
    phase: Key,
    epoch: Key,
    after: tuple[str, int] | None,
    limit: int,
) -> sa.ColumnElement[bool]:
    """A WHERE clause keeping only the epochs `evenly_spaced` picks, per phase.

    groups: a select of distinct (phase, epoch) in the requested range. Only the picked
    epochs at or after the cursor's (phase, epoch) that one page can reach are named.
    """
    by_phase: dict[str, list[int]] = {}
    for p, e in session.execute(groups.order_by(phase, epoch)).all():
        by_phase.setdefault(p, []).append(e)
    picked = [(p, e) for p, eps in sorted(by_phase.items()) for e in evenly_spaced(eps, max_points)]
    if after is not None:
        picked = [pe for pe in picked if pe >= after]
    reach: dict[str, list[int]] = {}
    # the cursor's own group (maybe used up) + the limit + 1 a page and its "more?" need
    for p, e in picked[: limit + 2]:
        reach.setdefault(p, []).append(e)
    if not reach:
        return sa.false()
    return sa.or_(*(sa.and_(phase == p, epoch.in_(eps)) for p, eps in reach.items()))


def cursor_prefix(keys: Sequence[Key], n: int) -> tuple[Any, ...] | None:
    """The first n values of the request cursor's sort key (for `downsample_filter`)."""
    cursor = request_cursor()
    return decode_cursor(cursor, keys)[:n] if cursor else None
