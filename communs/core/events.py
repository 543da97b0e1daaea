"""Events between capabilities.

``EventBus`` is the interface; ``InProcessBus`` runs in one process. A PostgreSQL
LISTEN/NOTIFY or NATS JetStream bus implements the same two methods when several
processes run. Events are notifications only: anything promised to the outside goes
through the job outbox (``communs.core.jobs``), which survives a crash.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

Handler = Callable[["Event"], Awaitable[None] | None]


@dataclass(frozen=True)
class Event:
    topic: str
    data: dict[str, Any] = field(default_factory=dict)
    commune_id: int | None = None


class EventBus(Protocol):
    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]: ...

    async def publish(self, event: Event) -> None: ...


class InProcessBus:
    """Delivers each event to the handlers whose glob pattern matches its topic."""

    def __init__(self) -> None:
        self._handlers: list[tuple[str, Handler]] = []

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        entry = (pattern, handler)
        self._handlers.append(entry)

        def unsubscribe() -> None:
            if entry in self._handlers:
                self._handlers.remove(entry)

        return unsubscribe

    async def publish(self, event: Event) -> None:
        for pattern, handler in list(self._handlers):
            if not fnmatch.fnmatchcase(event.topic, pattern):
                continue
            try:
                result = handler(event)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("event handler failed for %s", event.topic)
