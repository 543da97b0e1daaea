"""Batch operations, POST query and discovery."""

import time

from sqlalchemy import text

from communs.hub import service


def bins(numbers, **extra):
    return [
        {
            "id": f"urn:ngsi-ld:Bin:{n}",
            "type": "WasteContainer",
            "fillingLevel": {"type": "Property", "value": n / 10},
            **extra,
        }
        for n in numbers
    ]


def test_batch_create_partial_failure_keeps_the_good_ones(hub):
    hub.create(bins([1])[0])
    body = [*bins([1, 2, 3]), {"id": "not a uri", "type": "X"}, bins([2])[0]]
    response = hub.request("POST", "/entityOperations/create", body)
    assert response.status_code == 207
    result = response.json()
    assert result["success"] == ["urn:ngsi-ld:Bin:2", "urn:ngsi-ld:Bin:3"]
    failed = {(e["entityId"], e["error"]["type"].rsplit("/", 1)[-1]) for e in result["errors"]}
    assert failed == {
        ("urn:ngsi-ld:Bin:1", "AlreadyExists"),
        ("not a uri", "BadRequestData"),
        ("urn:ngsi-ld:Bin:2", "AlreadyExists"),
    }
    listed = hub.get("/entities", params={"type": "WasteContainer"}).json()
    assert [e["id"] for e in listed] == [f"urn:ngsi-ld:Bin:{n}" for n in (1, 2, 3)]
    all_new = hub.request("POST", "/entityOperations/create", bins([4, 5]))
    assert all_new.status_code == 201 and all_new.json() == [
        "urn:ngsi-ld:Bin:4",
        "urn:ngsi-ld:Bin:5",
    ]


def test_batch_upsert_replace_and_update(hub):
    hub.request(
        "POST", "/entityOperations/create", bins([1], status={"type": "Property", "value": "ok"})
    )
    created = hub.request("POST", "/entityOperations/upsert", bins([1, 2]))
    assert created.status_code == 201 and created.json() == ["urn:ngsi-ld:Bin:2"]
    replaced = hub.get("/entities/urn:ngsi-ld:Bin:1").json()
    assert "status" not in replaced  # options=replace is the default
    update = [
        {
            "id": "urn:ngsi-ld:Bin:1",
            "type": "WasteContainer",
            "status": {"type": "Property", "value": "full"},
        }
    ]
    updated = hub.request("POST", "/entityOperations/upsert", update, params={"options": "update"})
    assert updated.status_code == 204
    body = hub.get("/entities/urn:ngsi-ld:Bin:1").json()
    assert body["status"]["value"] == "full" and body["fillingLevel"]["value"] == 0.1
    bad = hub.request("POST", "/entityOperations/upsert", update, params={"options": "both"})
    assert bad.status_code == 400


def test_batch_update_and_delete(hub):
    hub.request("POST", "/entityOperations/create", bins([1, 2]))
    patch = [
        {"id": "urn:ngsi-ld:Bin:1", "fillingLevel": {"type": "Property", "value": 0.9}},
        {"id": "urn:ngsi-ld:Bin:9", "fillingLevel": {"type": "Property", "value": 0.9}},
    ]
    response = hub.request("POST", "/entityOperations/update", patch)
    assert response.status_code == 207
    assert response.json()["success"] == ["urn:ngsi-ld:Bin:1"]
    assert hub.get("/entities/urn:ngsi-ld:Bin:1").json()["fillingLevel"]["value"] == 0.9
    kept = hub.request(
        "POST",
        "/entityOperations/update",
        patch[:1]
        and [{"id": "urn:ngsi-ld:Bin:2", "fillingLevel": {"type": "Property", "value": 0.0}}],
        params={"options": "noOverwrite"},
    )
    assert kept.status_code == 204
    assert hub.get("/entities/urn:ngsi-ld:Bin:2").json()["fillingLevel"]["value"] == 0.2
    deleted = hub.request(
        "POST", "/entityOperations/delete", ["urn:ngsi-ld:Bin:1", "urn:ngsi-ld:Bin:7"]
    )
    assert deleted.status_code == 207 and deleted.json()["success"] == ["urn:ngsi-ld:Bin:1"]
    assert hub.get("/entities/urn:ngsi-ld:Bin:1").status_code == 404
    assert hub.request("POST", "/entityOperations/delete", {"id": "x"}).status_code == 400
    assert hub.request("POST", "/entityOperations/delete", [1, 2]).status_code == 400


