"""Device mappings and dead letters of the MQTT consumer (see ``communs.hub.ingest``).

A device mapping tells how a simple device payload such as ``{"v": 23.5, "t": "…"}``
published on ``communs/<commune>/<entity type>/<id>`` becomes one attribute of the
entity. A dead letter (rejection) is a message the consumer could not store, kept
with its reason for the commune's operators.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from communs.core.db import utcnow
from communs.core.i18n import gettext as _
from communs.core.service import InvalidInput
from communs.hub.document import check_name
from communs.hub.errors import BadRequestData
from communs.hub.models import HubDeviceMapping, HubIngestRejection

MAPPINGS = HubDeviceMapping.__table__
REJECTIONS = HubIngestRejection.__table__
TOPIC_MAX = 1024
PAYLOAD_MAX = 65_536  # characters of a rejected payload kept in the dead letter


@dataclass(frozen=True)
class DeviceMapping:
    entity_type: str
    attribute: str
    value_key: str = "v"
    time_key: str | None = "t"
    unit_code: str | None = None


@dataclass(frozen=True)
class Rejection:
    commune_id: int | None
    topic: str
    payload: bytes
    reason: str


@dataclass(frozen=True)
class RejectionRow:
    received_at: dt.datetime
    topic: str
    payload: str
    reason: str


# ---------------------------------------------------------------- mappings


def set_mapping(session: Session, commune_id: int, mapping: DeviceMapping) -> None:
    """Create or replace the mapping of ``mapping.entity_type`` in a commune."""
    _check_mapping(mapping)
    session.execute(
        delete(MAPPINGS).where(
            MAPPINGS.c.commune_id == commune_id, MAPPINGS.c.entity_type == mapping.entity_type
        )
    )
    session.execute(
        insert(MAPPINGS).values(
            commune_id=commune_id,
            entity_type=mapping.entity_type,
            attribute=mapping.attribute,
            value_key=mapping.value_key,
            time_key=mapping.time_key,
            unit_code=mapping.unit_code,
        )
    )


def _check_mapping(mapping: DeviceMapping) -> None:
    if not mapping.entity_type or any(c in mapping.entity_type for c in "/+#"):
        raise InvalidInput(_("Le type doit être un niveau de sujet MQTT (sans / + ou #)."))
    try:
        check_name(mapping.attribute)
    except BadRequestData as error:
        raise InvalidInput(
            _("Nom d'attribut invalide : {name}").format(name=mapping.attribute)
        ) from error
    if not mapping.value_key or mapping.value_key == mapping.time_key:
        raise InvalidInput(_("Les clés de valeur et de temps doivent être distinctes."))
    if len(mapping.value_key) > 64 or len(mapping.time_key or "") > 64:
        raise InvalidInput(_("Une clé fait au plus 64 caractères."))
    if mapping.unit_code is not None and not 0 < len(mapping.unit_code) <= 16:
        raise InvalidInput(_("Un code d'unité fait de 1 à 16 caractères (UN/CEFACT)."))


def remove_mapping(session: Session, commune_id: int, entity_type: str) -> bool:
    result = session.execute(
        delete(MAPPINGS).where(
            MAPPINGS.c.commune_id == commune_id, MAPPINGS.c.entity_type == entity_type
        )
    )
    return bool(result.rowcount)


def list_mappings(session: Session, commune_id: int) -> list[DeviceMapping]:
    rows = session.execute(
        select(
            MAPPINGS.c.entity_type,
            MAPPINGS.c.attribute,
            MAPPINGS.c.value_key,
            MAPPINGS.c.time_key,
            MAPPINGS.c.unit_code,
        )
        .where(MAPPINGS.c.commune_id == commune_id)
        .order_by(MAPPINGS.c.entity_type)
    )
    return [DeviceMapping(*row) for row in rows]


def find_mapping(session: Session, commune_id: int, entity_type: str) -> DeviceMapping | None:
    return next(
        (m for m in list_mappings(session, commune_id) if m.entity_type == entity_type), None
    )


# ---------------------------------------------------------------- dead letters


def add_rejections(session: Session, rejections: list[Rejection]) -> None:
    """Keep rejected messages with their reason (payloads as text, truncated)."""
    if not rejections:
        return
    now = utcnow()
    session.execute(
        insert(REJECTIONS),
        [
            {
                "commune_id": rejection.commune_id,
                "topic": rejection.topic[:TOPIC_MAX],
                "payload": rejection.payload.decode("utf-8", "replace")[:PAYLOAD_MAX],
                "reason": rejection.reason,
                "received_at": now,
            }
            for rejection in rejections
        ],
    )


def list_rejections(
    session: Session, commune_id: int | None, limit: int = 50
) -> list[RejectionRow]:
    """The latest rejections of a commune, newest first; ``None``: those whose topic
    named no known commune."""
    condition = (
        REJECTIONS.c.commune_id.is_(None)
        if commune_id is None
        else REJECTIONS.c.commune_id == commune_id
    )
    rows = session.execute(
        select(
            REJECTIONS.c.received_at, REJECTIONS.c.topic, REJECTIONS.c.payload, REJECTIONS.c.reason
        )
        .where(condition)
        .order_by(REJECTIONS.c.id.desc())
        .limit(limit)
    )
    return [RejectionRow(*row) for row in rows]
