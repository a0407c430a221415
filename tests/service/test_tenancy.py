"""Tenants and API keys: every endpoint needs a key, a tenant sees only its own rows (another
tenant's id is a 404, never a 403), the admin endpoints, keys stored hashed and revocable.

The endpoint lists come from openapi.yaml, so a new route is covered without being named.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from service import create_app, db
from service.auth import key_sha256
from service.config import SettingError
from service.models import ApiKey, Base, Run
from service.schemas import spec
from tests.service.conftest import add_tenant, make_app
from worker.predictions import run_prediction
from tests.service.helpers import (
    XOR_NETWORK,
    XOR_TRAINING,
    create_run,
    create_xor_dataset,
    finish_run,
    trained_model,
)

ADMIN_KEY = "admin-" + "k" * 40
MISSING = "00000000-0000-4000-8000-000000000000"
METHODS = ("get", "post", "put", "patch", "delete")


def _operations(kind: str) -> list[tuple[str, str]]:
    """(METHOD, template) of the spec's operations that are `public`, `admin` or `tenant`."""
    found = []
    for template, item in spec()["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            security = op.get("security", spec()["security"])
            op_kind = ("public" if security == [] else
                       "admin" if security == [{"admin": []}] else "tenant")
            if op_kind == kind:
                found.append((method.upper(), template))
    return sorted(found)


PUBLIC, ADMIN, TENANT = _operations("public"), _operations("admin"), _operations("tenant")
# A valid body for the operations that need one (so that only the id can be wrong).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/runs/{run_id}/predict"): {"inputs": [[1.0, 1.0]]},
    ("PATCH", "/v1/runs/{run_id}"): {"pinned": True},
    ("POST", "/v1/admin/tenants"): {"name": "someone"},
    ("PATCH", "/v1/webhooks/{webhook_id}"): {"description": "changed"},
    ("POST", "/v1/models/{name}/predict"): {"inputs": [[1.0, 1.0]]},
    ("POST", "/v1/sweeps/{sweep_id}/promote"): {"model": "promoted"},
}
# Operations on a name that make what they name: tested on their own below.
MAKERS = [("PUT", "/v1/models/{name}")]
WEBHOOK = {"url": "http://93.184.215.14/hook", "events": ["*"]}  # never called here


def _url(template: str, **ids: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), MISSING), template)


def _call(client, method: str, template: str, **kwargs: Any):  # noqa: ANN001, ANN202
    ids = kwargs.pop("ids", {})
    body = BODIES.get((method, template))
    if body is not None:
        kwargs.setdefault("json", body)
    return client.open(_url(template, **ids), method=method, **kwargs)


def _problem(resp, status: int, code: str) -> dict:  # noqa: ANN001
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.content_type == "application/problem+json"
    body = resp.get_json()
    assert body["code"] == code, body
    return body


def test_the_spec_knows_every_kind_of_operation() -> None:
    assert ("GET", "/healthz") in PUBLIC and ("GET", "/v1/openapi.json") in PUBLIC
    assert ("POST", "/v1/admin/tenants") in ADMIN and ("DELETE", "/v1/admin/keys/{key_id}") in ADMIN
    assert ("GET", "/v1/runs/{run_id}/epochs") in TENANT
    assert all(t.startswith("/v1/admin/") for _, t in ADMIN)
    assert not [t for _, t in TENANT if t.startswith("/v1/admin/")]


# ---- a key is needed -------------------------------------------------------------------------

@pytest.fixture
def admin_app(sqlite_url: str) -> Flask:
    return make_app(sqlite_url, ADMIN_KEY=ADMIN_KEY, API_KEY_CACHE_SECONDS=0)  # revoke at once


@pytest.mark.parametrize(("method", "template"), TENANT + ADMIN)
def test_every_operation_refuses_a_missing_or_bad_key(admin_app: Flask, method: str,
                                                      template: str) -> None:
    anonymous = admin_app.test_client(api_key=None)
    body = _problem(_call(anonymous, method, template), 401, "unauthorized")
    assert "API key" in body["detail"]
    resp = _call(anonymous, method, template)
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="backprop"'
    for headers in ({"Authorization": "Bearer bp_" + "x" * 43}, {"Authorization": "Bearer "},
                    {"Authorization": "Basic dXNlcjpwYXNz"}, {"X-API-Key": "nope"},
                    {"Authorization": "Bearer " + "\u00e9" * 300}):
        resp = _call(anonymous, method, template, headers=headers)
        _problem(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "template"), PUBLIC)
