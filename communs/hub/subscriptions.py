"""Subscriptions: which changes notify whom, decided in the transaction of the change.

A subscription is stored as it was given (``wire``, with short names), with what its
names expand to (``derived``) and the @context it came with. Writes of the hub call
``entities_created``, ``entity_updated`` and ``entity_deleted`` inside their unit of
work; each matching subscription gets a row in the notification outbox
(``hub_notifications``) in that same transaction, so a committed change always has its
notifications, and a rolled-back one has none. ``communs.hub.notify`` delivers them.

Matching runs on every write, so the subscriptions of a commune are compiled once and
kept in memory: reloaded after a change to them in this process, and at most
``RELOAD_SECONDS`` late for a change made by another process (PostgreSQL scale-out).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from communs.core.db import utcnow
from communs.hub.context import TermMap
from communs.hub.document import attribute_iris, check_datetime, check_name, check_uri, now_iso
from communs.hub.errors import AlreadyExists, BadRequestData, ResourceNotFound
from communs.hub.geoquery import GeoQuery, GeoQuerySyntaxError, parse_geoquery
from communs.hub.history import to_micros
from communs.hub.models import HubSubscription
from communs.hub.query import FORMATS, parse_type_selection
from communs.hub.query_language import (
    Query,
    QuerySyntaxError,
    ScopeQuery,
    bind,
    matches,
    parse_q,
    parse_scope_q,
    scope_matches,
)
from communs.hub.regex import Pattern, RegexError, compile_regex

TRIGGERS = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
DEFAULT_TRIGGERS = ("attributeCreated", "attributeUpdated")
ATTRIBUTE_TRIGGERS = frozenset({"attributeCreated", "attributeUpdated", "attributeDeleted"})
ENDPOINT_SCHEMES = ("http", "https", "mqtt", "mqtts")
ACCEPTS = ("application/json", "application/ld+json")
MQTT_VERSIONS = ("mqtt3.1.1", "mqtt5.0")
STATUS_FIELDS = ("timesSent", "timesFailed", "lastNotification", "lastSuccess", "lastFailure")
KNOWN_FIELDS = {
    "id",
    "type",
    "subscriptionName",
    "description",
    "entities",
    "watchedAttributes",
    "notificationTrigger",
    "timeInterval",
    "q",
    "geoQ",
    "scopeQ",
    "csf",
    "isActive",
    "notification",
    "expiresAt",
    "throttling",
    "lang",
    "jsonldContext",
    "status",
    "@context",
}
RELOAD_SECONDS = 2.0
MAX_SUBSCRIPTIONS_PER_COMMUNE = 10_000


# ---------------------------------------------------------------- parsing


@dataclass
class Parsed:
    """A subscription from the wire: ``wire`` as given, ``derived`` its expanded names."""

    wire: dict[str, Any]
    derived: dict[str, Any]

    def document(self, context: Any) -> dict[str, Any]:
        return {"wire": self.wire, "derived": self.derived, "context": context}


def parse_subscription(payload: Any, terms: TermMap) -> Parsed:
    """A new subscription: checked as a whole (a missing id is made up)."""
    if not isinstance(payload, dict):
        raise BadRequestData("a subscription must be a JSON object")
    wire = {k: v for k, v in payload.items() if k != "@context"}
    if wire.get("type") != "Subscription":
        raise BadRequestData('a subscription needs "type": "Subscription"')
    wire["id"] = check_uri(wire.get("id") or f"urn:ngsi-ld:Subscription:{uuid.uuid4()}", "id")
    derived = {key: _derive(key, wire[key], terms) for key in list(wire) if key in DERIVED}
    parsed = Parsed(wire, derived)
    check_whole(parsed)
    _check_future(wire.get("expiresAt"))
    return parsed


def _check_future(expires_at: Any) -> None:
    """A subscription given an expiry must be given one still to come."""
    if expires_at is not None and _expires_at({"expiresAt": expires_at}) <= utcnow():
        raise BadRequestData(f"expiresAt is in the past: {expires_at}")


def patch_subscription(current: Parsed, fragment: Any, terms: TermMap) -> Parsed:
    """PATCH: the fragment's members replace the subscription's; null removes one."""
    if not isinstance(fragment, dict) or not fragment:
        raise BadRequestData("the fragment must be a non-empty JSON object")
    for fixed in ("id", "type"):
        if fixed in fragment and fragment[fixed] != current.wire.get(fixed):
            raise BadRequestData(f"{fixed} of a subscription cannot be changed")
    wire, derived = dict(current.wire), dict(current.derived)
    for key, value in fragment.items():
        if key == "@context":
            continue
        if value is None:
            wire.pop(key, None)
            derived.pop(key, None)
            continue
        wire[key] = value
        if key in DERIVED:
            derived[key] = _derive(key, value, terms)
    parsed = Parsed(wire, derived)
    check_whole(parsed)
    _check_future(fragment.get("expiresAt"))
    return parsed


def _derive_entities(value: Any, terms: TermMap) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequestData("entities must be a non-empty array of entity selectors")
    selectors = []
    for selector in value:
        if not isinstance(selector, dict) or not isinstance(selector.get("type"), str):
            raise BadRequestData("each entity selector needs a type")
        unknown = set(selector) - {"id", "idPattern", "type"}
        if unknown:
            raise BadRequestData(f"unknown entity selector member(s): {sorted(unknown)}")
        recorded = RecordedNames(terms.expand)
        selection = parse_type_selection(selector["type"], recorded)
        derived: dict[str, Any] = {"types": list(selection.any_of)}
        if selection.predicate is not None:
            derived["typeExpression"] = selector["type"]
            derived["typeNames"] = recorded.names
        if "id" in selector:
            derived["id"] = check_uri(selector["id"], "entities[].id")
        if "idPattern" in selector:
            derived["idPattern"] = _check_pattern(selector["idPattern"])
        selectors.append(derived)
    return selectors


def _check_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str) or len(pattern) > 256:
        raise BadRequestData("idPattern must be a regular expression of 256 characters at most")
    try:
        compile_regex(pattern)
    except RegexError as error:
        raise BadRequestData(f"idPattern is not a valid regular expression: {error}") from error
    return pattern


def _derive_names(value: Any, terms: TermMap, what: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequestData(f"{what} must be a non-empty array of attribute names")
    return [terms.expand(check_name(name)) for name in value]


def _derive_q(value: Any, terms: TermMap) -> dict[str, str]:
    """The names ``q`` uses and what they expand to, so that it can be bound again later
    without loading its @context."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequestData("q must be a non-empty string")
    recorded = RecordedNames(terms.expand)
    try:
        bind(parse_q(value), recorded.expand)
    except QuerySyntaxError as error:
        raise BadRequestData(f"invalid q: {error}") from error
    return recorded.names


