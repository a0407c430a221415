"""What a run stores, measured on SQLite and PostgreSQL (issue #19, "Storage in proportion").

    .venv/bin/python bench/storage.py [--quick] [--only sqlite,postgresql] [--out bench/STORAGE.md]

1. Rows per epoch, before and after. The engine's reports of N epochs of two nets, the
   README's 2-4-1 XOR and the issue's demo (XOR, four hidden layers of four sigmoid units
   and one output), are written as migration 0004's worker wrote them (epoch rows keyed by
   the run's id and the phase's name; a layer_stats row per layer, the arrays' statistics as
   JSON), converted by the migrations (0005 packs the statistics, 0008 keys both tables by
   the run's number), and written afresh by today's worker with every epoch kept (to compare
   like with like): the bytes per epoch, and per layer and epoch, of each table with its
   indexes (service.db.table_bytes).
2. The issue's demo of 100,000 epochs (80 training samples an epoch, per-sample SGD), made
   through the API (an in-process test client) and trained by the worker's own code
   (worker.training.train_run, in this process, with the deployed FLUSH_SECONDS and
   CHECKPOINT_SECONDS) on a fresh database: the rows, every byte the database holds
   afterwards by table, and on SQLite the file.

PostgreSQL at 127.0.0.1:5432 (user postgres, trust; BENCH_PG_ADMIN to change): a database
is created for each measurement and dropped after it. SQLite files go to a temporary folder.
"""
import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # as the workers run (service/cli.py worker_env)

import sqlalchemy as sa  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import nn  # noqa: E402
from common import ROOT, command, machine, table, verdict  # noqa: E402
from alembic import command as alembic  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from service import auth, create_app, db  # noqa: E402
from service.models import STAT_FIELDS, Epoch, EpochStats  # noqa: E402
from worker.progress import write_epochs  # noqa: E402
from worker.training import train_run  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OUT = ROOT / "bench" / "STORAGE.md"
SIGMOID = {"type": "dense", "units": 4, "activation": "sigmoid"}
NETS = {"2-4-1 XOR": [SIGMOID, {**SIGMOID, "units": 1}],
        "demo 2-4-4-4-4-1": [SIGMOID] * 4 + [{**SIGMOID, "units": 1}]}
DEMO = NETS["demo 2-4-4-4-4-1"]
XOR = {"kind": "xor", "n_samples": 100, "noise": 0, "seed": 1}  # 80 to train on, 20 to validate
TRAINING = {"loss": "squared_error", "optimizer": {"type": "sgd", "learning_rate": 0.5},
            "batch_size": 1, "seed": 1, "validation_fraction": 0.2}
ROW_BYTES_TARGET = 150
RUN_BYTES_TARGET = 20_000_000
MB = 1e6
OLD_EPOCHS = sa.table("epochs", *(sa.column(c) for c in (
    "run_id", "phase", "epoch", "layer", "train_loss", "val_loss", "train_accuracy",
    "val_accuracy", "learning_rate", "duration_s")))
OLD_STATS = sa.table("layer_stats", *(sa.column(c) for c in ("run_id", "phase", "epoch", "layer",
                                                              "name", *STAT_FIELDS)),
                     sa.column("grad_norm_by_time", sa.JSON), sa.column("params", sa.JSON))


