"""Schema migrations: every capability package may hold ``migrations/versions``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

import communs
from communs.core.plugins import capability_modules

CORE_MIGRATIONS = Path(__file__).parent / "migrations"


def import_all_models() -> None:
    """Import every ``communs.<capability>.models`` so Base.metadata knows all tables."""
    capability_modules("models")


def version_locations() -> list[str]:
    root = Path(communs.__file__).parent
    return sorted(str(path) for path in root.glob("*/migrations/versions") if path.is_dir())


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(CORE_MIGRATIONS))
    config.set_main_option("version_locations", " ".join(version_locations()))
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "heads")


def head_revisions(database_url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def is_current(engine: Engine, database_url: str) -> bool:
    """Every head revision is applied (a branch that depends on another subsumes it)."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    current = tuple(current_revisions(engine))
    applied = {
        revision.revision
        for revision in script.revision_map.iterate_revisions(
            current, "base", select_for_downgrade=True
        )
    }
    return set(script.get_heads()) <= applied
