"""The code passes ruff with the rules in pyproject.toml ([tool.ruff]), so that the README's
one test command, and with it CI, also lints."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT


def test_ruff_finds_nothing() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                          "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
