"""docker-compose.yml, the Dockerfile and `backprop up` run the same commands.

No Docker here: the compose file is checked as data, and test_deployment.py runs its
commands as processes.
"""

from __future__ import annotations

import json
import re
import tomllib

import sqlalchemy as sa

from service import cli
from tests.e2e.compose import compose
from tests.procs import ROOT


def _command(service: str) -> list[str]:
    return list(compose()["services"][service]["command"])


def test_the_services_and_what_they_wait_for() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "webhooks", "beat"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    redis = " ".join(_command("redis"))
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "webhooks", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "container_name" not in services["worker"]  # --scale worker=N
    assert "ports" not in services["worker"]
    for name in ("worker", "webhooks", "beat"):  # their heartbeat (worker/health.py), for Docker
        heartbeat = services[name]["environment"]["BACKPROP_HEARTBEAT_FILE"]
        assert f"os.stat('{heartbeat}')" in " ".join(services[name]["healthcheck"]["test"])
    # tests/e2e/test_deployment.py runs every health check against the processes
    assert {n for n, s in services.items() if "healthcheck" in s} == set(services) - {"migrate"}


def test_images_are_pinned() -> None:
    services = compose()["services"]
    for name in ("postgres", "redis"):
        assert re.fullmatch(r"\w+:\d+\.\d+(\.\d+)?-\w+", services[name]["image"]), name
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {s["image"] for n, s in services.items() if n not in ("postgres", "redis")} == \
        {f"backprop-service:{version}"}


def test_every_log_is_rotated() -> None:
    for name, service in compose()["services"].items():
        assert service["logging"]["driver"] == "json-file", name
        assert set(service["logging"]["options"]) == {"max-size", "max-file"}, name


def test_the_database_password_is_written_once() -> None:
    """One secret file: PostgreSQL's POSTGRES_PASSWORD_FILE and the service's
    BACKPROP_DATABASE_PASSWORD_FILE; no password in .env.example."""
    spec = compose()
    services = spec["services"]
    path = "/run/secrets/db_password"
    assert spec["secrets"]["db_password"] == {"file": "./secrets/db_password"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == path
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    for name, service in services.items():
        if name != "redis":
            assert "db_password" in service["secrets"], name
        if name not in ("postgres", "redis"):
            assert service["environment"]["BACKPROP_DATABASE_PASSWORD_FILE"] == path, name
    env_example = (ROOT / ".env.example").read_text()
    assert not re.search(r"^POSTGRES_PASSWORD", env_example, re.M)
    url = re.search(r"^BACKPROP_DATABASE_URL=(.*)$", env_example, re.M)
    assert url is not None and sa.engine.make_url(url[1]).password is None
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/secrets/" in ignored and ".env" in ignored


def test_metrics_are_not_published() -> None:
    """The api serves GET /metrics on BACKPROP_METRICS_PORT only, a port it binds and does
    not publish."""
    api = compose()["services"]["api"]
    port = api["environment"]["BACKPROP_METRICS_PORT"]
    assert f"0.0.0.0:{port}" in _command("api")
    assert api["ports"] == ["8000:8000"]


def test_resource_limits_are_given_as_comments() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    worker = text[text.index("\n  worker:"):text.index("\n  beat:")]
    assert "# deploy:" in worker and "BACKPROP_WORKER_MEMORY_LIMIT_BYTES" in worker
    assert text.count("#     limits:") == len(compose()["services"]) - 1  # migrate: none


def test_compose_runs_what_backprop_up_runs() -> None:
    assert _command("migrate") == ["alembic", "upgrade", "head"]
    metrics_port = int(compose()["services"]["api"]["environment"]["BACKPROP_METRICS_PORT"])
    assert _command("api") == ["gunicorn", *cli.api_command("0.0.0.0", 8000, metrics_port)[3:]]
    assert _command("worker") == ["celery", *cli.worker_command(1)[3:]]
    assert _command("webhooks") == ["celery", *cli.webhook_worker_command()[3:]]
    assert _command("beat") == ["celery", *cli.beat_command()[3:]]


def test_the_image_serves_the_api_by_default() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None and json.loads(cmd.group(1)) == ["gunicorn", *cli.api_command(
        "0.0.0.0", 8000)[3:]]  # no metrics port: it needs BACKPROP_METRICS_PORT set
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "the image must not run as root"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    needed = {"nn", "service", "worker", "migrations", "alembic.ini", "openapi.yaml",
              "pyproject.toml", "README.md"}
    assert not needed & ignored, needed & ignored


def test_env_example_names_real_settings() -> None:
    from service.config import DEFAULTS

    names = re.findall(r"^#? ?BACKPROP_(\w+)=", (ROOT / ".env.example").read_text(), re.M)
    assert {"DATABASE_URL", "BROKER_URL"} <= set(names)
    assert set(names) <= set(DEFAULTS), set(names) - set(DEFAULTS)


def test_a_worker_only_host_runs_the_same_worker() -> None:
    """docker-compose.worker.yml: the worker alone, as docker-compose.yml runs it, with the
    broker's URL and the TLS files as secrets."""
    spec = compose("docker-compose.worker.yml")
    assert set(spec["services"]) == {"worker"}
    worker, main = spec["services"]["worker"], compose()["services"]["worker"]
    for key in ("image", "command", "healthcheck", "logging", "stop_grace_period", "env_file"):
        assert worker[key] == main[key], key
    env = worker["environment"]
    assert main["environment"].items() <= env.items()
    secrets = {f"/run/secrets/{name}" for name in worker["secrets"]}
    assert secrets == {env[f"BACKPROP_{name}"] for name in (
        "DATABASE_PASSWORD_FILE", "BROKER_URL_FILE", "BROKER_SSL_CA_CERTS",
        "BROKER_SSL_CERTFILE", "BROKER_SSL_KEYFILE")}
    assert set(spec["secrets"]) == set(worker["secrets"])
    assert "depends_on" not in worker
