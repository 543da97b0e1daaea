"""Demo assets of the urban data hub: a few hundred entities of the seven city Smart Data
Models, placed inside the demo commune. Generated, not random: the same every time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from shapely.geometry import Point, shape

from communs.core.db import Database
from communs.hub import service
from communs.hub.context import term_map
from communs.hub.document import parse_entity

OBSERVED = "2026-11-22T08:00:00Z"
BATCH = 100


def _prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def _geo(lon: float, lat: float) -> dict[str, Any]:
    return {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]},
    }


def _rel(target: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target}


def _grid(boundary: dict[str, Any], count: int, salt: int) -> Iterator[tuple[float, float]]:
    """``count`` points spread inside the boundary on a deterministic low-discrepancy walk."""
    area = shape(boundary)
    min_lon, min_lat, max_lon, max_lat = area.bounds
    produced, step = 0, salt
    while produced < count:
        step += 1
        x = (step * 0.6180339887) % 1
        y = (step * 0.7548776662) % 1
        lon, lat = min_lon + x * (max_lon - min_lon), min_lat + y * (max_lat - min_lat)
        if area.contains(Point(lon, lat)):
            produced += 1
            yield lon, lat


def demo_entities(boundary: dict[str, Any]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    cabinets = [f"urn:ngsi-ld:StreetlightControlCabinet:belvedere:{n:02d}" for n in range(1, 7)]
    for n, (lon, lat) in enumerate(_grid(boundary, 6, 11), start=1):
        entities.append(
            {
                "id": cabinets[n - 1],
                "type": "StreetlightControlCabinet",
                "brandName": _prop("Lumen"),
                "workingMode": _prop("automatic"),
                "energyConsumed": _prop(1200 + 37 * n, unitCode="KWH", observedAt=OBSERVED),
                "location": _geo(lon, lat),
            }
        )
    for n, (lon, lat) in enumerate(_grid(boundary, 150, 101), start=1):
        entities.append(
            {
                "id": f"urn:ngsi-ld:Streetlight:belvedere:{n:03d}",
                "type": "Streetlight",
                "powerState": _prop("on" if n % 9 else "off", observedAt=OBSERVED),
                "status": _prop("ok" if n % 23 else "defectiveLamp"),
                "lanternHeight": _prop(6 + n % 4, unitCode="MTR"),
                "powerConsumption": _prop(
                    round(35 + 20 * math.sin(n), 1), unitCode="WTT", observedAt=OBSERVED
                ),
                "refStreetlightControlCabinet": _rel(cabinets[n % len(cabinets)]),
                "location": _geo(lon, lat),
            }
        )
    parkings = [
        "urn:ngsi-ld:OffStreetParking:belvedere:mairie",
        "urn:ngsi-ld:OffStreetParking:belvedere:gare",
    ]
    for n, (lon, lat) in enumerate(_grid(boundary, 2, 307)):
        entities.append(
            {
                "id": parkings[n],
                "type": "OffStreetParking",
                "name": _prop(["Parking de la Mairie", "Parking de la Gare"][n]),
                "totalSpotNumber": _prop(120 + 80 * n),
                "availableSpotNumber": _prop(37 + 11 * n, observedAt=OBSERVED),
                "location": _geo(lon, lat),
            }
        )
    for n, (lon, lat) in enumerate(_grid(boundary, 60, 401), start=1):
        entities.append(
            {
                "id": f"urn:ngsi-ld:ParkingSpot:belvedere:{n:03d}",
                "type": "ParkingSpot",
                "status": _prop("occupied" if n % 3 else "free", observedAt=OBSERVED),
                "category": _prop(["onStreet"]),
                "refParkingSite": _rel(parkings[n % 2]),
                "location": _geo(lon, lat),
            }
        )
    for n, (lon, lat) in enumerate(_grid(boundary, 4, 503), start=1):
        entities.append(
            {
                "id": f"urn:ngsi-ld:AirQualityObserved:belvedere:{n}",
                "type": "AirQualityObserved",
                "no2": _prop(18 + 4 * n, unitCode="GQ", observedAt=OBSERVED),
                "pm10": _prop(12 + 3 * n, unitCode="GQ", observedAt=OBSERVED),
                "temperature": _prop(9.5 + n / 2, unitCode="CEL", observedAt=OBSERVED),
                "airQualityLevel": _prop("good" if n < 4 else "moderate"),
                "location": _geo(lon, lat),
            }
        )
    for n, (lon, lat) in enumerate(_grid(boundary, 80, 601), start=1):
        entities.append(
            {
                "id": f"urn:ngsi-ld:WaterConsumptionObserved:belvedere:{n:03d}",
                "type": "WaterConsumptionObserved",
                "waterConsumption": _prop(100 + 13 * n % 97, unitCode="LTR", observedAt=OBSERVED),
                "alarmStopsLeaks": _prop(n % 31 == 0),
                "location": _geo(lon, lat),
            }
        )
    for n, (lon, lat) in enumerate(_grid(boundary, 70, 701), start=1):
        entities.append(
            {
                "id": f"urn:ngsi-ld:WasteContainer:belvedere:{n:03d}",
                "type": "WasteContainer",
                "fillingLevel": _prop(round((n * 37 % 100) / 100, 2), observedAt=OBSERVED),
                "binCapacity": _prop(660, unitCode="LTR"),
                "status": _prop("ok"),
                "location": _geo(lon, lat),
            }
        )
    return entities


def load_demo_entities(db: Database, commune_id: int, boundary: dict[str, Any]) -> int:
    """Create the demo entities that do not exist yet; returns how many were created."""
    terms = term_map(None)
    parsed = [parse_entity(entity, terms) for entity in demo_entities(boundary)]

    def create_missing(session: Any, batch: list[dict[str, Any]]) -> int:
        created = 0
        for entity in batch:
            if service.find_entity(session, commune_id, entity["id"]) is None:
                service.create_entity(session, commune_id, entity)
                created += 1
        return created

    return sum(
        db.write(create_missing, parsed[start : start + BATCH])
        for start in range(0, len(parsed), BATCH)
    )
