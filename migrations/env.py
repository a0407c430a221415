"""Alembic environment: the URL comes from the service's configuration (one place)."""

from __future__ import annotations

from alembic import context

from service import create_app, db
from service.models import Base

config = context.config
url = config.attributes.get("database_url") or create_app().config["DATABASE_URL"]


def run_migrations_offline() -> None:
    context.configure(
        url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = db.make_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch mode rebuilds a table (copy, drop, rename); with foreign keys enforced,
            # dropping a table other rows reference fails. SQLite's own procedure for such
            # changes: keys off outside the transaction, then check them before committing.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,  # SQLite can only ALTER through table copies
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:10]}")
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            db.enable_auto_vacuum(connection)
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
