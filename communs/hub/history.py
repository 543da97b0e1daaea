"""Temporal history of entities: every attribute change is recorded as an instance.

Recording happens in the transaction of the change (same writer, same commit), so an
acknowledged write always has its history. Rows are compact: an instance row holds
its series (entity, attribute, datasetId), its times in microseconds since the epoch,
its number when it has one (for aggregation), and the rest of the instance as JSON.
An instance without ``observedAt`` is placed in time by its modification time.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Text, bindparam, cast, delete, event, func, literal, null, select
from sqlalchemy.orm import Session

from communs.core.db import utcnow
from communs.core.jobs import enqueue
from communs.core.models import Job, JobStatus
from communs.hub import partitions
from communs.hub.document import attribute_iris
from communs.hub.models import HubInstance, HubRetentionRule, HubSeries, HubTemporalEntity

ENTITIES = HubTemporalEntity.__table__
SERIES = HubSeries.__table__
INSTANCES = HubInstance.__table__

SYSTEM_TIMES = ("createdAt", "modifiedAt")  # kept in columns; observedAt stays as given
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_micros(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def from_micros(micros: int) -> str:
    moment = EPOCH + dt.timedelta(microseconds=micros)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Change(NamedTuple):
    """One attribute instance to record (a tuple: thousands are made per batch)."""

    entity_id: str
    types: tuple[str, ...]
    attribute_iri: str
    instance: dict[str, Any]


@dataclass(frozen=True)
class TemporalEntity:
    id: int
    entity_id: str
    types: tuple[str, ...]


def changes_of_new(document: dict[str, Any]) -> list[Change]:
    types = tuple(document["type"])
    return [
        Change(document["id"], types, iri, instance)
        for iri in attribute_iris(document)
        for instance in document[iri]
    ]


def changes_of_update(document: dict[str, Any], attributes: Iterable[str]) -> list[Change]:
    """Instances of ``attributes`` written by the operation that set the entity's
    ``modifiedAt`` (the others kept their own)."""
    now = document["modifiedAt"]
    types = tuple(document["type"])
    return [
        Change(document["id"], types, iri, instance)
        for iri in attributes
        for instance in document.get(iri) or ()
        if instance.get("modifiedAt") == now
    ]


def record(raw: Any, commune_id: int, changes: list[Change]) -> None:
    """Append ``changes`` to the history (``raw``: the session's cursor, see service)."""
    if not changes:
        return
    cache = _cache_for(raw)
    if cache is None:
        entities, series = _known(raw, commune_id, changes)
        _insert_instances(raw, _rows(raw, commune_id, changes, entities, series))
    else:
        _record_with_cache(raw, cache, commune_id, changes)


def _insert_instances(raw: Any, rows: list[tuple[Any, ...]]) -> None:
    partitions.ensure_partitions(raw.session, {row[1] for row in rows})
    raw.insert_rows(
        "hub_temporal_instances",
        ("series_id", "observed_at", "created_at", "number", "instance"),
        rows,
        json_column="instance",
    )


def _rows(
    raw: Any,
    commune_id: int,
    changes: list[Change],
    entities: dict[str, tuple[int, tuple[str, ...]]],
    series: dict[SeriesKey, int],
) -> list[tuple[Any, ...]]:
    """Instance rows of ``changes``, creating the temporal rows and series they need."""
    _add_missing_entities(raw, commune_id, changes, entities)
    _add_missing_series(raw, commune_id, changes, entities, series)
    micros: dict[str, int] = {}
    rows = []
    for change in changes:
        owner = entities[change.entity_id][0]
        key = (owner, change.attribute_iri, change.instance.get("datasetId", ""))
        rows.append(_instance_row(series[key], change.instance, micros))
    return rows


def _instance_row(
    series_id: int, instance: dict[str, Any], micros: dict[str, int]
) -> tuple[Any, ...]:
    """The row of one instance; ``micros`` remembers converted modification times (all
    the instances of one operation share theirs)."""
    modified = micros.get(instance["modifiedAt"])
    if modified is None:
        modified = micros[instance["modifiedAt"]] = to_micros(instance["modifiedAt"])
    observed = instance.get("observedAt")
    value = instance.get("value")
    number = (
        float(value) if type(value) in (int, float) and instance.get("type") == "Property" else None
    )
    stored = {k: v for k, v in instance.items() if k not in SYSTEM_TIMES}
    return (
        series_id,
        to_micros(observed) if observed else modified,
        modified,
        number,
        orjson.dumps(stored).decode(),
    )


# ---------------------------------------------------------------- SQLite: known ids


@dataclass
class _KnownIds:
    """Temporal rows and series of one SQLite database already known to exist, so that
    a hot update records its instance without looking them up. Entries are added only
    once their transaction has committed (``_remember``). The two tables never reuse an
    id (AUTOINCREMENT), so an entry gone stale (its rows deleted) can only make an insert
    fail on a foreign key (or a duplicate series on the unique key), never land in
    another entity's history: the attempt is rolled back to a savepoint and done again
    from the database."""

    entities: dict[tuple[int, str], tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    series: dict[SeriesKey, int] = field(default_factory=dict)


_KNOWN: weakref.WeakKeyDictionary[Any, _KnownIds] = weakref.WeakKeyDictionary()
MAX_KNOWN = 200_000


def _cache_for(raw: Any) -> _KnownIds | None:
    if not raw.sqlite:
        return None  # several processes may write: no memory of ids across transactions
    engine = raw.session.get_bind()
    known = _KNOWN.get(engine)
    if known is None:
        known = _KNOWN[engine] = _KnownIds()
    return known


def _record_with_cache(raw: Any, cache: _KnownIds, commune_id: int, changes: list[Change]) -> None:
    if len(changes) == 1 and _record_remembered(raw, cache, commune_id, changes[0]):
        return
    entities: dict[str, tuple[int, tuple[str, ...]]] = {}
    for change in changes:
        found = cache.entities.get((commune_id, change.entity_id))
        if found is not None:
            entities[change.entity_id] = found
    unknown = [c for c in changes if c.entity_id not in entities]
    looked_up, series = _known(raw, commune_id, unknown) if unknown else ({}, {})
    entities.update(looked_up)
    for change in changes:
        owner = entities.get(change.entity_id)
        if owner is not None:
            key = (owner[0], change.attribute_iri, change.instance.get("datasetId", ""))
            remembered = cache.series.get(key)
            if remembered is not None:
                series.setdefault(key, remembered)
    # One instance of a remembered series is one statement, atomic by itself; anything
    # more is wrapped in a savepoint, to be undone whole if a remembered id is stale.
    single = len(changes) == 1 and not unknown and len(series) == 1
    if not single:
        raw.execute("SAVEPOINT hub_history")
    try:
        _insert_instances(raw, _rows(raw, commune_id, changes, entities, series))
    except sqlite3.IntegrityError:  # a remembered id is gone: do it again from the database
        if not single:
            raw.execute("ROLLBACK TO hub_history")
        for change in changes:
            cache.entities.pop((commune_id, change.entity_id), None)
        entities, series = _known(raw, commune_id, changes)
        _insert_instances(raw, _rows(raw, commune_id, changes, entities, series))
    if not single:
        raw.execute("RELEASE hub_history")
    _remember(raw, cache, commune_id, entities, series)


INSERT_INSTANCE = (
    "INSERT INTO hub_temporal_instances (series_id, observed_at, created_at, number, instance) "
    "VALUES (?, ?, ?, ?, ?)"
)


def _record_remembered(raw: Any, cache: _KnownIds, commune_id: int, change: Change) -> bool:
    """The hot case, one statement: one instance of a remembered series of an entity
    whose types are unchanged. False when something is not remembered, or stale (the
    insert fails on a foreign key, by itself): then the general path runs."""
    entity = cache.entities.get((commune_id, change.entity_id))
    if entity is None or entity[1] != change.types:
        return False
    key = (entity[0], change.attribute_iri, change.instance.get("datasetId", ""))
    series_id = cache.series.get(key)
    if series_id is None:
        return False
    try:
        raw.execute(INSERT_INSTANCE, _instance_row(series_id, change.instance, {}))
    except sqlite3.IntegrityError:
        cache.entities.pop((commune_id, change.entity_id), None)
        return False
    return True


def _remember(
    raw: Any,
    cache: _KnownIds,
    commune_id: int,
    entities: dict[str, tuple[int, tuple[str, ...]]],
    series: dict[SeriesKey, int],
) -> None:
    owners = {owner for owner, _types in entities.values()}
    learned = (
        cache,
        {(commune_id, entity_id): found for entity_id, found in entities.items()},
        {key: series_id for key, series_id in series.items() if key[0] in owners},
    )
    raw.session.info.setdefault("hub_history_learned", []).append(learned)


def forget(session: Any, commune_id: int, entity_id: str) -> None:
    """After deleting an entity's history: its ids are no longer known."""
    session.info.setdefault("hub_history_forgotten", []).append((commune_id, entity_id))


@event.listens_for(Session, "after_commit")
def _learn_after_commit(session: Session) -> None:
    for cache, entities, series in session.info.pop("hub_history_learned", ()):
        if len(cache.entities) > MAX_KNOWN:
            cache.entities.clear()
            cache.series.clear()
        cache.entities.update(entities)
        cache.series.update(series)
    for key in session.info.pop("hub_history_forgotten", ()):
        for cache in list(_KNOWN.values()):
            cache.entities.pop(key, None)


@event.listens_for(Session, "after_rollback")
def _unlearn_after_rollback(session: Session) -> None:
    session.info.pop("hub_history_learned", None)
    session.info.pop("hub_history_forgotten", None)


SeriesKey = tuple[int, str, str]


def _known(
    raw: Any, commune_id: int, changes: list[Change]
) -> tuple[dict[str, tuple[int, tuple[str, ...]]], dict[SeriesKey, int]]:
    """The temporal rows and series that already exist for these entities: one query."""
    entities: dict[str, tuple[int, tuple[str, ...]]] = {}
    series: dict[SeriesKey, int] = {}
    for chunk in _chunks(list(dict.fromkeys(change.entity_id for change in changes))):
        raw.execute(
            "SELECT e.id, e.entity_id, e.types, s.id, s.attribute_iri, s.dataset_id "
            "FROM hub_temporal_entities e "
            "LEFT JOIN hub_temporal_series s ON s.temporal_entity_id = e.id "
            f"WHERE e.commune_id = ? AND e.entity_id IN ({','.join('?' * len(chunk))})",
            (commune_id, *chunk),
        )
        for owner, entity_id, types, series_id, iri, dataset_id in raw.cursor.fetchall():
            if entity_id not in entities:
                loaded = orjson.loads(types) if isinstance(types, str | bytes) else types
                entities[entity_id] = (owner, tuple(loaded))
            if series_id is not None:
                series[(owner, iri, dataset_id)] = series_id
    return entities, series


def _add_missing_entities(
    raw: Any,
    commune_id: int,
    changes: list[Change],
    entities: dict[str, tuple[int, tuple[str, ...]]],
) -> None:
    """Create the temporal rows of new entities; keep the types of the others current."""
    wanted = {change.entity_id: change.types for change in changes}
    missing = [entity_id for entity_id in wanted if entity_id not in entities]
    if missing:
        ids = raw.allocate_ids("hub_temporal_entities", len(missing))
        raw.insert_rows(
            "hub_temporal_entities",
            ("id", "commune_id", "entity_id", "types"),
            [
                (row_id, commune_id, entity_id, orjson.dumps(list(wanted[entity_id])).decode())
                for row_id, entity_id in zip(ids, missing, strict=True)
            ],
            json_column="types",
        )
        for row_id, entity_id in zip(ids, missing, strict=True):
            entities[entity_id] = (row_id, wanted[entity_id])
    for entity_id, types in wanted.items():
        row_id, stored_types = entities[entity_id]
        if stored_types != types:
            raw.execute(
                f"UPDATE hub_temporal_entities SET types = {raw.json_mark} WHERE id = ?",
                (orjson.dumps(list(types)).decode(), row_id),
            )


def _add_missing_series(
    raw: Any,
    commune_id: int,
    changes: list[Change],
    entities: dict[str, tuple[int, tuple[str, ...]]],
    series: dict[SeriesKey, int],
) -> None:
    wanted = {
        (entities[c.entity_id][0], c.attribute_iri, c.instance.get("datasetId", ""))
        for c in changes
    }
    missing = sorted(key for key in wanted if key not in series)
    if not missing:
        return
    ids = raw.allocate_ids("hub_temporal_series", len(missing))
    raw.insert_rows(
        "hub_temporal_series",
        ("id", "temporal_entity_id", "commune_id", "attribute_iri", "dataset_id"),
        [
            (row_id, owner, commune_id, iri, dataset_id)
            for row_id, (owner, iri, dataset_id) in zip(ids, missing, strict=True)
        ],
    )
    series.update(zip(missing, ids, strict=True))


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- reading


def find_temporal_entities(
    session: Any,
    commune_id: int,
    *,
    entity_ids: tuple[str, ...] = (),
    types: tuple[str, ...] = (),
    limit: int,
    offset: int,
) -> list[TemporalEntity]:
    """Entities with a history in this commune, oldest first."""
    statement = select(ENTITIES.c.id, ENTITIES.c.entity_id, ENTITIES.c.types).where(
        ENTITIES.c.commune_id == commune_id
    )
    if entity_ids:
        statement = statement.where(ENTITIES.c.entity_id.in_(entity_ids))
    found = [
        TemporalEntity(row.id, row.entity_id, tuple(row.types))
        for row in session.execute(statement.order_by(ENTITIES.c.id))
    ]
    if types:
        wanted = set(types)
        found = [entity for entity in found if wanted & set(entity.types)]
    return found[offset : offset + limit]


@dataclass
class HistoryPage:
    """Instances per attribute IRI, oldest first. When a series held more than the page
    allows, every attribute stops at ``until`` (microseconds): the page is partial."""

    instances: dict[str, list[dict[str, Any]]]
    first: int | None = None
    until: int | None = None


def histories(
    session: Any,
    entities: list[TemporalEntity],
    *,
    attributes: frozenset[str] | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    by_modification: bool,
    last_n: int | None,
    page_size: int,
    values_only: bool = False,
) -> dict[int, HistoryPage]:
    """Per temporal entity: recorded instances in [start, end), oldest first (the last
    ``last_n`` per series when given), at most ``page_size`` per series."""
    owners = {entity.id: entity for entity in entities}
    series = {
        key: (owner, iri)
        for key, (owner, iri, _dataset) in _series_of(session, owners, attributes).items()
    }
    time = INSTANCES.c.created_at if by_modification else INSTANCES.c.observed_at
    newest_first = last_n is not None
    # One query per series: each is a range scan of the (series, time) index that stops
    # at the page's end (a window function over all series ranks every row in range).
    order = (time.desc(), INSTANCES.c.id.desc()) if newest_first else (time, INSTANCES.c.id)
    statement = select(
        INSTANCES.c.series_id,
        INSTANCES.c.id,
        INSTANCES.c.observed_at,
        INSTANCES.c.created_at,
        cast(INSTANCES.c.instance, Text).label("instance"),
    ).where(INSTANCES.c.series_id == bindparam("series"))
    if start is not None:
        statement = statement.where(time >= _micros(start))
    if end is not None:
        statement = statement.where(time < _micros(end))
    statement = statement.order_by(*order).limit(
        min(last_n, page_size) if newest_first else page_size + 1
    )
    rows_of = {
        series_id: session.execute(statement, {"series": series_id}).all() for series_id in series
    }
    moment = 3 if by_modification else 2
    times: dict[int, str] = {}
    timed: dict[int, dict[str, list[tuple[int, int, dict[str, Any]]]]] = {o: {} for o in owners}
    until: dict[int, int] = {}
    for series_id, rows in rows_of.items():
        owner, iri = series[series_id]
        rows.sort(key=lambda row: (row[moment], row.id))
        if not newest_first and len(rows) > page_size:
            rows = rows[:page_size]
            cut = rows[-1][moment]
            until[owner] = min(until.get(owner, cut), cut)
        timed[owner].setdefault(iri, []).extend(
            (row[moment], row.id, _instance(row, times, values_only)) for row in rows
        )
    return {owner: _page(by_iri, until.get(owner)) for owner, by_iri in timed.items()}


def _series_of(
    session: Any, owners: Iterable[int], attributes: frozenset[str] | None
) -> dict[int, tuple[int, str, str]]:
    """The series of these temporal entities: id → (owner, attribute IRI, datasetId)."""
    series: dict[int, tuple[int, str, str]] = {}
    for chunk in _chunks(list(owners)):
        statement = select(
            SERIES.c.id, SERIES.c.temporal_entity_id, SERIES.c.attribute_iri, SERIES.c.dataset_id
        ).where(SERIES.c.temporal_entity_id.in_(chunk))
        if attributes is not None:
            statement = statement.where(SERIES.c.attribute_iri.in_(attributes))
        series.update(
            (row.id, (row.temporal_entity_id, row.attribute_iri, row.dataset_id))
            for row in session.execute(statement)
        )
    return series


@dataclass(frozen=True)
class PeriodFigures:
    """What the database computed over one aggregation period of one series: the
    period's number from the origin, its instance count, the number aggregates, and the
    times (microseconds) of its first and last instance."""

    index: int
    count: int
    distinct: int | None
    total: float
    smallest: float
    largest: float
    squares: float
    first: int
    last: int


@dataclass(frozen=True)
class SeriesFigures:
    dataset_id: str
    periods: list[PeriodFigures]


def number_aggregates(
    session: Any,
    entities: list[TemporalEntity],
    *,
    attributes: frozenset[str] | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    period: int | None,
    distinct: bool,
) -> dict[int, dict[str, list[SeriesFigures]]] | None:
    """Per temporal entity and attribute IRI: the figures of each non-empty period of
    ``period`` microseconds from ``start`` (one period over everything when ``period``
    is None), grouped by the database over the (series, time) index: no instance is
    read into Python. None when an instance in range holds anything but a number (the
    caller aggregates the instances themselves, as the rules for other types ask)."""
    if period is not None and start is None:
        raise ValueError("periods are counted from a start")
    owners = {entity.id for entity in entities}
    series = _series_of(session, owners, attributes)
    time, number = INSTANCES.c.observed_at, INSTANCES.c.number
    bucket = (time - _micros(start)) // period if period and start else literal(0)
    columns = [
        INSTANCES.c.series_id,
        bucket.label("bucket"),
        func.count().label("count"),
        func.count(number).label("numbers"),
        func.count(number.distinct()).label("distinct") if distinct else null(),
        func.sum(number),
        func.min(number),
        func.max(number),
        func.sum(number * number),
        func.min(time),
        func.max(time),
    ]
    figures: dict[int, dict[str, dict[str, list[PeriodFigures]]]] = {o: {} for o in owners}
    for chunk in _chunks(list(series)):
        statement = select(*columns).where(INSTANCES.c.series_id.in_(chunk))
        if start is not None:
            statement = statement.where(time >= _micros(start))
        if end is not None:
            statement = statement.where(time < _micros(end))
        for row in session.execute(statement.group_by(INSTANCES.c.series_id, bucket)):
            if row.count != row.numbers:
                return None
            owner, iri, dataset_id = series[row.series_id]
            periods = figures[owner].setdefault(iri, {}).setdefault(dataset_id, [])
            periods.append(PeriodFigures(int(row.bucket), row.count, *row[4:]))
    return {
        owner: {
            iri: [SeriesFigures(d, sorted(p, key=lambda f: f.index)) for d, p in by_dataset.items()]
            for iri, by_dataset in by_iri.items()
        }
        for owner, by_iri in figures.items()
    }


def _page(
    timed: dict[str, list[tuple[int, int, dict[str, Any]]]], until: int | None
) -> HistoryPage:
    if until is not None:
        timed = {iri: [r for r in rows if r[0] <= until] for iri, rows in timed.items()}
    # Series of one attribute (several datasetIds) merge in time order.
    instances = {
        iri: [instance for _time, _id, instance in sorted(rows, key=lambda r: r[:2])]
        for iri, rows in timed.items()
        if rows
    }
    first = min((rows[0][0] for rows in timed.values() if rows), default=None)
    return HistoryPage(instances, first, until)


def _instance(row: Any, times: dict[int, str], values_only: bool = False) -> dict[str, Any]:
    """The stored instance; ``times`` remembers formatted recording times (an import
    records thousands of instances at one time). ``values_only``: what aggregation and
    temporalValues read by observation time, nothing more."""
    instance = orjson.loads(row.instance)
    if "observedAt" not in instance:
        instance["observedAt"] = from_micros(row.observed_at)
    if values_only:
        return instance
    recorded = times.get(row.created_at)
    if recorded is None:
        recorded = times[row.created_at] = from_micros(row.created_at)
    instance["createdAt"] = instance["modifiedAt"] = recorded
    instance["instanceId"] = f"urn:ngsi-ld:attribute-instance:{row.id}"
    return instance


def _micros(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def delete_temporal_entity(session: Any, commune_id: int, entity_id: str) -> bool:
    forget(session, commune_id, entity_id)
    deleted = session.execute(
        delete(ENTITIES).where(
            ENTITIES.c.commune_id == commune_id, ENTITIES.c.entity_id == entity_id
        )
    )
    return bool(deleted.rowcount)


INSTANCE_PREFIX = "urn:ngsi-ld:attribute-instance:"


def instance_number(instance_id: str) -> int | None:
    number = instance_id.removeprefix(INSTANCE_PREFIX)
    return int(number) if number != instance_id and number.isdigit() else None


def _owned_instance(
    session: Any, commune_id: int, entity_id: str, attribute_iri: str, instance_id: str
) -> Any:
    """The instance row ``instance_id`` if it belongs to this entity and attribute of
    this commune; None otherwise."""
    number = instance_number(instance_id)
    if number is None:
        return None
    statement = (
        select(INSTANCES)
        .join(SERIES, SERIES.c.id == INSTANCES.c.series_id)
        .join(ENTITIES, ENTITIES.c.id == SERIES.c.temporal_entity_id)
        .where(
            INSTANCES.c.id == number,
            SERIES.c.attribute_iri == attribute_iri,
            ENTITIES.c.commune_id == commune_id,
            ENTITIES.c.entity_id == entity_id,
        )
    )
    return session.execute(statement).first()


def modify_instance(
    session: Any,
    commune_id: int,
    entity_id: str,
    attribute_iri: str,
    instance_id: str,
    replacement: dict[str, Any],
    now: str,
) -> bool:
    """Replace the content of one recorded instance (its time stays unless given)."""
    row = _owned_instance(session, commune_id, entity_id, attribute_iri, instance_id)
    if row is None:
        return False
    observed = replacement.get("observedAt")
    value = replacement.get("value")
    number = (
        float(value)
        if type(value) in (int, float) and replacement.get("type") == "Property"
        else None
    )
    if observed:
        partitions.ensure_partitions(session, [to_micros(observed)])
    session.execute(
        INSTANCES.update()
        .where(INSTANCES.c.id == row.id)
        .values(
            observed_at=to_micros(observed) if observed else row.observed_at,
            created_at=to_micros(now),
            number=number,
            instance={k: v for k, v in replacement.items() if k not in SYSTEM_TIMES},
        )
    )
    return True


def delete_instance(
    session: Any, commune_id: int, entity_id: str, attribute_iri: str, instance_id: str
) -> bool:
    row = _owned_instance(session, commune_id, entity_id, attribute_iri, instance_id)
    if row is None:
        return False
    session.execute(delete(INSTANCES).where(INSTANCES.c.id == row.id))
    return True


def delete_attribute_history(
    session: Any,
    commune_id: int,
    entity_id: str,
    attribute_iri: str,
    *,
    dataset_id: str | None,
    delete_all: bool,
) -> bool:
    """Delete the history of an attribute: its default instance, one datasetId, or all."""
    owner = select(ENTITIES.c.id).where(
        ENTITIES.c.commune_id == commune_id, ENTITIES.c.entity_id == entity_id
    )
    statement = delete(SERIES).where(
        SERIES.c.temporal_entity_id.in_(owner.scalar_subquery()),
        SERIES.c.attribute_iri == attribute_iri,
    )
    if not delete_all:
        statement = statement.where(SERIES.c.dataset_id == (dataset_id or ""))
    deleted = session.execute(statement).rowcount
    if deleted:
        forget(session, commune_id, entity_id)
    return bool(deleted)


# ---------------------------------------------------------------- retention

RETENTION_JOB = "hub.history_retention"
RETENTION_EVERY = dt.timedelta(hours=1)
RETENTION_BATCH = 50_000


def set_retention(session: Any, commune_id: int, days: int, type_iri: str = "") -> None:
    """Keep ``days`` of history for entities of ``type_iri`` ("" for every type)."""
    if days < 1:
        raise ValueError("retention is at least one day")
    rules = HubRetentionRule.__table__
    found = session.execute(
        select(rules.c.id).where(rules.c.commune_id == commune_id, rules.c.type_iri == type_iri)
    ).first()
    if found is None:
        session.execute(rules.insert().values(commune_id=commune_id, type_iri=type_iri, days=days))
    else:
        session.execute(rules.update().where(rules.c.id == found.id).values(days=days))
    ensure_retention_job(session, commune_id, utcnow())


def remove_retention(session: Any, commune_id: int, type_iri: str = "") -> bool:
    rules = HubRetentionRule.__table__
    deleted = session.execute(
        delete(rules).where(rules.c.commune_id == commune_id, rules.c.type_iri == type_iri)
    )
    return bool(deleted.rowcount)


def retention_rules(session: Any, commune_id: int) -> dict[str, int]:
    rules = HubRetentionRule.__table__
    statement = select(rules.c.type_iri, rules.c.days).where(rules.c.commune_id == commune_id)
    return {type_iri: days for type_iri, days in session.execute(statement)}


def ensure_retention_job(session: Any, commune_id: int, run_after: dt.datetime) -> None:
    pending = session.execute(
        select(Job.id).where(
            Job.kind == RETENTION_JOB,
            Job.commune_id == commune_id,
            Job.status == JobStatus.PENDING,
        )
    ).first()
    if pending is None:
        enqueue(session, RETENTION_JOB, {}, commune_id=commune_id, run_after=run_after)


def apply_retention(session: Any, commune_id: int, now: dt.datetime) -> int:
    """Delete up to ``RETENTION_BATCH`` instances older than their rule allows; how many.
    An entity follows the longest rule among its types, else the commune-wide rule."""
    rules = retention_rules(session, commune_id)
    if not rules:
        return 0
    by_days: dict[int, list[int]] = {}
    owners = select(ENTITIES.c.id, ENTITIES.c.types).where(ENTITIES.c.commune_id == commune_id)
    for owner, types in session.execute(owners):
        typed = [rules[t] for t in types if t in rules]
        days = max(typed) if typed else rules.get("")
        if days is not None:
            by_days.setdefault(days, []).append(owner)
    deleted = 0
    for days, owner_ids in by_days.items():
        cutoff = _micros(now - dt.timedelta(days=days))
        for chunk in _chunks(owner_ids):
            series = select(SERIES.c.id).where(SERIES.c.temporal_entity_id.in_(chunk))
            doomed = (
                select(INSTANCES.c.id)
                .where(INSTANCES.c.series_id.in_(series), INSTANCES.c.observed_at < cutoff)
                .limit(RETENTION_BATCH - deleted)
            )
            result = session.execute(delete(INSTANCES).where(INSTANCES.c.id.in_(doomed)))
            deleted += result.rowcount
            if deleted >= RETENTION_BATCH:
                return deleted
    return deleted
