"""MQTT ingestion of device readings into the hub.

When ``COMMUNS_MQTT_URL`` is set, ``communs serve`` (or ``communs ingest`` alone)
subscribes with QoS 1 to ``<prefix>/<commune>/<entity type>/<entity id>`` (prefix
``communs`` by default) and stores each message as an upsert of that entity:

- ``<commune>`` is a slug or an INSEE code; an unknown commune is a rejection.
- ``<entity id>`` is used as is when it is a URI (``urn:…``), else it becomes
  ``urn:ngsi-ld:<entity type>:<entity id>``.
- The payload is a JSON object of attributes, normalized (``{"temperature": {"type":
  "Property", "value": 21}}``), concise or keyValues (``{"temperature": 21}``); names
  expand with the NGSI-LD core context (``@context`` is refused). Or, when the commune
  has a device mapping for the entity type (``communs hub mapping set``), a simple
  device payload ``{"v": 23.5, "t": "2026-11-22T10:00:00+01:00"}`` (or a bare value)
  becomes one attribute with ``observedAt`` (ISO 8601, or seconds since the epoch) and
  the mapping's ``unitCode``.

Existing attributes are overwritten, others kept (``upsert_entities(replace=False)``);
history (and subscription notifications) are recorded in the same transaction.

Batching and acknowledgements: the messages that arrived while a batch was committed
are taken together (up to ``MAX_BATCH``) as the next batch: one unit of work of the
single writer (all communes in it), which parses and upserts them. QoS 1 messages are
acknowledged (PUBACK) only after that commit, so a consumer killed mid-batch loses
nothing: the broker delivers the unacknowledged messages again when the same client
id reconnects (persistent MQTT 5 session: clean start off, session expiry
``COMMUNS_MQTT_SESSION_EXPIRY``). Delivery is therefore at least once: a reading
redelivered after a crash may be recorded twice in the history.

Invalid messages are written to ``hub_ingest_rejections`` (dead letters) with their
reason, in the batch's transaction, and acknowledged; the consumer goes on. Should
the batch fail in the database all the same, its messages are stored one by one so
that only the offending ones are rejected. A database that cannot be reached is not a
rejection: the connection is dropped (nothing acknowledged) and retried with backoff,
as when the broker goes away.

Client: ``communs.hub.mqtt.Subscriber``, a lean MQTT 5 subscriber written for this
consumer (its docstring says why not aiomqtt: paho costs more per message than the
whole ingestion budget). MQTT 5 lets the consumer announce a Receive Maximum of
65,535: with MQTT 3.1.1 Mosquitto keeps at most 20 unacknowledged messages in flight
per client (``max_inflight_messages``), which would cap a consumer that acknowledges
after commit at 20 messages per commit.

Scale-out: with ``COMMUNS_MQTT_SHARE_GROUP`` set, the subscription is the MQTT 5
shared subscription ``$share/<group>/<prefix>/+/+/+``: the broker spreads messages
over every process of the group. Each process needs its own stable client id
(``COMMUNS_MQTT_CLIENT_ID``) so that its unacknowledged messages come back to it
after a restart. Retained messages are not replayed on subscription (they would
duplicate history at each reconnection).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from communs.core.db import Database
from communs.core.settings import Settings
from communs.core.tenancy import commune_for_key
from communs.hub import devices
from communs.hub.context import CORE, _is_absolute_iri
from communs.hub.devices import DeviceMapping, Rejection
from communs.hub.document import ENTITY_KEYS, parse_attributes, parse_entity, parse_scope
from communs.hub.errors import BadRequestData
from communs.hub.mqtt import Message, Subscriber
from communs.hub.service import upsert_entities

log = logging.getLogger(__name__)

MAX_BATCH = 5000
RECEIVE_MAXIMUM = 65_535  # unacknowledged QoS 1 messages the broker may send us
LOOKUP_TTL = 10.0  # seconds a commune or its device mappings are remembered
LOOKUP_MAX = 10_000
CACHE_SIZE = 65_536  # topics and entities whose parsing is remembered
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
REPORT_EVERY = 60.0
TRANSIENT_ERRORS = (OperationalError, InterfaceError, DisconnectionError)


class Rejected(Exception):
    """A message that cannot be stored; ``str(error)`` is the reason kept."""


# ---------------------------------------------------------------- topics and payloads


@dataclass(frozen=True)
class TopicParts:
    commune: str
    entity_type: str
    entity_id: str


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_topic(topic: str, prefix: str = "communs") -> TopicParts:
    """``<prefix>/<commune>/<entity type>/<entity id>``; a non-URI id becomes
    ``urn:ngsi-ld:<type>:<id>``."""
    levels = topic.split("/")
    prefix_levels = prefix.split("/")
    size = len(prefix_levels)
    if len(levels) != size + 3 or levels[:size] != prefix_levels or not all(levels[size:]):
        raise Rejected(f"topic must be {prefix}/<commune>/<entityType>/<entityId>")
    commune, entity_type, raw_id = levels[size:]
    return TopicParts(commune, entity_type, entity_id_for(entity_type, raw_id))


def entity_id_for(entity_type: str, raw_id: str) -> str:
    return raw_id if _is_absolute_iri(raw_id) else f"urn:ngsi-ld:{entity_type}:{raw_id}"


def parse_message(
    parts: TopicParts, payload: bytes, mapping: DeviceMapping | None
) -> dict[str, Any]:
    """The entity fragment (stored form) of one message."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise Rejected(f"payload is not JSON: {error}") from None
    entity_id, types = _skeleton(parts.entity_id, parts.entity_type)
    entity: dict[str, Any] = {"id": entity_id, "type": list(types)}
    try:
        if mapping is not None:
            entity.update(
                parse_attributes(device_attributes(data, mapping), CORE, allow_null=False)
            )
            return entity
        attributes = fragment_attributes(data, parts)
        if "scope" in data:
            entity["scope"] = parse_scope(data["scope"])
        entity.update(parse_attributes(attributes, CORE, allow_null=False))
    except BadRequestData as error:
        raise Rejected(f"invalid payload: {error}") from None
    return entity