def test_post_query_matches_get_query(hub):
    located = [
        {
            **entity,
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [0.68 + n * 0.01, 47.39]},
            },
        }
        for n, entity in enumerate(bins(range(10)))
    ]
    hub.request("POST", "/entityOperations/create", located)
    body = {
        "type": "Query",
        "entities": [{"type": "WasteContainer"}],
        "q": "fillingLevel>0.3",
        "attrs": ["fillingLevel"],
        "geoQ": {
            "georel": "near;maxDistance==3100",
            "geometry": "Point",
            "coordinates": [0.68, 47.39],
        },
    }
    posted = hub.request("POST", "/entityOperations/query", body, params={"count": "true"})
    got = hub.get(
        "/entities",
        params={
            "type": "WasteContainer",
            "q": "fillingLevel>0.3",
            "attrs": "fillingLevel",
            "count": "true",
            "georel": "near;maxDistance==3100",
            "geometry": "Point",
            "coordinates": "[0.68,47.39]",
        },
    )
    assert posted.status_code == 200 and posted.json() == got.json()
    assert [e["id"] for e in posted.json()] == ["urn:ngsi-ld:Bin:4"]
    assert posted.headers["NGSILD-Results-Count"] == "1"
    assert set(posted.json()[0]) == {"id", "type", "fillingLevel"}
    assert hub.request("POST", "/entityOperations/query", {"entities": []}).status_code == 400


def test_discovery_of_types_and_attributes(hub):
    hub.request("POST", "/entityOperations/create", bins([1, 2]))
    hub.create(
        {
            "id": "urn:ngsi-ld:Spot:1",
            "type": "ParkingSpot",
            "status": {"type": "Property", "value": "free"},
            "refParkingSite": {"type": "Relationship", "object": "urn:ngsi-ld:Site:1"},
        }
    )
    types = hub.get("/types").json()
    assert types["type"] == "EntityTypeList"
    assert types["typeList"] == ["ParkingSpot", "WasteContainer"]
    detailed = hub.get("/types", params={"details": "true"}).json()
    assert {t["typeName"]: t["attributeNames"] for t in detailed} == {
        "ParkingSpot": ["refParkingSite", "status"],
        "WasteContainer": ["fillingLevel"],
    }
    info = hub.get("/types/WasteContainer").json()
    assert info["entityCount"] == 2 and info["type"] == "EntityTypeInfo"
    assert info["attributeDetails"][0]["attributeName"] == "fillingLevel"
    assert hub.get("/types/Nothing").status_code == 404
    attributes = hub.get("/attributes").json()
    assert attributes["attributeList"] == ["fillingLevel", "refParkingSite", "status"]
    relation = hub.get("/attributes/refParkingSite").json()
    assert relation["attributeTypes"] == ["Relationship"] and relation["typeNames"] == [
        "ParkingSpot"
    ]
    assert relation["attributeCount"] == 1
    assert hub.get("/attributes/none").status_code == 404


def test_discovery_is_per_tenant(hub, hub_beta):
    hub.create(bins([1])[0])
    assert hub_beta.get("/types").json()["typeList"] == []
    assert hub_beta.get("/attributes").json()["attributeList"] == []


def test_bulk_load_on_postgresql_refreshes_planner_statistics(hub, db, monkeypatch):
    """Right after a bulk load PostgreSQL must not plan for empty tables."""
    statistics = service.PlannerStatistics()
    monkeypatch.setattr(service, "STATISTICS", statistics)
    entities = [{"id": f"urn:ngsi-ld:Bulk:{n}", "type": "Bulk"} for n in range(1200)]
    assert hub.request("POST", "/entityOperations/upsert", entities).status_code == 201
    if db.is_sqlite:  # SQLite plans well without statistics: nothing to do
        assert (statistics.new_rows, statistics.analysed_rows) == (0, 0)
        return
    assert statistics.analysed_rows == 1200
    deadline = time.monotonic() + 20
    analysed = None
    while time.monotonic() < deadline and analysed is None:
        with db.read() as session:
            analysed = session.execute(
                text(
                    "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'hub_entities'"
                    " AND last_analyze IS NOT NULL"
                )
            ).scalar()
        time.sleep(0.2)
    assert analysed is not None
