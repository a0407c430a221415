"""A small per-process cache for the hot read paths: loaded models (service/artifacts.py) and
API key lookups (service/auth.py). Each gunicorn worker process has its own."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from time import monotonic
from typing import Any


class LRUCache:
    """A thread-safe least-recently-used cache (gunicorn runs threads). With `ttl` (seconds)
    an entry is also forgotten that long after it was stored; maxsize 0 or ttl 0 keeps
    nothing. None is never stored: `lookup` answers None for "not here"."""

    def __init__(self, maxsize: int, ttl: float | None = None) -> None:
        self.maxsize, self.ttl = maxsize, ttl
        self._items: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None and (self.ttl is None or item[1] > monotonic()):
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            if item is not None:
                del self._items[key]  # expired
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> Any:
        """Store `value` (evicting the least recently used past maxsize) and return it."""
        if self.maxsize <= 0 or self.ttl == 0:
            return value
        expires = monotonic() + self.ttl if self.ttl is not None else 0.0
        with self._lock:
            self._items[key] = (value, expires)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached value, or `load()` stored. Loading runs outside the lock: it may be
        slow, and a rare double load is harmless."""
        found = self.lookup(key)
        return found if found is not None else self.put(key, load())
