"""Delivery of subscription notifications from the outbox (``hub_notifications``).

The notifier runs inside ``communs serve``. It reads outbox rows in id order and puts
each in the queue of its endpoint (its URI): one slow or dead endpoint only ever delays
its own queue. Within a queue, notifications of one subscription and entity (their
*key*) go out one at a time and in order; different keys go out concurrently (up to
``CONCURRENCY`` per endpoint). A failed delivery is retried with exponential backoff
(``job_backoff_seconds`` doubled each time, at most ``MAX_BACKOFF``) and blocks only
its key. A row is deleted once its endpoint has accepted it (2xx, or the MQTT broker's
acknowledgement), so a crash between delivery and deletion delivers it again: delivery
is at least once, and every notification carries the same ``id`` each time it is sent,
for the receiver to drop duplicates.

The notifier is woken right after each commit that wrote notifications in this process,
and also polls (``job_poll_seconds``) for those written by other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson
from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from communs.core.db import Database, UTCDateTime, utcnow
from communs.core.models import Commune
from communs.core.settings import Settings
from communs.hub import subscriptions
from communs.hub.context import (
    DEFAULT_CORE_CONTEXT_URL,
    ContextNotAvailable,
    TermMap,
    cached_term_map,
    term_map,
)
from communs.hub.contexts import ContextLoader
from communs.hub.document import now_iso, render_entity
from communs.hub.models import HubNotification, HubSubscription
from communs.hub.service import EntityQuery, RawCursor, query_entities

log = logging.getLogger(__name__)

CONCURRENCY = 8  # deliveries in flight per endpoint
MEMORY_PER_ENDPOINT = 5_000  # rows held in memory per endpoint; the rest wait in the table
LOAD_BATCH = 2_000
MAX_BACKOFF = 300.0
DEFAULT_TIMEOUT = 10.0  # seconds, when the endpoint gives none
CATCH_UP_SECONDS = 5.0
OUTCOMES_EVERY = 0.1  # seconds between writes of delivery outcomes
FIGURES_EVERY = 1.0  # seconds between updates of the subscriptions' figures
SUBSCRIPTION_TTL = 30.0  # changes made in this process apply at once
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
JSON_LD = "application/ld+json"


@dataclass
class Row(subscriptions.Written):
    """An outbox row in a queue, with its delivery state."""

    attempts: int = 0
    retry_at: float = 0.0  # seconds since the epoch
    held_back: bool = False  # a throttled notification, not due when it was written

    @property
    def key(self) -> tuple[int, str]:
        return (self.subscription_pk, self.entity_id)

    @property
    def due(self) -> float:
        return max(self.not_before / 1_000_000, self.retry_at)


@dataclass
class Target:
    """What delivery needs to know of a subscription."""

    pk: int
    subscription_id: str
    tenant: str
    context: Any
    format: str
    sys_attrs: bool
    lang: str | None
    endpoint: dict[str, Any]
    loaded_at: float = field(default_factory=time.monotonic)


class EndpointQueue:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.keys: OrderedDict[tuple[int, str], deque[Row]] = OrderedDict()
        self.size = 0
        self.in_flight: set[tuple[int, str]] = set()
        self.changed = asyncio.Event()
        self.pump: asyncio.Task | None = None

    def add(self, row: Row) -> None:
        self.keys.setdefault(row.key, deque()).append(row)
        self.size += 1
        self.changed.set()

    def pop(self, key: tuple[int, str]) -> None:
        rows = self.keys[key]
        rows.popleft()
        self.size -= 1
        if not rows:
            del self.keys[key]

    def drop_subscription(self, subscription_pk: int) -> list[int]:
        dropped = []
        for key in [k for k in self.keys if k[0] == subscription_pk]:
            rows = self.keys.pop(key)
            self.size -= len(rows)
            dropped.extend(row.id for row in rows)
        return dropped


@dataclass
class Outcomes:
    """Results waiting to be written: delivered rows are deleted, failed ones updated,
    and the subscriptions' figures moved on, in one unit of work."""

    delivered: list[int] = field(default_factory=list)
    failed: dict[int, tuple[int, str]] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    last_success: dict[int, Any] = field(default_factory=dict)
    last_failure: dict[int, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.failed or self.sent or self.failures)


