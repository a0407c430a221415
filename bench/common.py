"""What bench/suite.py and bench/service.py share: the description of the machine, the
statistics of a list of timings, the one table writer and the writer of RESULTS.md's sections.

RESULTS.md is one file with one section per script, each between an HTML comment pair
`<!-- name: begin -->` / `<!-- name: end -->`; a script rewrites its own section and keeps
the others.
"""
import datetime
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
# Thread counts, and the OpenBLAS kernel overrides some machines set (they slow numpy down;
# recorded, never changed here).
ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE")
HEADER = """# Benchmarks (issue #6, "Fast where it counts")

Written by `.venv/bin/python bench/suite.py` (every section; `bench/service.py` rewrites only
the service section). How to install the benchmark-only packages, run and read these:
bench/README.md. Each section names the command, commit, machine and load it was measured with.
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def spread(xs: list[float], fmt: str = "{:.3g}") -> str:
    """min..max."""
    return f"{fmt.format(min(xs))}..{fmt.format(max(xs))}"


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; None cells print as an en dash."""
    cell = (lambda v: "–" if v is None else str(v))
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return ""


def machine() -> list[str]:
    """Bullets: when, which commit, which CPU and Python, the thread and OpenBLAS variables."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    dirty = " plus uncommitted changes" if _git("status", "--porcelain", "--", "nn", "service",
                                                 "worker") else ""
    env = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in ENV_VARS)
    return [f"- {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, commit "
            f"{_git('rev-parse', '--short', 'HEAD') or '?'}{dirty}",
            f"- {cpu}, {os.cpu_count()} CPUs; Python {platform.python_version()}, numpy "
            f"{np.__version__}",
            f"- environment: {env}",
            f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"]


def command() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_section(name: str, lines: list[str], path: pathlib.Path = RESULTS) -> None:
    """Replace section `name` of the results file (appending it if absent)."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else ""
    if "<!-- " not in text:                      # a file of the old format: start afresh
        text = HEADER
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote section {name!r} of {path}", flush=True)