def test_public_operations_need_no_key(admin_app: Flask, method: str, template: str) -> None:
    assert _call(admin_app.test_client(api_key=None), method, template).status_code == 200


def test_x_api_key_works_too(client) -> None:  # noqa: ANN001
    key = client.api_key
    anonymous = client.application.test_client(api_key=None)
    assert anonymous.get("/v1/datasets", headers={"X-API-Key": key}).status_code == 200
    bearer = {"Authorization": f"bearer {key}"}
    assert anonymous.get("/v1/datasets", headers=bearer).status_code == 200
    both = {"Authorization": "Basic cHJveHk6cGFzcw==", "X-API-Key": key}  # a proxy's, and ours
    assert anonymous.get("/v1/datasets", headers=both).status_code == 200


def test_unrouted_requests_are_404_or_405_without_a_key(client) -> None:  # noqa: ANN001
    anonymous = client.application.test_client(api_key=None)
    assert anonymous.get("/v1/nothing").status_code == 404
    assert anonymous.put("/v1/runs").status_code == 405


# ---- another tenant's rows are not there -----------------------------------------------------

@pytest.fixture
def other(any_app: Flask) -> dict[str, Any]:
    """Tenant B's client, data set, succeeded run (with final weights), webhook, model alias
    (`name`, pointing at the run) and batch prediction (succeeded)."""
    _, key = add_tenant(any_app, "other")
    client = any_app.test_client(api_key=key)
    dataset = create_xor_dataset(client)
    run = create_run(client, dataset["id"])
    finish_run(any_app, run["id"], epochs=3, artifacts={"final": trained_model(run).to_npz()})
    webhook = client.post("/v1/webhooks", json=WEBHOOK).get_json()
    assert client.put("/v1/models/theirs", json={"run_id": run["id"]}).status_code == 201
    job = client.post("/v1/predictions", json={"model": "theirs", "dataset_id": dataset["id"]})
    with any_app.app_context():
        assert run_prediction(job.get_json()["id"]) == "succeeded"
    sweep = client.post("/v1/sweeps", json=_sweep_body(dataset["id"]))
    assert sweep.status_code == 202, sweep.get_json()
    return {"client": client, "dataset_id": dataset["id"], "run_id": run["id"],
            "webhook_id": webhook["id"], "name": "theirs", "prediction_id": job.get_json()["id"],
            "sweep_id": sweep.get_json()["id"]}


def _sweep_body(dataset_id: str) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "network": XOR_NETWORK, "training": XOR_TRAINING,
            "parameters": {"training.optimizer.learning_rate": [0.1, 0.5]}}


def _unchanged(other: dict[str, Any]) -> None:
    b = other["client"]
    assert b.get(f"/v1/datasets/{other['dataset_id']}").status_code == 200
    run = b.get(f"/v1/runs/{other['run_id']}").get_json()
    assert run["status"] == "succeeded" and not run["cancel_requested"] and not run["pinned"]
    webhook = b.get(f"/v1/webhooks/{other['webhook_id']}").get_json()
    assert (webhook["description"], webhook["disabled"]) == (None, False)
    assert webhook["previous_secret_expires_at"] is None  # not rotated
    model = b.get(f"/v1/models/{other['name']}").get_json()
    assert (model["run_id"], model["version"]) == (other["run_id"], 1)
    job = b.get(f"/v1/predictions/{other['prediction_id']}").get_json()
    assert (job["status"], job["cancel_requested"]) == ("succeeded", False)
    sweep = b.get(f"/v1/sweeps/{other['sweep_id']}").get_json()
    assert (sweep["status"], sweep["cancel_requested"]) == ("queued", False)


@pytest.mark.parametrize(("method", "template"),
                         [op for op in TENANT if "{" in op[1] and op not in MAKERS])
