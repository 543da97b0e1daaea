"""Alembic environment: one history per capability package, run on SQLite or PostgreSQL."""

from alembic import context

from communs.core.db import Base, make_engine
from communs.core.migrate import import_all_models

import_all_models()
config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def include_name(name, type_, _parent) -> bool:
    """Tables the models do not declare (full-text shadow tables) are not ours to diff."""
    return type_ != "table" or name in Base.metadata.tables


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
