"""The data model's own rules: what the database assigns and stores."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service import db
from service.models import Epoch, Run
from tests.service.helpers import add_epoch_rows, create_run, create_xor_dataset


@pytest.mark.parametrize("any_app", ["sqlite", "postgresql"], indirect=True)
def test_runs_are_numbered_once_each_and_their_rows_go_with_them(any_app: Flask) -> None:
    """Runs added in one flush get distinct numbers (SQLite computes the next one once per
    INSERT statement); a deleted run's rows go with it, so a number SQLite gives again after
    the largest run is deleted names no row."""
    client: FlaskClient = any_app.test_client()
    dataset = create_xor_dataset(client)
    first = create_run(client, dataset["id"])
    with db.session_scope(any_app) as session:
        template = session.get(Run, first["id"])
        runs = [Run(tenant_id=template.tenant_id, dataset_id=template.dataset_id,
                    network=template.network, training=template.training, epochs_total=3,
                    status="succeeded") for _ in range(3)]
        session.add_all(runs)
        session.flush()
        numbers = [template.seq, *(r.seq for r in runs)]
        last = runs[-1].id
    assert len(set(numbers)) == 4
    add_epoch_rows(any_app, last, range(1, 4))
    assert client.delete(f"/v1/runs/{last}").status_code == 204
    with db.session_scope(any_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Epoch)
                              .where(Epoch.run_seq == max(numbers))) == 0
