"""One blueprint per resource: data sets, runs (and their results), usage, health, admin."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from service.api import admin, datasets, health, results, runs, usage

    for module in (datasets, runs, results, usage, health, admin):
        app.register_blueprint(module.bp)
