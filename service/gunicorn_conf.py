"""gunicorn's settings for the API: `gunicorn --config python:service.gunicorn_conf ...`
(service/cli.py, docker-compose.yml and the Dockerfile pass it; the rest of the command
line is theirs).

Read by gunicorn's master process before it starts any worker, without the Flask app, and
importing nothing of it but its log formatters (service/logs.py, standard library only): a
module the master imports is already imported in every worker it forks, before the gevent
worker monkey-patches the standard library there. Imported unpatched, psycopg chose the wait
that blocks the whole process on every query (psycopg.waiting.wait_c, picked at import when
`select` is not patched), and redis.asyncio kept ssl's unpatched classes (gevent's
MonkeyPatchWarning). So the settings are checked by a child Python, which imports the
service (`python -m service.gunicorn_conf`), and the master reads its answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from gunicorn.glogging import Logger


def _log_config() -> dict[str, Any]:
    """Every setting checked (a bad one stops gunicorn with its one line, which the child
    writes on stderr), and the logging config they give."""
    from service import config, logs

    settings = config.load()
    return logs.dict_config(settings["LOG_FORMAT"], settings["LOG_LEVEL"])


if __name__ == "__main__":  # the child: the log config on stdout
    print(json.dumps(_log_config()))
    sys.exit()

_checked = subprocess.run([sys.executable, "-m", "service.gunicorn_conf"], stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, check=False)
if _checked.returncode != 0:
    raise SystemExit(_checked.returncode)  # the child said why
# One log format for every process (service/logs.py): gunicorn's own loggers write through
# the root logger's handler, as the app's do. (Module-level names are gunicorn's settings.)
logconfig_dict = json.loads(_checked.stdout)


class NoAccessLogger(Logger):
    """gunicorn's logger without access lines: the app writes one line per request, with
    its request id (service/logs.py). gunicorn would otherwise build every access line's
    fields, about 5% of a prediction's CPU, for the logging config to drop them."""

    def access(self, *_args: Any) -> None:
        pass


logger_class = NoAccessLogger

# SIGTERM: stop accepting connections and give the requests in flight this long to finish
# (seconds). docker-compose.yml's stop_grace_period for the api is longer.
graceful_timeout = 20

_made_dir: list[str] = []


def on_starting(_server: Any) -> None:
    """prometheus-client's multiprocess mode for the workers' own metrics (service/metrics.py):
    a fresh folder at each start (stale files would be added in), unless one is given."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = tempfile.mkdtemp(prefix="backprop-metrics-")
        _made_dir.append(folder)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """SIGTERM ends the worker's event streams at once (their clients reconnect and go on
    from Last-Event-ID), so that open streams do not hold the graceful shutdown for the
    whole graceful_timeout."""
    from gevent import monkey

    from service import events

    previous = signal.getsignal(signal.SIGTERM)
    stop = events.hub(worker.wsgi).stop

    def on_term(signum: int, frame: Any) -> None:
        # Elsewhere: a signal handler must not wait for locks (under gevent it runs in the
        # event loop, where nothing may block, not even starting a thread).
        if monkey.is_module_patched("threading"):
            import gevent

            gevent.spawn(stop)
        else:
            threading.Thread(target=stop, daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def on_exit(_server: Any) -> None:
    for folder in _made_dir:
        shutil.rmtree(folder, ignore_errors=True)
