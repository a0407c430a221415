"""docker-compose.yml, the Dockerfile and `backprop up` run the same commands.

No Docker here: the compose file is checked as data, and test_deployment.py runs its
commands as processes.
"""

from __future__ import annotations

import json
import re

from service import cli
from tests.e2e.compose import compose
from tests.procs import ROOT


def _command(service: str) -> list[str]:
    return list(compose()["services"][service]["command"])


def test_the_services_and_what_they_wait_for() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "beat"}
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    redis = " ".join(_command("redis"))
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "container_name" not in services["worker"]  # --scale worker=N
    assert "ports" not in services["worker"]


def test_compose_runs_what_backprop_up_runs() -> None:
    assert _command("migrate") == ["alembic", "upgrade", "head"]
    assert _command("api") == ["gunicorn", *cli.api_command("0.0.0.0", 8000)[3:]]
    assert _command("worker") == ["celery", *cli.worker_command(1)[3:]]
    assert _command("beat") == ["celery", *cli.beat_command()[3:]]


def test_the_image_serves_the_api_by_default() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None and json.loads(cmd.group(1)) == _command("api")
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