class DeliveryError(Exception):
    pass


class Notifier:
    name = "hub.notify"

    def __init__(self, settings: Settings, db: Database, *, handoff: bool = True) -> None:
        """``handoff``: rows committed by this process are handed over in memory (the
        notifier runs in the process that writes); else they are read from the table
        when ``wake`` is called (a notifier process of its own, see NotifierProcess)."""
        self.settings = settings
        self.db = db
        self.handoff = handoff
        self.leadership = Leadership(db)
        self.queues: dict[str, EndpointQueue] = {}
        self.known: set[int] = set()  # ids in memory, in flight, or delivered not yet deleted
        self.deleted_meanwhile: set[int] | None = None  # during a catch-up read
        self.high_water = 0
        self.targets: dict[int, Target] = {}
        self.targets_loading: asyncio.Future | None = None
        self.outcomes = Outcomes()
        self.flushed = asyncio.Event()
        self.wake_event = asyncio.Event()
        self.stopping = False
        self.contexts = ContextLoader(db, settings)
        self.client: httpx.AsyncClient | None = None
        self.mqtt = MqttPublishers()
        self.plain = PlainHttp()
        self.periodic: list[tuple[int, int, subscriptions.Watch]] = []
        self.periodic_due: dict[int, float] = {}

    # ------------------------------------------------------------ main loop

    async def run(self) -> None:
        if not await self.leadership.acquire(lambda: self.stopping):
            return
        loop = asyncio.get_running_loop()
        remove_listener = (
            subscriptions.add_listener(
                lambda rows, changed: loop.call_soon_threadsafe(self._written, rows, changed)
            )
            if self.handoff
            else lambda: None
        )
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        self.client = httpx.AsyncClient(limits=limits, follow_redirects=False)
        writer = asyncio.create_task(self._write_outcomes_forever())
        last_catch_up = 0.0
        try:
            while not self.stopping:
                self.wake_event.clear()
                try:
                    full = await self._load_new()
                    if time.monotonic() - last_catch_up > CATCH_UP_SECONDS:
                        last_catch_up = time.monotonic()
                        await self._catch_up()
                        self.periodic = await asyncio.to_thread(self._periodic_subscriptions)
                    await self._run_periodic()
                except Exception:
                    log.exception("notifier: loading the outbox failed")
                    full = False
                if not full:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.wake_event.wait(), self.settings.job_poll_seconds
                        )
        finally:
            remove_listener()
            pumps = [q.pump for q in self.queues.values() if q.pump is not None]
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self._write_outcomes()
            await self.client.aclose()
            self.plain.close()
            self.leadership.release()
            await self.mqtt.close()

    def _written(self, rows: list[subscriptions.Written], subscriptions_changed: bool) -> None:
        """Rows just committed by this process: queued without reading them back."""
        if subscriptions_changed:
            self.targets.clear()
        now_micros = time.time_ns() // 1000
        fresh = [
            Row(**vars(written), held_back=written.not_before > now_micros)
            for written in rows
            if written.id > self.high_water  # else already read from the table
        ]
        if fresh:
            self.high_water = max(self.high_water, max(row.id for row in fresh))
            self._dispatch(fresh)

    def wake(self) -> None:
        self.wake_event.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake_event.set()

    # ------------------------------------------------------------ reading the outbox

    async def _load_new(self) -> bool:
        rows = await asyncio.to_thread(self._read, "id > :mark", {"mark": self.high_water})
        for row in rows:
            self.high_water = max(self.high_water, row.id)
        self._dispatch(rows)
        return len(rows) == LOAD_BATCH

    async def _catch_up(self) -> None:
        """Rows committed late (another process), or left in the table while their
        endpoint's queue was full."""
        self.deleted_meanwhile = set()
        rows = await asyncio.to_thread(self._read, "id <= :mark", {"mark": self.high_water})
        # A row whose deletion committed while it was being read was already delivered.
        gone = self.deleted_meanwhile
        self.deleted_meanwhile = None
        self._dispatch([row for row in rows if row.id not in self.known and row.id not in gone])

    def _read(self, condition: str, params: dict[str, Any]) -> list[Row]:
        full = [q.endpoint for q in self.queues.values() if q.size >= MEMORY_PER_ENDPOINT]
        sql = (
            "SELECT id, commune_id, subscription_pk, endpoint, notification_id, entity_id, "
            f"payload, not_before, attempts FROM hub_notifications WHERE {condition}"
        )
        statement = text(sql + " ORDER BY id LIMIT :limit")
        if full:
            statement = text(sql + " AND endpoint NOT IN :full ORDER BY id LIMIT :limit")
            statement = statement.bindparams(bindparam("full", expanding=True))
            params = {**params, "full": full}
        with self.db.read() as session:
            found = session.execute(statement, {**params, "limit": LOAD_BATCH}).all()
        return [
            Row(
                id=r[0],
                commune_id=r[1],
                subscription_pk=r[2],
                endpoint=r[3],
                notification_id=r[4],
                entity_id=r[5],
                payload=r[6] if isinstance(r[6], dict) else orjson.loads(r[6]),
                not_before=r[7],
                attempts=r[8],
                retry_at=time.time() + self._backoff(r[8]) if r[8] else 0.0,
                held_back=r[7] / 1_000_000 > time.time(),
            )
            for r in found
        ]

    def _dispatch(self, rows: list[Row]) -> None:
        for row in rows:
            if row.id in self.known:
                continue
            queue = self.queues.get(row.endpoint)
            if queue is None:
                queue = self.queues[row.endpoint] = EndpointQueue(row.endpoint)
            if queue.size >= MEMORY_PER_ENDPOINT:
                continue  # stays in the table; read again by a catch-up
            self.known.add(row.id)
            queue.add(row)
            if queue.pump is None or queue.pump.done():
                queue.pump = asyncio.create_task(self._pump(queue))

    # ------------------------------------------------------------ one endpoint's queue

    async def _pump(self, queue: EndpointQueue) -> None:
        running: set[asyncio.Task] = set()
        try:
            while not self.stopping:
                if not queue.keys and not queue.in_flight:
                    return  # nothing awaited between this check and the end: no row missed
                queue.changed.clear()
                next_due = self._launch_due(queue, running)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(next_due - time.time(), 0.001)):
                        await queue.changed.wait()
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _launch_due(self, queue: EndpointQueue, running: set[asyncio.Task]) -> float:
        """Start the deliveries that may go now; answer when the next one is due."""
        now = time.time()
        next_due = now + 1.0
        for key, rows in list(queue.keys.items()):
            if len(queue.in_flight) >= CONCURRENCY:
                break
            if key in queue.in_flight:
                continue
            head = rows[0]
            if head.due > now:
                next_due = min(next_due, head.due)
                continue
            queue.in_flight.add(key)
            task = asyncio.create_task(self._deliver_head(queue, key, head))
            running.add(task)
            task.add_done_callback(running.discard)
        return next_due

    async def _deliver_head(self, queue: EndpointQueue, key: tuple[int, str], row: Row) -> None:
        try:
            target = await self._target(row.subscription_pk)
            if target is None:  # the subscription was deleted, and its rows with it
                self.known.difference_update(queue.drop_subscription(row.subscription_pk))
                return
            if row.held_back:  # a throttled notification: changes may have joined it
                payload = await asyncio.to_thread(self._payload, row.id)
                if payload is not None:
                    row.payload = payload
            try:
                await self._send(target, row)
            except Exception as error:  # noqa: BLE001 - any failure is retried
                self._failed(row, target, error)
            else:
                self._delivered(queue, key, row)
        finally:
            queue.in_flight.discard(key)
            queue.changed.set()

    def _payload(self, row_id: int) -> dict[str, Any] | None:
        with self.db.read() as session:
            found = session.scalar(
                select(HubNotification.payload).where(HubNotification.id == row_id)
            )
        return found

    def _delivered(self, queue: EndpointQueue, key: tuple[int, str], row: Row) -> None:
        queue.pop(key)
        outcomes = self.outcomes
        outcomes.delivered.append(row.id)
        outcomes.failed.pop(row.id, None)
        outcomes.sent[row.subscription_pk] = outcomes.sent.get(row.subscription_pk, 0) + 1
        outcomes.last_success[row.subscription_pk] = utcnow()

    def _failed(self, row: Row, target: Target, error: Exception) -> None:
        row.attempts += 1
        row.retry_at = time.time() + self._backoff(row.attempts)
        reason = f"{type(error).__name__}: {error}"[:2000]
        outcomes = self.outcomes
        outcomes.failed[row.id] = (row.attempts, reason)
        outcomes.failures[row.subscription_pk] = outcomes.failures.get(row.subscription_pk, 0) + 1
        outcomes.last_failure[row.subscription_pk] = utcnow()
        log.warning(
            "notification %s of %s to %s failed (attempt %s): %s",
            row.notification_id,
            target.subscription_id,
            row.endpoint,
            row.attempts,
            reason,
        )

    def _backoff(self, attempts: int) -> float:
        return min(self.settings.job_backoff_seconds * 2 ** (attempts - 1), MAX_BACKOFF)

    # ------------------------------------------------------------ sending

    async def _send(self, target: Target, row: Row) -> None:
        body = await self._body(target, row)
        endpoint = target.endpoint
        accept = endpoint.get("accept", "application/json")
        headers = {"Content-Type": accept, "NGSILD-Tenant": target.tenant}
        if accept == JSON_LD:
            body["@context"] = target.context or DEFAULT_CORE_CONTEXT_URL
        else:
            headers["Link"] = f'<{_context_url(target)}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'
        headers.update(subscriptions.key_values(endpoint.get("receiverInfo")))
        timeout = endpoint.get("timeout")
        seconds = timeout / 1000 if timeout else DEFAULT_TIMEOUT
        uri = endpoint["uri"]
        if uri.lower().startswith("mqtt"):
            info = subscriptions.key_values(endpoint.get("notifierInfo"))
            message = {"metadata": headers, "body": body}
            await self.mqtt.publish(uri, orjson.dumps(message), info, seconds)
            return
        if uri[:7].lower() == "http://":
            status = await self.plain.post(uri, orjson.dumps(body), headers, seconds)
        else:
            assert self.client is not None
            response = await self.client.post(
                uri, content=orjson.dumps(body), headers=headers, timeout=seconds
            )
            status = response.status_code
        if not 200 <= status < 300:
            raise DeliveryError(f"the endpoint answered {status}")

    async def _body(self, target: Target, row: Row) -> dict[str, Any]:
        terms = await self._terms(target)
        data = []
        for entity in row.payload["entities"]:
            rendered = render_entity(
                entity, terms, form=target.format, sys_attrs=target.sys_attrs, lang=target.lang
            )
            if "deletedAt" in entity:
                rendered["deletedAt"] = entity["deletedAt"]
            data.append(rendered)
        body = {
            "id": row.notification_id,
            "type": "Notification",
            "subscriptionId": target.subscription_id,
            "notifiedAt": now_iso(),
            "data": data,
        }
        if row.payload.get("trigger"):
            body["triggerReason"] = row.payload["trigger"]
        return body

    async def _terms(self, target: Target) -> TermMap:
        cached = cached_term_map(target.context)
        if cached is not None:
            return cached
        try:
            return await asyncio.to_thread(term_map, target.context, self.contexts)
        except ContextNotAvailable as error:
            raise DeliveryError(f"@context {error} could not be retrieved") from error

    # ------------------------------------------------------------ subscriptions

    async def _target(self, pk: int) -> Target | None:
        target = self.targets.get(pk)
        if target is not None and time.monotonic() - target.loaded_at < SUBSCRIPTION_TTL:
            return target
        # One read for every subscription with notifications waiting, shared by all
        # the deliveries that need one meanwhile.
        if self.targets_loading is None:
            wanted = {pk, *(key[0] for q in self.queues.values() for key in q.keys)}
            self.targets_loading = asyncio.ensure_future(
                asyncio.to_thread(self._load_targets, wanted)
            )
        loading = self.targets_loading
        try:
            found = await asyncio.shield(loading)
        finally:
            if self.targets_loading is loading and loading.done():
                self.targets_loading = None
        if pk not in found:
            found = await asyncio.to_thread(self._load_targets, {pk})
        self.targets.update(found)
        if found.get(pk) is None:
            self.targets.pop(pk, None)
        return found.get(pk)

    def _load_targets(self, pks: set[int]) -> dict[int, Target | None]:
        """The subscriptions ``pks``; None for those deleted."""
        with self.db.read() as session:
            rows = session.execute(
                select(HubSubscription.pk, HubSubscription.document, Commune.slug)
                .join(Commune, Commune.id == HubSubscription.commune_id)
                .where(HubSubscription.pk.in_(pks))
            ).all()
        found: dict[int, Target | None] = dict.fromkeys(pks)
        for pk, document, slug in rows:
            found[pk] = target_of(pk, document, slug)
        return found

    # ------------------------------------------------------------ periodic subscriptions

    async def _run_periodic(self) -> None:
        """Subscriptions with ``timeInterval``: the matching entities, every interval."""
        found = self.periodic
        now = time.time()
        for pk, commune_id, watch in found:
            due = self.periodic_due.get(pk)
            if due is None:
                self.periodic_due[pk] = now  # first notification at once
                due = now
            if due > now:
                continue
            assert watch.interval is not None
            self.periodic_due[pk] = now + watch.interval
            await self.db.awrite(_periodic_notification, commune_id, watch)
        alive = {pk for pk, _c, _w in found}
        for pk in set(self.periodic_due) - alive:
            del self.periodic_due[pk]

    def _periodic_subscriptions(self) -> list[tuple[int, int, subscriptions.Watch]]:
        with self.db.read() as session:
            rows = session.execute(
                select(
                    HubSubscription.pk,
                    HubSubscription.commune_id,
                    HubSubscription.document,
                    HubSubscription.is_active,
                    HubSubscription.expires_at,
                )
            ).all()
        found = []
        now = time.time_ns() // 1000
        for pk, commune_id, document, active, expires in rows:
            if "timeInterval" not in document["wire"]:
                continue
            watch = subscriptions.compile_watch(
                pk, document, active, subscriptions.micros_of(expires)
            )
            if watch.live(now):
                found.append((pk, commune_id, watch))
        return found

    # ------------------------------------------------------------ writing outcomes

    async def _write_outcomes_forever(self) -> None:
        figures_written = time.monotonic()
        while True:
            await asyncio.sleep(OUTCOMES_EVERY)
            figures = time.monotonic() - figures_written >= FIGURES_EVERY
            if figures:
                figures_written = time.monotonic()
            await self._write_outcomes(figures=figures)

    async def _write_outcomes(self, *, figures: bool = True) -> None:
        """Delete delivered rows and record failures; with ``figures``, also move the
        subscriptions' figures on (less often: each update rewrites a subscription's
        row, and their order does not matter)."""
        outcomes, current = Outcomes(), self.outcomes
        outcomes.delivered, current.delivered = current.delivered, []
        outcomes.failed, current.failed = current.failed, {}
        if figures:
            outcomes.sent, current.sent = current.sent, {}
            outcomes.failures, current.failures = current.failures, {}
            outcomes.last_success, current.last_success = current.last_success, {}
            outcomes.last_failure, current.last_failure = current.last_failure, {}
        if not outcomes:
            return
        try:
            await self.db.awrite(_record_outcomes, outcomes)
        except Exception:
            log.exception("notifier: recording delivery outcomes failed; will retry")
            self._merge_back(outcomes)
            return
        self.known.difference_update(outcomes.delivered)
        if self.deleted_meanwhile is not None:
            self.deleted_meanwhile.update(outcomes.delivered)

    def _merge_back(self, outcomes: Outcomes) -> None:
        current = self.outcomes
        current.delivered[:0] = outcomes.delivered
        for row_id, value in outcomes.failed.items():
            current.failed.setdefault(row_id, value)
        for name in ("sent", "failures"):
            counts = getattr(current, name)
            for pk, n in getattr(outcomes, name).items():
                counts[pk] = counts.get(pk, 0) + n
        for name in ("last_success", "last_failure"):
            getattr(current, name).update({**getattr(outcomes, name), **getattr(current, name)})


