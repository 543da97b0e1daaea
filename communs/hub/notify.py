"""Delivery of subscription notifications (being written)."""

from __future__ import annotations

from typing import Any


def notifier_service(_settings: Any, _db: Any) -> None:
    return None
