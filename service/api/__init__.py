"""One blueprint per resource, all under /v1."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    pass