def target_of(pk: int, document: dict[str, Any], tenant: str) -> Target:
    wire = document["wire"]
    notification = wire["notification"]
    return Target(
        pk=pk,
        subscription_id=wire["id"],
        tenant=tenant,
        context=wire.get("jsonldContext") or document.get("context"),
        format=notification.get("format", "normalized"),
        sys_attrs=bool(notification.get("sysAttrs", False)),
        lang=wire.get("lang"),
        endpoint=notification["endpoint"],
    )


def _context_url(target: Target) -> str:
    if isinstance(target.context, str):
        return target.context
    return DEFAULT_CORE_CONTEXT_URL


_DELETE_DELIVERED = delete(HubNotification).where(
    HubNotification.id.in_(bindparam("ids", expanding=True))
)
_RECORD_FAILURE = (
    update(HubNotification)
    .where(HubNotification.id == bindparam("row_id"))
    .values(attempts=bindparam("attempts"), last_error=bindparam("reason"))
)
SUBSCRIPTIONS = HubSubscription.__table__
_RECORD_FIGURES = (
    update(SUBSCRIPTIONS)
    .where(SUBSCRIPTIONS.c.pk == bindparam("subscription_pk"))
    .values(
        times_sent=SUBSCRIPTIONS.c.times_sent + bindparam("sent"),
        times_failed=SUBSCRIPTIONS.c.times_failed + bindparam("failures"),
        last_notification=bindparam("now", type_=UTCDateTime()),
        last_success=func.coalesce(
            bindparam("success", type_=UTCDateTime()), SUBSCRIPTIONS.c.last_success
        ),
        last_failure=func.coalesce(
            bindparam("failure", type_=UTCDateTime()), SUBSCRIPTIONS.c.last_failure
        ),
    )
)


