"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask

from service.config import DEFAULTS


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Defaults, then `BACKPROP_*` environment variables, then `test_config`."""
    app = Flask(__name__, static_folder=None)  # a JSON API: no static files route
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("BACKPROP")
    if test_config:
        app.config.from_mapping(test_config)
    app.json.sort_keys = False  # keep the field order the serialisers and the spec use

    from service import artifacts, db, errors, params
    from service.api import register_blueprints

    db.init_app(app)
    errors.init_app(app)
    params.init_app(app)
    artifacts.init_app(app)
    register_blueprints(app)
    return app
