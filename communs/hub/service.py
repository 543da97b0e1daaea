"""Business rules of the hub: the only module that writes the hub's tables.

Every function takes a ``Session`` and a ``commune_id``: entities of one commune are
never visible from another. Write functions are units of work for ``Database.write``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, column, delete, func, or_, select, table, text
from sqlalchemy.orm import Session

from communs.core.db import Database
from communs.hub import history, subscriptions
from communs.hub.document import (
    ENTITY_KEYS,
    MEMBERS,
    attribute_iris,
    now_iso,
    stamp,
)
from communs.hub.errors import AlreadyExists, BadRequestData, ResourceNotFound
from communs.hub.geoquery import GeoQuery, geometry_bbox
from communs.hub.models import HubEntity, HubEntityType, HubGeometry, HubNumber, HubText
from communs.hub.query_language import (
    And,
    Or,
    Range,
    Term,
    index_values,
    is_temporal_text,
)
from communs.hub.regex import Pattern, RegexError, compile_regex

MAX_PAGE = 1000

log = logging.getLogger(__name__)

Filter = Callable[[dict[str, Any]], bool]


@dataclass
class UpdateResult:
    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- reading


ENTITIES = HubEntity.__table__
TYPES = HubEntityType.__table__
GEOMETRIES = HubGeometry.__table__
NUMBERS = HubNumber.__table__
TEXTS = HubText.__table__


@dataclass
class Stored:
    """A loaded entity: its document is edited in place, then ``_store``d."""

    pk: int
    commune_id: int
    document: dict[str, Any]
    types: tuple[str, ...]
    geometry: bytes
    values: dict[str, bytes]

    @classmethod
    def loaded(cls, pk: int, commune_id: int, document: dict[str, Any]) -> Stored:
        return cls(
            pk,
            commune_id,
            document,
            tuple(document["type"]),
            orjson.dumps(_geometries(document)),
            _value_snapshot(document),
        )


# Built once: on the hot path, building statements costs more than running them.
_LOAD = select(ENTITIES.c.pk, ENTITIES.c.document).where(
    ENTITIES.c.commune_id == bindparam("commune"), ENTITIES.c.entity_id == bindparam("entity")
)
_DELETE = delete(ENTITIES).where(ENTITIES.c.pk == bindparam("entity_pk"))


class RawCursor:
    """The session's own DB-API cursor, in its transaction. Single-entity updates and
    the index rows of batches go through it, skipping the per-statement and per-row
    cost of the SQL toolkit (larger than the database's own work here). Statements are
    written with ``?`` marks; on PostgreSQL they become ``%s``."""

    def __init__(self, session: Session) -> None:
        connection = session.connection()
        self.session = session
        self.sqlite = connection.dialect.name == "sqlite"
        self.cursor = connection.connection.driver_connection.cursor()
        self.json_mark = "?" if self.sqlite else "CAST(? AS jsonb)"
        self.pipelined = False  # COPY cannot run in a pipeline

    @contextlib.contextmanager
    def pipeline(self) -> Iterator[None]:
        """On PostgreSQL, statements are sent without waiting for each answer (one
        network round trip for a run of writes); a no-op on SQLite."""
        if self.sqlite or self.pipelined:
            yield
            return
        with self.cursor.connection.pipeline():
            self.pipelined = True
            try:
                yield
            finally:
                self.pipelined = False

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else sql.replace("?", "%s")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        self.cursor.execute(self._sql(sql), params)
        return self.cursor

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.cursor.executemany(self._sql(sql), rows)

    def insert_rows(
        self,
        table: str,
        columns: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        json_column: str | None = None,
    ) -> None:
        """Insert ``rows``; many rows go to PostgreSQL by COPY, a few times faster there
        than one INSERT per row, even pipelined."""
        if not rows:
            return
        names = ", ".join(columns)
        if not self.sqlite and not self.pipelined and len(rows) >= COPY_THRESHOLD:
            with self.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join(self.json_mark if c == json_column else "?" for c in columns)
        self.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def allocate_ids(self, table: str, count: int, column: str = "id") -> list[int]:
        """Keys for new rows, taken before inserting them (no read-back needed). On
        SQLite the single writer holds the write lock, so max() is stable."""
        if self.sqlite:
            # The high-water mark of AUTOINCREMENT tables too, whose ids are never reused.
            last = self.execute(
                f"SELECT max(coalesce((SELECT max({column}) FROM {table}), 0), "
                "coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0))",
                (table,),
            ).fetchone()[0]
            return list(range(last + 1, last + 1 + count))
        self.execute(
            f"SELECT nextval(pg_get_serial_sequence('{table}', '{column}')) "
            "FROM generate_series(1, ?)",
            (count,),
        )
        return [row[0] for row in self.cursor.fetchall()]


def _load(session: Session, commune_id: int, entity_id: str) -> Stored | None:
    raw = RawCursor(session)
    if raw.sqlite:
        cursor = raw.execute(
            "SELECT pk, document FROM hub_entities WHERE commune_id = ? AND entity_id = ?",
            (commune_id, entity_id),
        )
        found = cursor.fetchone()
        return (
            None if found is None else Stored.loaded(found[0], commune_id, orjson.loads(found[1]))
        )
    row = session.connection().execute(_LOAD, {"commune": commune_id, "entity": entity_id})
    found = row.first()
    return None if found is None else Stored.loaded(found.pk, commune_id, found.document)


def find_entity(session: Session, commune_id: int, entity_id: str) -> dict[str, Any] | None:
    stored = _load(session, commune_id, entity_id)
    return None if stored is None else stored.document


def get_entity(session: Session, commune_id: int, entity_id: str) -> dict[str, Any]:
    document = find_entity(session, commune_id, entity_id)
    if document is None:
        raise ResourceNotFound(f"entity {entity_id} not found")
    return document


@dataclass(frozen=True)
class EntityQuery:
    types: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    id_pattern: str | None = None
    geo: GeoQuery | None = None
    geo_attribute: str | None = None
    matches: Filter | None = None
    q: Any = None  # the bound q query, for the value-index pre-filter


def query_entities(
    session: Session,
    commune_id: int,
    query: EntityQuery,
    *,
    limit: int,
    offset: int,
    count: bool,
) -> tuple[list[dict[str, Any]], int | None]:
    """Entities of a commune matching ``query``, in creation order."""
    statement = select(HubEntity.document).where(HubEntity.commune_id == commune_id)
    if query.types:
        # Checked per candidate row (correlated), so that a selective geo or value
        # pre-filter drives the query instead of the whole list of entities of a type.
        typed = select(HubEntityType.entity_pk).where(
            HubEntityType.commune_id == commune_id,
            HubEntityType.type_iri.in_(query.types),
            HubEntityType.entity_pk == HubEntity.pk,
        )
        statement = statement.where(typed.exists())
    if query.ids:
        statement = statement.where(HubEntity.entity_id.in_(query.ids))
    if query.geo is not None and query.geo_attribute is not None:
        statement = _geo_prefilter(session, statement, commune_id, query.geo, query.geo_attribute)
    if query.q is not None:
        indexed = _value_prefilter(query.q, commune_id)
        if indexed is not None:
            statement = statement.where(indexed)
    statement = statement.order_by(HubEntity.pk)
    keep = _row_filter(query)
    if keep is None:
        total = _count(session, statement) if count else None
        documents = list(session.scalars(statement.limit(limit).offset(offset)))
        return documents, total
    matching = [doc for doc in session.scalars(statement) if keep(doc)]
    return matching[offset : offset + limit], len(matching) if count else None


def _count(session: Session, statement: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(statement.subquery())) or 0)


def _value_prefilter(node: Any, commune_id: int) -> Any:
    """A SQL condition every entity matching ``node`` satisfies, from the value index;
    None where the index cannot tell (the full query is checked on each candidate)."""
    if isinstance(node, And):
        parts = [
            p for p in (_value_prefilter(c, commune_id) for c in node.children) if p is not None
        ]
        return and_(*parts) if parts else None
    if isinstance(node, Or):
        parts = [_value_prefilter(c, commune_id) for c in node.children]
        return None if any(p is None for p in parts) else or_(*parts)
    if not isinstance(node, Term) or node.path.sub is not None or node.path.members:
        return None
    found = _value_condition(node)
    if found is None:
        return None
    table, condition = found
    indexed = select(table.c.entity_pk).where(
        table.c.commune_id == commune_id,
        table.c.attribute_iri == node.path.attribute,
        condition,
    )
    return HubEntity.pk.in_(indexed)


def _value_condition(term: Term) -> tuple[Any, Any] | None:
    """The index table and condition on it that every match of ``term`` satisfies."""
    op, value = term.op, term.value
    number = NUMBERS.c.number
    if op in (">", ">="):
        return (NUMBERS, number >= value) if _is_number(value) else None
    if op in ("<", "<="):
        return (NUMBERS, number <= value) if _is_number(value) else None
    if op != "==":
        return None
    if _is_number(value):
        return NUMBERS, number == value
    if isinstance(value, Range) and _is_number(value.low) and _is_number(value.high):
        return NUMBERS, number.between(value.low, value.high)
    candidates = list(value) if isinstance(value, tuple) else [value]
    if all(_is_number(v) for v in candidates):
        return NUMBERS, number.in_(candidates)
    if all(_is_plain_text(v) for v in candidates):
        vocab = term.vocab_value
        extra = list(vocab) if isinstance(vocab, tuple) else [vocab] if vocab else []
        texts = [*candidates, *[v for v in extra if isinstance(v, str)]]
        return TEXTS, TEXTS.c.text.in_(texts)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_plain_text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 256 and not is_temporal_text(value)


def _geo_prefilter(
    session: Session, statement: Any, commune_id: int, geo: GeoQuery, attribute: str
) -> Any:
    located = select(GEOMETRIES.c.entity_pk).where(
        GEOMETRIES.c.commune_id == commune_id, GEOMETRIES.c.attribute_iri == attribute
    )
    box = geo.bbox()
    if box is not None:
        located = located.where(_overlaps(session, box))
    return statement.where(HubEntity.pk.in_(located))


_RTREE = table(
    "hub_geometry_boxes",
    column("id"),
    column("min_lon"),
    column("max_lon"),
    column("min_lat"),
    column("max_lat"),
)


def _overlaps(session: Session, box: tuple[float, float, float, float]) -> Any:
    """Geometry rows whose box overlaps ``box``, found through the spatial index."""
    min_lon, min_lat, max_lon, max_lat = box
    g = GEOMETRIES.c
    if session.get_bind().dialect.name == "sqlite":
        return g.id.in_(
            select(_RTREE.c.id).where(
                _RTREE.c.min_lon <= max_lon,
                _RTREE.c.max_lon >= min_lon,
                _RTREE.c.min_lat <= max_lat,
                _RTREE.c.max_lat >= min_lat,
            )
        )
    stored = func.box(func.point(g.min_lon, g.min_lat), func.point(g.max_lon, g.max_lat))
    wanted = func.box(func.point(min_lon, min_lat), func.point(max_lon, max_lat))
    return stored.op("&&")(wanted)


def _row_filter(query: EntityQuery) -> Filter | None:
    checks: list[Filter] = []
    if query.id_pattern is not None:
        pattern = _compile(query.id_pattern)
        checks.append(lambda doc: pattern.search(doc["id"]) is not None)
    if query.geo is not None and query.geo_attribute is not None:
        geo, attribute = query.geo, query.geo_attribute
        checks.append(
            lambda doc: any(
                i.get("type") == "GeoProperty" and geo.matches(i.get("value"))
                for i in doc.get(attribute, ())
            )
        )
    if query.matches is not None:
        checks.append(query.matches)
    if not checks:
        return None
    return lambda doc: all(check(doc) for check in checks)


def _compile(pattern: str) -> Pattern:
    if len(pattern) > 256:
        raise BadRequestData("idPattern is too long (256 characters at most)")
    try:
        return compile_regex(pattern)
    except RegexError as error:
        raise BadRequestData(f"idPattern is not a valid regular expression: {error}") from error


# ---------------------------------------------------------------- writing


def create_entity(session: Session, commune_id: int, entity: dict[str, Any]) -> dict[str, Any]:
    if _load(session, commune_id, entity["id"]) is not None:
        raise AlreadyExists(f"entity {entity['id']} already exists")
    document = _new_document(entity, now_iso())
    _insert_new(session, commune_id, [document])
    return document


def delete_entity(session: Session, commune_id: int, entity_id: str) -> None:
    stored = _editable(session, commune_id, entity_id)
    session.connection().execute(_DELETE, {"entity_pk": stored.pk})
    subscriptions.entity_deleted(RawCursor(session), commune_id, stored.document)


def replace_entity(session: Session, commune_id: int, entity: dict[str, Any]) -> dict[str, Any]:
    """PUT: the entity becomes exactly the given one (its creation time is kept)."""
    stored = _editable(session, commune_id, entity["id"])
    document = stored.document
    now = now_iso()
    replaced = {"id": document["id"], "type": entity.get("type", document["type"])}
    if "scope" in entity:
        replaced["scope"] = entity["scope"]
    replaced["createdAt"], replaced["modifiedAt"] = document["createdAt"], now
    for iri in attribute_iris(entity):
        replaced[iri] = [stamp(instance, now) for instance in entity[iri]]
    stored.document = replaced
    _store(session, stored)
    return replaced


def merge_entity(session: Session, commune_id: int, entity: dict[str, Any]) -> dict[str, Any]:
    """PATCH /entities/{id}: merge attributes; a null attribute value deletes it."""
    stored = _editable(session, commune_id, entity["id"])
    document = stored.document
    now = now_iso()
    if "type" in entity:
        document["type"] = list(dict.fromkeys([*document["type"], *entity["type"]]))
    if "scope" in entity:
        document["scope"] = entity["scope"]
    for iri in attribute_iris(entity):
        instances = entity[iri]
        if instances is None:
            document.pop(iri, None)
            continue
        current = document.setdefault(iri, [])
        for instance in instances:
            _merge_instance(current, instance, now)
    document["modifiedAt"] = now
    _store(session, stored)
    return document


def append_attributes(
    session: Session,
    commune_id: int,
    entity_id: str,
    attributes: dict[str, list[dict[str, Any]]],
    *,
    no_overwrite: bool,
    entity_type: list[str] | None = None,
) -> UpdateResult:
    """POST /entities/{id}/attrs: add attributes, replacing existing ones unless told not to."""
    stored = _editable(session, commune_id, entity_id)
    document = stored.document
    result = UpdateResult()
    now = now_iso()
    if entity_type:
        document["type"] = list(dict.fromkeys([*document["type"], *entity_type]))
    for iri, instances in attributes.items():
        current = document.setdefault(iri, [])
        changed = False
        for instance in instances:
            existing = _find_instance(current, instance.get("datasetId"))
            if existing is not None and no_overwrite:
                continue
            if existing is not None:
                current.remove(existing)
            current.append(stamp(instance, now, existing and existing.get("createdAt")))
            changed = True
        if changed:
            result.updated.append(iri)
        else:
            result.not_updated.append((iri, "attribute exists and noOverwrite was given"))
    _finish(session, stored, result, now)
    return result


def update_attributes(
    session: Session, commune_id: int, entity_id: str, attributes: dict[str, Any]
) -> UpdateResult:
    """PATCH /entities/{id}/attrs: replace attributes that exist; report the others."""
    stored = _editable(session, commune_id, entity_id)
    document = stored.document
    result = UpdateResult()
    now = now_iso()
    for iri, instances in attributes.items():
        current = document.get(iri)
        if not current:
            result.not_updated.append((iri, "attribute does not exist"))
            continue
        missing = [i for i in instances if _find_instance(current, i.get("datasetId")) is None]
        if missing:
            result.not_updated.append((iri, "no instance with this datasetId"))
            continue
        for instance in instances:
            existing = _find_instance(current, instance.get("datasetId"))
            current[current.index(existing)] = stamp(instance, now, existing.get("createdAt"))
        result.updated.append(iri)
    _finish(session, stored, result, now)
    return result


def update_attribute(
    session: Session, commune_id: int, entity_id: str, iri: str, fragment: dict[str, Any]
) -> None:
    """PATCH /entities/{id}/attrs/{attrId}: merge members into one existing instance."""
    stored = _editable(session, commune_id, entity_id)
    document = stored.document
    existing = _find_instance(document.get(iri) or [], fragment.get("datasetId"))
    if existing is None:
        raise ResourceNotFound(f"attribute {iri} not found in entity {entity_id}")
    now = now_iso()
    if fragment.get("type") not in (None, existing["type"]):
        existing.clear()
    existing.update(fragment)
    stamp(existing, now, existing.get("createdAt") or now)
    document["modifiedAt"] = now
    _store(session, stored)


def delete_attribute(
    session: Session,
    commune_id: int,
    entity_id: str,
    iri: str,
    *,
    dataset_id: str | None,
    delete_all: bool,
) -> None:
    stored = _editable(session, commune_id, entity_id)
    document = stored.document
    current = document.get(iri)
    if not current:
        raise ResourceNotFound(f"attribute {iri} not found in entity {entity_id}")
    if delete_all:
        del document[iri]
    else:
        existing = _find_instance(current, dataset_id)
        if existing is None:
            raise ResourceNotFound(f"no instance of {iri} with datasetId {dataset_id}")
        current.remove(existing)
        if not current:
            del document[iri]
    document["modifiedAt"] = now_iso()
    _store(session, stored)


def _editable(session: Session, commune_id: int, entity_id: str) -> Stored:
    stored = _load(session, commune_id, entity_id)
    if stored is None:
        raise ResourceNotFound(f"entity {entity_id} not found")
    return stored


def _find_instance(instances: list[dict[str, Any]], dataset_id: str | None) -> dict | None:
    return next((i for i in instances if i.get("datasetId") == dataset_id), None)


def _merge_instance(current: list[dict[str, Any]], instance: dict[str, Any], now: str) -> None:
    existing = _find_instance(current, instance.get("datasetId"))
    if existing is None:
        current.append(stamp(instance, now))
    else:
        _merge_into(existing, instance, now)


def _merge_into(existing: dict[str, Any], instance: dict[str, Any], now: str) -> None:
    """Merge-patch one instance: members replaced, sub-attributes merged in turn."""
    created = existing.get("createdAt")
    if existing["type"] != instance["type"]:
        existing.clear()
    for key, value in instance.items():
        if key not in MEMBERS and isinstance(value, dict) and isinstance(existing.get(key), dict):
            _merge_into(existing[key], value, now)
        else:
            existing[key] = value
    stamp(existing, now, created)


def _finish(session: Session, stored: Stored, result: UpdateResult, now: str) -> None:
    document = stored.document
    for iri, _reason in result.not_updated:
        if document.get(iri) == []:
            del document[iri]
    if result.updated:
        document["modifiedAt"] = now
        _store(session, stored)


def _store(session: Session, stored: Stored) -> None:
    """Write the edited document; refresh the index rows of what changed."""
    _store_many(session, [stored])


def _store_many(session: Session, batch: list[Stored]) -> None:
    """Write edited documents of one commune (each entity once), each kind of
    statement once for the whole batch; refresh the index rows of what changed."""
    if not batch:
        return
    raw = RawCursor(session)
    commune_id = batch[0].commune_id
    # One entity: a pipeline saves a round trip per statement. Several: statements are
    # already one per kind (executemany, COPY), and psycopg cannot mix a pipeline's
    # executemany with the reads that history makes.
    with raw.pipeline() if len(batch) == 1 else contextlib.nullcontext():
        raw.executemany(
            f"UPDATE hub_entities SET document = {raw.json_mark} WHERE pk = ?",
            [(orjson.dumps(stored.document).decode(), stored.pk) for stored in batch],
        )
        rows, deletions = IndexRows(), Deletions()
        changes, updates = [], []
        for stored in batch:
            values = _value_snapshot(stored.document)
            geometry = orjson.dumps(_geometries(stored.document))
            changed = _index_changes(rows, deletions, stored, values, geometry)
            changes.extend(history.changes_of_update(stored.document, changed))
            updates.append((stored, values, geometry, changed))
        deletions.run(raw)
        rows.write(raw)
        history.record(raw, commune_id, changes)
        for stored, values, geometry, changed in updates:
            subscriptions.entity_updated(raw, commune_id, stored.document, stored.values, changed)
            stored.types = tuple(stored.document["type"])
            stored.geometry = geometry
            stored.values = values


class Deletions(dict):
    """Index rows to delete, gathered as statement → parameters (run by executemany)."""

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        self.setdefault(sql, []).append(params)

    def run(self, raw: RawCursor) -> None:
        for sql, params in self.items():
            if len(params) == 1:  # one entity's edit: a plain statement (pipelined)
                raw.execute(sql, params[0])
            else:
                raw.executemany(sql, params)


def _index_changes(
    rows: IndexRows,
    deletions: Deletions,
    stored: Stored,
    values: dict[str, bytes],
    geometry: bytes,
) -> list[str]:
    """Gather the index rows to delete and insert for an edited entity; answer the
    attributes whose values changed."""
    document, pk, commune_id = stored.document, stored.pk, stored.commune_id
    if tuple(document["type"]) != stored.types:
        deletions.add("DELETE FROM hub_entity_types WHERE entity_pk = ?", (pk,))
        rows.add_types(pk, commune_id, document)
    if geometry != stored.geometry:
        deletions.add("DELETE FROM hub_geometries WHERE entity_pk = ?", (pk,))
        rows.add_geometries(pk, commune_id, document)
    changed = [
        iri
        for iri in values.keys() | stored.values.keys()
        if values.get(iri) != stored.values.get(iri)
    ]
    if changed:
        _refresh_values(rows, deletions, stored, changed)
    return changed


def _refresh_values(
    rows: IndexRows, deletions: Deletions, stored: Stored, changed: list[str]
) -> None:
    """Value index rows of the changed attributes, rewritten only in the table (numbers,
    texts) where they differ: a new temperature touches numbers only, a repeated value
    nothing at all."""
    pk, commune_id = stored.pk, stored.commune_id
    before, after = IndexRows(), IndexRows()
    previous = {iri: orjson.loads(stored.values[iri]) for iri in changed if iri in stored.values}
    before.add_values(pk, commune_id, previous, changed)
    after.add_values(pk, commune_id, stored.document, changed)
    for index_table, old, new, target in (
        ("hub_numbers", before.numbers, after.numbers, rows.numbers),
        ("hub_texts", before.texts, after.texts, rows.texts),
    ):
        if old == new:
            continue
        iris = list(dict.fromkeys(row[1] for row in (*old, *new)))
        marks = ",".join("?" * len(iris))
        deletions.add(
            f"DELETE FROM {index_table} WHERE entity_pk = ? AND attribute_iri IN ({marks})",
            (pk, *iris),
        )
        target.extend(new)


def _geometries(document: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (iri, instance["value"])
        for iri in attribute_iris(document)
        for instance in document[iri]
        if instance.get("type") == "GeoProperty"
    ]


# ---------------------------------------------------------------- batch operations


@dataclass
class BatchResult:
    success: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    errors: list[tuple[str, Exception]] = field(default_factory=list)


def _load_many(session: Session, commune_id: int, ids: Iterable[str]) -> dict[str, Stored]:
    wanted = list(dict.fromkeys(ids))
    found: dict[str, Stored] = {}
    raw = RawCursor(session)
    if not raw.sqlite:
        # A join on the array, not IN (…): before statistics exist, PostgreSQL rates a
        # long IN list as unselective and scans the table; a join probes the unique index.
        raw.execute(
            "SELECT e.pk, e.document::text FROM unnest(CAST(? AS text[])) AS wanted(id) "
            "JOIN hub_entities e ON e.commune_id = ? AND e.entity_id = wanted.id",
            (wanted, commune_id),
        )
        for pk, text in raw.cursor.fetchall():
            document = orjson.loads(text)
            found[document["id"]] = Stored.loaded(pk, commune_id, document)
        return found
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        raw.execute(
            "SELECT pk, document FROM hub_entities WHERE commune_id = ? "
            f"AND entity_id IN ({','.join('?' * len(chunk))})",
            (commune_id, *chunk),
        )
        for pk, text in raw.cursor.fetchall():
            document = orjson.loads(text)
            found[document["id"]] = Stored.loaded(pk, commune_id, document)
    return found


def _new_document(entity: dict[str, Any], now: str) -> dict[str, Any]:
    document = {"id": entity["id"], "type": entity["type"]}
    if "scope" in entity:
        document["scope"] = entity["scope"]
    document["createdAt"] = document["modifiedAt"] = now
    for iri in attribute_iris(entity):
        document[iri] = [stamp(instance, now) for instance in entity[iri]]
    return document


@dataclass
class IndexRows:
    """Rows of the type, geometry and value indexes, gathered to be written at once."""

    types: list[tuple[Any, ...]] = field(default_factory=list)
    geometries: list[tuple[Any, ...]] = field(default_factory=list)
    numbers: list[tuple[Any, ...]] = field(default_factory=list)
    texts: list[tuple[Any, ...]] = field(default_factory=list)

    def add_entity(self, pk: int, commune_id: int, document: dict[str, Any]) -> None:
        self.add_types(pk, commune_id, document)
        self.add_geometries(pk, commune_id, document)
        self.add_values(pk, commune_id, document, attribute_iris(document))

    def add_types(self, pk: int, commune_id: int, document: dict[str, Any]) -> None:
        self.types.extend((commune_id, iri, pk) for iri in document["type"])

    def add_geometries(self, pk: int, commune_id: int, document: dict[str, Any]) -> None:
        for iri, value in _geometries(document):
            box = geometry_bbox(value)
            if box is not None:
                self.geometries.append((pk, commune_id, iri, *box))

    def add_values(
        self, pk: int, commune_id: int, document: dict[str, Any], iris: Iterable[str]
    ) -> None:
        """What the value index holds for ``q``: each distinct number and text an
        attribute's instances can compare (see ``index_values``)."""
        for iri in iris:
            instances = document.get(iri) or ()
            if len(instances) == 1:
                numbers, texts = index_values(instances[0])
            else:
                numbers, texts = [], []
                for instance in instances:
                    found = index_values(instance)
                    numbers.extend(found[0])
                    texts.extend(found[1])
            if numbers:
                distinct = numbers if len(numbers) == 1 else dict.fromkeys(numbers)
                self.numbers.extend((commune_id, iri, number, pk) for number in distinct)
            if texts:
                distinct = texts if len(texts) == 1 else dict.fromkeys(texts)
                self.texts.extend((commune_id, iri, text, pk) for text in distinct)

    def write(self, raw: RawCursor) -> None:
        raw.insert_rows("hub_entity_types", ("commune_id", "type_iri", "entity_pk"), self.types)
        self._write_geometries(raw)
        raw.insert_rows("hub_numbers", NUMBER_COLUMNS, self.numbers)
        raw.insert_rows("hub_texts", TEXT_COLUMNS, self.texts)

    def _write_geometries(self, raw: RawCursor) -> None:
        if not raw.sqlite:
            raw.insert_rows("hub_geometries", GEOMETRY_COLUMNS, self.geometries)
            return
        if not self.geometries:
            return
        # The R*Tree row takes the id of its geometry row: ids are given up front.
        last = raw.execute("SELECT coalesce(max(id), 0) FROM hub_geometries").fetchone()[0]
        rows = [(last + n, *row) for n, row in enumerate(self.geometries, 1)]
        raw.insert_rows("hub_geometries", ("id", *GEOMETRY_COLUMNS), rows)
        raw.insert_rows(
            "hub_geometry_boxes",
            ("id", "min_lon", "max_lon", "min_lat", "max_lat"),
            [(row[0], row[4], row[6], row[5], row[7]) for row in rows],
        )


COPY_THRESHOLD = 32
GEOMETRY_COLUMNS = (
    "entity_pk",
    "commune_id",
    "attribute_iri",
    "min_lon",
    "min_lat",
    "max_lon",
    "max_lat",
)
NUMBER_COLUMNS = ("commune_id", "attribute_iri", "number", "entity_pk")
TEXT_COLUMNS = ("commune_id", "attribute_iri", "text", "entity_pk")


def _insert_new(session: Session, commune_id: int, documents: list[dict[str, Any]]) -> None:
    """Insert new entities and their index rows in a few statements."""
    if not documents:
        return
    raw = RawCursor(session)
    pks = raw.allocate_ids("hub_entities", len(documents), "pk")
    raw.insert_rows(
        "hub_entities",
        ("pk", "commune_id", "entity_id", "document"),
        [
            (pk, commune_id, d["id"], orjson.dumps(d).decode())
            for pk, d in zip(pks, documents, strict=True)
        ],
        json_column="document",
    )
    rows = IndexRows()
    for pk, document in zip(pks, documents, strict=True):
        rows.add_entity(pk, commune_id, document)
    rows.write(raw)
    history.record(raw, commune_id, [c for d in documents for c in history.changes_of_new(d)])
    subscriptions.entities_created(raw, commune_id, documents)


def _value_snapshot(document: dict[str, Any]) -> dict[str, bytes]:
    """Each attribute as JSON: the ones that differ after an edit get their index rows anew."""
    return {iri: orjson.dumps(document[iri]) for iri in attribute_iris(document)}


def create_entities(session: Session, commune_id: int, entities: list[dict]) -> BatchResult:
    result = BatchResult()
    existing = _load_many(session, commune_id, (e["id"] for e in entities))
    now = now_iso()
    seen: set[str] = set()
    fresh = []
    for entity in entities:
        if entity["id"] in existing or entity["id"] in seen:
            result.errors.append((entity["id"], AlreadyExists(f"{entity['id']} already exists")))
            continue
        seen.add(entity["id"])
        fresh.append(_new_document(entity, now))
        result.success.append(entity["id"])
    _insert_new(session, commune_id, fresh)
    result.created = list(result.success)
    return result


def upsert_entities(
    session: Session, commune_id: int, entities: list[dict], *, replace: bool
) -> BatchResult:
    """Create missing entities; replace existing ones (or update their attributes)."""
    result = BatchResult()
    existing = _load_many(session, commune_id, (e["id"] for e in entities))
    now = now_iso()
    pending = PendingStores()
    fresh: dict[str, dict[str, Any]] = {}
    for entity in entities:
        stored = existing.get(entity["id"])
        if stored is None and entity["id"] not in fresh:
            fresh[entity["id"]] = _new_document(entity, now)
            result.created.append(entity["id"])
        elif stored is None:
            _apply_update(fresh[entity["id"]], entity, now, replace=replace)
        else:
            pending.add(session, stored)
            _apply_update(stored.document, entity, now, replace=replace)
        result.success.append(entity["id"])
    pending.flush(session)
    _insert_new(session, commune_id, list(fresh.values()))
    return result


class PendingStores:
    """Entities of a batch edited and not yet written. An entity edited twice in one
    batch has the first edit written before the second, so that its history keeps both."""

    def __init__(self) -> None:
        self.batch: dict[int, Stored] = {}

    def add(self, session: Session, stored: Stored) -> None:
        """Call before editing ``stored``."""
        if stored.pk in self.batch:
            self.flush(session)
        self.batch[stored.pk] = stored

    def flush(self, session: Session) -> None:
        _store_many(session, list(self.batch.values()))
        self.batch.clear()


def _apply_update(document: dict[str, Any], entity: dict[str, Any], now: str, *, replace: bool):
    if replace:
        for iri in list(attribute_iris(document)):
            del document[iri]
        document["type"] = entity.get("type", document["type"])
    elif "type" in entity:
        document["type"] = list(dict.fromkeys([*document["type"], *entity["type"]]))
    if "scope" in entity:
        document["scope"] = entity["scope"]
    for iri in attribute_iris(entity):
        previous = {i.get("datasetId"): i for i in document.get(iri, [])}
        instances = []
        for instance in entity[iri]:
            old = previous.pop(instance.get("datasetId"), None)
            instances.append(stamp(instance, now, old and old.get("createdAt")))
        document[iri] = [*previous.values(), *instances]
    document["modifiedAt"] = now


def update_entities(
    session: Session, commune_id: int, entities: list[dict], *, no_overwrite: bool
) -> BatchResult:
    """Batch update: append attributes to existing entities (missing ones are errors)."""
    result = BatchResult()
    existing = _load_many(session, commune_id, (e["id"] for e in entities))
    now = now_iso()
    pending = PendingStores()
    for entity in entities:
        stored = existing.get(entity["id"])
        if stored is None:
            result.errors.append((entity["id"], ResourceNotFound(f"{entity['id']} not found")))
            continue
        if no_overwrite:
            entity = {
                k: v for k, v in entity.items() if k not in stored.document or k in ENTITY_KEYS
            }
        pending.add(session, stored)
        _apply_update(stored.document, entity, now, replace=False)
        result.success.append(entity["id"])
    pending.flush(session)
    return result


def delete_entities(session: Session, commune_id: int, entity_ids: list[str]) -> BatchResult:
    result = BatchResult()
    existing = _load_many(session, commune_id, entity_ids)
    for entity_id in entity_ids:
        stored = existing.pop(entity_id, None)
        if stored is None:
            result.errors.append((entity_id, ResourceNotFound(f"{entity_id} not found")))
            continue
        session.connection().execute(_DELETE, {"entity_pk": stored.pk})
        subscriptions.entity_deleted(RawCursor(session), commune_id, stored.document)
        result.success.append(entity_id)
    return result


# ---------------------------------------------------------------- discovery


def type_counts(session: Session, commune_id: int) -> dict[str, int]:
    statement = (
        select(HubEntityType.type_iri, func.count())
        .where(HubEntityType.commune_id == commune_id)
        .group_by(HubEntityType.type_iri)
    )
    return {iri: int(count) for iri, count in session.execute(statement)}


@dataclass
class AttributeInfo:
    count: int = 0
    attribute_types: set[str] = field(default_factory=set)
    type_names: set[str] = field(default_factory=set)


def attribute_details(
    session: Session, commune_id: int, type_iri: str | None = None
) -> dict[str, AttributeInfo]:
    """Per attribute IRI: how many entities carry it, its attribute types, entity types."""
    statement = select(HubEntity.document).where(HubEntity.commune_id == commune_id)
    if type_iri is not None:
        typed = select(HubEntityType.entity_pk).where(
            HubEntityType.commune_id == commune_id, HubEntityType.type_iri == type_iri
        )
        statement = statement.where(HubEntity.pk.in_(typed))
    details: dict[str, AttributeInfo] = {}
    for document in session.scalars(statement):
        for iri in attribute_iris(document):
            info = details.setdefault(iri, AttributeInfo())
            info.count += 1
            info.attribute_types.update(i["type"] for i in document[iri])
            info.type_names.update(document["type"])
    return details


# ---------------------------------------------------------------- planner statistics


class PlannerStatistics:
    """PostgreSQL plans hub queries from table statistics that autovacuum refreshes
    about once a minute. Right after a bulk load it plans for near-empty tables (nested
    loops over everything: seconds per query instead of a millisecond). So once batches
    have grown the hub's tables by a tenth, they are analysed at once, in the background
    (ANALYZE blocks neither reads nor writes). SQLite plans well without statistics."""

    TABLES = "hub_entities, hub_entity_types, hub_geometries, hub_numbers, hub_texts"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.analysed_rows = 0
        self.new_rows = 0
        self.running = False

    def grew(self, db: Database, rows: int) -> None:
        if db.is_sqlite or rows <= 0:
            return
        with self.lock:
            self.new_rows += rows
            if self.running or self.new_rows < max(1000, self.analysed_rows // 10):
                return
            self.running = True
            self.analysed_rows += self.new_rows
            self.new_rows = 0
        threading.Thread(target=self._analyse, args=(db,), daemon=True).start()

    def _analyse(self, db: Database) -> None:
        try:
            with db.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                    text(f"ANALYZE {self.TABLES}")
                )
        except Exception:  # noqa: BLE001 - autovacuum will do it later anyway
            log.warning("ANALYZE of the hub tables failed", exc_info=True)
        finally:
            with self.lock:
                self.running = False


STATISTICS = PlannerStatistics()