@contextlib.contextmanager
def database(backend: str, folder: pathlib.Path) -> Iterator[str]:
    """A new, empty database's URL; a PostgreSQL one is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"bench_storage_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sizes(url: str) -> dict[str, int]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return db.table_bytes(conn)
    finally:
        engine.dispose()


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}


def reports(layers: list[dict], epochs: int) -> list[nn.EpochReport]:
    inputs, targets = nn.generate(XOR["kind"], XOR["n_samples"], XOR["noise"], XOR["seed"])
    plan = nn.build({"layers": layers}, {**TRAINING, "epochs": epochs},
                    nn.describe(inputs, targets))
    out: list[nn.EpochReport] = []
    nn.train(plan, inputs, targets, on_epoch=out.append)
    return out


def owner_rows(conn: sa.Connection, run_id: str, numbered: bool) -> None:
    """The tenant, data set and run the rows belong to (raw: any revision's schema;
    `numbered`: from 0008 on, the run has a `seq`)."""
    now = "2026-11-29 00:00:00+00:00"
    conn.execute(sa.text("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', :now)"),
                 {"now": now})
    conn.execute(sa.text(
        "INSERT INTO datasets (id, tenant_id, name, created_at, n_samples, input_shape, task, "
        "target_dim, sha256, source, size_bytes, data) VALUES ('d', 't', 'xor', :now, 100, "
        "'[2]', 'classification', 1, :sha, '{}', 1, :data)"), {"now": now, "sha": "0" * 64,
                                                              "data": b"-"})
    seq = ("seq, ", "1, ") if numbered else ("", "")
    conn.execute(sa.text(
        f"INSERT INTO runs ({seq[0]}id, tenant_id, dataset_id, status, network, training, "
        "created_at, epochs_total, epochs_completed, cancel_requested, attempts) VALUES "
        f"({seq[1]}:id, 't', 'd', 'succeeded', '{{}}', '{{}}', :now, 1, 1, false, 1)"),
        {"id": run_id, "now": now})


def per_epoch(backend: str, folder: pathlib.Path, layers: list[dict], epochs: int) -> dict:
    """Bytes per epoch of `epochs` epochs: 0004's rows, converted to the head revision,
    written anew."""
    got = reports(layers, epochs)
    run_id = str(uuid.uuid4())
    out = {}
    with database(backend, folder) as url:
        alembic.upgrade(db.alembic_config(url), "0004")
        engine = db.make_engine(url)
        with engine.begin() as conn:
            owner_rows(conn, run_id, numbered=False)
        empty = sizes(url)
        for start in range(0, epochs, 500):  # as 0004's worker wrote them, a flush at a time
            batch = got[start:start + 500]
            with engine.begin() as conn:
                conn.execute(sa.insert(OLD_EPOCHS), [_epoch_row(run_id, r) for r in batch])
                conn.execute(sa.insert(OLD_STATS), [
                    {"run_id": run_id, "phase": r.phase, "epoch": r.epoch, "layer": s["layer"],
                     "name": s["name"], **{f: s.get(f) for f in STAT_FIELDS},
                     "grad_norm_by_time": s.get("grad_norm_by_time"), "params": s["params"]}
                    for r in batch for s in r.layer_stats])
        engine.dispose()
        before = grown(empty, sizes(url))
        out["epochs before"] = before["epochs"]
        out["before"] = before["layer_stats"]
        db.upgrade(url)
        migrated = sizes(url)
    with database(backend, folder) as url:
        db.upgrade(url)
        engine = db.make_engine(url)
        with engine.begin() as conn:
            owner_rows(conn, run_id, numbered=True)
        empty = sizes(url)
        session_factory = sessionmaker(engine)
        for start in range(0, epochs, 500):
            with session_factory.begin() as session:
                write_epochs(session, 1, got[start:start + 500])  # owner_rows' run
        engine.dispose()
        after = grown(empty, sizes(url))
        out["epochs after"], out["after"] = after["epochs"], after["epoch_stats"]
        # The converted tables less the same tables empty, as the rows written anew.
        out["epochs migrated"] = migrated["epochs"] - empty["epochs"]
        out["migrated"] = migrated["epoch_stats"] - empty["epoch_stats"]
    return out


def _epoch_row(run_id: str, r: nn.EpochReport) -> dict:
    return {"run_id": run_id, "phase": r.phase, "epoch": r.epoch, "layer": r.layer,
            "train_loss": r.train_loss, "val_loss": r.val_loss,
            "train_accuracy": r.train_accuracy, "val_accuracy": r.val_accuracy,
            "learning_rate": r.learning_rate, "duration_s": r.duration_s}


def demo_run(backend: str, folder: pathlib.Path, epochs: int) -> dict:
    """The demo of `epochs` epochs, made through the API and trained by the worker's code."""
    with database(backend, folder) as url:
        db.upgrade(url)
        empty = sizes(url)
        app = create_app({"DATABASE_URL": url, "BROKER_URL": "memory://"})
        with app.app_context():
            with db.session_scope() as session:
                _, key = auth.issue_key(session, auth.tenant_named(session, "bench", create=True))
            client = app.test_client()
            headers = {"Authorization": f"Bearer {key}"}
            dataset = client.post("/v1/datasets", headers=headers,
                                  json={"name": "xor", "generator": XOR}).get_json()
            run = client.post("/v1/runs", headers=headers, json={
                "dataset_id": dataset["id"], "network": {"layers": DEMO},
                "training": {**TRAINING, "epochs": epochs}}).get_json()
            t0 = time.perf_counter()
            status = train_run(run["id"])
            seconds = time.perf_counter() - t0
            with db.session_scope() as session:
                count = (lambda model: session.scalar(
                    sa.select(sa.func.count()).select_from(model)))
                rows = {"epochs": count(Epoch), "epoch_stats": count(EpochStats)}
            file_bytes = None
            if backend == "sqlite":
                with db.engine().connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    file_bytes = os.path.getsize(url.removeprefix("sqlite:///"))
            db.engine().dispose()
        after = sizes(url)
    return {"status": status, "seconds": seconds, "rows": rows, "empty": empty, "after": after,
            "grown": grown(empty, after), "file": file_bytes,
            "thinned_after": run["stats_thinned_after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 and 5,000 epochs")
    parser.add_argument("--only", default="sqlite,postgresql")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    backends = args.only.split(",")
    n_per, n_demo = (300, 5000) if args.quick else (2000, 100_000)
    lines = ["# Storage: what a run stores (issue #19)", "",
             f"Command: `{command()}`. How and what: the docstring of bench/storage.py.", "",
             *machine(), "",
             f"## 1. Rows per epoch, before and after ({n_per} epochs, every one kept)", "",
             "Bytes of each table with its indexes (SQLite: its pages in dbstat; PostgreSQL: "
             "pg_total_relation_size), divided by the epochs, and by the layers. Before: as "
             "0004's worker wrote them; converted: by the migrations to the head revision; "
             "now: written by today's worker.", ""]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        for name, layers in NETS.items():
            for backend in backends:
                print(f"per epoch: {name} on {backend}", flush=True)
                m = per_epoch(backend, folder, layers, n_per)
                n = len(layers)
                per_layer = m["after"] / n_per / n
                rows.append([name, backend, n, f"{m['epochs before'] / n_per:.0f}",
                             f"{m['epochs migrated'] / n_per:.0f}",
                             f"{m['epochs after'] / n_per:.0f}",
                             f"{m['before'] / n_per:.0f} ({m['before'] / n_per / n:.0f})",
                             f"{m['migrated'] / n_per:.0f} ({m['migrated'] / n_per / n:.0f})",
                             f"{m['after'] / n_per:.0f} ({per_layer:.0f})",
                             verdict(per_layer <= ROW_BYTES_TARGET) if n > 2 else "–"])
        lines += table(["net", "database", "layers", "epoch row before", "converted",
                        "now", "statistics before: an epoch (a layer)", "converted", "now",
                        f"target <= {ROW_BYTES_TARGET} a layer (the demo)"], rows)
        lines += ["", f"## 2. The demo, {n_demo:,} epochs, through the worker", "",
                  "XOR (100 samples, 80 to train on a shuffled epoch, 20 to validate), "
                  "2-4-4-4-4-1 sigmoid, squared error, per-sample SGD 0.5, the default "
                  "settings (RUN_MAX_STATS_EPOCHS 2000, FLUSH_SECONDS 1, CHECKPOINT_SECONDS "
                  "10). Bytes: every table with its indexes, after the run, less the empty "
                  "migrated database.", ""]
        rows = []
        for backend in backends:
            print(f"demo: {n_demo} epochs on {backend}", flush=True)
            d = demo_run(backend, folder, n_demo)
            g = d["grown"]
            total = sum(g.values())
            other = total - sum(g.get(t, 0) for t in ("epochs", "epoch_stats"))
            rows.append([backend, d["status"], f"{d['seconds']:.0f}",
                         f"{d['rows']['epochs']:,}", f"{d['rows']['epoch_stats']:,} "
                         f"(T = {d['thinned_after']})",
                         f"{g.get('epochs', 0) / MB:.2f} ({g.get('epochs', 0) / n_demo:.0f})",
                         f"{g.get('epoch_stats', 0) / MB:.2f} "
                         f"({g.get('epoch_stats', 0) / max(1, d['rows']['epoch_stats']):.0f})",
                         f"{other / MB:.2f}", f"{total / MB:.2f}",
                         "–" if d["file"] is None else f"{d['file'] / MB:.2f}",
                         verdict(total <= RUN_BYTES_TARGET)])
        lines += table(["database", "status", "seconds", "epoch rows", "statistics rows",
                        "epochs MB (an epoch)", "statistics MB (a row)",
                        "the rest MB (data set, run, weights)", "total MB", "SQLite file MB",
                        "target <= 20 MB"], rows)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
