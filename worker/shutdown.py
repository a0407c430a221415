"""Warm shutdown: a worker asked to stop hands its run back instead of making it wait.

`docker stop` (and `backprop up`'s Ctrl-C) sends SIGTERM to the Celery main process, which
starts a warm shutdown: it takes no new message and waits for the running task. Celery does
not tell the task, so a long run would be killed at the end of the grace period and resumed
by another worker only once its lease expired. Instead:

- the main process, on `worker_shutting_down`, sets `requested` and sends SIGUSR2 to the pool
  processes that are running a task;
- such a pool process sets `requested` on SIGUSR2 (its handler is installed before each
  task: billiard resets signal handlers after Celery's process-init hook);
- the training loop sees `requested` (worker/progress.py), stops at the next epoch that has a
  checkpoint (about CHECKPOINT_SECONDS away, at once while calibrating, at most twice that),
  writes its rows and that checkpoint, and puts the run back in the queue
  (worker/training.py `_hand_back`), where another worker resumes it at once.

SIGTERM keeps its meaning in pool processes (billiard's: exit now; it also ends a cold
shutdown and a hard time limit), so signal the main process only, as Docker does; a
SIGTERM sent to the whole process group (systemd's default KillMode; use KillMode=mixed)
kills the run's process, and the run resumes from its last checkpoint once its lease expires.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from celery import signals

log = logging.getLogger(__name__)

# Set once this process has been asked to shut down; never cleared (the process is exiting).
requested = threading.Event()
# The signal the main process sends its busy pool processes.
HAND_BACK_SIGNAL = signal.SIGUSR2


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    requested.set()


@signals.task_prerun.connect
def _pool_process_listens(**_kwargs: Any) -> None:
    """In a pool process, before each task (never in the main process, whose signals are
    Celery's): HAND_BACK_SIGNAL asks the task to hand its run back."""
    from billiard.process import current_process

    if current_process().name != "MainProcess":
        signal.signal(HAND_BACK_SIGNAL, _on_signal)


@signals.worker_shutting_down.connect
def _main_shutting_down(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    """In the main process (warm or cold shutdown): tell the tasks running here and in the
    pool processes."""
    from celery.worker import state

    requested.set()  # the solo and threads pools run tasks in this process
    busy = {r.worker_pid for r in list(state.active_requests)
            if r.worker_pid and r.worker_pid != os.getpid()}
    log.info("%s shutdown (%s): asking %d running task(s) to hand their runs back",
             how, sig, len(busy))
    for pid in busy:
        try:
            os.kill(pid, HAND_BACK_SIGNAL)
        except ProcessLookupError:
            pass
