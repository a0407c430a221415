"""Shared fixtures: isolated databases, Redis key prefixes, free ports.

Every test session gets its own PostgreSQL database and its own Redis key prefix, so the
suite passes twice in a row and beside a running dev server. PostgreSQL and Redis are the
machine's (`BACKPROP_TEST_PG`, default postgresql+psycopg://postgres@127.0.0.1:5432/test;
`BACKPROP_TEST_REDIS`, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

# TLS certificates, and a PostgreSQL and a Redis that take TLS only (tests/servers.py); the
# webhook receiver fixture (tests/receiver.py)
pytest_plugins = ["tests.servers", "tests.receiver"]

PG_ADMIN_URL = os.environ.get(
    "BACKPROP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BACKPROP_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_pg_database() -> tuple[str, sa.Engine, str]:
    name = f"backprop_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    return url.render_as_string(hide_password=False), admin, name


def _drop_pg_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    url, admin, name = _fresh_pg_database()
    yield url
    _drop_pg_database(admin, name)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique key prefix on the machine's Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"backprop-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'backprop.db'}"
