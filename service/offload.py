"""CPU-heavy request work, run off gevent's event loop.

In deployment the API runs under gunicorn's gevent worker (service/cli.py): every request and
every open event stream of a process is a greenlet on one loop, so while one request computes
(parses a large body, walks it with the schema, generates or decodes a data set, predicts,
encodes weights or a boundary grid), nothing else in that process runs: not the streams' events
and keep-alives, not the cheap requests. `run` hands such work to a gevent thread pool: the
request's greenlet waits for it, the loop goes on serving the others, and NumPy's heavy calls,
which release the GIL, run on the other core meanwhile (pure-Python parts share the GIL, which
the loop gets back every switch interval).

The work must not touch the database, the broker or the request's socket: their connections
belong to the loop (read the body first, query before or after). Elsewhere (no gevent: tests,
the Celery worker, Flask's own server) and for small work, it runs in place.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Work smaller than this, in bytes of what it reads (JSON text, or 8 per number), runs in
# place: a trip through the pool costs about 30-60 us, as much as the work itself there.
INLINE_BYTES = 64 * 1024
# At most this many requests' heavy work at once in a process; the others wait their turn.
# Each may hold up to JSON_MAX_MEMORY_BYTES or PREDICT_MAX_MEMORY_BYTES, so this bounds a
# process's memory as a threaded worker of 4 threads would; more threads than the cores
# would only share them. A pool of its own, not the hub's: gevent resolves host names (a
# database's, when it connects) in the hub's pool, which must not wait behind an upload.
THREADS = 4

_pool: Any = None  # this process's gevent ThreadPool, made on first use (after the fork)
_away: contextvars.ContextVar[bool] = contextvars.ContextVar("backprop_offloaded", default=False)


def run(fn: Callable[..., T], *args: Any, size: int | None = None, **kwargs: Any) -> T:
    """fn(*args, **kwargs), in this process's thread pool when it serves on gevent, with
    the caller's context (Flask's app and request, the log ids); `size` (bytes, as for
    INLINE_BYTES) lets small work run in place. Exceptions reach the caller as raised."""
    if (size is not None and size < INLINE_BYTES) or _away.get() or not _on_gevent():
        return fn(*args, **kwargs)
    context = contextvars.copy_context()
    done, value = _threads().apply(context.run, (_call_away, fn, args, kwargs))
    if not done:
        raise value
    return value


def _call_away(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> tuple[bool, Any]:
    """(True, the result) or (False, the exception): raised from the pool, a 4xx would also
    be printed to stderr as the hub's error."""
    _away.set(True)  # in the copied context: nested calls run in this thread
    try:
        return True, fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - raised again in the caller
        return False, e


def _threads() -> Any:
    global _pool
    if _pool is None:  # no greenlet can run between the test and the assignment
        from gevent.threadpool import ThreadPool

        _pool = ThreadPool(THREADS)
    return _pool


def _on_gevent() -> bool:
    """Whether gevent patched this process (gunicorn's gevent worker does before the app
    loads): requests are then greenlets of one loop."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")