def test_another_tenants_id_is_404(any_client, other: dict, method: str, template: str) -> None:  # noqa: ANN001
    """Every operation on an id: tenant A gets 404 for tenant B's ids, as for no id at all,
    and B's rows are untouched."""
    ids = {name: other[name] for name in ("dataset_id", "run_id", "webhook_id", "name",
                                          "prediction_id", "sweep_id")}
    theirs = _problem(_call(any_client, method, template, ids=ids), 404, "not_found")
    nobody = _problem(_call(any_client, method, template), 404, "not_found")
    assert theirs["detail"] == nobody["detail"].replace(MISSING, ids[_param(template)])
    _unchanged(other)
    assert _call(other["client"], method, template, ids=ids).status_code != 404  # B's own


def _param(template: str) -> str:
    return re.findall(r"\{(\w+)\}", template)[-1]


@pytest.mark.parametrize(("method", "template"), [op for op in TENANT if "{" not in op[1]])
def test_collections_show_only_ones_own(any_client, other: dict, method: str,  # noqa: ANN001
                                        template: str) -> None:
    """Lists never show B's rows, usage never counts them; bodies that name B's rows are
    refused as naming nothing."""
    if template == "/v1/usage":
        assert any_client.get(template).get_json()["counts"] == {"datasets": 0, "runs": 0,
                                                                 "predictions": 0}
        # B's runs: its run and its sweep's two children.
        assert other["client"].get(template).get_json()["counts"] == {"datasets": 1, "runs": 3,
                                                                      "predictions": 1}
    elif method == "GET":
        resp = any_client.get(template)
        assert resp.status_code == 200
        assert other["dataset_id"] not in resp.get_data(as_text=True)
        assert other["run_id"] not in resp.get_data(as_text=True)
        assert other["webhook_id"] not in resp.get_data(as_text=True)
        assert other["name"] not in resp.get_data(as_text=True)
        assert other["prediction_id"] not in resp.get_data(as_text=True)
        assert other["sweep_id"] not in resp.get_data(as_text=True)
        assert other["client"].get(template).get_json()["items"]  # B sees its own
    elif (method, template) == ("POST", "/v1/runs"):
        body = {"dataset_id": other["dataset_id"], "network": XOR_NETWORK, "training": XOR_TRAINING}
        resp = any_client.post(template, json=body)
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset_id"
        mine = create_xor_dataset(any_client)
        resp = any_client.post(template, json={**body, "dataset_id": mine["id"],
                                               "init_from_run": other["run_id"]})
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["errors"] == [{"path": "init_from_run",
                                              "message": "no run with this id"}]
    elif (method, template) == ("POST", "/v1/datasets"):
        made = create_xor_dataset(any_client)
        assert other["client"].get(f"/v1/datasets/{made['id']}").status_code == 404
    elif (method, template) == ("POST", "/v1/predictions"):
        mine = create_xor_dataset(any_client)
        for body, path in (({"run_id": other["run_id"], "dataset_id": mine["id"]}, "run_id"),
                           ({"model": other["name"], "dataset_id": mine["id"]}, "model")):
            resp = any_client.post(template, json=body)
            assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == path
        run = create_run(any_client, mine["id"])
        finish_run(any_client.application, run["id"], epochs=3,
                   artifacts={"final": trained_model(run).to_npz()})
        resp = any_client.post(template, json={"run_id": run["id"],
                                               "dataset_id": other["dataset_id"]})
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset_id"
    elif (method, template) == ("POST", "/v1/sweeps"):
        resp = any_client.post(template, json=_sweep_body(other["dataset_id"]))
        assert resp.status_code == 422 and resp.get_json()["errors"][0]["path"] == "dataset_id"
        made = any_client.post(template, json=_sweep_body(create_xor_dataset(any_client)["id"]))
        assert other["client"].get(f"/v1/sweeps/{made.get_json()['id']}").status_code == 404
        assert other["client"].get(f"/v1/runs?sweep_id={made.get_json()['id']}").get_json()[
            "items"] == []
    elif (method, template) == ("POST", "/v1/webhooks"):
        made = any_client.post(template, json=WEBHOOK).get_json()
        assert other["client"].get(f"/v1/webhooks/{made['id']}").status_code == 404
    else:
        pytest.fail(f"{method} {template}: add a case saying how it keeps tenants apart")
    _unchanged(other)


