"""Prometheus metrics at GET /metrics (prometheus-client; unauthenticated like /healthz), only
on METRICS_PORT when it is set: a port of the API's server that is not published.

Where each number comes from, so that it is right however many processes serve and train:

- From the database, at scrape time (`DatabaseCollector`): runs by status, the age of the
  oldest queued run, and, over the last METRICS_WINDOW_SECONDS, the queue wait
  (started_at - created_at of the runs first started in it) and the epoch durations (of the
  runs with a heartbeat in it). Those two are *gauge histograms*: the distribution now,
  which may shrink, rather than counters since some process started; `histogram_quantile()`
  reads them as usual. Every API process answers the same, and workers, on whatever
  machines, need no port or shared folder: the rows they write are the measurements.
- In the API process: prediction latency (a histogram) and requests by endpoint and status
  (a counter). gunicorn's workers share them through prometheus-client's multiprocess mode
  (service/gunicorn_conf.py gives it a fresh folder at each start, PROMETHEUS_MULTIPROC_DIR);
  without that variable (tests, `flask run`) they are the process's own.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import timedelta

import sqlalchemy as sa
from flask import Flask, Response, abort, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from service import db
from service.auth import public
from service.models import RUN_STATUSES, Epoch, Run, utcnow

QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
EPOCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)
PREDICT_ENDPOINT = "results.predict"

# In-process metrics (registered in prometheus-client's default registry; in multiprocess
# mode their values live in PROMETHEUS_MULTIPROC_DIR).
PREDICT_LATENCY = Histogram(
    "backprop_predict_latency_seconds", "POST /v1/runs/{id}/predict: time to answer",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
REQUESTS = Counter("backprop_http_requests", "HTTP requests answered",
                   ["method", "endpoint", "status"])


class DatabaseCollector:
    """The metrics the rows give, queried at each scrape (a few indexed queries)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        window = float(self.app.config["METRICS_WINDOW_SECONDS"])
        now = utcnow()
        since = now - timedelta(seconds=window)
        with db.session_scope(self.app) as session:
            by_status = dict(session.execute(
                sa.select(Run.status, sa.func.count()).group_by(Run.status)).all())
            oldest = session.scalar(
                sa.select(sa.func.min(Run.created_at)).where(Run.status == "queued"))
            waits = [(started - created).total_seconds() for created, started in session.execute(
                sa.select(Run.created_at, Run.started_at).where(Run.started_at >= since))]
            recent = sa.select(Run.seq).where(Run.heartbeat_at >= since).scalar_subquery()
            epoch_row = session.execute(sa.select(
                *(sa.func.coalesce(sa.func.sum(sa.case((Epoch.duration_s <= b, 1), else_=0)), 0)
                  for b in EPOCH_BUCKETS),
                sa.func.count(), sa.func.coalesce(sa.func.sum(Epoch.duration_s), 0.0),
            ).where(Epoch.run_seq.in_(recent))).one()

        runs = GaugeMetricFamily("backprop_runs", "Runs by status, now", labels=["status"])
        for status in RUN_STATUSES:
            runs.add_metric([status], by_status.get(status, 0))
        yield runs
        yield GaugeMetricFamily(
            "backprop_oldest_queued_run_age_seconds",
            "How long the oldest queued run has waited (0: none queued)",
            value=(now - oldest).total_seconds() if oldest is not None else 0.0)
        yield _gauge_histogram(
            "backprop_queue_wait_seconds",
            f"started_at - created_at of the runs first started in the last {window:g} s",
            QUEUE_WAIT_BUCKETS, _cumulative(waits, QUEUE_WAIT_BUCKETS), len(waits), sum(waits))
        *counts, total, seconds = epoch_row
        yield _gauge_histogram(
            "backprop_epoch_duration_seconds",
            f"Training epoch durations of the runs with a heartbeat in the last {window:g} s",
            EPOCH_BUCKETS, [int(c) for c in counts], int(total), float(seconds))


def _cumulative(values: Sequence[float], buckets: Sequence[float]) -> list[int]:
    ordered = sorted(values)
    return [bisect_right(ordered, b) for b in buckets]  # how many are <= b


def _gauge_histogram(name: str, doc: str, buckets: Sequence[float], counts: Sequence[int],
                     total: int, gsum: float) -> GaugeHistogramMetricFamily:
    pairs = [(floatToGoString(b), c) for b, c in zip(buckets, counts)] + [("+Inf", total)]
    return GaugeHistogramMetricFamily(name, doc, buckets=pairs, gsum_value=gsum)


def init_app(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_count)
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


@public
def metrics() -> Response:
    port = current_app.config["METRICS_PORT"]
    if port is not None and request.environ.get("SERVER_PORT") != str(port):
        # the listening socket's port (gunicorn and werkzeug take it from the socket, not
        # from the Host header): the public port has no /metrics
        abort(404)
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_Process())
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    registry.register(DatabaseCollector(app))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _Process:
    """This process's own metrics (no multiprocess folder)."""

    def collect(self) -> Iterator[Metric]:
        yield from PREDICT_LATENCY.collect()
        yield from REQUESTS.collect()


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    started = g.pop("metrics_started", None)  # None: an earlier hook answered (e.g. a 401)
    endpoint = request.endpoint or "unrouted"
    if endpoint == "metrics":
        return response
    if started is not None and endpoint == PREDICT_ENDPOINT and response.status_code == 200:
        PREDICT_LATENCY.observe(time.perf_counter() - started)
    REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
    return response
