"""docker-compose.yml's commands, to run as local processes (there is no Docker here): the
e2e tests run exactly what the containers run."""

from __future__ import annotations

from functools import cache
from typing import Any

import yaml

from tests.procs import BIN, ROOT


@cache
def compose(file: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / file).read_text())


def command(service: str, file: str = "docker-compose.yml", **replace: str) -> list[str]:
    """The service's command with its program taken from this virtualenv, and each argument
    that is a key of `replace` replaced (e.g. the bind address)."""
    argv = [replace.get(arg, arg) for arg in compose(file)["services"][service]["command"]]
    return [str(BIN / argv[0]), *argv[1:]]


def environment(service: str, file: str = "docker-compose.yml", **replace: str) -> dict[str, str]:
    """The service's BACKPROP_ variables, each value that is a key of `replace` replaced
    (a container's path by the test's)."""
    env = compose(file)["services"][service].get("environment", {})
    return {k: replace.get(str(v), str(v)) for k, v in env.items() if k.startswith("BACKPROP_")}


def healthcheck(service: str, file: str = "docker-compose.yml", **replace: str) -> list[str]:
    """The service's health check command (CMD form), its program from this virtualenv where
    it has it, and each occurrence of a key of `replace` replaced in every argument."""
    kind, *argv = compose(file)["services"][service]["healthcheck"]["test"]
    assert kind == "CMD", kind
    for old, new in replace.items():
        argv = [arg.replace(old, new) for arg in argv]
    program = BIN / argv[0]
    return [str(program) if program.exists() else argv[0], *argv[1:]]
