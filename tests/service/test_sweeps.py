"""Sweeps through the API (SQLite): children built and checked at submission, 422s naming
the parameter and the value, holding and releasing children, status and counts derived from
the children, the leaderboard, cancel, promote, the sweep.* webhook event, ASHA's rung
decisions. The workers' side on PostgreSQL and Redis: tests/worker/test_sweeps.py."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db, sweeps
from service.models import Epoch, Run, Sweep, WebhookDelivery
from tests.service.helpers import (
    XOR_NETWORK,
    XOR_TRAINING,
    add_epoch_rows,
    create_xor_dataset,
    finish_run,
    problem_paths,
    trained_model,
)

LR = "training.optimizer.learning_rate"
UNITS = "network.layers[0].units"


def _body(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "network": XOR_NETWORK, "training": XOR_TRAINING,
            "parameters": {LR: [0.05, 0.5, 2.0], UNITS: [2, 8]}, **extra}


def _submit(client, body: dict[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    resp = client.post("/v1/sweeps", json=body)
    assert resp.status_code == 202, resp.get_json()
    assert resp.headers["Location"] == f"/v1/sweeps/{resp.get_json()['id']}"
    return resp.get_json()


def _children(client, sweep_id: str) -> list[dict[str, Any]]:  # noqa: ANN001
    return client.get(f"/v1/runs?sweep_id={sweep_id}&limit=100").get_json()["items"]


def _finish(app: Flask, run_id: str, val_loss: float, status: str = "succeeded") -> None:
    finish_run(app, run_id, epochs=3, status=status)
    with db.session_scope(app) as session:
        session.get(Run, run_id).metrics = {"val_loss": val_loss, "train_loss": val_loss}


def _release(app: Flask, sweep_id: str) -> list[str]:
    """What a worker does after a child's end (worker/training.py _next_in_sweep)."""
    with db.session_scope(app) as session:
        released = sweeps.release(session, sweep_id, app.config["TENANT_MAX_ACTIVE_RUNS"])
        sweeps.settle(session, sweep_id)
    return released


