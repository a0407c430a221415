"""The memory a run may take: a limit on the address space of the process that trains it.

The API refuses a run whose estimated peak is over its budget; this is the backstop for an
estimate that is wrong anyway. While a run trains, its process may grow its address space by
at most WORKER_MEMORY_LIMIT_BYTES (`limited`: RLIMIT_AS = its size when the run starts + the
limit), so an allocation past it fails where it is made, as a MemoryError (numpy: "Unable to
allocate 305. MiB for an array with shape ..."), which worker/training.py turns into a run
failed with `out_of_memory`. The kernel's OOM killer need not step in, and the worker's
processes live on (a MemoryError that reached Celery would kill its main process: it raises
the MemoryError of a task again itself).

- The address space, not the resident memory: it is the limit Linux enforces at allocation.
  It counts pages mapped but not yet touched, so it may refuse a little early, never late.
- Counted from where the process is when the run starts: a Celery pool process has ~190 MiB
  of address space (~85 MiB resident) before its first run (numpy with one BLAS thread ~85,
  the app ~80, OpenBLAS's buffer 32, allocated by `warm_up` before any limit), and whatever a
  previous run left (a fragmented heap) does not shrink the next run's share.
- After a run that ran out, `release` hands what it left back to the system, so the process
  goes on as it was (tests/worker/test_memory.py measures it).

Linux only (RLIMIT_AS, /proc); elsewhere `limited` does nothing.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

LINUX = sys.platform.startswith("linux")


def address_space() -> int:
    """This process's address space now (VmSize, bytes)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextmanager
def limited(limit: int | None) -> Iterator[None]:
    """While the block runs, this process (all its threads) may grow its address space by
    `limit` bytes at most; past it an allocation raises MemoryError. None or 0: no limit."""
    if not limit or not LINUX:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space() + int(limit)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def warm_up() -> None:
    """Make OpenBLAS allocate its buffer now (32 MiB, at the first matrix product), before a
    limit: it cannot report a failed allocation and would crash the process instead."""
    np.ones((8, 8)) @ np.ones((8, 8))


def release() -> None:
    """Give what the last run left back to the system: its objects (gc), then the free pages
    inside the C heap (glibc's malloc_trim; elsewhere only the former)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass
