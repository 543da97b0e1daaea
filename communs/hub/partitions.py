"""Monthly partitions of the instance table on PostgreSQL.

``hub_temporal_instances`` is partitioned by range of ``observed_at`` (microseconds since
the epoch), one partition per calendar month (UTC), named
``hub_temporal_instances_yYYYYmMM``. A partition is created by the transaction that
first records an instance of its month (an import of old readings included), so the
DEFAULT partition, there only as a safety net, stays empty. Queries on a time range
read only the months they cover, and a month of history can be detached or dropped
at once. SQLite has no partitions: these functions do nothing there.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session

PARENT = "hub_temporal_instances"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_KNOWN: weakref.WeakKeyDictionary[Any, set[tuple[int, int]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def month_of(micros: int) -> tuple[int, int]:
    moment = EPOCH + dt.timedelta(microseconds=micros)
    return moment.year, moment.month


def month_bounds(year: int, month: int) -> tuple[int, int]:
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return _micros(start), _micros(end)


def _micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def partition_name(year: int, month: int) -> str:
    return f"{PARENT}_y{year:04d}m{month:02d}"


def create_partition_sql(year: int, month: int) -> str:
    start, end = month_bounds(year, month)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(year, month)} "
        f"PARTITION OF {PARENT} FOR VALUES FROM ({start}) TO ({end})"
    )


def ensure_partitions(session: Session, observed: Iterable[int]) -> None:
    """Create the monthly partitions these times (microseconds) need, in the session's
    transaction."""
    engine = session.get_bind()
    if engine.dialect.name != "postgresql":
        return
    with _LOCK:
        known = _KNOWN.setdefault(engine, set())
        if not known:
            # On a connection of its own: the session's may be in a psycopg pipeline (an
            # update's history is recorded inside one), where a SELECT returns no rows.
            with engine.connect() as connection:
                known.update(_existing(connection))
        missing = {month_of(micros) for micros in observed} - known
    for year, month in sorted(missing):
        session.execute(text(create_partition_sql(year, month)))
    if missing:
        session.info.setdefault("hub_partitions", set()).update(missing)


def _existing(connection: Connection) -> set[tuple[int, int]]:
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent"
        ),
        {"parent": PARENT},
    )
    found = {(0, 0)}  # never empty once looked up
    for (name,) in rows:
        tail = name.removeprefix(f"{PARENT}_y")
        if tail != name and "m" in tail:
            year, month = tail.split("m", 1)
            found.add((int(year), int(month)))
    return found


@event.listens_for(Session, "after_commit")
def _remember(session: Session) -> None:
    created = session.info.pop("hub_partitions", None)
    if created:
        with _LOCK:
            _KNOWN.setdefault(session.get_bind(), set()).update(created)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop("hub_partitions", None)
