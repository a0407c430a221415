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
# Thread counts, and the OpenBLAS kernel overrides some machines set (they slow numpy down:
# bench/README.md; recorded, and warned about, never changed here).
OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", *OVERRIDES)
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
    info = dict(line.split(":", 1) for line in pathlib.Path("/proc/cpuinfo").read_text()
                .splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    cpu = (f"{info['model name']} (family {info.get('cpu family', '?')} model "
           f"{info.get('model', '?')})" if "model name" in info else platform.processor())
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
    """The command line that reproduces this run: with the OpenBLAS overrides unset when they
    were (bench/README.md)."""
    unset = [] if any(v in os.environ for v in OVERRIDES) else \
        ["env", *(f"-u {v}" for v in OVERRIDES)]
    return " ".join([*unset, ".venv/bin/python", os.path.relpath(sys.argv[0], ROOT),
                     *sys.argv[1:]])


def warn_overrides() -> None:
    """Say on stderr when the machine's OpenBLAS overrides are set (bench/README.md)."""
    found = [f"{v}={os.environ[v]}" for v in OVERRIDES if v in os.environ]
    if found:
        print(f"warning: {' '.join(found)} makes numpy's OpenBLAS run an older kernel; to "
              f"benchmark, run: env {' '.join(f'-u {v}' for v in OVERRIDES)} {command()}",
              file=sys.stderr)


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