def _record_outcomes(session: Session, outcomes: Outcomes) -> None:
    connection = session.connection()
    delivered = outcomes.delivered
    for start in range(0, len(delivered), 500):
        connection.execute(_DELETE_DELIVERED, {"ids": delivered[start : start + 500]})
    if outcomes.failed:
        connection.execute(
            _RECORD_FAILURE,
            [
                {"row_id": row_id, "attempts": attempts, "reason": reason}
                for row_id, (attempts, reason) in outcomes.failed.items()
            ],
        )
    now = utcnow()
    figures = [
        {
            "subscription_pk": pk,
            "sent": outcomes.sent.get(pk, 0),
            "failures": outcomes.failures.get(pk, 0),
            "now": now,
            "success": outcomes.last_success.get(pk),
            "failure": outcomes.last_failure.get(pk),
        }
        for pk in outcomes.sent.keys() | outcomes.failures.keys()
    ]
    if figures:
        connection.execute(_RECORD_FIGURES, figures)


def _periodic_notification(session: Session, commune_id: int, watch: subscriptions.Watch) -> None:
    types = tuple({iri for selector in watch.selectors for iri in selector.types})
    query = EntityQuery(types=types, matches=watch.selects)
    documents, _total = query_entities(
        session, commune_id, query, limit=1000, offset=0, count=False
    )
    if not documents:
        return
    now = time.time_ns() // 1000
    entities = [subscriptions.notified_entity(watch, d) for d in documents]
    subscriptions.insert_notification(
        RawCursor(session), commune_id, watch.pk, watch.endpoint, entities, "", now, now
    )


