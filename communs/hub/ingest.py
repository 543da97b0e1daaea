"""MQTT ingestion of device readings (being written)."""

from __future__ import annotations

from typing import Any


def ingest_service(_settings: Any, _db: Any) -> None:
    return None