class RecordedNames:
    """Expands names as ``expand`` does, and remembers what each became; built again
    from ``names`` alone, it expands them the same way with no @context at hand."""

    def __init__(self, expand: Callable[[str], str] | None = None, names: dict | None = None):
        self._expand = expand
        self.names: dict[str, str] = dict(names or {})

    def expand(self, name: str) -> str:
        if name not in self.names:
            self.names[name] = self._expand(name) if self._expand else name
        return self.names[name]


def _derive_geo(value: Any, terms: TermMap) -> dict[str, str]:
    if not isinstance(value, dict):
        raise BadRequestData("geoQ must be an object with georel, geometry and coordinates")
    try:
        geo = _geo_query(value)
    except GeoQuerySyntaxError as error:
        raise BadRequestData(f"invalid geoQ: {error}") from error
    if geo is None:
        raise BadRequestData("geoQ needs georel, geometry and coordinates")
    return {"geoproperty": terms.expand(geo.geoproperty)}


def _geo_query(value: dict[str, Any]) -> GeoQuery | None:
    coordinates = value.get("coordinates")
    if isinstance(coordinates, list):
        coordinates = orjson.dumps(coordinates).decode()
    return parse_geoquery(
        value.get("georel"), value.get("geometry"), coordinates, value.get("geoproperty")
    )


