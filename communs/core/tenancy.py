"""Which commune a request is about: from the path, the NGSI-LD tenant header or the
Open311 jurisdiction. Each resolves a slug or an INSEE code to one commune."""

from __future__ import annotations

from sqlalchemy.orm import Session

from communs.core import service
from communs.core.models import Commune

NGSILD_TENANT_HEADER = "NGSILD-Tenant"


def commune_for_key(session: Session, key: str | None) -> Commune | None:
    """A commune from its slug or its INSEE code; None if neither matches."""
    if not key or len(key) > 63:
        return None
    key = key.strip()
    return service.commune_by_slug(session, key) or (
        service.commune_by_insee(session, key) if len(key) == 5 else None
    )


def commune_for_ngsild_tenant(
    session: Session, tenant: str | None, default_slug: str | None = None
) -> Commune | None:
    """NGSI-LD: a request without the header goes to the instance's default tenant."""
    return commune_for_key(session, tenant if tenant else default_slug)


def commune_for_jurisdiction(session: Session, jurisdiction_id: str | None) -> Commune | None:
    """Open311 GeoReport v2 ``jurisdiction_id``: slug, INSEE code, or ``slug.domain``."""
    if not jurisdiction_id:
        return None
    return commune_for_key(session, jurisdiction_id) or commune_for_key(
        session, jurisdiction_id.split(".", 1)[0]
    )
