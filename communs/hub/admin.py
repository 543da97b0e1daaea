"""Instance-admin routes of the hub: the state of the MQTT consumer of this process."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from communs.core.auth import instance_admin
from communs.hub.ingest import Counters

router = APIRouter()


@router.get("/api/hub/ingest", dependencies=[Depends(instance_admin)], tags=["hub"])
async def ingest_counters(request: Request) -> dict[str, Any]:
    """Counters of this process's MQTT consumer since it started: messages received,
    stored and rejected (dead letters), batches committed; ``running`` is false when
    ``COMMUNS_MQTT_URL`` is not set (or the process does not consume)."""
    service = request.app.state.services.get("hub.ingest")
    if service is None:
        return {"running": False, **Counters().as_dict()}
    return {"running": True, **service.snapshot()}