def _derive_notification(value: Any, terms: TermMap) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestData("notification must be an object")
    unknown = set(value) - {
        "attributes",
        "sysAttrs",
        "format",
        "showChanges",
        "endpoint",
        *STATUS_FIELDS,
        "status",
    }
    if unknown:
        raise BadRequestData(f"unknown notification member(s): {sorted(unknown)}")
    derived: dict[str, Any] = {}
    if "attributes" in value:
        derived["attributes"] = _derive_names(value["attributes"], terms, "attributes")
    if value.get("format", "normalized") not in FORMATS:
        raise BadRequestData(f"notification.format must be one of {sorted(FORMATS)}")
    for flag in ("sysAttrs", "showChanges"):
        if not isinstance(value.get(flag, False), bool):
            raise BadRequestData(f"notification.{flag} must be true or false")
    _check_endpoint(value.get("endpoint"))
    return derived


def _check_endpoint(endpoint: Any) -> None:
    if not isinstance(endpoint, dict) or not isinstance(endpoint.get("uri"), str):
        raise BadRequestData("notification.endpoint.uri is required")
    uri = endpoint["uri"]
    scheme = uri.split(":", 1)[0].lower()
    if scheme not in ENDPOINT_SCHEMES or "://" not in uri or len(uri) > 2048:
        raise BadRequestData(f"endpoint.uri must be an http(s) or mqtt(s) URL: {uri!r}")
    if scheme.startswith("mqtt") and len(uri.split("://", 1)[1].split("/", 1)) < 2:
        raise BadRequestData("an MQTT endpoint needs a topic: mqtt://host:port/topic")
    if endpoint.get("accept", "application/json") not in ACCEPTS:
        raise BadRequestData(f"endpoint.accept must be one of {list(ACCEPTS)}")
    timeout = endpoint.get("timeout", 1)
    if type(timeout) not in (int, float) or timeout <= 0:
        raise BadRequestData("endpoint.timeout must be a positive number of milliseconds")
    for member in ("receiverInfo", "notifierInfo"):
        pairs = endpoint.get(member, [])
        if not isinstance(pairs, list) or not all(_is_pair(pair) for pair in pairs):
            raise BadRequestData(f"endpoint.{member} must be an array of {{key, value}} strings")
    info = key_values(endpoint.get("notifierInfo"))
    if info.get("MQTT-Version", "mqtt3.1.1") not in MQTT_VERSIONS:
        raise BadRequestData(f"MQTT-Version must be one of {list(MQTT_VERSIONS)}")
    if info.get("MQTT-QoS", "0") not in ("0", "1", "2"):
        raise BadRequestData("MQTT-QoS must be 0, 1 or 2")


def _is_pair(pair: Any) -> bool:
    return (
        isinstance(pair, dict)
        and isinstance(pair.get("key"), str)
        and isinstance(pair.get("value"), str)
    )


def key_values(pairs: Any) -> dict[str, str]:
    return {pair["key"]: pair["value"] for pair in pairs or ()}


DERIVED: dict[str, Callable[[Any, TermMap], Any]] = {
    "entities": _derive_entities,
    "watchedAttributes": lambda value, terms: _derive_names(value, terms, "watchedAttributes"),
    "q": _derive_q,
    "geoQ": _derive_geo,
    "notification": _derive_notification,
}


def _derive(key: str, value: Any, terms: TermMap) -> Any:
    return DERIVED[key](value, terms)


