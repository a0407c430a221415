"""The Flask application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Defaults, then `BACKPROP_*` environment variables, then `test_config`, each checked
    (service/config.py: a bad value raises SettingError, which ends a process at start)."""
    # Imported here, not with the package: gunicorn's master imports service.logs for its
    # formatters and must not import Flask's, SQLAlchemy's or a driver's modules before its
    # gevent workers patch the standard library (service/gunicorn_conf.py).
    from flask import Flask

    from service import config
    from service.serialize import StrictJSONProvider

    app = Flask(__name__, static_folder=None)  # a JSON API: no static files route
    app.config.from_mapping(config.load(test_config))
    app.json = StrictJSONProvider(app)

    from service import artifacts, auth, db, errors, events, logs, metrics, params
    from service.api import register_blueprints

    logs.init_app(app)  # first: every later hook's lines carry the request id
    db.init_app(app)
    errors.init_app(app)
    auth.init_app(app)  # before params: a request without a key is a 401 before anything else
    params.init_app(app)
    artifacts.init_app(app)
    events.init_app(app)
    register_blueprints(app)
    metrics.init_app(app)
    return app
