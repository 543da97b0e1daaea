"""Database access: one code path for SQLite and PostgreSQL.

On SQLite (the embedded default) the file runs in WAL mode with foreign keys on;
readers use a pool of connections in parallel while every write goes through a
single writer connection fed by a queue, which is how SQLite stays fast and never
answers "database is locked" to a request. On PostgreSQL, writes simply run on a
pooled connection in the calling thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

T = TypeVar("T")
CHECKPOINT_SECONDS = 0.25
WRITER_CHECKPOINT_PAGES = 10_000

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both SQLite and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _configure_sqlite(engine: Engine, *, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit transactions misbehave).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages per connection
        cursor.execute("PRAGMA mmap_size=268435456")
        cursor.execute("PRAGMA temp_store=MEMORY")
        if writer:
            # Checkpoints run in a thread of their own (Database._checkpoints), not in the
            # commit that happens to fill the WAL: that commit would wait for the copy.
            # Under a long bulk load that thread cannot catch up with the writer (the WAL
            # only starts over once a checkpoint has copied all of it), so past 40 MB the
            # writer checkpoints itself, as SQLite does by default past 4 MB.
            cursor.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # The writer takes the write lock up front so that a transaction never fails
        # half-way when another process (the CLI) writes to the same file.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


def make_engine(url: str, *, writer: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=1 if writer else 8,
            max_overflow=0 if writer else 8,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
        _configure_sqlite(engine, writer=writer)
        return engine
    return create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class _WriterThread(threading.Thread):
    """Owns the process's write connection; runs queued units of work in order.

    Units waiting together are committed together (group commit): one transaction for
    up to ``GROUP_LIMIT`` units, each caller answered only once that commit is done.
    If any unit of a group fails, the group is rolled back and its units run again one
    by one, so a failing unit never takes its neighbours down with it.
    """

    GROUP_LIMIT = 64

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(name="communs-writer", daemon=True)
        self.sessions = sessions
        self.work: queue.Queue[tuple[Callable[[Session], Any], Future[Any]] | None] = queue.Queue()

    def run(self) -> None:
        while True:
            group, stop = self._next_group()
            try:
                if group:
                    self._run_group(group)
            except BaseException as error:  # noqa: BLE001 - never leave a caller waiting
                for _unit, future in group:
                    if not future.done():
                        future.set_exception(error)
            if stop:
                return

    def _next_group(self) -> tuple[list[tuple[Callable[[Session], Any], Future[Any]]], bool]:
        item = self.work.get()
        if item is None:
            return [], True
        group = [item]
        while len(group) < self.GROUP_LIMIT:
            try:
                item = self.work.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return self._claimed(group), True
            group.append(item)
        return self._claimed(group), False

    @staticmethod
    def _claimed(group: list) -> list:
        return [(unit, future) for unit, future in group if future.set_running_or_notify_cancel()]

    def _run_group(self, group: list[tuple[Callable[[Session], Any], Future[Any]]]) -> None:
        if len(group) > 1:
            try:
                with self.sessions.begin() as session:
                    results = [unit(session) for unit, _future in group]
            except BaseException:  # noqa: BLE001 - the units are run again one by one
                pass
            else:
                for (_unit, future), result in zip(group, results, strict=True):
                    future.set_result(result)
                return
        for unit, future in group:
            try:
                with self.sessions.begin() as session:
                    result = unit(session)
            except BaseException as error:  # noqa: BLE001 - handed back to the caller
                future.set_exception(error)
            else:
                future.set_result(result)


class Database:
    """Readers in parallel, writes through one queue and one connection.

    On SQLite that is how writes stay fast (one writer at a time anyway). On PostgreSQL
    it gives group commit: concurrent writes of the process share one transaction and
    one WAL flush, which is what bounds small writes there. Several processes each have
    their own writer.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url)
        self.read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer: _WriterThread | None = None
        self._write_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        if self.is_sqlite:
            self.write_engine = make_engine(url, writer=True)
        else:
            self.write_engine = self.engine
        self.write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session; nothing it does is committed."""
        session = self.read_sessions()
        try:
            yield session
        finally:
            # close() ends the transaction without expiring what was loaded.
            session.close()

    def write(self, unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``unit(session, *args, **kwargs)`` in one transaction and commit it.

        An exception rolls the whole unit back and is raised to the caller.
        """

        return self._submit(unit, *args, **kwargs).result()

    def write_later(self, unit: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue a unit whose outcome nobody waits for (bookkeeping such as "last used")."""
        self._submit(unit, *args, **kwargs)

    def _submit(self, unit: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue a unit for the writer; it runs with the caller's context (language)."""
        writer = self._ensure_writer()
        if threading.current_thread() is writer:
            raise RuntimeError("Database.write() called from inside a write unit")
        context = contextvars.copy_context()

        def bound(session: Session) -> T:
            return context.run(unit, session, *args, **kwargs)

        future: Future[T] = Future()
        writer.work.put((bound, future))
        return future

    async def awrite(self, unit: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``write`` for async code: the event loop awaits the writer directly."""
        return await asyncio.wrap_future(self._submit(unit, *args, **kwargs))

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _ensure_writer(self) -> _WriterThread:
        with self._write_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = _WriterThread(self.write_sessions)
                self._writer.start()
                if self.is_sqlite and self._checkpointer is None:
                    self._checkpointer = threading.Thread(
                        target=self._checkpoints, name="communs-checkpoint", daemon=True
                    )
                    self._checkpointer.start()
            return self._writer

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database file several times a second, without blocking
        writers or readers (PASSIVE), so that the WAL stays small."""
        while not self._closing.wait(CHECKPOINT_SECONDS):
            try:
                with self.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # noqa: BLE001 - the next round tries again
                continue

    def close(self) -> None:
        self._closing.set()
        with self._write_lock:
            if self._writer is not None and self._writer.is_alive():
                self._writer.work.put(None)
                self._writer.join(timeout=10)
            self._writer = None
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