def check_whole(parsed: Parsed) -> None:
    """The rules that concern several members (and every member's own type)."""
    wire = parsed.wire
    unknown = set(wire) - KNOWN_FIELDS
    if unknown:
        raise BadRequestData(f"unknown subscription member(s): {sorted(unknown)}")
    if "notification" not in wire:
        raise BadRequestData("notification is required")
    if "entities" not in wire and "watchedAttributes" not in wire:
        raise BadRequestData("give entities or watchedAttributes (or both)")
    if "timeInterval" in wire:
        interval = wire["timeInterval"]
        if type(interval) not in (int, float) or interval <= 0:
            raise BadRequestData("timeInterval must be a positive number of seconds")
        for other in ("watchedAttributes", "throttling"):
            if other in wire:
                raise BadRequestData(f"timeInterval and {other} cannot be given together")
    throttling = wire.get("throttling", 0)
    if type(throttling) not in (int, float) or throttling < 0:
        raise BadRequestData("throttling must be a positive number of seconds")
    triggers = wire.get("notificationTrigger", DEFAULT_TRIGGERS)
    if not isinstance(triggers, list | tuple) or not triggers or set(triggers) - set(TRIGGERS):
        raise BadRequestData(f"notificationTrigger must be a non-empty subset of {list(TRIGGERS)}")
    if not isinstance(wire.get("isActive", True), bool):
        raise BadRequestData("isActive must be true or false")
    if "expiresAt" in wire:
        check_datetime(wire["expiresAt"], "expiresAt")
    if "scopeQ" in wire:
        try:
            parse_scope_q(wire["scopeQ"])
        except (QuerySyntaxError, AttributeError, TypeError) as error:
            raise BadRequestData(f"invalid scopeQ: {error}") from error
    if "lang" in wire and not isinstance(wire["lang"], str):
        raise BadRequestData("lang must be a string")
    if "jsonldContext" in wire:
        check_uri(wire["jsonldContext"], "jsonldContext")
    for text in ("subscriptionName", "description"):
        if text in wire and not isinstance(wire[text], str):
            raise BadRequestData(f"{text} must be a string")


def _expires_at(wire: dict[str, Any]) -> dt.datetime | None:
    text = wire.get("expiresAt")
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- storage


def create(session: Session, commune_id: int, parsed: Parsed, context: Any) -> HubSubscription:
    subscription_id = parsed.wire["id"]
    if _find(session, commune_id, subscription_id) is not None:
        raise AlreadyExists(f"subscription {subscription_id} already exists")
    count = session.scalar(select(func.count()).where(HubSubscription.commune_id == commune_id))
    if (count or 0) >= MAX_SUBSCRIPTIONS_PER_COMMUNE:
        raise BadRequestData("this tenant has too many subscriptions")
    row = HubSubscription(
        commune_id=commune_id,
        subscription_id=subscription_id,
        document=parsed.document(context),
        is_active=parsed.wire.get("isActive", True),
        expires_at=_expires_at(parsed.wire),
    )
    session.add(row)
    session.flush()
    CACHE.forget(session, commune_id)
    session.info["hub_subscriptions_changed"] = True
    return row


def get(session: Session, commune_id: int, subscription_id: str) -> HubSubscription:
    row = _find(session, commune_id, subscription_id)
    if row is None:
        raise ResourceNotFound(f"subscription {subscription_id} not found")
    return row


def _find(session: Session, commune_id: int, subscription_id: str) -> HubSubscription | None:
    return session.scalar(
        select(HubSubscription).where(
            HubSubscription.commune_id == commune_id,
            HubSubscription.subscription_id == subscription_id,
        )
    )


def listing(
    session: Session, commune_id: int, *, limit: int, offset: int
) -> tuple[list[HubSubscription], int]:
    query = select(HubSubscription).where(HubSubscription.commune_id == commune_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(HubSubscription.pk).limit(limit).offset(offset))
    return list(rows), int(total)


def update(
    session: Session, commune_id: int, subscription_id: str, fragment: Any, terms: TermMap
) -> None:
    row = get(session, commune_id, subscription_id)
    current = Parsed(row.document["wire"], row.document["derived"])
    parsed = patch_subscription(current, fragment, terms)
    row.document = parsed.document(row.document.get("context"))
    row.is_active = parsed.wire.get("isActive", True)
    row.expires_at = _expires_at(parsed.wire)
    row.modified_at = utcnow()
    CACHE.forget(session, commune_id)
    session.info["hub_subscriptions_changed"] = True