def test_a_name_is_the_tenants_own(any_client, other: dict) -> None:  # noqa: ANN001
    """PUT of B's alias name by A: A's run only (B's is a 422 naming run_id), and it makes
    A's own alias, which B never sees."""
    url = f"/v1/models/{other['name']}"
    resp = any_client.put(url, json={"run_id": other["run_id"]})
    assert resp.status_code == 422 and resp.get_json()["errors"][0] == {
        "path": "run_id", "message": "no run with this id"}
    mine = create_run(any_client, create_xor_dataset(any_client)["id"])
    app = any_client.application
    finish_run(app, mine["id"], epochs=3, artifacts={"final": trained_model(mine).to_npz()})
    made = any_client.put(url, json={"run_id": mine["id"]})
    assert (made.status_code, made.get_json()["version"]) == (201, 1)
    _unchanged(other)
    assert any_client.delete(f"/v1/runs/{other['run_id']}").status_code == 404
    assert other["client"].delete(f"/v1/runs/{mine['id']}").status_code == 404


def test_filters_do_not_cross_tenants(any_client, other: dict) -> None:  # noqa: ANN001
    theirs = other["client"].get(f"/v1/datasets/{other['dataset_id']}").get_json()
    assert any_client.get(f"/v1/datasets?sha256={theirs['sha256']}").get_json()["items"] == []
    assert any_client.get(f"/v1/runs?dataset_id={other['dataset_id']}").get_json()["items"] == []
    mine = create_xor_dataset(any_client)  # the same data (same sha256) in tenant A
    found = any_client.get(f"/v1/datasets?sha256={theirs['sha256']}").get_json()["items"]
    assert [d["id"] for d in found] == [mine["id"]]


def test_rows_carry_their_tenant(any_app: Flask, any_client, other: dict) -> None:  # noqa: ANN001
    run = create_run(any_client, create_xor_dataset(any_client)["id"])
    with db.session_scope(any_app) as session:
        tenants = dict(session.execute(sa.select(Run.id, Run.tenant_id)).all())
    assert tenants[run["id"]] != tenants[other["run_id"]]


# ---- admin -----------------------------------------------------------------------------------

def _admin(app: Flask):  # noqa: ANN202
    return app.test_client(api_key=ADMIN_KEY)


def test_admin_makes_tenants_and_keys(admin_app: Flask) -> None:
    admin = _admin(admin_app)
    resp = admin.post("/v1/admin/tenants", json={"name": "acme"})
    assert resp.status_code == 201
    tenant = resp.get_json()
    assert resp.headers["Location"] == f"/v1/admin/tenants/{tenant['id']}"
    assert admin.get(f"/v1/admin/tenants/{tenant['id']}").get_json() == tenant
    assert admin.get("/v1/admin/tenants?name=acme").get_json()["items"] == [tenant]
    _problem(admin.post("/v1/admin/tenants", json={"name": "acme"}), 409, "tenant_exists")
    assert admin.post("/v1/admin/tenants", json={"name": "-x"}).status_code == 422

    resp = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={"name": "ci"})
    assert resp.status_code == 201
    made = resp.get_json()
    key = made["key"]
    assert re.fullmatch(r"bp_[A-Za-z0-9_-]{43}", key) and made["prefix"] == key[:11]
    assert resp.headers["Location"] == f"/v1/admin/keys/{made['id']}"
    unnamed = admin.post(f"/v1/admin/tenants/{tenant['id']}/keys")  # no body at all
    assert unnamed.status_code == 201 and unnamed.get_json()["name"] is None
    listed = admin.get(f"/v1/admin/tenants/{tenant['id']}/keys").get_json()["items"]
    assert {k["id"] for k in listed} == {made["id"], unnamed.get_json()["id"]}
    assert key not in str(listed) and "key" not in listed[0]
    record = admin.get(f"/v1/admin/keys/{made['id']}").get_json()
    assert record == {k: v for k, v in made.items() if k != "key"}

    acme = admin_app.test_client(api_key=key)
    dataset = create_xor_dataset(acme)
    assert acme.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    assert admin_app.test_client().get(f"/v1/datasets/{dataset['id']}").status_code == 404

    assert admin.delete(f"/v1/admin/keys/{made['id']}").status_code == 204
    _problem(acme.get("/v1/datasets"), 401, "unauthorized")
    assert admin.get(f"/v1/admin/keys/{made['id']}").get_json()["revoked_at"] is not None
    assert admin.delete(f"/v1/admin/keys/{made['id']}").status_code == 204  # again: no change
    other_key = admin_app.test_client(api_key=unnamed.get_json()["key"])
    assert other_key.get("/v1/datasets").status_code == 200  # the tenant's other key works


