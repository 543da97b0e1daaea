"""What the hub runs inside ``communs serve``: the notifier and the MQTT consumer."""

from __future__ import annotations

from communs.hub.ingest import ingest_service
from communs.hub.notify import notifier_service

BACKGROUND = [notifier_service, ingest_service]