def delete(session: Session, commune_id: int, subscription_id: str) -> None:
    row = get(session, commune_id, subscription_id)
    session.delete(row)
    session.flush()
    CACHE.forget(session, commune_id)
    session.info["hub_subscriptions_changed"] = True


def status(row: HubSubscription, now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active" if row.is_active else "paused"


# ---------------------------------------------------------------- compiled form


@dataclass(frozen=True)
class Selector:
    types: frozenset[str]
    predicate: Callable[[list[str]], bool] | None
    entity_id: str | None
    pattern: Pattern | None

    def matches(self, document: dict[str, Any]) -> bool:
        if self.entity_id is not None and document["id"] != self.entity_id:
            return False
        if self.pattern is not None and self.pattern.search(document["id"]) is None:
            return False
        if self.predicate is not None:
            return self.predicate(document["type"])
        return not self.types.isdisjoint(document["type"])


@dataclass(eq=False)
class Watch:
    """A subscription compiled for matching at write time."""

    pk: int
    subscription_id: str
    endpoint: str
    selectors: tuple[Selector, ...]
    watched: frozenset[str] | None
    triggers: frozenset[str]
    q: Query | None
    geo: GeoQuery | None
    geo_attribute: str | None
    scope: ScopeQuery | None
    attributes: frozenset[str] | None
    show_changes: bool
    throttling: float
    interval: float | None
    active: bool
    expires_at: int | None  # microseconds

    def live(self, now_micros: int) -> bool:
        return self.active and (self.expires_at is None or now_micros < self.expires_at)

    def selects(self, document: dict[str, Any]) -> bool:
        """Does the entity fall under this subscription (selectors, q, geoQ, scopeQ)?"""
        if self.selectors and not any(s.matches(document) for s in self.selectors):
            return False
        if self.q is not None and not matches(self.q, document):
            return False
        if self.geo is not None and not any(
            i.get("type") == "GeoProperty" and self.geo.matches(i.get("value"))
            for i in document.get(self.geo_attribute, ())
        ):
            return False
        return self.scope is None or scope_matches(self.scope, document.get("scope"))


def compile_watch(pk: int, document: dict[str, Any], active: bool, expires_at: int | None) -> Watch:
    wire, derived = document["wire"], document["derived"]
    selectors = tuple(_selector(s) for s in derived.get("entities", ()))
    q = None
    if "q" in wire:
        names = derived["q"]
        q = bind(parse_q(wire["q"]), RecordedNames(names=names).expand)
    geo = _geo_query(wire["geoQ"]) if "geoQ" in wire else None
    watched = derived.get("watchedAttributes")
    notification = wire["notification"]
    attributes = derived.get("notification", {}).get("attributes")
    return Watch(
        pk=pk,
        subscription_id=wire["id"],
        endpoint=notification["endpoint"]["uri"],
        selectors=selectors,
        watched=frozenset(watched) if watched else None,
        triggers=frozenset(wire.get("notificationTrigger", DEFAULT_TRIGGERS)),
        q=q,
        geo=geo,
        geo_attribute=derived["geoQ"]["geoproperty"] if geo else None,
        scope=parse_scope_q(wire["scopeQ"]) if "scopeQ" in wire else None,
        attributes=frozenset(attributes) if attributes else None,
        show_changes=bool(notification.get("showChanges", False)),
        throttling=float(wire.get("throttling", 0)),
        interval=float(wire["timeInterval"]) if "timeInterval" in wire else None,
        active=active,
        expires_at=expires_at,
    )


def _selector(derived: dict[str, Any]) -> Selector:
    predicate = None
    if "typeExpression" in derived:
        names = RecordedNames(names=derived["typeNames"])
        predicate = parse_type_selection(derived["typeExpression"], names).predicate
    return Selector(
        frozenset(derived["types"]),
        predicate,
        derived.get("id"),
        compile_regex(derived["idPattern"]) if "idPattern" in derived else None,
    )


# ---------------------------------------------------------------- in-memory cache


@dataclass
class _Commune:
    loaded_at: float
    reacting: list[Watch]  # the live ones that react to changes (not periodic)
    by_id: dict[str, list[Watch]] = field(default_factory=dict)
    by_type: dict[str, list[Watch]] = field(default_factory=dict)
    anything: list[Watch] = field(default_factory=list)  # selectors without id, or none

    def __post_init__(self) -> None:
        for watch in self.reacting:
            ids = {s.entity_id for s in watch.selectors}
            if watch.selectors and None not in ids:
                for entity_id in ids:
                    self.by_id.setdefault(entity_id, []).append(watch)
            elif watch.selectors and all(s.predicate is None for s in watch.selectors):
                for iri in {iri for s in watch.selectors for iri in s.types}:
                    self.by_type.setdefault(iri, []).append(watch)
            else:
                self.anything.append(watch)

    def candidates(self, document: dict[str, Any]) -> list[Watch]:
        """The subscriptions that may select this entity, in creation order."""
        found = [*self.by_id.get(document["id"], ()), *self.anything]
        for iri in document["type"]:
            found.extend(self.by_type.get(iri, ()))
        if len(found) > 1:
            found = sorted(set(found), key=lambda watch: watch.pk)
        return found


class WatchCache:
    """Compiled subscriptions per database (engine) and commune."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_engine: weakref.WeakKeyDictionary[Any, dict[int, _Commune]] = (
            weakref.WeakKeyDictionary()
        )

    def reacting(self, raw: Any, commune_id: int) -> _Commune | None:
        """The commune's subscriptions that react to changes; None if there are none."""
        engine = raw.session.get_bind()
        communes = self.by_engine.get(engine)
        entry = communes.get(commune_id) if communes is not None else None
        if entry is None or time.monotonic() - entry.loaded_at > RELOAD_SECONDS:
            entry = self._load(raw, engine, commune_id)
        return entry if entry.reacting else None

    def _load(self, raw: Any, engine: Any, commune_id: int) -> _Commune:
        cursor = raw.execute(
            "SELECT pk, document, is_active, expires_at FROM hub_subscriptions "
            "WHERE commune_id = ?",
            (commune_id,),
        )
        watches = []
        for pk, document, active, expires in cursor.fetchall():
            if isinstance(document, str | bytes):
                document = orjson.loads(document)
            watches.append(compile_watch(pk, document, bool(active), micros_of(expires)))
        now = _now_micros()
        reacting = [w for w in watches if w.interval is None and w.live(now)]
        entry = _Commune(time.monotonic(), reacting)
        with self.lock:
            self.by_engine.setdefault(engine, {})[commune_id] = entry
        return entry

    def forget(self, session: Session, commune_id: int) -> None:
        with self.lock:
            for communes in self.by_engine.values():
                communes.pop(commune_id, None)


CACHE = WatchCache()


def micros_of(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return to_micros(value.isoformat())


def _now_micros() -> int:
    return time.time_ns() // 1000


# ---------------------------------------------------------------- matching changes


def entities_created(raw: Any, commune_id: int, documents: Iterable[dict[str, Any]]) -> None:
    commune = CACHE.reacting(raw, commune_id)
    if commune is None:
        return
    now = _now_micros()
    for document in documents:
        attributes = set(attribute_iris(document))
        for watch in commune.candidates(document):
            if not watch.live(now) or not watch.selects(document):
                continue
            if "entityCreated" in watch.triggers:
                trigger = "entityCreated"
            elif "attributeCreated" in watch.triggers and _watched(watch, attributes):
                trigger = "attributeCreated"
            else:
                continue
            _enqueue(raw, commune_id, watch, document, trigger, now)


def entity_updated(
    raw: Any,
    commune_id: int,
    document: dict[str, Any],
    before: dict[str, bytes],
    changed: list[str],
) -> None:
    """``before``: each attribute's instances as JSON before the change."""
    commune = CACHE.reacting(raw, commune_id)
    if commune is None or not changed:
        return
    now = _now_micros()
    created = {iri for iri in changed if iri not in before}
    deleted = {iri for iri in changed if iri not in document}
    updated = set(changed) - created - deleted
    for watch in commune.candidates(document):
        if not watch.live(now):
            continue
        trigger = _update_trigger(watch, created, updated, deleted)
        if trigger is None or not watch.selects(document):
            continue
        shown = document
        if deleted and trigger == "attributeDeleted" or watch.show_changes:
            shown = _with_changes(document, before, deleted, watch.show_changes)
        _enqueue(raw, commune_id, watch, shown, trigger, now)


def _update_trigger(
    watch: Watch, created: set[str], updated: set[str], deleted: set[str]
) -> str | None:
    for trigger, attributes in (
        ("attributeUpdated", updated),
        ("attributeCreated", created),
        ("attributeDeleted", deleted),
    ):
        if trigger in watch.triggers and attributes and _watched(watch, attributes):
            return trigger
    if "entityUpdated" in watch.triggers and _watched(watch, created | updated | deleted):
        return "entityUpdated"
    return None


def _watched(watch: Watch, attributes: set[str]) -> bool:
    return watch.watched is None or not watch.watched.isdisjoint(attributes)


def _with_changes(
    document: dict[str, Any], before: dict[str, bytes], deleted: set[str], show_changes: bool
) -> dict[str, Any]:
    """The entity as notified: deleted attributes shown with the null value and their
    deletion time; with ``showChanges``, each changed instance with its previous value."""
    shown = dict(document)
    for iri in deleted:
        shown[iri] = [{"type": "Property", "value": "urn:ngsi-ld:null"}]
        shown[iri][0]["deletedAt"] = document["modifiedAt"]
    if not show_changes:
        return shown
    for iri, previous_json in before.items():
        if iri not in document or iri in deleted:
            continue
        previous = {i.get("datasetId"): i for i in orjson.loads(previous_json)}
        instances = []
        for instance in document[iri]:
            old = previous.get(instance.get("datasetId"))
            if old is not None and old != instance and "value" in old:
                instance = {**instance, "previousValue": old["value"]}
            instances.append(instance)
        shown[iri] = instances
    return shown


def entity_deleted(raw: Any, commune_id: int, document: dict[str, Any]) -> None:
    commune = CACHE.reacting(raw, commune_id)
    if commune is None:
        return
    now = _now_micros()
    for watch in commune.candidates(document):
        if "entityDeleted" in watch.triggers and watch.live(now) and watch.selects(document):
            gone = {"id": document["id"], "type": document["type"], "deletedAt": now_iso()}
            _enqueue(raw, commune_id, watch, gone, "entityDeleted", now)


# ---------------------------------------------------------------- the outbox


@dataclass
class _Throttle:
    next_allowed: int = 0  # microseconds
    waiting_row: int | None = None  # id of the outbox row still held back


_THROTTLES: dict[tuple[Any, int], _Throttle] = {}
_THROTTLES_LOCK = threading.Lock()


def notified_entity(watch: Watch, document: dict[str, Any]) -> dict[str, Any]:
    if watch.attributes is None:
        return document
    return {k: v for k, v in document.items() if k in ENTITY_MEMBERS or k in watch.attributes}


ENTITY_MEMBERS = frozenset({"id", "type", "scope", "createdAt", "modifiedAt", "deletedAt"})
OUTBOX_COLUMNS = (
    "commune_id",
    "subscription_pk",
    "endpoint",
    "notification_id",
    "entity_id",
    "payload",
    "created_at",
    "not_before",
    "attempts",
)


def _enqueue(
    raw: Any, commune_id: int, watch: Watch, document: dict[str, Any], trigger: str, now: int
) -> None:
    entity = notified_entity(watch, document)
    if watch.throttling > 0 and _held_back(raw, watch, entity, trigger, now):
        return
    not_before = now
    if watch.throttling > 0:
        throttle = _throttle(raw, watch)
        not_before = max(now, throttle.next_allowed)
        throttle.next_allowed = not_before + _period(watch)
    row_id = insert_notification(
        raw, commune_id, watch.pk, watch.endpoint, [entity], trigger, now, not_before
    )
    if watch.throttling > 0 and not_before > now:
        _throttle(raw, watch).waiting_row = row_id


def insert_notification(
    raw: Any,
    commune_id: int,
    subscription_pk: int,
    endpoint: str,
    entities: list[dict[str, Any]],
    trigger: str,
    now: int,
    not_before: int,
) -> int:
    payload = {"trigger": trigger, "entities": entities}
    written = Written(
        0,
        commune_id,
        subscription_pk,
        endpoint,
        f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
        entities[0]["id"] if len(entities) == 1 else "",
        payload,
        not_before,
    )
    cursor = raw.execute(
        f"INSERT INTO hub_notifications ({', '.join(OUTBOX_COLUMNS)}) "
        f"VALUES (?, ?, ?, ?, ?, {raw.json_mark}, ?, ?, 0) RETURNING id",
        (
            commune_id,
            subscription_pk,
            endpoint,
            written.notification_id,
            written.entity_id,
            orjson.dumps(payload).decode(),
            now,
            not_before,
        ),
    )
    written.id = cursor.fetchone()[0]
    raw.session.info.setdefault("hub_notifications", []).append(written)
    return written.id


@dataclass
class Written:
    """A notification row written in this transaction, handed to the notifiers of this
    process once it commits (so that they need not read it back)."""

    id: int
    commune_id: int
    subscription_pk: int
    endpoint: str
    notification_id: str
    entity_id: str
    payload: dict[str, Any]
    not_before: int  # microseconds


def _throttle(raw: Any, watch: Watch) -> _Throttle:
    key = (raw.session.get_bind(), watch.pk)
    with _THROTTLES_LOCK:
        return _THROTTLES.setdefault(key, _Throttle())


def _held_back(raw: Any, watch: Watch, entity: dict[str, Any], trigger: str, now: int) -> bool:
    """Within a throttled subscription's quiet period, the change joins the notification
    already waiting (one notification per period, with the latest state of each entity)."""
    throttle = _throttle(raw, watch)
    # The notifier reads the waiting row again when it is due: changes stop joining it
    # a moment before, so that none commits after that read.
    if throttle.waiting_row is None or throttle.next_allowed - _period(watch) <= now + MARGIN:
        return False
    found = raw.execute(
        "SELECT payload FROM hub_notifications WHERE id = ? AND attempts = 0",
        (throttle.waiting_row,),
    ).fetchone()
    if found is None:
        return False
    payload = found[0] if isinstance(found[0], dict) else orjson.loads(found[0])
    others = [e for e in payload["entities"] if e["id"] != entity["id"]]
    payload = {"trigger": trigger, "entities": [*others, entity]}
    raw.execute(
        f"UPDATE hub_notifications SET payload = {raw.json_mark}, entity_id = '' WHERE id = ?",
        (orjson.dumps(payload).decode(), throttle.waiting_row),
    )
    return True


MARGIN = 100_000  # microseconds


def _period(watch: Watch) -> int:
    return int(watch.throttling * 1_000_000)


# ---------------------------------------------------------------- telling the notifier

Listener = Callable[[list[Written], bool], None]
_LISTENERS: set[Listener] = set()


def add_listener(listener: Listener) -> Callable[[], None]:
    """``listener(rows, subscriptions_changed)`` is called after each commit (in this
    process) that wrote notifications or changed subscriptions; it answers a remover."""
    _LISTENERS.add(listener)
    return lambda: _LISTENERS.discard(listener)


@event.listens_for(Session, "after_commit")
def _tell_listeners(session: Session) -> None:
    rows = session.info.pop("hub_notifications", None)
    changed = session.info.pop("hub_subscriptions_changed", False)
    if rows or changed:
        for listener in list(_LISTENERS):
            listener(rows or [], changed)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop("hub_notifications", None)
    session.info.pop("hub_subscriptions_changed", None)