def test_a_grid_makes_every_combination_and_holds_all_but_max_concurrent(
        any_client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    sweep = _submit(any_client, _body(dataset["id"], name="grid", tags={"team": "search"},
                                      max_concurrent=2))
    assert sweep["runs_total"] == 6 and sweep["status"] == "queued"
    assert sweep["counts"]["pending"] == 4 and sweep["counts"]["queued"] == 2
    children = _children(any_client, sweep["id"])
    assert len(children) == 6
    assert sorted(published) == sorted(c["id"] for c in children if c["status"] == "queued")
    # the last parameter varies fastest; every child is an ordinary, normalised run
    values = sorted((c["sweep_parameters"][LR], c["sweep_parameters"][UNITS]) for c in children)
    assert values == sorted((lr, u) for lr in (0.05, 0.5, 2.0) for u in (2, 8))
    for child in children:
        assert child["sweep_id"] == sweep["id"] and child["tags"] == {"team": "search"}
        assert child["name"] == "grid"
        assert child["training"]["optimizer"]["learning_rate"] == child["sweep_parameters"][LR]
        assert child["network"]["layers"][0]["units"] == child["sweep_parameters"][UNITS]
        assert child["training"]["epochs"] == XOR_TRAINING["epochs"]
    assert any_client.get("/v1/runs?status=pending").get_json()["items"]
    listed = any_client.get("/v1/sweeps").get_json()
    assert [s["id"] for s in listed["items"]] == [sweep["id"]]


def test_bad_paths_and_values_are_422s_naming_the_parameter_and_value(client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    cases = [
        ({LR: [0.05, 0.5, -1.0]}, f"parameters['{LR}'][2]"),
        ({UNITS: [2, 0]}, f"parameters['{UNITS}'][1]"),
        ({"network.layers[9].units": [2]}, "parameters['network.layers[9].units']"),
        ({"data.rows": [2]}, "parameters['data.rows']"),
        ({"training..epochs": [2]}, "parameters['training..epochs']"),
        ({"training.epochs": [10, "many"]}, "parameters['training.epochs'][1]"),
        ({"network.layers[0].activation": ["sigmoid", "sigmoidal"]},
         "parameters['network.layers[0].activation'][1]"),
        ({LR: {"uniform": [0.1, 1.0]}}, f"parameters['{LR}']"),  # a grid takes lists
    ]
    for parameters, path in cases:
        resp = client.post("/v1/sweeps", json={**_body(dataset["id"]), "parameters": parameters})
        assert resp.status_code == 422, (parameters, resp.get_json())
        assert problem_paths(resp)[0] == path, (parameters, resp.get_json())
    bad = client.post("/v1/sweeps", json={**_body(dataset["id"]), "parameters": {LR: [0.5, -1.0]}})
    assert "-1.0" in bad.get_json()["errors"][0]["message"]
    too_big = client.post("/v1/sweeps", json=_body(dataset["id"], max_runs=5))
    assert problem_paths(too_big) == ["parameters"]
    upside_down = client.post("/v1/sweeps", json={
        **_body(dataset["id"], method="random", max_runs=3),
        "parameters": {LR: {"log_uniform": [1, 0.1]}}})
    assert problem_paths(upside_down) == [f"parameters['{LR}'].log_uniform"]
    no_split = client.post("/v1/sweeps", json={
        **_body(dataset["id"]), "training": {**XOR_TRAINING, "validation_fraction": 0}})
    assert problem_paths(no_split) == ["metric"]
    assert client.get("/v1/runs").get_json()["items"] == []  # nothing was stored
    assert client.get("/v1/sweeps").get_json()["items"] == []


def test_random_draws_repeat_with_the_seed_and_stay_in_range(client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    body = {**_body(dataset["id"], method="random", max_runs=8, seed=7, max_concurrent=8),
            "parameters": {LR: {"log_uniform": [0.01, 3.0]}, UNITS: {"int_uniform": [2, 16]},
                           "network.layers[0].activation": {"choice": ["sigmoid", "tanh"]}}}
    first = [c["sweep_parameters"] for c in _children(client, _submit(client, body)["id"])]
    again = [c["sweep_parameters"] for c in _children(client, _submit(client, body)["id"])]
    assert sorted(map(str, first)) == sorted(map(str, again)) and len(first) == 8
    for p in first:
        assert 0.01 <= p[LR] <= 3.0 and 2 <= p[UNITS] <= 16 and isinstance(p[UNITS], int)
        assert p["network.layers[0].activation"] in ("sigmoid", "tanh")


def test_children_are_released_as_others_finish_and_the_sweep_settles(
        app: Flask, client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    hook = client.post("/v1/webhooks", json={"url": "http://93.184.215.14/hook",
                                             "events": ["sweep.succeeded"]})
    assert hook.status_code == 201
    sweep = _submit(client, _body(dataset["id"], max_concurrent=2))
    losses = {}
    for round_ in range(3):
        queued = [c for c in _children(client, sweep["id"]) if c["status"] == "queued"]
        assert len(queued) == 2, round_
        assert _release(app, sweep["id"]) == []  # max_concurrent holds
        for i, child in enumerate(queued):
            losses[child["id"]] = 0.1 * (round_ + 1) + 0.01 * i
            _finish(app, child["id"], losses[child["id"]])
        got = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
        assert got["status"] in ("running", "succeeded")
        _release(app, sweep["id"])
    got = client.get(f"/v1/sweeps/{sweep['id']}").get_json()
    assert got["status"] == "succeeded" and got["counts"]["succeeded"] == 6
    best = min(losses, key=losses.get)
    assert (got["best_run_id"], got["best_metric"]) == (best, losses[best])
    assert got["finished_at"] is not None
    with db.session_scope(app) as session:
        events = session.scalars(sa.select(WebhookDelivery.event_type)).all()
    assert events == ["sweep.succeeded"]  # once, however often it is settled again
    _release(app, sweep["id"])
    # the leaderboard, two to a page
    page = client.get(f"/v1/sweeps/{sweep['id']}/leaderboard?limit=2").get_json()
    ranked = page["items"]
    while page["next_cursor"]:
        page = client.get(f"/v1/sweeps/{sweep['id']}/leaderboard?limit=2&cursor="
                          f"{page['next_cursor']}").get_json()
        ranked += page["items"]
    assert [r["run_id"] for r in ranked] == sorted(losses, key=losses.get)
    assert [r["rank"] for r in ranked] == list(range(1, 7))
    assert set(ranked[0]["parameters"]) == {LR, UNITS}


def test_the_leaderboard_ranks_stopped_children_by_how_far_they_trained(
        app: Flask, client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    sweep = _submit(client, _body(dataset["id"], max_concurrent=6))
    ids = [c["id"] for c in _children(client, sweep["id"])]
    # (status, val_loss, epochs): a stopped child that reached a later rung ranks above
    # one stopped sooner, even with a worse metric; a child with no metric ranks last
    ends = [("cancelled", 0.01, 5), ("succeeded", 0.3, 20), ("cancelled", 0.2, 10),
            ("cancelled", 0.02, 5), ("failed", None, 2), ("succeeded", 0.1, 20)]
    for run_id, (status, loss, epochs) in zip(ids, ends):
        finish_run(app, run_id, epochs=epochs, status=status)
        with db.session_scope(app) as session:
            session.get(Run, run_id).metrics = {} if loss is None else {"val_loss": loss}
    page = client.get(f"/v1/sweeps/{sweep['id']}/leaderboard").get_json()
    assert [r["run_id"] for r in page["items"]] == [ids[i] for i in (5, 1, 2, 0, 3, 4)]


def test_the_tenant_limit_holds_children_back_without_a_429(app: Flask, client, published) -> None:  # noqa: ANN001
    app.config["TENANT_MAX_ACTIVE_RUNS"] = 3
    dataset = create_xor_dataset(client)
    sweep = _submit(client, _body(dataset["id"], max_concurrent=6))
    assert sweep["counts"]["queued"] == 3 and sweep["counts"]["pending"] == 3
    resp = client.post("/v1/runs", json={"dataset_id": dataset["id"], "network": XOR_NETWORK,
                                         "training": XOR_TRAINING})
    assert resp.status_code == 429  # the children count against the tenant's limit
    queued = [c["id"] for c in _children(client, sweep["id"]) if c["status"] == "queued"]
    _finish(app, queued[0], 0.5)
    assert len(_release(app, sweep["id"])) == 1


def test_cancel_cancels_every_child_and_promote_needs_a_best_run(
        app: Flask, client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    sweep = _submit(client, _body(dataset["id"], max_concurrent=2))
    children = _children(client, sweep["id"])
    resp = client.post(f"/v1/sweeps/{sweep['id']}/promote", json={"model": "xor"})
    assert resp.status_code == 409 and resp.get_json()["code"] == "no_best_run"
    running = next(c["id"] for c in children if c["status"] == "queued")
    with db.session_scope(app) as session:
        session.get(Run, running).status = "running"
    cancelled = client.post(f"/v1/sweeps/{sweep['id']}/cancel").get_json()
    assert cancelled["status"] == "cancelling" and cancelled["cancel_requested"]
    assert cancelled["counts"]["cancelled"] == 5 and cancelled["counts"]["cancelling"] == 1
    assert _release(app, sweep["id"]) == []
    finish_run(app, running, epochs=3, status="cancelled")
    _release(app, sweep["id"])
    done = client.post(f"/v1/sweeps/{sweep['id']}/cancel").get_json()
    assert done["status"] == "cancelled" and done["finished_at"] is not None


def test_promote_points_an_alias_at_the_best_run(app: Flask, client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    sweep = _submit(client, {**_body(dataset["id"], max_concurrent=2, goal="maximize",
                                     metric="train_loss"), "parameters": {LR: [0.1, 0.5]}})
    children = _children(client, sweep["id"])
    for child, loss in zip(children, (0.2, 0.7)):
        model = trained_model(child).to_npz()
        finish_run(app, child["id"], epochs=3, artifacts={"final": model})
        with db.session_scope(app) as session:
            session.get(Run, child["id"]).metrics = {"train_loss": loss}
    best = children[1]["id"]  # maximize: the larger
    resp = client.post(f"/v1/sweeps/{sweep['id']}/promote", json={"model": "xor-best"})
    assert resp.status_code == 201 and resp.get_json()["run_id"] == best
    again = client.post(f"/v1/sweeps/{sweep['id']}/promote", json={"model": "xor-best"})
    assert again.status_code == 200 and again.get_json()["version"] == 1
    assert client.get("/v1/models/xor-best").get_json()["run_id"] == best
    bad = client.post(f"/v1/sweeps/{sweep['id']}/promote", json={"model": "-no"})
    assert bad.status_code == 422


def test_cancelling_a_pending_child_ends_it_at_once(client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    sweep = _submit(client, _body(dataset["id"]))
    pending = next(c for c in _children(client, sweep["id"]) if c["status"] == "pending")
    resp = client.post(f"/v1/runs/{pending['id']}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"


@pytest.mark.parametrize(("goal", "mine", "others", "stops"), [
    ("minimize", 0.5, [], False),               # the first at a rung goes on
    ("minimize", 0.5, [0.1], True),             # 2 reached, rf 2: the best 1 goes on
    ("minimize", 0.1, [0.5], False),
    ("maximize", 0.1, [0.5], True),
    ("minimize", 0.3, [0.1, 0.2, 0.4], True),   # 4 reached: the best 2 go on
    ("minimize", 0.15, [0.1, 0.2, 0.4], False),
    ("minimize", None, [0.5], True),            # a diverged loss is the worst
])
def test_asha_keeps_the_best_1_over_rf_at_a_rung(app: Flask, client, published, goal: str,  # noqa: ANN001
                                                 mine: float | None, others: list[float],
                                                 stops: bool) -> None:
    dataset = create_xor_dataset(client)
    sweep = _submit(client, {**_body(dataset["id"], max_concurrent=8, goal=goal),
                             "parameters": {LR: [0.1, 0.2, 0.3, 0.4, 0.5]},
                             "early_stopping": {"type": "asha", "min_epochs": 2,
                                                "reduction_factor": 2}})
    assert sweep["early_stopping"] == {"type": "asha", "min_epochs": 2, "reduction_factor": 2}
    children = [c["id"] for c in _children(client, sweep["id"])]
    for run_id, value in zip(children[1:], others):
        add_epoch_rows(app, run_id, [1, 2])
        _set_val_loss(app, run_id, 2, value)
    add_epoch_rows(app, children[0], [1, 2])
    _set_val_loss(app, children[0], 2, mine)
    with db.session_scope(app) as session:
        run = session.get(Run, children[0])
        asha = sweeps.Asha.of(session.get(Sweep, sweep["id"]), run.id, run.epochs_total)
        assert asha is not None and asha.rungs == [2, 4, 8, 16, 32, 64, 128, 256, 512]
        why = asha.decide(session, 3)
    assert (why is not None) == stops
    got = client.get(f"/v1/runs/{children[0]}").get_json()
    assert got["cancel_requested"] == stops
    assert (got["error"] or {}).get("code") == ("stopped_early" if stops else None)


def _set_val_loss(app: Flask, run_id: str, epoch: int, value: float | None) -> None:
    with db.session_scope(app) as session:
        seq = session.get(Run, run_id).seq
        session.execute(sa.update(Epoch).where(Epoch.run_seq == seq, Epoch.epoch == epoch)
                        .values(val_loss=value))


def test_a_retried_submission_makes_one_sweep(any_client, published) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(any_client)
    key = {"Idempotency-Key": "sweep-1"}
    first = any_client.post("/v1/sweeps", json=_body(dataset["id"]), headers=key)
    again = any_client.post("/v1/sweeps", json=_body(dataset["id"]), headers=key)
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(any_client.get("/v1/sweeps").get_json()["items"]) == 1
    assert len(_children(any_client, first.get_json()["id"])) == 6
    assert len(published) == 1  # max_concurrent 1: one child released, published once


def test_a_random_sweep_without_max_runs_is_refused_by_the_schema(client) -> None:  # noqa: ANN001
    dataset = create_xor_dataset(client)
    resp = client.post("/v1/sweeps", json=_body(dataset["id"], method="random"))
    assert resp.status_code == 422 and problem_paths(resp) == ["max_runs"]


def test_a_path_through_objects_the_base_leaves_out_keeps_their_defaults(client, published) -> None:  # noqa: ANN001
    """training.optimizer.learning_rate on a base without an optimizer: the default
    optimizer (its type among the rest) with that learning rate."""
    dataset = create_xor_dataset(client)
    sweep = _submit(client, {"dataset_id": dataset["id"], "network": XOR_NETWORK,
                             "training": {"epochs": 5, "validation_fraction": 0.2},
                             "parameters": {LR: [0.1, 1.0]}})
    children = _children(client, sweep["id"])
    default = create_run_optimizer(client, dataset["id"])
    for child in children:
        optimizer = child["training"]["optimizer"]
        assert optimizer == {**default, "learning_rate": child["sweep_parameters"][LR]}
    # the network's untouched fields are as a run would have them: not from the base as built
    assert [c["network"] for c in children][0] == [c["network"] for c in children][1]


def create_run_optimizer(client, dataset_id: str) -> dict[str, Any]:  # noqa: ANN001
    resp = client.post("/v1/runs", json={"dataset_id": dataset_id, "network": XOR_NETWORK,
                                         "training": {"epochs": 5, "validation_fraction": 0.2}})
    return resp.get_json()["training"]["optimizer"]