@functools.lru_cache(maxsize=CACHE_SIZE)
def _skeleton(entity_id: str, entity_type: str) -> tuple[str, tuple[str, ...]]:
    """The checked id and expanded type of the topic's entity (the same for each of its
    readings: checked once)."""
    try:
        entity = parse_entity({"id": entity_id, "type": entity_type}, CORE)
    except BadRequestData as error:
        raise Rejected(f"invalid topic: {error}") from None
    return entity["id"], tuple(entity["type"])


def fragment_attributes(data: Any, parts: TopicParts) -> dict[str, Any]:
    """An NGSI-LD attribute fragment, normalized, concise or keyValues."""
    if not isinstance(data, dict):
        raise Rejected("payload must be a JSON object of attributes")
    if "@context" in data:
        raise Rejected("@context is not supported: MQTT payloads use the core context")
    if data.get("id", parts.entity_id) != parts.entity_id:
        raise Rejected(f"payload id {data['id']!r} differs from the topic's {parts.entity_id!r}")
    if data.get("type", parts.entity_type) != parts.entity_type:
        raise Rejected(
            f"payload type {data['type']!r} differs from the topic's {parts.entity_type!r}"
        )
    return {key: value for key, value in data.items() if key not in ENTITY_KEYS}


def device_attributes(data: Any, mapping: DeviceMapping) -> dict[str, Any]:
    """A simple device payload (``{"v": 23.5, "t": "…"}`` or a bare value) as the one
    attribute of its mapping."""
    observed = None
    if isinstance(data, dict):
        if mapping.value_key not in data:
            raise Rejected(
                f"device payload lacks {mapping.value_key!r} "
                f"(mapping of {mapping.entity_type} to {mapping.attribute})"
            )
        value = data[mapping.value_key]
        if mapping.time_key is not None:
            observed = data.get(mapping.time_key)
    else:
        value = data
    if value is None or isinstance(value, list):
        raise Rejected(
            f"device value must be a number, a string, a boolean or an object: {value!r}"
        )
    attribute: dict[str, Any] = {"type": "Property", "value": value}
    if observed is not None:
        attribute["observedAt"] = device_time(observed)
    if mapping.unit_code:
        attribute["unitCode"] = mapping.unit_code
    return {mapping.attribute: attribute}


