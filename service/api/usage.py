"""/v1/usage: what the calling tenant stores, against its quota."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from service import usage as counting
from service.api.common import json_response
from service.auth import tenant_id
from service.db import get_session

bp = Blueprint("usage", __name__, url_prefix="/v1/usage")


@bp.get("")
def usage() -> Response:
    used = counting.stored(get_session(), tenant_id())
    quota = int(current_app.config["TENANT_MAX_STORED_BYTES"])
    return json_response({
        "stored_bytes": used.total,
        "max_stored_bytes": quota if quota > 0 else None,
        "bytes": {"datasets": used.datasets, "weights": used.weights, "rows": used.rows,
                  "predictions": used.predictions},
        "counts": {"datasets": used.n_datasets, "runs": used.n_runs,
                   "predictions": used.n_predictions},
    })
