"""Stored weights as `nn.Model`s, with a per-process LRU cache for the predict endpoint.

A cache entry is keyed by (run_id, kind, artifact epoch, artifact created_at), so a rewritten
artifact is a different key and a stale model is never served; MODEL_CACHE_SIZE bounds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from flask import Flask, current_app
from sqlalchemy.orm import Session

import nn
from service.models import Artifact

MODEL_KINDS = ("final", "best", "initial")  # "checkpoint" is training state, not a Model


class LRUCache:
    """A thread-safe least-recently-used cache (gunicorn may run threads)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, load: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = load()  # outside the lock: loading may be slow; a rare double load is harmless
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value


def init_app(app: Flask) -> None:
    app.extensions["model_cache"] = LRUCache(max(0, int(app.config["MODEL_CACHE_SIZE"])))


def artifact(session: Session, run_id: str, kind: str) -> Artifact | None:
    """The artifact row (its bytes stay deferred until read)."""
    return session.get(Artifact, (run_id, kind))


def load(row: Artifact) -> nn.Model:
    """The artifact's bytes as a Model, from the cache when this exact artifact was loaded."""
    key = (row.run_id, row.kind, row.epoch, row.created_at.isoformat())
    cache: LRUCache = current_app.extensions["model_cache"]
    return cache.get(key, lambda: nn.Model.from_npz(row.data))  # type: ignore[return-value]
