"""Liveness for Docker's health checks (docker-compose.yml), without the broker: the worker's
main loop and beat's scheduler each touch HEARTBEAT_FILE every TOUCH_SECONDS, and the check is
that the file changed within the last minute, a Python one-liner. (`celery inspect ping`
would start a Celery app and send a broadcast through Redis at every check.)

The worker's touch is a timer of the event loop that takes its messages: it stops when that
loop is stuck or cannot reach the broker, not while a run trains (in a pool process)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, beat, bootsteps

TOUCH_SECONDS = 5.0


def touch(path: str) -> None:
    with open(path, "a"):
        pass
    os.utime(path)


def init(celery_app: Celery, path: str | None) -> None:
    """Touch `path` from the worker's main loop and from beat's scheduler (None: do not)."""
    if path is None:
        return

    class Heartbeat(bootsteps.StartStopStep):
        requires = {"celery.worker.components:Timer"}

        def start(self, worker: Any) -> None:
            touch(path)
            worker.timer.call_repeatedly(TOUCH_SECONDS, touch, (path,))

    class Scheduler(beat.Scheduler):
        def tick(self, *args: Any, **kwargs: Any) -> float:
            touch(path)
            return super().tick(*args, **kwargs)

    celery_app.steps["worker"].add(Heartbeat)
    # beat ticks when a task is due, and at least every beat_max_loop_interval
    celery_app.conf.update(beat_scheduler=Scheduler, beat_max_loop_interval=TOUCH_SECONDS)
