"""Database engine and sessions.

One engine per app (`app.extensions["db"]`). Requests get a session on `g`, closed in
`teardown_appcontext`; the worker opens short transactions with `session_scope()`. Functions
that persist take a session and never commit on their own: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app, g
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"])
    app.extensions["db"] = sessionmaker(engine, expire_on_commit=False)
    app.teardown_appcontext(_close_session)


def engine(app: Flask | None = None) -> Engine:
    return (app or current_app).extensions["db"].kw["bind"]


def get_session() -> Session:
    """The request's session (created on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db"]()
    return g.db_session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


def connection_lost(exc: BaseException) -> bool:
    """Did this database error come from the connection (the server restarted, the
    connection was cut, no connection could be made): worth trying again later, unlike an
    error in the statement itself?"""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


@contextmanager
def session_scope(app: Flask | None = None) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    session = (app or current_app).extensions["db"]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):  # noqa: ANN201 - alembic.config.Config
    """The Alembic configuration of this repository, pointed at `url`."""
    from pathlib import Path

    from alembic.config import Config

    cfg = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at `url` to the newest revision (what `alembic upgrade head` does)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