def test_admin_404s(admin_app: Flask) -> None:
    admin = _admin(admin_app)
    for method, template in ADMIN:
        if "{" in template:
            _problem(_call(admin, method, template), 404, "not_found")


@pytest.mark.parametrize(("method", "template"), ADMIN)
def test_admin_endpoints_refuse_tenant_keys(admin_app: Flask, method: str, template: str) -> None:
    body = _problem(_call(admin_app.test_client(), method, template), 403, "admin_only")
    assert "admin key" in body["detail"]


def test_tenant_endpoints_refuse_the_admin_key(admin_app: Flask) -> None:
    body = _problem(_admin(admin_app).get("/v1/datasets"), 401, "unauthorized")
    assert "/v1/admin" in body["detail"]


def test_without_an_admin_key_the_admin_endpoints_open_to_nobody(client) -> None:  # noqa: ANN001
    assert client.application.config["ADMIN_KEY"] is None
    _problem(client.post("/v1/admin/tenants", json={"name": "x"}), 403, "admin_only")
    anonymous = client.application.test_client(api_key=None)
    _problem(anonymous.get("/v1/admin/tenants"), 401, "unauthorized")
    _problem(anonymous.get("/v1/admin/tenants", headers={"Authorization": "Bearer "}), 401,
             "unauthorized")


def test_a_short_admin_key_is_refused_at_start(sqlite_url: str) -> None:
    with pytest.raises(SettingError, match="ADMIN_KEY"):
        create_app({"DATABASE_URL": sqlite_url, "ADMIN_KEY": "short"})


# ---- keys at rest ----------------------------------------------------------------------------

def _database_text(app: Flask) -> str:
    """Every value of every row of every table, as text."""
    out = []
    with db.engine(app).connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                out += [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row]
    return "\n".join(out)


def test_keys_are_stored_hashed(any_app: Flask, any_client, monkeypatch, capsys) -> None:  # noqa: ANN001
    from service import cli

    create_xor_dataset(any_client)
    monkeypatch.setenv("BACKPROP_DATABASE_URL", any_app.config["DATABASE_URL"])
    assert cli.create_key("cli-made") == 0
    keys = [any_client.api_key, capsys.readouterr().out.strip()]
    text = _database_text(any_app)
    for key in keys:
        assert key not in text and key[11:] not in text
        assert hashlib.sha256(key.encode()).hexdigest() == key_sha256(key)
        assert key_sha256(key) in text
    with db.session_scope(any_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ApiKey)) == 2
        assert all(len(k.key_sha256) == 64 for k in session.scalars(sa.select(ApiKey)))


@pytest.mark.parametrize("ttl", [0, 5])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_revoked_key_is_refused_within_the_key_cache_seconds(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, backend: str, ttl: int
) -> None:
    """A process that has just seen a key remembers it for API_KEY_CACHE_SECONDS: revoked,
    it works until then and no longer; with 0 it is refused at once."""
    from service import cache

    now = [1000.0]
    monkeypatch.setattr(cache, "monotonic", lambda: now[0])
    app = make_app(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"),
                   API_KEY_CACHE_SECONDS=ttl)
    client = app.test_client()
    assert client.get("/v1/datasets").status_code == 200
    with db.session_scope(app) as session:
        session.execute(sa.update(ApiKey).values(revoked_at=sa.func.now()))
    if ttl:
        now[0] += ttl - 0.5
        assert client.get("/v1/datasets").status_code == 200  # still remembered
        now[0] += 1
    body = _problem(client.get("/v1/datasets"), 401, "unauthorized")
    assert "not valid" in body["detail"]
    unknown = app.test_client(api_key="bp_" + "u" * 43)
    _problem(unknown.get("/v1/datasets"), 401, "unauthorized")
    assert len(app.extensions["key_cache"]._items) == 0  # noqa: SLF001 - refused keys are not kept
    db.engine(app).dispose()


