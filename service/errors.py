"""RFC 9457 problem+json errors (placeholder; the API engineer fills this in)."""

from flask import Flask


def init_app(app: Flask) -> None:
    pass
