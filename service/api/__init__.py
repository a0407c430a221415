"""One blueprint per resource: data sets, runs (their results, their live events), usage,
sweeps, webhooks, model aliases, batch predictions, health, admin; and the dashboard's pages."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from service.api import (admin, datasets, events, health, models, predictions, results, runs,
                             sweeps, usage, webhooks)

    from service import dashboard

    for module in (datasets, runs, results, events, models, predictions, sweeps, usage, webhooks,
                   health, admin, dashboard):
        app.register_blueprint(module.bp)
