"""docker-compose.yml's commands, to run as local processes (there is no Docker here): the
e2e tests run exactly what the containers run."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from tests.procs import BIN, ROOT


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command(service: str, **replace: str) -> list[str]:
    """The service's command with its program taken from this virtualenv, and each argument
    that is a key of `replace` replaced (e.g. the bind address)."""
    argv = [replace.get(arg, arg) for arg in compose()["services"][service]["command"]]
    return [str(BIN / argv[0]), *argv[1:]]