def test_views_scope_queries_in_one_place() -> None:
    """Views read data sets, runs and model aliases only through service/api/common.py
    (fetch, find, select_owned, find_model), and every UPDATE or DELETE of them carries
    owned(...)."""
    from pathlib import Path

    import service.api

    for path in Path(service.api.__file__).parent.glob("*.py"):
        if path.name == "common.py":
            continue
        text = path.read_text()
        models = "Run|Dataset|ModelAlias|Prediction"
        assert not re.search(rf"session\.get\(({models})\b", text), path.name
        assert not re.search(rf"select\(({models})\)", text), path.name
        for statement in re.findall(rf"sa\.(?:update|delete)\((?:{models})\)[^\n]*", text):
            assert "owned(" in statement, (path.name, statement)


# ---- the command line: backprop create-key, and the key `backprop up` prints ---------------

@pytest.fixture
def cli_env(app: Flask, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Flask:  # noqa: ANN001
    """`service.cli` functions pointed (through the environment) at `app`'s database."""
    monkeypatch.setenv("BACKPROP_DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("BACKPROP_LOCAL_KEY_FILE", str(tmp_path / "var" / "api-key"))
    return app


def test_create_key_makes_the_tenant_and_prints_the_key_once(cli_env: Flask, capsys) -> None:  # noqa: ANN001
    from service import cli

    assert cli.main(["create-key", "--tenant", "acme", "--name", "laptop"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert re.fullmatch(r"bp_[A-Za-z0-9_-]{43}", key) and "acme" in err and key not in err
    client = cli_env.test_client(api_key=key)
    dataset = create_xor_dataset(client)
    assert cli.main(["create-key", "--tenant", "acme"]) == 0  # the same tenant, a second key
    second = capsys.readouterr().out.strip()
    assert second != key
    url = f"/v1/datasets/{dataset['id']}"
    assert cli_env.test_client(api_key=second).get(url).status_code == 200
    assert cli_env.test_client().get(f"/v1/datasets/{dataset['id']}").status_code == 404


@pytest.mark.parametrize("name", ["", "-lead", "a b", "x" * 101, "caf\u00e9"])
def test_create_key_refuses_bad_names(cli_env: Flask, capsys, name: str) -> None:  # noqa: ANN001
    from service import cli

    assert cli.create_key(name) == 2
    assert capsys.readouterr().out == ""


def test_create_key_on_an_unmigrated_database(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from service import cli

    monkeypatch.setenv("BACKPROP_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert cli.create_key("acme") == 1
    out, err = capsys.readouterr()
    assert out == "" and "backprop migrate" in err


def test_up_keeps_the_local_key_private_and_prints_it_every_time(cli_env: Flask) -> None:
    import os
    import stat

    from service import cli

    app = create_app()
    key = cli.local_key(app)
    path = app.config["LOCAL_KEY_FILE"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert f.read().strip() == key
    assert cli.local_key(app) == key  # the next start prints the same key
    assert cli_env.test_client(api_key=key).get("/v1/datasets").status_code == 200
    with db.session_scope(app) as session:  # revoked: the next start makes a new one
        session.execute(sa.update(ApiKey).where(ApiKey.key_sha256 == key_sha256(key))
                        .values(revoked_at=sa.func.now()))
    os.chmod(path, 0o644)
    fresh = cli.local_key(app)
    assert fresh != key and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with db.session_scope(app) as session:
        tenants = {k.tenant_id for k in session.scalars(sa.select(ApiKey).where(
            ApiKey.key_sha256.in_([key_sha256(key), key_sha256(fresh)])))}
    assert len(tenants) == 1  # both keys of the tenant "local"
    db.engine(app).dispose()
