"""Settings: typed by their defaults, checked at start, readable from files; unknown
BACKPROP_ variables reported."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from service import config, create_app
from service.config import DEFAULTS, SettingError
from tests.e2e.compose import command
from tests.procs import BIN, ROOT, clean_env


def _error(environ: dict[str, str]) -> str:
    with pytest.raises(SettingError) as caught:
        config.load(environ=environ)
    return str(caught.value)


def test_every_default_has_a_type_and_passes_its_checks() -> None:
    assert config.load(environ={}) == DEFAULTS
    for name, default in DEFAULTS.items():
        assert type(default) in (int, float, bool, str) or default is None, name
        assert name.isupper() and f"{name}_FILE" not in DEFAULTS, name  # X_FILE reads X
    assert set(config.TYPES) <= {n for n, d in DEFAULTS.items() if d is None}
    assert set(config.CHECKS) <= set(DEFAULTS)
    assert {n for names, _, _ in config.RELATIONS for n in names} <= set(DEFAULTS)


def test_values_take_their_defaults_types() -> None:
    got = config.load(environ={
        "BACKPROP_LEASE_SECONDS": " 45 ", "BACKPROP_FLUSH_SECONDS": "2",
        "BACKPROP_RUN_MAX_MEMORY_BYTES": "1e13", "BACKPROP_QUEUE": "007",
        "BACKPROP_ADMIN_KEY": "1" * 40, "BACKPROP_BROKER_KEYPREFIX": ""})
    assert (got["LEASE_SECONDS"], got["FLUSH_SECONDS"], got["RUN_MAX_MEMORY_BYTES"]) == (
        45, 2.0, 10**13)
    assert type(got["LEASE_SECONDS"]) is int and type(got["FLUSH_SECONDS"]) is float
    assert (got["QUEUE"], got["ADMIN_KEY"], got["BROKER_KEYPREFIX"]) == ("007", "1" * 40, "")
    assert config.load(environ={"BACKPROP_ADMIN_KEY": ""})["ADMIN_KEY"] is None  # empty: unset


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), ("1", True), ("on", True),
                                         ("false", False), ("NO", False), ("0", False)])
def test_booleans(text: str, value: bool) -> None:
    assert config._parse(bool, text) is value


@pytest.mark.parametrize("var, value, message", [
    ("LEASE_SECONDS", "abc", "BACKPROP_LEASE_SECONDS='abc': expected an integer"),
    ("LEASE_SECONDS", "0", "BACKPROP_LEASE_SECONDS='0': expected an integer > 0"),
    ("MAX_ATTEMPTS", "2.5", "BACKPROP_MAX_ATTEMPTS='2.5': expected an integer"),
    ("PAGE_MAX", "0", "BACKPROP_PAGE_MAX='0': expected an integer >= 1"),
    ("FLUSH_SECONDS", "nan", "BACKPROP_FLUSH_SECONDS='nan': expected a number"),
    ("CHECKPOINT_SECONDS", "-1", "BACKPROP_CHECKPOINT_SECONDS='-1': expected a number >= 0"),
    ("LOG_FORMAT", "xml", "BACKPROP_LOG_FORMAT='xml': expected one of text, json"),
    ("LOG_LEVEL", "info", "BACKPROP_LOG_LEVEL='info': expected one of DEBUG, INFO, WARNING, "
                          "ERROR, CRITICAL"),
    ("QUEUE", " ", "BACKPROP_QUEUE=' ': expected a non-empty string"),
    ("DATABASE_URL", "postgres://app:s3cret@db/app",
     "BACKPROP_DATABASE_URL='postgres://app:***@db/app': expected a SQLAlchemy URL"),
    ("DATABASE_URL", "localhost:5432", "BACKPROP_DATABASE_URL='localhost:5432': expected a "),
    ("BROKER_URL", "redis://:s3cret@redis:port/0",
     "BACKPROP_BROKER_URL='redis://:***@redis:port/0': expected a broker URL kombu knows"),
    ("BROKER_URL", "reddis://redis:6379/0",
     "BACKPROP_BROKER_URL='reddis://redis:6379/0': expected a broker URL kombu knows"),
    ("ADMIN_KEY", "too-short-s3cret", "BACKPROP_ADMIN_KEY=(hidden): expected at least 32 "),
])
def test_a_bad_value_names_the_variable_the_value_and_what_is_expected(
        var: str, value: str, message: str) -> None:
    error = _error({f"BACKPROP_{var}": value})
    assert error.startswith(f"backprop: {message}"), error
    assert "s3cret" not in error and "\n" not in error


def test_settings_that_must_agree() -> None:
    assert _error({"BACKPROP_FLUSH_SECONDS": "30"}) == (
        "backprop: BACKPROP_FLUSH_SECONDS='30' and LEASE_SECONDS=30 (the default): expected "
        "FLUSH_SECONDS < LEASE_SECONDS (a worker renews its lease when it flushes)")
    assert "PAGE_DEFAULT <= PAGE_MAX" in _error({"BACKPROP_PAGE_MAX": "10"})


def test_a_test_dict_is_checked_too(sqlite_url: str) -> None:
    with pytest.raises(SettingError, match=r"LEASE_SECONDS='abc' \(test config\): expected an "):
        create_app({"DATABASE_URL": sqlite_url, "LEASE_SECONDS": "abc"})
    with pytest.raises(SettingError, match=r"LEASE_SECONDS=True \(test config\): expected an "):
        create_app({"DATABASE_URL": sqlite_url, "LEASE_SECONDS": True})
    with pytest.raises(SettingError, match=r"LEASE_SECOND \(test config\) is not a setting "
                                           r"\(did you mean LEASE_SECONDS\?\)"):
        create_app({"DATABASE_URL": sqlite_url, "LEASE_SECOND": 3})
    app = create_app({"DATABASE_URL": sqlite_url, "TESTING": True, "FLUSH_SECONDS": 2})
    assert app.testing and app.config["FLUSH_SECONDS"] == 2.0


def test_an_unknown_variable_is_a_warning_with_the_setting_meant(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.config"):
        got = config.load(environ={"BACKPROP_LEASE_SECOND": "5", "BACKPROP_VAR_DIR": "/tmp",
                                   "BACKPROP_TEST_PG": "x", "BACKPROP_TEST_REDIS": "x",
                                   "BACKPROP_FUZZ_EXAMPLES": "9", "BACKPROP_ZZZ": "1"})
    assert got["LEASE_SECONDS"] == 30
    assert [r.getMessage() for r in caplog.records] == [
        "BACKPROP_LEASE_SECOND is not a setting of the service (did you mean "
        "BACKPROP_LEASE_SECONDS?); it is ignored",
        "BACKPROP_ZZZ is not a setting of the service; it is ignored"]


def test_a_setting_read_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "admin_key"
    secret.write_text("k" * 40 + "\n")  # as `echo` writes it
    assert config.load(environ={"BACKPROP_ADMIN_KEY_FILE": str(secret)})["ADMIN_KEY"] == "k" * 40
    secret.write_text("short\n")
    assert _error({"BACKPROP_ADMIN_KEY_FILE": str(secret)}) == (
        f"backprop: BACKPROP_ADMIN_KEY_FILE={secret} (its content): expected at least 32 "
        "characters, e.g. from `openssl rand -hex 32`")
    assert _error({"BACKPROP_ADMIN_KEY_FILE": str(tmp_path / "missing")}).startswith(
        f"backprop: BACKPROP_ADMIN_KEY_FILE={tmp_path / 'missing'}: cannot read it ([Errno 2]")
    assert _error({"BACKPROP_ADMIN_KEY_FILE": str(secret), "BACKPROP_ADMIN_KEY": "k" * 40}) == (
        "backprop: BACKPROP_ADMIN_KEY and BACKPROP_ADMIN_KEY_FILE are both set: give one of them")
    # LOCAL_KEY_FILE is a setting of its own (a path), not LOCAL_KEY's file
    path = str(tmp_path / "key")
    assert config.load(environ={"BACKPROP_LOCAL_KEY_FILE": path})["LOCAL_KEY_FILE"] == path


def test_the_database_password_is_put_into_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("p@ss/w:rd\n")
    url = config.load(environ={"BACKPROP_DATABASE_URL": "postgresql+psycopg://app@db:5432/app",
                               "BACKPROP_DATABASE_PASSWORD_FILE": str(secret)})["DATABASE_URL"]
    assert (make_url(url).username, make_url(url).password) == ("app", "p@ss/w:rd")
    assert _error({"BACKPROP_DATABASE_URL": "postgresql+psycopg://app:s3cret@db/app",
                   "BACKPROP_DATABASE_PASSWORD": "s3cret"}) == (
        "backprop: BACKPROP_DATABASE_URL='postgresql+psycopg://app:***@db/app' has a password "
        "and BACKPROP_DATABASE_PASSWORD=(hidden) another: give it once")


def test_broker_tls_files_need_a_rediss_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _error({"BACKPROP_BROKER_URL": "redis://redis:6379/0",
                   "BACKPROP_BROKER_SSL_CA_CERTS": str(ca)}).endswith(
        "expected a rediss:// BROKER_URL with the BROKER_SSL_ files (redis:// is not encrypted)")
    assert _error({"BACKPROP_BROKER_URL": "rediss://redis:6380/0",
                   "BACKPROP_BROKER_SSL_CA_CERTS": str(tmp_path)}) == (
        f"backprop: BACKPROP_BROKER_SSL_CA_CERTS='{tmp_path}': expected a readable file")
    got = config.load(environ={"BACKPROP_BROKER_URL": "rediss://redis:6380/0",
                               "BACKPROP_BROKER_SSL_CA_CERTS": str(ca)})
    assert got["BROKER_SSL_CA_CERTS"] == str(ca)


@pytest.mark.parametrize("process", ["api", "worker", "beat", "migrate", "backprop"])
def test_a_bad_value_stops_every_process_at_start_with_one_line(
        process: str, tmp_path: Path) -> None:
    """docker-compose.yml's commands (gunicorn, celery worker and beat, alembic) and the
    `backprop` command: one line on stderr, no traceback, a failed exit."""
    argv = [str(BIN / "backprop"), "create-key", "--tenant", "t"] if process == "backprop" \
        else command(process)
    env = clean_env(BACKPROP_DATABASE_URL=f"sqlite:///{tmp_path / 'db'}",
                    BACKPROP_LEASE_SECONDS="abc", BACKPROP_BROKER_URL="memory://")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert (done.stdout + done.stderr).strip() == \
        "backprop: BACKPROP_LEASE_SECONDS='abc': expected an integer", done


def test_gunicorns_master_imports_nothing_its_gevent_workers_must_patch_first(
        tmp_path: Path) -> None:
    """The config module, and the logging config it gives the master, import none of the
    app's libraries: a module the master imports is imported unpatched in every gevent worker
    (psycopg would then block the worker's loop on each query, redis keep ssl's classes).
    The settings are still checked (by a child Python) before gunicorn goes on."""
    libraries = ("flask", "werkzeug", "sqlalchemy", "psycopg", "redis", "kombu", "celery",
                 "numpy", "ssl", "gevent", "nn")
    script = ("import json, logging.config, sys\n"
              "import service.gunicorn_conf as conf\n"
              "logging.config.dictConfig(conf.logconfig_dict)\n"
              "print(json.dumps(sorted(m for m in sys.modules "
              f"if m.split('.')[0] in {libraries})))")
    env = clean_env(BACKPROP_DATABASE_URL=f"sqlite:///{tmp_path / 'db'}",
                    BACKPROP_BROKER_URL="redis://127.0.0.1:6379/0")
    done = subprocess.run([str(BIN / "python"), "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    env["BACKPROP_LEASE_SECONDS"] = "abc"
    done = subprocess.run([str(BIN / "python"), "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr.strip()) == (
        1, "", "backprop: BACKPROP_LEASE_SECONDS='abc': expected an integer")
