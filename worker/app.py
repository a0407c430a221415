"""The worker's entry module: `celery -A worker.app worker` and `celery -A worker.app beat`.

Building the Flask app at import time is right here, and only here: this module is the
process's entry point (like Flask's `make_celery.py`); the tasks take ids and load the rest.
"""

from __future__ import annotations

from service import create_app
from service.queue import celery_init_app

flask_app = create_app()
celery = celery_init_app(flask_app)

import worker.tasks  # noqa: E402,F401  (registers the tasks with `celery`)
