"""A PostgreSQL and a Redis of the test's own that take TLS only, for the TLS tests (a worker
on another machine): certificates from trustme, a PostgreSQL cluster made with initdb (as the
user postgres when the tests run as root, which initdb refuses), a redis-server on a TLS port
alone that asks the client for a certificate. Both listen on free ports of 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import trustme

from tests.conftest import free_port


class Certs(NamedTuple):
    """PEM files: the CA, the servers' certificate and key (for 127.0.0.1 and localhost),
    and a client's certificate and key."""

    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


class Server(NamedTuple):
    port: int
    password: str


def make_certs(folder: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("backprop-worker")
    certs = Certs(*(folder / name for name in ("ca.pem", "server.pem", "server.key",
                                               "client.pem", "client.key")))
    ca.cert_pem.write_to_path(str(certs.ca))
    server.cert_chain_pems[0].write_to_path(str(certs.server))
    server.private_key_pem.write_to_path(str(certs.server_key))
    client.cert_chain_pems[0].write_to_path(str(certs.client))
    client.private_key_pem.write_to_path(str(certs.client_key))
    for key in (certs.server_key, certs.client_key):
        key.chmod(0o600)  # libpq and PostgreSQL refuse a key others may read
    return certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {port}:\n{log.read_text()}")


@pytest.fixture(scope="session")
def tls_redis(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """redis-server on a TLS port only, with a password, asking for a client certificate."""
    folder = tmp_path_factory.mktemp("redis-tls")
    server = Server(free_port(), secrets.token_urlsafe(16))
    log = folder / "redis.log"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.server), "--tls-key-file", str(certs.server_key),
         "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
         "--requirepass", server.password, "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(log)])
    try:
        _wait_port(server.port, proc, log)
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def tls_postgres(certs: Certs) -> Iterator[Server]:
    """A PostgreSQL cluster that takes TLS connections with a scram password only (no plain
    TCP, no trust), its superuser `backprop` with a database `backprop`."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("no PostgreSQL server binaries: scripts/services installs them")
    bin_dir = Path(found[-1]).parent
    user = "postgres" if os.geteuid() == 0 else None  # initdb and postgres refuse root
    folder = Path(tempfile.mkdtemp(prefix="backprop-pg-tls-"))
    data = folder / "data"
    server = Server(free_port(), secrets.token_urlsafe(16))
    (folder / "password").write_text(server.password)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chown(folder / "password", entry.pw_uid, entry.pw_gid)

    def run(*argv: str) -> None:
        subprocess.run(argv, user=user, check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "backprop", "--auth=scram-sha-256",
        f"--pwfile={folder / 'password'}", "-E", "UTF8")
    for name, path in (("server.crt", certs.server), ("server.key", certs.server_key)):
        shutil.copy(path, data / name)
        if user is not None:
            os.chown(data / name, entry.pw_uid, entry.pw_gid)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                   f"unix_socket_directories = '{folder}'\nssl = on\n"
                   "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                   "fsync = off\nsynchronous_commit = off\n")
    (data / "pg_hba.conf").write_text("hostssl all all 127.0.0.1/32 scram-sha-256\n")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "start")
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=server.port, user="backprop",
                             password=server.password, dbname="postgres", sslmode="require",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE backprop")
        yield server
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
