"""The WSGI entry point: `gunicorn service.wsgi:app`."""

from service import create_app, db, queue, schemas

app = create_app()
db.limit_statements(app)  # API_STATEMENT_TIMEOUT_SECONDS: the API's statements only
schemas.registry()  # openapi.yaml parsed now, not in each worker's first request
queue.prepare(app)  # the broker's client imported now, not in the first POST /v1/runs
