"""Celery worker: claims runs, trains them with nn, persists progress fenced by a lease."""
