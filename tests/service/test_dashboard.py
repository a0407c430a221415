"""The dashboard's page and files, served by the API without a key (the browser tests, in
tests/e2e/test_dashboard.py, drive them)."""

from __future__ import annotations

import uuid

from flask.testing import FlaskClient


def test_every_dashboard_path_serves_the_page_without_a_key(client) -> None:  # noqa: ANN001
    anonymous = client.application.test_client(api_key=None)
    for path in ("/", "/new", f"/runs/{uuid.uuid4()}", f"/datasets/{uuid.uuid4()}", "/sweeps",
                 f"/sweeps/{uuid.uuid4()}"):
        page = anonymous.get(path)
        assert page.status_code == 200 and page.mimetype == "text/html", path
        assert b'<script type="module" src="/static/app.js">' in page.data
        assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
        assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert page.headers["Referrer-Policy"] == "no-referrer"


def test_its_files_are_served_and_nothing_else(app) -> None:  # noqa: ANN001
    files = FlaskClient(app)  # not the API's contract: no openapi.yaml check
    for name, mimetype in (("app.js", "text/javascript"), ("charts.js", "text/javascript"),
                           ("sweeps.js", "text/javascript"), ("style.css", "text/css")):
        with files.get(f"/static/{name}") as answer:  # closes the file it was sent from
            assert answer.status_code == 200 and answer.mimetype == mimetype, name
    assert files.get("/static/nothing.js").status_code == 404
    assert files.get("/static/../dashboard.py").status_code == 404
    assert files.get("/runs/not-a-uuid").status_code == 404
    assert files.get("/sweeps/not-a-uuid").status_code == 404
