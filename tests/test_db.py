import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_commune
from sqlalchemy import select, text

from communs.core import service
from communs.core.db import Database
from communs.core.models import Service


def test_concurrent_writes_all_commit_without_lock_errors(db):
    commune = make_commune(db)

    def add(index: int) -> None:
        db.write(service.add_service, commune.id, f"Service numéro {index}")

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(add, range(200)))
    with db.read() as session:
        assert service.count_rows(session, Service, commune_id=commune.id) == 200 + len(
            service.DEFAULT_SERVICES
        )


def test_a_failing_unit_rolls_back_whole_and_the_writer_goes_on(db):
    commune = make_commune(db)

    def half_then_fail(session):
        service.add_service(session, commune.id, "Piscine")
        service.add_service(session, commune.id, "Piscine")  # duplicate: refused

    with pytest.raises(service.InvalidInput):
        db.write(half_then_fail)
    db.write(service.add_service, commune.id, "Stade")
    with db.read() as session:
        names = set(session.scalars(select(Service.name)))
    assert "Stade" in names and "Piscine" not in names


@pytest.fixture
def sqlite_db(sqlite_template, tmp_path):
    """The single-writer queue is the SQLite mode: these tests run on SQLite only."""
    path = tmp_path / "single-writer.sqlite3"
    shutil.copy(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    yield database
    database.close()


def test_readers_are_not_blocked_by_a_long_write(sqlite_db):
    db = sqlite_db
    commune = make_commune(db)
    started = threading.Event()

    def slow_write(session):
        service.add_service(session, commune.id, "Lent")
        started.set()
        time.sleep(0.5)

    writer = threading.Thread(target=db.write, args=(slow_write,))
    writer.start()
    started.wait(5)
    begin = time.monotonic()
    with db.read() as session:
        names = [s.name for s in service.list_services(session, commune.id)]
    elapsed = time.monotonic() - begin
    writer.join()
    assert "Lent" not in names  # the uncommitted write is invisible
    assert elapsed < 0.4, f"a read waited {elapsed:.2f}s behind a write"


def test_write_inside_a_write_unit_is_refused_not_deadlocked(sqlite_db):
    db = sqlite_db

    def nested(_session):
        db.write(lambda s: None)

    with pytest.raises(RuntimeError, match="inside a write unit"):
        db.write(nested)


def test_sqlite_wal_is_checkpointed_in_the_background(tmp_path):
    """Commits never copy the WAL back themselves (that would stall the commit that
    fills it); a thread of the Database does it, several times a second."""
    from communs.core import db as db_module

    url = f"sqlite:///{tmp_path / 'wal.sqlite3'}"
    database = Database(url)
    try:
        database.write(lambda s: s.execute(text("CREATE TABLE t (x TEXT)")))
        for _ in range(50):
            database.write(lambda s: s.execute(text("INSERT INTO t VALUES (randomblob(8000))")))
        wal = tmp_path / "wal.sqlite3-wal"
        with database.write_engine.connect() as connection:
            pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            assert pages == db_module.WRITER_CHECKPOINT_PAGES
        deadline = time.monotonic() + 5 * db_module.CHECKPOINT_SECONDS
        main = tmp_path / "wal.sqlite3"
        while main.stat().st_size < 50 * 8000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert main.stat().st_size >= 50 * 8000, "the WAL was not copied back"
        assert wal.exists()
    finally:
        database.close()
