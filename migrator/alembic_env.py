"""A helper for a project's alembic/env.py: the extras a migration job wants, in one call.

    from migrator.alembic_env import run_migrations
    run_migrations(Base.metadata, default_url=DATABASE_URL)

It runs online or offline as Alembic asks, on the connection the migrator hands over
(`config.attributes["connection"]`, Alembic's connection-sharing recipe) or on its own,
with each revision in its own transaction. The migrator works with a standard env.py too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from alembic import context
from migrator.catalog import LEDGER_TABLE


def not_the_ledger(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An `include_object` for autogenerate: the migrator's deploy ledger is not the
    models' business (as Alembic's version table is not), so `alembic revision
    --autogenerate` never proposes to drop it. Use it in a hand-written env.py too:
    `context.configure(..., include_object=not_the_ledger)`."""
    return not (type_ == "table" and name == LEDGER_TABLE)


def run_migrations(
    target_metadata: MetaData | None, default_url: str | URL | None = None, **options: Any
) -> None:
    """Run the migrations Alembic asked for; `options` go to `context.configure`.

    `default_url` is used when the Alembic config has no `sqlalchemy.url`, as when plain
    `alembic` runs in a checkout whose alembic.ini leaves it empty.
    """
    config = context.config
    url = config.get_main_option("sqlalchemy.url") or default_url
    options = {
        "target_metadata": target_metadata,
        "transaction_per_migration": True,
        "include_object": not_the_ledger,
        **options,
    }
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    shared: Connection | Engine | None = config.attributes.get("connection")
    if isinstance(shared, Connection):
        _run_online(shared, options)
        return
    if shared is not None:  # some tools (pytest-alembic) share an Engine instead
        with shared.connect() as own_connection:
            _run_online(own_connection, options)
        return
    if url is None:
        raise RuntimeError("no database URL: set sqlalchemy.url or pass default_url")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as own_connection:
            _run_online(own_connection, options)
    finally:
        engine.dispose()


def _run_online(connection: Connection, options: dict[str, Any]) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()
