"""Reproducible installs: every dependency bounded in pyproject.toml and pinned, within its
bounds, in constraints.txt, which every install uses."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.procs import ROOT


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_is_pinned_within_its_bounds() -> None:
    pins = _pins()
    for req in _requirements():
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is not in constraints.txt: run scripts/lock"
        assert req.specifier.contains(pin, prereleases=True), \
            f"constraints.txt pins {req.name}=={pin}, outside {req.specifier}: run scripts/lock"


def test_every_dependency_has_an_upper_bound() -> None:
    """A 0.x library may break in a minor release, any other in a major one."""
    for req in _requirements():
        uppers = [Version(s.version) for s in req.specifier if s.operator in ("<", "<=")]
        assert uppers, f"{req} has no upper bound"
        lowers = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if lowers and lowers[0].major == 0:
            assert uppers[0].major == 0, f"{req}: a 0.x library is bounded below its next minor"


def test_every_install_uses_the_constraints() -> None:
    venv = (ROOT / "scripts" / "venv").read_text()
    assert re.search(r"pip install .*-c constraints\.txt -e", venv)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY .*constraints\.txt", dockerfile, re.M)
    assert re.search(r"pip install -c constraints\.txt \.", dockerfile)
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", dockerfile, re.M)  # a pinned base
