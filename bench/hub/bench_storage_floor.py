"""The storage floor of batch creation on SQLite: how fast can *any* Python program
store the rows the hub must keep for new entities?

    python bench/hub/bench_storage_floor.py [--entities 50000]

It loads the benchmark's sensors (``bench_hub.sensors``: three attributes, one of them
a GeoProperty) through the hub's own write path in-process (no HTTP), reads back every
row the hub stored, and inserts the same rows again into fresh databases with the bare
``sqlite3`` driver (``executemany``, prepared tuples, 1,000 entities per transaction, the
hub's WAL settings). No parsing, no row building and no SQL toolkit are timed: what is
left is SQLite's own work plus the driver's binding, the least that storing those rows
costs. Four layouts are measured:

- ``hub schema, every row``: what the hub stores today (entity, type index, value
  index, geometry box and R*Tree, and the history of issue 4: temporal entity, one
  series and one instance per attribute);
- ``hub schema, no history``: the same without the history rows (issue 3's scope);
- ``minimal schema, every row``: the same information in a leaner layout that no
  code uses (names interned as integers, the series key computed instead of a series
  table, commune and attribute carried by the R*Tree instead of a geometry table);
- ``documents alone``: the entity rows, without any index (for scale).

Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_hub  # noqa: E402

from communs.core import migrate, service  # noqa: E402
from communs.core.db import Database  # noqa: E402
from communs.hub import context  # noqa: E402
from communs.hub import service as hub  # noqa: E402
from communs.hub.document import parse_entity  # noqa: E402

HISTORY = ("hub_temporal_entities", "hub_temporal_series", "hub_temporal_instances")
Chunk = dict[str, list[dict]]


def load_through_the_hub(url: str, count: int) -> tuple[float, float]:
    """Store ``count`` sensors through the hub's write path; answer the seconds spent
    parsing and writing."""
    migrate.upgrade(url)
    db = Database(url)
    commune = db.write(
        service.create_commune, slug="floor", name="Plancher", insee_code="37996", boundary=None
    )
    entities = bench_hub.sensors(count)
    begin = time.perf_counter()
    parsed = [parse_entity(entity, context.CORE) for entity in entities]
    parsing = time.perf_counter() - begin
    begin = time.perf_counter()
    for start in range(0, count, 1000):
        db.write(hub.upsert_entities, commune.id, parsed[start : start + 1000], replace=True)
    writing = time.perf_counter() - begin
    db.close()
    return parsing, writing


def stored_rows(path: Path, tables: tuple[str, ...]) -> dict[str, list[dict]]:
    """Every row of ``tables`` as stored (JSON columns as their text)."""
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    rows = {
        name: [dict(row) for row in connection.execute(f"SELECT * FROM {name}")] for name in tables
    }
    connection.close()
    return rows


def connect(path: Path, schema: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA cache_size=-65536")
    # No checkpoint while timing (the hub checkpoints in a thread of its own): the WAL
    # grows, and no fsync is counted in the floor.
    connection.execute("PRAGMA wal_autocheckpoint=0")
    schema(connection)
    return connection


def hub_schema(path: Path) -> Callable[[sqlite3.Connection], None]:
    """The hub's own tables, created by its migrations (page size and WAL included)."""
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    db = Database(url)
    db.write(
        service.create_commune, slug="ref", name="Référence", insee_code="37997", boundary=None
    )
    db.close()
    return lambda connection: None


MINIMAL_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE entities (pk INTEGER PRIMARY KEY, commune_id INT, entity_id TEXT, document TEXT,
    UNIQUE (commune_id, entity_id));
CREATE INDEX entities_order ON entities (commune_id, pk);
CREATE TABLE types (commune_id INT, type_id INT, entity_pk INT REFERENCES entities ON DELETE
    CASCADE, PRIMARY KEY (commune_id, type_id, entity_pk)) WITHOUT ROWID;
CREATE INDEX types_entity ON types (entity_pk);
CREATE TABLE numbers (commune_id INT, attribute_id INT, number REAL, entity_pk INT REFERENCES
    entities ON DELETE CASCADE, PRIMARY KEY (commune_id, attribute_id, number, entity_pk))
    WITHOUT ROWID;
CREATE INDEX numbers_entity ON numbers (entity_pk);
CREATE TABLE texts (commune_id INT, attribute_id INT, text TEXT, entity_pk INT REFERENCES
    entities ON DELETE CASCADE, PRIMARY KEY (commune_id, attribute_id, text, entity_pk))
    WITHOUT ROWID;
CREATE INDEX texts_entity ON texts (entity_pk);
CREATE VIRTUAL TABLE boxes USING rtree (id, min_lon, max_lon, min_lat, max_lat, +commune_id,
    +attribute_id);
CREATE TABLE temporal_entities (id INTEGER PRIMARY KEY, commune_id INT, entity_id TEXT,
    types TEXT, UNIQUE (commune_id, entity_id));
CREATE TABLE instances (id INTEGER PRIMARY KEY, series_key INT, observed_at INT, created_at INT,
    number REAL, instance TEXT);
CREATE INDEX instances_series_time ON instances (series_key, observed_at);
"""

DOCUMENTS_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE hub_entities (pk INTEGER PRIMARY KEY, commune_id INT, entity_id TEXT, document TEXT);
"""


