from sqlalchemy import inspect

from communs.core import migrate
from communs.core.db import Base, make_engine


def test_upgrade_creates_every_table_and_second_run_is_a_no_op(database_url):
    # The database_url fixture starts from a migrated schema; upgrading again changes nothing.
    engine = make_engine(database_url)
    before = migrate.current_revisions(engine)
    migrate.upgrade(database_url)
    assert migrate.current_revisions(engine) == before
    assert migrate.is_current(engine, database_url)
    tables = set(inspect(engine).get_table_names())
    assert {table.name for table in Base.metadata.sorted_tables} <= tables
    engine.dispose()


def test_upgrade_from_empty_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    assert migrate.is_current(engine, url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    migrate.upgrade(url)
    assert migrate.is_current(engine, url)
    engine.dispose()


def test_readyz_reports_current_schema(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["migrations"] == "current"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_fails_when_schema_is_behind(tmp_path):
    from fastapi.testclient import TestClient

    from communs.core.settings import Settings
    from communs.core.web import create_app

    url = f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"
    app = create_app(Settings(data_dir=tmp_path, database_url=url, secret_key="x"))
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