# ---------------------------------------------------------------- plain HTTP endpoints


class PlainHttp:
    """POSTs to ``http://`` endpoints over kept-alive HTTP/1.1 connections.

    A notification is one small POST whose answer only matters by its status; a general
    client (httpx) spends about a millisecond of CPU on each, which at a thousand
    notifications a second is a core taken from the web server. HTTPS goes through httpx.
    """

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
        self.idle = {}

    async def post(self, uri: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        parts = urlsplit(uri)
        host, port = parts.hostname or "localhost", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout):
            return await self._exchange((host, port), request)

    async def _exchange(self, address: tuple[str, int], request: bytes) -> int:
        idle = self.idle.setdefault(address, [])
        reused = bool(idle)
        reader, writer = idle.pop() if idle else await asyncio.open_connection(*address)
        try:
            writer.write(request)
            status, keep_alive = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            writer.close()
            if reused:  # the server closed an idle connection: try once on a new one
                return await self._exchange_new(address, request)
            raise DeliveryError(f"connection failed: {error}") from error
        except BaseException:
            writer.close()
            raise
        if keep_alive and len(idle) < 64:
            idle.append((reader, writer))
        else:
            writer.close()
        return status

    async def _exchange_new(self, address: tuple[str, int], request: bytes) -> int:
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(request)
            status, keep_alive = await _read_response(reader)
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            self.idle.setdefault(address, []).append((reader, writer))
        else:
            writer.close()
        return status

    def close(self) -> None:
        for connections in self.idle.values():
            for _reader, writer in connections:
                writer.close()
        self.idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status of an HTTP/1.1 answer, its body read and dropped; and whether the
    connection may be used again."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status = status_line.split(" ", 2)[:2]
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep_alive = headers.get("connection") != "close" and version == "HTTP/1.1"
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif int(status) not in (204, 304):
        await reader.read()  # the body ends with the connection
        keep_alive = False
    return int(status), keep_alive


