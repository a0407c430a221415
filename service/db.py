"""Database engine and sessions.

One engine per app (`app.extensions["db"]`). Requests get a session on `g`, closed in
`teardown_appcontext`; the worker opens short transactions with `session_scope()`. Functions
that persist take a session and never commit on their own: the caller owns the transaction.
"""

from __future__ import annotations

import select
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, g
from sqlalchemy import Executable, Row, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from service.config import DEFAULTS

# Pooled connections older than this are replaced (seconds): a server-side or middlebox idle
# limit never meets one.
POOL_RECYCLE_SECONDS = 1800


def make_engine(url: str, config: Mapping[str, Any] = DEFAULTS) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            # Deleted rows' pages can go back to the file system (free_pages). Only a new,
            # empty file takes it, so it comes first; older ones: enable_auto_vacuum().
            cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # Bounded waits on PostgreSQL: connecting, and a server or network that dies under an
    # open connection (TCP keepalives probe an idle one; tcp_user_timeout bounds unanswered
    # sends), so a request or a worker fails within about 2 x DATABASE_KEEPALIVE_SECONDS
    # instead of hanging.
    keepalive = max(1, int(config["DATABASE_KEEPALIVE_SECONDS"]))
    tcp = {"keepalives": 1, "keepalives_idle": keepalive,
           "keepalives_interval": max(1, keepalive // 3), "keepalives_count": 3,
           "tcp_user_timeout": 2000 * keepalive}
    engine = create_engine(url, pool_size=5, max_overflow=10, pool_recycle=POOL_RECYCLE_SECONDS,
                           connect_args={"connect_timeout": int(config[
                               "DATABASE_CONNECT_TIMEOUT_SECONDS"]), **tcp})
    event.listen(engine, "checkout", _check_alive)
    return engine


def _check_alive(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """On every checkout, instead of pool_pre_ping's round trip (a fifth of a predict's time):
    an idle connection's socket has nothing to read unless the server hung up (a restart,
    pg_terminate_backend, an idle limit) or TCP gave up on it (keepalives), so a readable
    socket means "replace it", which the pool does at once. A connection that dies while in
    use fails that request, as it would with pre-ping."""
    if dbapi_conn.closed:
        raise DisconnectionError("the pooled connection is closed")
    poller = select.poll()
    poller.register(dbapi_conn.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed the pooled connection")


def limit_statements(app: Flask) -> None:
    """API processes (service/wsgi.py): PostgreSQL cancels a statement running longer than
    API_STATEMENT_TIMEOUT_SECONDS (0: no limit), so a stuck query cannot hold a request
    thread and its connection. Set in each connection's startup packet (no round trip). The
    worker does not call this: its statements are its own, bounded by its lease."""
    seconds = float(app.config["API_STATEMENT_TIMEOUT_SECONDS"])
    if engine(app).dialect.name != "postgresql" or seconds <= 0:
        return
    option = f"-c statement_timeout={round(seconds * 1000)}"

    @event.listens_for(engine(app), "do_connect")
    def _timeout(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["options"] = f"{cparams.get('options', '')} {option}".strip()

    engine(app).dispose()  # a connection made before (none in gunicorn) gets it too


def init_app(app: Flask) -> None:
    engine = make_engine(app.config["DATABASE_URL"], app.config)
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


def read_row(stmt: Executable, params: Mapping[str, Any] | None = None,
             app: Flask | None = None) -> Row[Any] | None:
    """The first row of one read-only statement, run in autocommit mode: no BEGIN and no
    ROLLBACK round trips around it (the statement is its own snapshot). For the hot reads
    (API keys, predict); reads that need one snapshot across statements use a session."""
    with engine(app).connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn.execute(stmt, params).first()


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


def table_bytes(conn: sa.Connection) -> dict[str, int]:
    """Bytes each table takes on disk, with its indexes: SQLite's pages of its b-trees
    (dbstat), PostgreSQL's pg_total_relation_size (heap, indexes, TOAST, free-space maps)."""
    if conn.dialect.name == "sqlite":
        return dict(conn.execute(sa.text(
            "SELECT m.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m "
            "ON m.name = d.name GROUP BY m.tbl_name")).all())
    return dict(conn.execute(sa.text(
        "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relkind = 'r' "
        "AND relnamespace = current_schema()::regnamespace")).all())


INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def enable_auto_vacuum(conn: sa.Connection) -> None:
    """SQLite: make a database made before it had auto_vacuum=INCREMENTAL (new ones get it
    when they are made) able to give space back: VACUUM rewrites the file once, taking the
    setting, and returns what its deleted rows left free. Outside a transaction (the
    migrations call it after theirs); a no-op once done, and on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return
    if conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() != INCREMENTAL:
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        conn.exec_driver_sql("VACUUM")


def free_pages(engine: Engine) -> int:
    """SQLite: give the file's free pages (left by deleted rows) back to the file system;
    how many there were. PostgreSQL: 0 (autovacuum makes dead rows' space reusable; VACUUM
    FULL or pg_repack return it: README.md, "Storage").

    PRAGMA incremental_vacuum frees one page per step of its statement, so it is run as a
    script, which steps it to the end."""
    if engine.dialect.name != "sqlite":
        return 0
    with engine.connect() as conn:
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        if free:
            conn.connection.driver_connection.executescript("PRAGMA incremental_vacuum;")
    return free


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
