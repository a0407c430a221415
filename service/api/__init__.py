"""One blueprint per resource: data sets, runs (and their results), usage, webhooks,
health, admin."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from service.api import admin, datasets, health, results, runs, usage, webhooks

    for module in (datasets, runs, results, usage, webhooks, health, admin):
        app.register_blueprint(module.bp)
