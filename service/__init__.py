"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from service.config import DEFAULTS


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Defaults, then `BACKPROP_*` environment variables, then `test_config`."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("BACKPROP")
    if test_config:
        app.config.from_mapping(test_config)

    from service import db, errors
    from service.api import register_blueprints

    db.init_app(app)
    errors.init_app(app)
    register_blueprints(app)
    return app