# ---------------------------------------------------------------- MQTT endpoints


class MqttPublishers:
    """One connection per broker (and MQTT version), opened on first use and kept."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, int, str, str | None], Any] = {}
        self.stacks: dict[tuple[str, int, str, str | None], contextlib.AsyncExitStack] = {}
        self.lock = asyncio.Lock()

    async def publish(self, uri: str, payload: bytes, info: dict[str, str], timeout: float):
        parts = urlsplit(uri)
        topic = unquote(parts.path.lstrip("/"))
        qos = int(info.get("MQTT-QoS", "0"))
        version = info.get("MQTT-Version", "mqtt3.1.1")
        key = (parts.hostname or "localhost", parts.port or 1883, version, parts.username)
        client = await self._client(key, parts, timeout)
        try:
            await asyncio.wait_for(client.publish(topic, payload, qos=qos), timeout)
        except Exception:
            await self._forget(key)
            raise

    async def _client(self, key: tuple, parts: Any, timeout: float) -> Any:
        import aiomqtt

        async with self.lock:
            client = self.clients.get(key)
            if client is not None:
                return client
            protocol = (
                aiomqtt.ProtocolVersion.V5 if key[2] == "mqtt5.0" else aiomqtt.ProtocolVersion.V311
            )
            client = aiomqtt.Client(
                key[0],
                key[1],
                username=parts.username,
                password=parts.password,
                protocol=protocol,
                timeout=timeout,
            )
            stack = contextlib.AsyncExitStack()
            await asyncio.wait_for(stack.enter_async_context(client), timeout)
            self.clients[key], self.stacks[key] = client, stack
            return client

    async def _forget(self, key: tuple) -> None:
        async with self.lock:
            self.clients.pop(key, None)
            stack = self.stacks.pop(key, None)
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def close(self) -> None:
        for key in list(self.clients):
            await self._forget(key)


# ---------------------------------------------------------------- one notifier at a time


class Leadership:
    """Only one notifier delivers from a database at a time (two would break the order
    of notifications): a PostgreSQL advisory lock held on a connection of its own, or a
    lock on a file beside the SQLite database. Others wait and take over when it goes."""

    LOCK_KEY = 0x636F6D6D756E73  # "communs"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.connection: Any = None
        self.lock_file: Any = None

    async def acquire(self, stopping: Callable[[], bool]) -> bool:
        announced = False
        while not stopping():
            if await asyncio.to_thread(self._try):
                return True
            if not announced:
                log.info("another notifier delivers from this database; waiting")
                announced = True
            await asyncio.sleep(1.0)
        return False

    def _try(self) -> bool:
        if self.db.is_sqlite:
            path = make_url(self.db.url).database or ""
            if not path or path == ":memory:":
                return True
            handle = open(f"{path}.notifier.lock", "a")  # noqa: SIM115 - held while leading
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self.lock_file = handle
            return True
        connection = self.db.engine.connect()
        taken = connection.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": self.LOCK_KEY}
        ).scalar()
        connection.commit()
        if not taken:
            connection.close()
            return False
        self.connection = connection
        return True

    def release(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None
        if self.connection is not None:
            # A pooled connection outlives close(): the lock must be given back first.
            with contextlib.suppress(Exception):
                self.connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": self.LOCK_KEY}
                )
                self.connection.commit()
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None


# ---------------------------------------------------------------- a process of its own


class NotifierProcess:
    """``communs serve`` delivers notifications from a child process (``communs notify``):
    the web server and its writer already keep one core busy, and a Python process runs
    one thread at a time, so delivery on the other core is what lets both keep up. After
    each commit that wrote notifications, the writer thread sends the child one byte on
    a pipe (``s`` when subscriptions changed); the child then reads the new rows from the
    outbox. When ``communs serve`` ends, even killed, the pipe closes and the child ends
    too; a child that dies is started again."""

    name = "hub.notify"

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.stopping = False
        self.process: asyncio.subprocess.Process | None = None
        self.wake_fd: int | None = None

    async def run(self) -> None:
        remove_listener = subscriptions.add_listener(self._poke)
        try:
            while not self.stopping:
                await self._run_child()
                if not self.stopping:
                    log.warning("the notifier process ended; starting it again")
                    await asyncio.sleep(1.0)
        finally:
            remove_listener()

    async def _run_child(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        environment = {
            **os.environ,
            "COMMUNS_DATABASE_URL": self.settings.database_url,
            "COMMUNS_DATA_DIR": str(self.settings.data_dir),
        }
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "communs",
                "notify",
                "--wake-stdin",
                stdin=read_fd,
                env=environment,
            )
        finally:
            os.close(read_fd)
        self.wake_fd = write_fd
        try:
            await self.process.wait()
        finally:
            self.wake_fd = None
            os.close(write_fd)

    def _poke(self, _rows: list[subscriptions.Written], subscriptions_changed: bool) -> None:
        fd = self.wake_fd
        if fd is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(fd, b"s" if subscriptions_changed else b".")

    def stop(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()


async def run_notifier_process(settings: Settings, db: Database, *, wake_stdin: bool) -> None:
    """``communs notify``: deliver until stopped (or, with ``wake_stdin``, until the
    parent's pipe closes), woken by each byte it sends."""
    notifier = Notifier(settings, db, handoff=False)
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, notifier.stop)
    if wake_stdin:
        await loop.connect_read_pipe(lambda: _WakePipe(notifier), sys.stdin)
    await notifier.run()


class _WakePipe(asyncio.Protocol):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def data_received(self, data: bytes) -> None:
        if b"s" in data:
            self.notifier.targets.clear()
        self.notifier.wake()

    def connection_lost(self, _error: Exception | None) -> None:
        self.notifier.stop()


def notifier_service(settings: Settings, db: Database) -> NotifierProcess:
    return NotifierProcess(settings, db)
