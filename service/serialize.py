"""Rows -> JSON objects, exactly as openapi.yaml describes them."""

from __future__ import annotations

import math
from datetime import datetime, UTC
from typing import Any

from flask.json.provider import DefaultJSONProvider

from service.models import (
    ApiKey,
    Dataset,
    Epoch,
    ModelAlias,
    ModelVersion,
    Prediction,
    Run,
    Tenant,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)

FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
EPOCH_FIELDS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate",
                "train_exact_match", "val_exact_match")


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, e.g. 2026-11-27T21:00:00.123456Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def finite(value: Any) -> Any:
    """JSON-safe: non-finite floats (a diverged loss) become null, recursively (lists and
    tuples become lists). The API's answers and the worker's stored rows both go through it:
    PostgreSQL's JSON rejects NaN and SQLite stores it as NULL, so both backends agree."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with `allow_nan=False`: every answer is strict JSON. The serialisers make
    each float finite or null (`finite`, predictions refuse overflowing outputs); a value
    that slips through is then a loud 500, not `NaN` or `Infinity` that a client's parser
    rejects."""

    sort_keys = False  # keep the field order the serialisers and the spec use

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def dataset_json(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "created_at": timestamp(d.created_at),
        "n_samples": d.n_samples,
        "input_shape": d.input_shape,
        "task": d.task,
        "classes": d.classes,
        "target_dim": d.target_dim,
        "sha256": d.sha256,
        "source": d.source,
        "size_bytes": d.size_bytes,
        "links": {"self": f"/v1/datasets/{d.id}", "runs": f"/v1/runs?dataset_id={d.id}"},
    }


def progress(run: Run) -> float:
    if run.epochs_total == 0:
        return 1.0 if run.status in FINISHED_STATUSES else 0.0
    return min(1.0, run.epochs_completed / run.epochs_total)


def run_json(run: Run) -> dict[str, Any]:
    base = f"/v1/runs/{run.id}"
    error = None
    if run.error_code is not None:
        error = {"code": run.error_code, "message": run.error_message or ""}
    return {
        "id": run.id,
        "name": run.name,
        "tags": run.tags or {},
        "status": run.status,
        "dataset_id": run.dataset_id,
        "network": run.network,
        "training": run.training,
        "init_from_run": run.init_from_run_id,
        "created_at": timestamp(run.created_at),
        "started_at": timestamp(run.started_at),
        "finished_at": timestamp(run.finished_at),
        "epochs_completed": run.epochs_completed,
        "epochs_total": run.epochs_total,
        "progress": progress(run),
        "metrics": finite(run.metrics),
        "error": error,
        "cancel_requested": bool(run.cancel_requested),
        "attempts": run.attempts,
        "heartbeat_at": timestamp(run.heartbeat_at),
        "stats_thinned_after": run.stats_thinned_after,
        "pinned": bool(run.pinned),
        "sweep_id": run.sweep_id,
        "sweep_parameters": run.sweep_parameters,
        "links": {
            "self": base,
            "dataset": f"/v1/datasets/{run.dataset_id}",
            "epochs": f"{base}/epochs",
            "layer_stats": f"{base}/layer-stats",
            "events": f"{base}/events",
            "weights": f"{base}/weights",
            "predict": f"{base}/predict",
            "cancel": f"{base}/cancel",
        },
    }


def epoch_json(e: Epoch) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": e.epoch, "phase": e.phase, "layer": e.layer}
    row.update({f: finite(getattr(e, f)) for f in EPOCH_FIELDS})
    row["duration_s"] = finite(e.duration_s)
    return row


def tenant_json(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "created_at": timestamp(t.created_at),
        "links": {"self": f"/v1/admin/tenants/{t.id}", "keys": f"/v1/admin/tenants/{t.id}/keys"},
    }


def api_key_json(k: ApiKey, key: str | None = None) -> dict[str, Any]:
    """A key's record; `key` (the key itself) only in the answer that created it."""
    row: dict[str, Any] = {
        "id": k.id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": timestamp(k.created_at),
        "revoked_at": timestamp(k.revoked_at),
    }
    if key is not None:
        row["key"] = key
    row["links"] = {"self": f"/v1/admin/keys/{k.id}", "tenant": f"/v1/admin/tenants/{k.tenant_id}"}
    return row


def webhook_json(w: Webhook, secret: str | None = None) -> dict[str, Any]:
    """A webhook; `secret` only in the answers that made it (creation, rotation)."""
    base = f"/v1/webhooks/{w.id}"
    row: dict[str, Any] = {
        "id": w.id,
        "url": w.url,
        "events": w.events,
        "description": w.description,
        "created_at": timestamp(w.created_at),
        "disabled": w.disabled_at is not None,
        "disabled_at": timestamp(w.disabled_at),
        "disabled_reason": w.disabled_reason,
        "failing_since": timestamp(w.failing_since),
        "previous_secret_expires_at": timestamp(w.previous_secret_expires_at),
    }
    if secret is not None:
        row["secret"] = secret
    row["links"] = {"self": base, "deliveries": f"{base}/deliveries",
                    "rotate_secret": f"{base}/rotate-secret"}
    return row


def delivery_json(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    """A delivery with its attempts, oldest first."""
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "created_at": timestamp(d.created_at),
        "next_attempt_at": timestamp(d.next_attempt_at),
        "finished_at": timestamp(d.finished_at),
        "attempts": [{
            "attempt": a.attempt,
            "started_at": timestamp(a.started_at),
            "duration_s": finite(a.duration_s),
            "status_code": a.status_code,
            "error": a.error,
            "next_attempt_at": timestamp(a.next_attempt_at),
        } for a in attempts],
    }


def model_json(m: ModelAlias) -> dict[str, Any]:
    base = f"/v1/models/{m.name}"
    return {
        "name": m.name,
        "run_id": m.run_id,
        "weights": m.weights,
        "version": m.version,
        "created_at": timestamp(m.created_at),
        "updated_at": timestamp(m.updated_at),
        "links": {"self": base, "versions": f"{base}/versions", "predict": f"{base}/predict",
                  "run": f"/v1/runs/{m.run_id}"},
    }


def model_version_json(v: ModelVersion) -> dict[str, Any]:
    return {"version": v.version, "run_id": v.run_id, "weights": v.weights,
            "created_at": timestamp(v.created_at)}


def prediction_json(p: Prediction) -> dict[str, Any]:
    base = f"/v1/predictions/{p.id}"
    error = None
    if p.error_code is not None:
        error = {"code": p.error_code, "message": p.error_message or ""}
    return {
        "id": p.id,
        "status": p.status,
        "dataset_id": p.dataset_id,
        "run_id": p.run_id,
        "weights": p.weights,
        "model": p.model,
        "model_version": p.model_version,
        "created_at": timestamp(p.created_at),
        "started_at": timestamp(p.started_at),
        "finished_at": timestamp(p.finished_at),
        "rows_total": p.rows_total,
        "rows_done": p.rows_done,
        "progress": min(1.0, p.rows_done / p.rows_total) if p.rows_total else 1.0,
        "error": error,
        "cancel_requested": bool(p.cancel_requested),
        "attempts": p.attempts,
        "result_bytes": p.result_bytes,
        "links": {"self": base, "result": f"{base}/result", "cancel": f"{base}/cancel",
                  "dataset": f"/v1/datasets/{p.dataset_id}", "run": f"/v1/runs/{p.run_id}"},
    }
