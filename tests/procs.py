"""Real processes for end-to-end tests: start them, wait for them, stop them, show their logs.

Each process gets its own session (process group), so stopping it stops its children too
(celery's pool, gunicorn's workers), and only what the test started is ever signalled. Logs
go to files; `Procs.report()` prints their tails, and the `procs` fixture prints them at
teardown, where pytest shows them only when the test failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the virtualenv's scripts: alembic, celery, gunicorn, ...
T = TypeVar("T")


def clean_env(**values: str) -> dict[str, str]:
    """This environment without BACKPROP_* (a developer's settings must not leak in), the
    virtualenv first on PATH, and `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKPROP_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **values}


class Procs:
    """The processes one test started, by name."""

    def __init__(self, log_dir: Path, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.log_dir, self.env, self.cwd = log_dir, env, cwd
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen:
        """Start `argv` with this environment, and `env` added for this process alone."""
        assert name not in self.procs or self.procs[name].poll() is not None, name
        with open(self._log(name), "ab") as log:
            proc = subprocess.Popen(argv, cwd=self.cwd, env={**self.env, **(env or {})},
                                    stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, name: str, argv: list[str], timeout: float = 60,
            env: dict[str, str] | None = None) -> None:
        """Run to completion; fail with its log unless it exits 0."""
        proc = self.start(name, argv, env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(name)
            pytest.fail(f"{name} did not finish within {timeout} s\n{self.report(name)}")
        if code != 0:
            pytest.fail(f"{name} exited {code}\n{self.report(name)}")

    def check(self) -> None:
        """Fail (with the logs) if a started process has died."""
        dead = [n for n, p in self.procs.items() if p.poll() not in (None, 0)]
        if dead:
            pytest.fail(f"{', '.join(dead)} died\n{self.report()}")

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float,
                 interval: float = 0.1) -> T:
        """Poll `probe` until it returns something truthy, while every process is alive."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.report()}")
            time.sleep(interval)

    def wait_http(self, url: str, timeout: float = 30) -> None:
        def answers() -> bool:
            try:
                return requests.get(url, timeout=5).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        self.wait_for(f"{url} to answer 200", answers, timeout, interval=0.2)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the process's group; SIGKILL it after `timeout`. Its exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            self._signal(proc, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self._signal(proc, signal.SIGKILL)  # children the leader left behind
        return proc.returncode

    def stop_all(self) -> None:
        for proc in self.procs.values():  # all at once, then wait for each
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
        for name in self.procs:
            self.stop(name)

    def report(self, *names: str, lines: int = 60) -> str:
        """The last `lines` lines of each log."""
        out = []
        for name in names or self.procs:
            text = self._log(name).read_text(errors="replace").splitlines()
            out.append(f"----- {name} (last {lines} lines) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group this test created with the process
        except ProcessLookupError:
            pass


def children(pid: int) -> dict[int, list[str]]:
    """The live processes whose parent is `pid`, with their command lines (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(stat.parent.name)] = argv.split("\0")[:-1]
    return found


def marked(mark: str) -> list[int]:
    """The live processes whose environment holds `mark` ("NAME=value"): a test's own,
    however deep, whoever their parent is now."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """A Procs in this test's tmp_path; everything it started is stopped at teardown."""
    started = Procs(tmp_path / "logs", clean_env())
    try:
        yield started
    finally:
        started.stop_all()
        print(started.report())
