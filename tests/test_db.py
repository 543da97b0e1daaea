import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import make_commune
from sqlalchemy import select

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