def device_time(value: Any) -> Any:
    """ISO 8601 text as given; a number is seconds since the epoch."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"device time out of range: {value!r}") from None
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value  # checked by the entity parser


# ---------------------------------------------------------------- the unit of work


@dataclass(frozen=True)
class Reading:
    """A message parsed into the entity fragment to upsert."""

    commune_id: int
    entity: dict[str, Any]
    topic: str
    payload: bytes


@dataclass
class Parsed:
    """A batch ready for the writer, in arrival order."""

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def store_batch(session: Session, parsed: Parsed) -> None:
    """Upsert every entity of the batch and keep its rejections, in one transaction."""
    by_commune: dict[int, list[dict[str, Any]]] = {}
    for reading in parsed.readings:
        by_commune.setdefault(reading.commune_id, []).append(reading.entity)
    for commune_id, entities in by_commune.items():
        for entities_round in _rounds(entities):
            upsert_entities(session, commune_id, entities_round, replace=False)
    devices.add_rejections(session, parsed.rejections)


def _rounds(entities: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The first reading of each entity, then the others: a new entity is created by
    its first reading, so that the next ones are updates, each recorded in history
    (several readings of an entity created in one upsert would keep only the last)."""
    seen: set[str] = set()
    first, rest = [], []
    for entity in entities:
        if entity["id"] in seen:
            rest.append(entity)
        else:
            seen.add(entity["id"])
            first.append(entity)
    return [first, rest] if rest else [first]


# ---------------------------------------------------------------- communes and mappings


class Directory:
    """Communes by topic key, and their device mappings, remembered ``LOOKUP_TTL``
    seconds (a new commune or mapping is seen within that time). Used by the writer
    thread only, inside the ingestion unit."""

    def __init__(self, ttl: float = LOOKUP_TTL) -> None:
        self.ttl = ttl
        self._communes: dict[str, tuple[float, int | None]] = {}
        self._mappings: dict[int, tuple[float, dict[str, DeviceMapping]]] = {}

    def refresh(self, session: Session, keys: set[str]) -> None:
        """Load what ``keys`` need and is not known (or too old)."""
        now = time.monotonic()
        stale = {key for key in keys if self._communes.get(key, (0.0, None))[0] <= now}
        known = (self._communes[key][1] for key in keys - stale)
        stale_ids = {i for i in known if i is not None and self._expired(i, now)}
        if len(self._communes) + len(stale) > LOOKUP_MAX:
            self._communes.clear()
            self._mappings.clear()
        for key in stale:
            commune = commune_for_key(session, key)
            self._communes[key] = (now + self.ttl, commune.id if commune else None)
            if commune is not None:
                stale_ids.add(commune.id)
        for commune_id in stale_ids:
            found = devices.list_mappings(session, commune_id)
            self._mappings[commune_id] = (now + self.ttl, {m.entity_type: m for m in found})

    def _expired(self, commune_id: int, now: float) -> bool:
        found = self._mappings.get(commune_id)
        return found is None or found[0] <= now

    def commune_id(self, key: str) -> int | None:
        return self._communes.get(key, (0.0, None))[1]

    def mapping(self, commune_id: int, entity_type: str) -> DeviceMapping | None:
        return self._mappings.get(commune_id, (0.0, {}))[1].get(entity_type)


# ---------------------------------------------------------------- the consumer


@dataclass
class Counters:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    batches: int = 0
    connected: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "received": self.received,
            "stored": self.stored,
            "rejected": self.rejected,
            "batches": self.batches,
        }


