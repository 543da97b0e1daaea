"""A small time-bounded cache for hot look-ups (API keys, tenants) on request paths."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class TtlCache(Generic[V]):
    """Remembers values for ``ttl`` seconds, at most ``size`` of them (oldest dropped)."""

    def __init__(self, ttl: float, size: int = 1024) -> None:
        self.ttl, self.size = ttl, size
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        now = time.monotonic()
        with self._lock:
            found = self._items.get(key, _MISSING)
            if found is not _MISSING and found[0] > now:
                return found[1]
        value = load()
        with self._lock:
            self._items[key] = (now + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
