"""The dashboard: one HTML page and its ES modules (service/static/), served by the API
itself. No build step and nothing from a CDN, so it works offline on a fresh machine.

The page is public: it holds no data. It takes the API key from the URL fragment
(`/#key=...`, which browsers never send to a server) or from a form, keeps it for the
browser session (sessionStorage) and calls the API with it like any client, so it sees
exactly what the key's tenant sees. The routes below all serve the same page; its script
draws what the path names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, send_from_directory

from service.auth import public

STATIC = Path(__file__).resolve().parent / "static"
# Only this origin's scripts, styles and API; no inline script (the key is in the page).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

bp = Blueprint("dashboard", __name__)


@bp.get("/")
@bp.get("/new")
@bp.get("/runs/<uuid:run_id>")
@bp.get("/datasets/<uuid:dataset_id>")
@bp.get("/sweeps")
@bp.get("/sweeps/<uuid:sweep_id>")
@public
def page(**_ids: Any) -> Response:
    return _send("index.html", "no-cache")


@bp.get("/static/<path:name>")
@public
def asset(name: str) -> Response:
    """The page's scripts and style (not part of the API contract, openapi.yaml)."""
    return _send(name, "no-cache")


def _send(name: str, cache: str) -> Response:
    resp = send_from_directory(STATIC, name)
    resp.headers.update(HEADERS)
    resp.headers["Cache-Control"] = cache
    return resp