@dataclass(frozen=True)
class Broker:
    """Where and how to connect, from ``COMMUNS_MQTT_URL`` (``mqtt://`` or ``mqtts://``,
    optional ``user:password@``) and the other ``COMMUNS_MQTT_*`` settings."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    client_id: str
    topic_filter: str
    prefix: str
    session_expiry: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Broker:
        parts = urlsplit(settings.mqtt_url or "")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(f"COMMUNS_MQTT_URL must be mqtt://host[:port]: {settings.mqtt_url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        prefix = settings.mqtt_topic_prefix.strip("/") or "communs"
        topic_filter = f"{prefix}/+/+/+"
        if settings.mqtt_share_group:
            topic_filter = f"$share/{settings.mqtt_share_group}/{topic_filter}"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            client_id=settings.mqtt_client_id or f"communs-{socket.gethostname()}",
            topic_filter=topic_filter,
            prefix=prefix,
            session_expiry=settings.mqtt_session_expiry,
        )


class IngestService:
    """The MQTT consumer: a background service of ``communs serve`` or ``communs ingest``."""

    name = "hub.ingest"

    def __init__(self, broker: Broker, db: Database, *, batch_size: int = MAX_BATCH) -> None:
        self.broker, self.db, self.batch_size = broker, db, batch_size
        self.counters = Counters()
        self.directory = Directory()
        self._stopped = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        return self.counters.as_dict()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """Consume until stopped; reconnect with backoff when the broker goes away."""
        reporter = asyncio.create_task(self._report())
        delay = BACKOFF_FIRST
        try:
            while not self._stopped.is_set():
                started = time.monotonic()
                try:
                    await self._session()
                except Exception as error:  # noqa: BLE001 - logged, then retried
                    log.warning(
                        "MQTT ingestion from %s:%s interrupted (%s); retrying in %.1f s",
                        self.broker.host,
                        self.broker.port,
                        error or type(error).__name__,
                        delay,
                    )
                else:
                    continue
                finally:
                    self.counters.connected = False
                if time.monotonic() - started > 2 * BACKOFF_MAX:
                    delay = BACKOFF_FIRST
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            reporter.cancel()

    async def _session(self) -> None:
        """One connection: subscribe, then consume batches until stopped or cut."""
        async with self._client() as client:
            await client.subscribe(self.broker.topic_filter, qos=1)
            self.counters.connected = True
            log.info(
                "MQTT ingestion: connected to %s:%s as %s, subscribed to %s",
                self.broker.host,
                self.broker.port,
                self.broker.client_id,
                self.broker.topic_filter,
            )
            await self._consume(client)

    def _client(self) -> Subscriber:
        broker = self.broker
        return Subscriber(
            broker.host,
            broker.port,
            broker.client_id,
            username=broker.username,
            password=broker.password,
            tls=ssl.create_default_context() if broker.tls else None,
            session_expiry=broker.session_expiry,
            receive_maximum=RECEIVE_MAXIMUM,
        )

    async def _consume(self, client: Subscriber) -> None:
        """Batches one after the other: messages arriving during a commit make the next
        batch (parsing runs in the writer's unit, where it competes with no one for the
        interpreter; overlapping it with the commit made both slower)."""
        while True:
            batch = await self._next_batch(client)
            if batch is None:
                return
            self.counters.received += len(batch)
            await self._commit(client, batch)

    async def _next_batch(self, client: Subscriber) -> list[Message] | None:
        """Every message waiting (at least one, at most ``batch_size``); None once stopped."""
        if self._stopped.is_set():
            return None
        if client.messages:
            return await client.batch(self.batch_size)
        getter = asyncio.ensure_future(client.batch(self.batch_size))
        stopper = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait((getter, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not getter.done():
            getter.cancel()
            return None
        return getter.result()

    async def _commit(self, client: Subscriber, batch: list[Message]) -> None:
        """Store the batch, then acknowledge its messages."""
        try:
            stored, rejected = await self.db.awrite(self.ingest, batch)
        except TRANSIENT_ERRORS:
            raise
        except Exception as error:  # noqa: BLE001 - the batch is retried message by message
            log.warning("MQTT batch of %d failed (%s); storing one by one", len(batch), error)
            stored, rejected = await self._one_by_one(batch)
        self.counters.batches += 1
        self.counters.stored += stored
        self.counters.rejected += rejected
        client.ack(batch)

    def ingest(self, session: Session, batch: list[Message]) -> tuple[int, int]:
        """The unit of work of a batch: parse, upsert, keep the rejections. Answers how
        many messages were stored and rejected."""
        parsed = self.parse(session, batch)
        store_batch(session, parsed)
        return len(parsed.readings), len(parsed.rejections)

    def parse(self, session: Session, batch: list[Message]) -> Parsed:
        prefix = self.broker.prefix
        parsed = Parsed()
        topics: list[TopicParts | None] = []
        for message in batch:
            try:
                topics.append(parse_topic(message.topic, prefix))
            except Rejected as error:
                topics.append(None)
                parsed.rejections.append(
                    Rejection(None, message.topic, message.payload, str(error))
                )
        self.directory.refresh(session, {parts.commune for parts in topics if parts})
        for message, parts in zip(batch, topics, strict=True):
            if parts is not None:
                self._parse_one(parsed, message, parts)
        return parsed

    def _parse_one(self, parsed: Parsed, message: Message, parts: TopicParts) -> None:
        commune_id = self.directory.commune_id(parts.commune)
        topic, payload = message.topic, message.payload
        try:
            if commune_id is None:
                raise Rejected(f"unknown commune {parts.commune!r} (slug or INSEE code)")
            mapping = self.directory.mapping(commune_id, parts.entity_type)
            entity = parse_message(parts, payload, mapping)
        except Rejected as error:
            parsed.rejections.append(Rejection(commune_id, topic, payload, str(error)))
        else:
            parsed.readings.append(Reading(commune_id, entity, topic, payload))

    async def _one_by_one(self, batch: list[Message]) -> tuple[int, int]:
        """Each message in its own unit (the writer still commits them in groups): the
        ones that fail become rejections."""
        outcomes = await asyncio.gather(
            *(self.db.awrite(self.ingest, [message]) for message in batch),
            return_exceptions=True,
        )
        stored = rejected = 0
        failed = []
        for message, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, TRANSIENT_ERRORS):
                raise outcome
            if isinstance(outcome, BaseException):
                failed.append(self._failed(message, outcome))
            else:
                stored, rejected = stored + outcome[0], rejected + outcome[1]
        await self.db.awrite(devices.add_rejections, failed)
        return stored, rejected + len(failed)

    def _failed(self, message: Message, error: BaseException) -> Rejection:
        try:
            parts = parse_topic(message.topic, self.broker.prefix)
            commune_id = self.directory.commune_id(parts.commune)
        except Rejected:
            commune_id = None
        reason = f"not stored: {type(error).__name__}: {error}"[:2000]
        return Rejection(commune_id, message.topic, message.payload, reason)

    async def _report(self) -> None:
        last: dict[str, Any] = {}
        while True:
            await asyncio.sleep(REPORT_EVERY)
            now = self.counters.as_dict()
            if now != last:
                log.info(
                    "MQTT ingestion: %(received)d received, %(stored)d stored, "
                    "%(rejected)d rejected in %(batches)d batches",
                    now,
                )
                last = now


def ingest_service(settings: Settings, db: Database) -> IngestService | None:
    """The consumer of ``communs serve``: None unless ``COMMUNS_MQTT_URL`` is set."""
    if not settings.mqtt_url:
        return None
    return IngestService(Broker.from_settings(settings), db)


async def run_until_signalled(service: IngestService) -> None:
    """``communs ingest``: run until SIGINT or SIGTERM, then stop cleanly (the batch in
    hand is committed and acknowledged)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, service.stop)
    await service.run()
