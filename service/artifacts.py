"""Stored weights as `nn.Model`s, with a per-process LRU cache for the predict endpoint.

A cache entry is keyed by (run_id, kind, artifact epoch, artifact created_at): the worker
replaces an artifact by deleting and inserting it, so a rewritten artifact is a different
key and a stale model is never served; MODEL_CACHE_SIZE bounds it.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.orm import Session, defer, undefer

import nn
from service import offload
from service.cache import LRUCache
from service.db import read_row
from service.models import Artifact

MODEL_KINDS = ("final", "best", "initial")  # "checkpoint" is training state, not a Model


def init_app(app: Flask) -> None:
    app.extensions["model_cache"] = LRUCache(max(0, int(app.config["MODEL_CACHE_SIZE"])))


def artifact(session: Session, run_id: str, kind: str, with_data: bool = False
             ) -> Artifact | None:
    """The artifact row, its bytes read in the same statement (`with_data`) or never: read
    by a second statement, they would be gone if the run was deleted in between."""
    data = undefer(Artifact.data) if with_data else defer(Artifact.data, raiseload=True)
    return session.get(Artifact, (run_id, kind), options=[data], populate_existing=True)


def model(run_id: str, kind: str, epoch: int, created_at: datetime
          ) -> tuple[int, nn.Model] | None:
    """(epoch, Model) of the artifact whose identity a query just read: from the cache
    without touching the database, else its bytes read and loaded. Should it have been
    rewritten in between, the newer one is returned (with its own epoch); None if gone."""
    cache: LRUCache = current_app.extensions["model_cache"]
    found = cache.lookup((run_id, kind, epoch, created_at))
    if found is not None:
        return epoch, found
    row = read_row(sa.select(Artifact.epoch, Artifact.created_at, Artifact.data)
                   .where(Artifact.run_id == run_id, Artifact.kind == kind))
    if row is None:
        return None
    key = (run_id, kind, row.epoch, row.created_at)
    return row.epoch, cache.put(key, offload.run(nn.Model.from_npz, row.data,
                                                 size=len(row.data)))
