"""JSON routes of the core: communes, addresses, services, health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from communs.core import addresses, migrate, service
from communs.core.auth import ALL_STAFF, CommuneContext, commune_access, commune_public, public

router = APIRouter()


def commune_json(commune: Any) -> dict[str, Any]:
    return {
        "slug": commune.slug,
        "name": commune.name,
        "insee_code": commune.insee_code,
        "boundary": commune.boundary,
    }


@router.get("/api/communes", dependencies=[Depends(public)], tags=["communes"])
def list_communes(request: Request) -> list[dict[str, Any]]:
    """Every commune of the instance: slug, name, INSEE code and boundary (GeoJSON)."""
    with request.app.state.db.read() as session:
        return [commune_json(commune) for commune in service.list_communes(session)]


@router.get("/{commune}/api/addresses", tags=["addresses"])
def search_addresses(
    request: Request,
    context: Annotated[CommuneContext, Depends(commune_public())],
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=addresses.SEARCH_LIMIT_MAX)] = 10,
) -> dict[str, Any]:
    """Accent-insensitive prefix search in the commune's Base Adresse Locale (GeoJSON)."""
    with request.app.state.db.read() as session:
        found = addresses.search(session, context.commune_id, q, limit)
    return {
        "type": "FeatureCollection",
        "query": q,
        "features": [addresses.as_feature(address) for address in found],
    }


@router.get("/{commune}/api/addresses/reverse", tags=["addresses"])
def reverse_address(
    request: Request,
    context: Annotated[CommuneContext, Depends(commune_public())],
    lon: Annotated[float, Query(ge=-180, le=180)],
    lat: Annotated[float, Query(ge=-90, le=90)],
) -> dict[str, Any]:
    """The address of the commune nearest to a point, with its distance in metres."""
    with request.app.state.db.read() as session:
        found = addresses.nearest(session, context.commune_id, lon, lat)
    features = []
    if found is not None:
        address, distance = found
        features.append(addresses.as_feature(address, distance=round(distance, 1)))
    return {"type": "FeatureCollection", "features": features}


@router.get("/{commune}/api/services", tags=["communes"])
def list_services(
    request: Request,
    context: Annotated[
        CommuneContext, Depends(commune_access(roles=ALL_STAFF, scope="communes:read"))
    ],
) -> list[dict[str, Any]]:
    """The commune's services (agents, or an API key with ``communes:read``)."""
    with request.app.state.db.read() as session:
        return [
            {"id": item.id, "slug": item.slug, "name": item.name}
            for item in service.list_services(session, context.commune_id)
        ]


@router.get("/healthz", dependencies=[Depends(public)], tags=["operations"])
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", dependencies=[Depends(public)], tags=["operations"])
def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the latest migration."""
    db = request.app.state.db
    try:
        db.ping()
        current = migrate.is_current(db.engine, db.url)
    except Exception as error:  # noqa: BLE001 - reported as not ready
        return JSONResponse({"status": "unavailable", "database": str(error)[:200]}, 503)
    if not current:
        return JSONResponse({"status": "unavailable", "migrations": "pending"}, 503)
    return JSONResponse({"status": "ok", "database": "ok", "migrations": "current"})