def minimal_rows(chunk: Chunk) -> dict[str, tuple[str, list[tuple]]]:
    """The rows of ``chunk`` in the minimal layout: same information, fewer and smaller rows."""
    names: dict[str, int] = {}

    def code(name: str) -> int:
        return names.setdefault(name, len(names) + 1)

    series = {row["id"]: row for row in chunk["hub_temporal_series"]}

    def series_key(series_id: int) -> int:
        row = series[series_id]
        return (row["temporal_entity_id"] << 24) | code(row["attribute_iri"] + row["dataset_id"])

    slots: dict[int, int] = {}

    def box_id(entity_pk: int) -> int:
        """An entity's boxes are numbered from its key: deleted by a range, no table."""
        slot = slots[entity_pk] = slots.get(entity_pk, -1) + 1
        return entity_pk * 64 + slot

    return {
        "entities": (
            "INSERT INTO entities VALUES (?, ?, ?, ?)",
            [
                (r["pk"], r["commune_id"], r["entity_id"], r["document"])
                for r in chunk["hub_entities"]
            ],
        ),
        "types": (
            "INSERT INTO types VALUES (?, ?, ?)",
            [
                (r["commune_id"], code(r["type_iri"]), r["entity_pk"])
                for r in chunk["hub_entity_types"]
            ],
        ),
        "numbers": (
            "INSERT INTO numbers VALUES (?, ?, ?, ?)",
            [
                (r["commune_id"], code(r["attribute_iri"]), r["number"], r["entity_pk"])
                for r in chunk["hub_numbers"]
            ],
        ),
        "texts": (
            "INSERT INTO texts VALUES (?, ?, ?, ?)",
            [
                (r["commune_id"], code(r["attribute_iri"]), r["text"], r["entity_pk"])
                for r in chunk["hub_texts"]
            ],
        ),
        "boxes": (
            "INSERT INTO boxes VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    box_id(r["entity_pk"]),
                    r["min_lon"],
                    r["max_lon"],
                    r["min_lat"],
                    r["max_lat"],
                    r["commune_id"],
                    code(r["attribute_iri"]),
                )
                for r in chunk["hub_geometries"]
            ],
        ),
        "temporal_entities": (
            "INSERT INTO temporal_entities VALUES (?, ?, ?, ?)",
            [
                (r["id"], r["commune_id"], r["entity_id"], r["types"])
                for r in chunk["hub_temporal_entities"]
            ],
        ),
        "instances": (
            "INSERT INTO instances (series_key, observed_at, created_at, number, instance) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (
                    series_key(r["series_id"]),
                    r["observed_at"],
                    r["created_at"],
                    r["number"],
                    r["instance"],
                )
                for r in chunk["hub_temporal_instances"]
            ],
        ),
    }


def hub_rows(chunk: Chunk, tables: tuple[str, ...]) -> dict[str, tuple[str, list[tuple]]]:
    statements = {}
    for name in tables:
        rows = chunk[name]
        if not rows:
            continue
        columns = list(rows[0])
        statements[name] = (
            f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row[c] for c in columns) for row in rows],
        )
    return statements


def insert(connection: sqlite3.Connection, chunks: list[dict]) -> float:
    """Insert prepared chunks, one transaction each; answer the seconds spent."""
    begin = time.perf_counter()
    for chunk in chunks:
        connection.execute("BEGIN IMMEDIATE")
        for sql, rows in chunk.values():
            connection.executemany(sql, rows)
        connection.execute("COMMIT")
    return time.perf_counter() - begin


def bare_insert_of_every_row(path: Path, folder: Path) -> float:
    """Seconds to insert every row of the hub database at ``path`` again, into a fresh
    file with the hub's schema, with the bare driver (``bench_hub.py batch`` reports it)."""
    tables = bench_hub.indexed_tables(f"sqlite:///{path}")
    chunks = bench_hub._chunks_by_entity(stored_rows(path, tables), commune_id=1)
    copy = folder / "floor.sqlite3"
    connection = connect(copy, hub_schema(copy))
    elapsed = insert(connection, [hub_rows(chunk, tables) for chunk in chunks])
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=50_000)
    args = parser.parse_args()
    count = args.entities
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        url = f"sqlite:///{folder / 'hub.sqlite3'}"
        parsing, writing = load_through_the_hub(url, count)
        stored = stored_rows(folder / "hub.sqlite3", bench_hub.indexed_tables(url))
        chunks = bench_hub._chunks_by_entity(stored, commune_id=1)
        every = bench_hub.indexed_tables(url)
        without_history = tuple(name for name in every if name not in HISTORY)
        layouts = {
            "hub schema, every row": (hub_schema, lambda c: hub_rows(c, every)),
            "hub schema, no history": (hub_schema, lambda c: hub_rows(c, without_history)),
            "minimal schema, every row": (
                lambda path: lambda connection: connection.executescript(MINIMAL_SCHEMA),
                minimal_rows,
            ),
            "documents alone": (
                lambda path: lambda connection: connection.executescript(DOCUMENTS_SCHEMA),
                lambda c: hub_rows(c, ("hub_entities",)),
            ),
        }
        rows_per_entity = sum(len(rows) for rows in stored.values()) / count
        print(f"storage floor on SQLite {sqlite3.sqlite_version}, {count} new entities")
        print(
            f"  hub write path, in-process : {count / (parsing + writing):9.0f} entities/s "
            f"(parsing {parsing / count * 1e6:.1f} µs + writing {writing / count * 1e6:.1f} µs "
            f"per entity; {rows_per_entity:.0f} rows per entity)"
        )
        for number, (label, (make_schema, make_rows)) in enumerate(layouts.items()):
            path = folder / f"floor{number}.sqlite3"
            connection = connect(path, make_schema(path))
            prepared = [make_rows(chunk) for chunk in chunks]
            elapsed = insert(connection, prepared)
            connection.close()
            print(
                f"  {label:27}: {count / elapsed:9.0f} entities/s "
                f"({elapsed / count * 1e6:.1f} µs per entity, bare sqlite3 executemany)"
            )


if __name__ == "__main__":
    main()
