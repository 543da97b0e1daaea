"""NGSI-LD entity and attribute routes: success and error paths."""

import pytest
from ngsi_client import BASE, CORE
from sqlalchemy import text

STREETLIGHT = {
    "id": "urn:ngsi-ld:Streetlight:1",
    "type": "Streetlight",
    "powerState": {"type": "Property", "value": "on", "observedAt": "2026-11-22T10:00:00Z"},
    "illuminanceLevel": {
        "type": "Property",
        "value": 0.8,
        "unitCode": "C62",
        "accuracy": {"type": "Property", "value": 0.05},
    },
    "refStreetlightControlCabinet": {
        "type": "Relationship",
        "object": "urn:ngsi-ld:StreetlightControlCabinet:7",
    },
    "location": {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [0.6890, 47.3900]},
    },
    "name": {"type": "LanguageProperty", "languageMap": {"fr": "Lampadaire", "en": "Lamp"}},
}


def problem_type(response) -> str:
    return response.json()["type"].rsplit("/", 1)[-1]


def test_create_then_retrieve_normalized_round_trip(hub):
    created = hub.create(STREETLIGHT)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{BASE}/entities/urn:ngsi-ld:Streetlight:1"
    body = hub.get("/entities/urn:ngsi-ld:Streetlight:1").json()
    assert body == STREETLIGHT
    response = hub.get("/entities/urn:ngsi-ld:Streetlight:1")
    assert CORE in response.headers["link"]


def test_create_twice_is_already_exists(hub):
    hub.create(STREETLIGHT)
    again = hub.create(STREETLIGHT)
    assert again.status_code == 409 and problem_type(again) == "AlreadyExists"


@pytest.mark.parametrize(
    "entity, kind",
    [
        ({"type": "Streetlight"}, "BadRequestData"),
        ({"id": "not a uri", "type": "Streetlight"}, "BadRequestData"),
        ({"id": "urn:ngsi-ld:X:1"}, "BadRequestData"),
        ({"id": "urn:ngsi-ld:X:1", "type": "X", "p": {"type": "Property"}}, "BadRequestData"),
        (
            {
                "id": "urn:ngsi-ld:X:1",
                "type": "X",
                "p": {"type": "Property", "value": 1, "observedAt": "hier"},
            },
            "BadRequestData",
        ),
        (
            {
                "id": "urn:ngsi-ld:X:1",
                "type": "X",
                "p": {"type": "Property", "value": 1, "unitCode": 5},
            },
            "BadRequestData",
        ),
        (
            {"id": "urn:ngsi-ld:X:1", "type": "X", "p=": {"type": "Property", "value": 1}},
            "BadRequestData",
        ),
        (
            {"id": "urn:ngsi-ld:X:1", "type": "X", "r": {"type": "Relationship", "object": "x"}},
            "BadRequestData",
        ),
        (
            {
                "id": "urn:ngsi-ld:X:1",
                "type": "X",
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [500, 1]},
                },
            },
            "BadRequestData",
        ),
    ],
)
def test_invalid_entities_are_bad_request_data_and_nothing_is_stored(hub, entity, kind):
    response = hub.create(entity)
    assert response.status_code == 400 and problem_type(response) == kind
    assert hub.get("/entities", params={"type": "X"}).json() == []


def test_malformed_json_unsupported_type_and_unacceptable_accept(hub):
    bad = hub.client.post(
        f"{BASE}/entities",
        content=b"{nope",
        headers=hub.headers({"Content-Type": "application/json"}, write=True),
    )
    assert bad.status_code == 400 and problem_type(bad) == "InvalidRequest"
    wrong_type = hub.client.post(
        f"{BASE}/entities",
        content=b"{}",
        headers=hub.headers({"Content-Type": "text/plain"}, write=True),
    )
    assert wrong_type.status_code == 415
    hub.create(STREETLIGHT)
    refused = hub.get("/entities/urn:ngsi-ld:Streetlight:1", headers={"Accept": "text/html"})
    assert refused.status_code == 406


def test_ld_json_needs_context_and_echoes_it(hub):
    entity = {**STREETLIGHT, "@context": CORE}
    response = hub.create(entity, headers={"Content-Type": "application/ld+json"})
    assert response.status_code == 201
    missing = hub.create(
        {**STREETLIGHT, "id": "urn:ngsi-ld:Streetlight:2"},
        headers={"Content-Type": "application/ld+json"},
    )
    assert missing.status_code == 400
    body = hub.get(
        "/entities/urn:ngsi-ld:Streetlight:1", headers={"Accept": "application/ld+json"}
    ).json()
    assert body["@context"] == CORE


def test_unknown_remote_context_is_503_quickly(hub):
    link = '<https://example.org/ctx.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'
    response = hub.create(STREETLIGHT, headers={"Link": link})
    assert response.status_code == 503 and problem_type(response) == "LdContextNotAvailable"


def test_user_context_expands_and_compacts(hub):
    context = {
        "sdm": "https://smartdatamodels.org/dataModel.Streetlight/",
        "Streetlight": "sdm:Streetlight",
        "powerState": "sdm:powerState",
    }
    entity = {**STREETLIGHT, "@context": [context, CORE]}
    assert hub.create(entity, headers={"Content-Type": "application/ld+json"}).status_code == 201
    # Without the user context the names come back as full IRIs.
    plain = hub.get("/entities/urn:ngsi-ld:Streetlight:1").json()
    assert plain["type"] == "https://smartdatamodels.org/dataModel.Streetlight/Streetlight"
    assert "https://smartdatamodels.org/dataModel.Streetlight/powerState" in plain
    assert "illuminanceLevel" in plain  # default vocabulary on both sides
    by_type = hub.get(
        "/entities",
        params={"type": "https://smartdatamodels.org/dataModel.Streetlight/Streetlight"},
    ).json()
    assert [e["id"] for e in by_type] == ["urn:ngsi-ld:Streetlight:1"]


def test_retrieve_missing_is_404_and_representations(hub):
    assert problem_type(hub.get("/entities/urn:ngsi-ld:X:404")) == "ResourceNotFound"
    hub.create(STREETLIGHT)
    path = "/entities/urn:ngsi-ld:Streetlight:1"
    key_values = hub.get(path, params={"options": "keyValues"}).json()
    assert key_values["powerState"] == "on"
    assert key_values["refStreetlightControlCabinet"] == "urn:ngsi-ld:StreetlightControlCabinet:7"
    assert key_values["location"] == {"type": "Point", "coordinates": [0.689, 47.39]}
    concise = hub.get(path, params={"format": "concise"}).json()
    assert concise["powerState"] == {"value": "on", "observedAt": "2026-11-22T10:00:00Z"}
    assert concise["illuminanceLevel"]["accuracy"] == 0.05
    assert concise["refStreetlightControlCabinet"] == {
        "object": "urn:ngsi-ld:StreetlightControlCabinet:7"
    }
    # The concise form is accepted back and means the same entity.
    hub.request("DELETE", path)
    assert hub.create({**concise, "id": STREETLIGHT["id"]}).status_code == 201
    assert hub.get(path).json() == STREETLIGHT
    with_sys = hub.get(path, params={"options": "sysAttrs"}).json()
    assert with_sys["createdAt"].endswith("Z") and "modifiedAt" in with_sys["powerState"]
    lang = hub.get(path, params={"lang": "en"}).json()
    assert lang["name"] == {"type": "Property", "value": "Lamp", "lang": "en"}
    picked = hub.get(path, params={"attrs": "powerState"}).json()
    assert set(picked) == {"id", "type", "powerState"}
    geo = hub.get(path, headers={"Accept": "application/geo+json"}).json()
    assert geo["type"] == "Feature" and geo["geometry"]["type"] == "Point"


def test_attribute_operations(hub):
    hub.create(STREETLIGHT)
    path = "/entities/urn:ngsi-ld:Streetlight:1"
    appended = hub.request("POST", path + "/attrs", {"status": {"type": "Property", "value": "ok"}})
    assert appended.status_code == 204
    kept = hub.request(
        "POST",
        path + "/attrs",
        {"status": {"type": "Property", "value": "ko"}},
        params={"options": "noOverwrite"},
    )
    assert kept.status_code == 207 and kept.json()["notUpdated"][0]["attributeName"] == "status"
    assert hub.get(path).json()["status"]["value"] == "ok"
    partial = hub.request(
        "PATCH",
        path + "/attrs",
        {
            "powerState": {"type": "Property", "value": "off"},
            "missing": {"type": "Property", "value": 1},
        },
    )
    assert partial.status_code == 207
    assert partial.json() == {
        "updated": ["powerState"],
        "notUpdated": [{"attributeName": "missing", "reason": "attribute does not exist"}],
    }
    body = hub.get(path).json()
    assert body["powerState"] == {"type": "Property", "value": "off"} and "missing" not in body
    one = hub.request("PATCH", path + "/attrs/illuminanceLevel", {"value": 0.2})
    assert one.status_code == 204
    level = hub.get(path).json()["illuminanceLevel"]
    assert level["value"] == 0.2 and level["unitCode"] == "C62" and "accuracy" in level
    assert hub.request("PATCH", path + "/attrs/nothing", {"value": 1}).status_code == 404
    assert hub.request("DELETE", path + "/attrs/status").status_code == 204
    assert "status" not in hub.get(path).json()
    assert hub.request("DELETE", path + "/attrs/status").status_code == 404


def test_multi_attributes_by_dataset_id(hub):
    entity = {
        "id": "urn:ngsi-ld:Sensor:1",
        "type": "Sensor",
        "temperature": [
            {"type": "Property", "value": 20, "datasetId": "urn:ngsi-ld:Dataset:a"},
            {"type": "Property", "value": 21, "datasetId": "urn:ngsi-ld:Dataset:b"},
        ],
    }
    assert hub.create(entity).status_code == 201
    path = "/entities/urn:ngsi-ld:Sensor:1"
    assert hub.get(path).json() == entity
    hub.request(
        "DELETE", path + "/attrs/temperature", params={"datasetId": "urn:ngsi-ld:Dataset:a"}
    )
    remaining = hub.get(path).json()["temperature"]
    assert remaining == {"type": "Property", "value": 21, "datasetId": "urn:ngsi-ld:Dataset:b"}
    duplicate = {
        **entity,
        "id": "urn:ngsi-ld:Sensor:2",
        "temperature": [{"type": "Property", "value": 1}, {"type": "Property", "value": 2}],
    }
    assert hub.create(duplicate).status_code == 400


def test_replace_merge_and_delete(hub):
    hub.create(STREETLIGHT)
    path = "/entities/urn:ngsi-ld:Streetlight:1"
    merged = hub.request(
        "PATCH",
        path,
        {
            "powerState": {"type": "Property", "value": "off"},
            "name": None,
            "illuminanceLevel": {"type": "Property", "value": 0.1},
        },
    )
    assert merged.status_code == 204
    body = hub.get(path).json()
    assert body["powerState"]["value"] == "off" and "name" not in body
    assert body["illuminanceLevel"]["accuracy"] == {"type": "Property", "value": 0.05}
    assert body["illuminanceLevel"]["unitCode"] == "C62"
    replaced = hub.request(
        "PUT", path, {"type": "Streetlight", "status": {"type": "Property", "value": "new"}}
    )
    assert replaced.status_code == 204
    assert set(hub.get(path).json()) == {"id", "type", "status"}
    assert hub.request("DELETE", path).status_code == 204
    assert hub.get(path).status_code == 404
    assert hub.request("DELETE", path).status_code == 404


def test_query_by_type_id_pattern_and_pagination(hub):
    for number in range(25):
        hub.create(
            {
                "id": f"urn:ngsi-ld:Bin:{number:02d}",
                "type": "WasteContainer",
                "fillingLevel": {"type": "Property", "value": number / 25},
            }
        )
    hub.create({"id": "urn:ngsi-ld:Spot:1", "type": "ParkingSpot"})
    first = hub.get("/entities", params={"type": "WasteContainer", "count": "true"})
    assert first.status_code == 200 and len(first.json()) == 20
    assert first.headers["NGSILD-Results-Count"] == "25"
    assert 'rel="next"' in first.headers["link"]
    second = hub.get("/entities", params={"type": "WasteContainer", "offset": "20"}).json()
    assert [e["id"] for e in second] == [f"urn:ngsi-ld:Bin:{n}" for n in range(20, 25)]
    both = hub.get("/entities", params={"type": "WasteContainer,ParkingSpot", "limit": "1000"})
    assert len(both.json()) == 26
    pattern = hub.get("/entities", params={"idPattern": "Bin:0[0-2]$"}).json()
    assert [e["id"] for e in pattern] == [
        "urn:ngsi-ld:Bin:00",
        "urn:ngsi-ld:Bin:01",
        "urn:ngsi-ld:Bin:02",
    ]
    ids = hub.get("/entities", params={"id": "urn:ngsi-ld:Spot:1,urn:ngsi-ld:Bin:03"}).json()
    assert sorted(e["id"] for e in ids) == ["urn:ngsi-ld:Bin:03", "urn:ngsi-ld:Spot:1"]
    too_many = hub.get("/entities", params={"type": "WasteContainer", "limit": "1001"})
    assert too_many.status_code == 400 and "1000" in too_many.json()["detail"]
    assert hub.get("/entities").status_code == 400
    assert hub.get("/entities", params={"idPattern": "("}).status_code == 400


def test_query_with_q_and_geo(hub):
    for number in range(10):
        hub.create(
            {
                "id": f"urn:ngsi-ld:Bin:{number}",
                "type": "WasteContainer",
                "fillingLevel": {"type": "Property", "value": number / 10},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [0.68 + number * 0.01, 47.39]},
                },
            }
        )
    full = hub.get("/entities", params={"type": "WasteContainer", "q": "fillingLevel>=0.7"})
    assert [e["id"] for e in full.json()] == [
        "urn:ngsi-ld:Bin:7",
        "urn:ngsi-ld:Bin:8",
        "urn:ngsi-ld:Bin:9",
    ]
    near = hub.get(
        "/entities",
        params={
            "type": "WasteContainer",
            "georel": "near;maxDistance==800",
            "geometry": "Point",
            "coordinates": "[0.68,47.39]",
        },
    )
    assert [e["id"] for e in near.json()] == ["urn:ngsi-ld:Bin:0", "urn:ngsi-ld:Bin:1"]
    assert hub.get("/entities", params={"type": "WasteContainer", "q": "(("}).status_code == 400
    bad_geo = hub.get(
        "/entities", params={"type": "WasteContainer", "georel": "near", "geometry": "Point"}
    )
    assert bad_geo.status_code == 400 and problem_type(bad_geo) == "BadRequestData"


def test_type_expressions(hub):
    hub.create({"id": "urn:ngsi-ld:A:1", "type": ["Building", "School"]})
    hub.create({"id": "urn:ngsi-ld:A:2", "type": "Building"})
    both = hub.get("/entities", params={"type": "Building;School"}).json()
    assert [e["id"] for e in both] == ["urn:ngsi-ld:A:1"]
    either = hub.get("/entities", params={"type": "(School|Building)"}).json()
    assert len(either) == 2
    assert hub.get("/entities", params={"type": "Building;"}).status_code == 400


def test_writes_need_a_key_of_the_tenant(hub, hub_beta):
    anonymous = hub.client.post(
        f"{BASE}/entities",
        content=b'{"id":"urn:x:1","type":"T"}',
        headers={"Content-Type": "application/json", "NGSILD-Tenant": "alpha"},
    )
    assert anonymous.status_code == 401
    cross = hub.client.post(
        f"{BASE}/entities",
        content=b'{"id":"urn:x:1","type":"T"}',
        headers={
            "Content-Type": "application/json",
            "NGSILD-Tenant": "beta",
            "Authorization": f"Bearer {hub.key}",
        },
    )
    assert cross.status_code == 403


def test_tenants_are_isolated(hub, hub_beta):
    hub.create(STREETLIGHT)
    assert hub_beta.get("/entities/urn:ngsi-ld:Streetlight:1").status_code == 404
    assert hub_beta.get("/entities", params={"type": "Streetlight"}).json() == []
    assert hub_beta.create(STREETLIGHT).status_code == 201  # same id, other commune
    unknown = hub.client.get(
        f"{BASE}/entities", params={"type": "Streetlight"}, headers={"NGSILD-Tenant": "gamma"}
    )
    assert unknown.status_code == 404 and problem_type(unknown) == "NonExistingTenant"
    by_insee = hub.client.get(
        f"{BASE}/entities/urn:ngsi-ld:Streetlight:1", headers={"NGSILD-Tenant": "37001"}
    )
    assert by_insee.status_code == 200


def test_scope_q_selects_entities_by_scope(hub):
    hub.create({"id": "urn:ngsi-ld:Bin:1", "type": "WasteContainer", "scope": "/Nord/Gare"})
    hub.create(
        {
            "id": "urn:ngsi-ld:Bin:2",
            "type": "WasteContainer",
            "scope": ["/Sud/Port", "/Nord/Mairie"],
        }
    )
    hub.create({"id": "urn:ngsi-ld:Bin:3", "type": "WasteContainer"})

    def ids(scope_q: str) -> list[str]:
        response = hub.get("/entities", params={"type": "WasteContainer", "scopeQ": scope_q})
        assert response.status_code == 200, response.text
        return [e["id"] for e in response.json()]

    assert ids("/Nord/#") == ["urn:ngsi-ld:Bin:1", "urn:ngsi-ld:Bin:2"]
    assert ids("/Nord/Gare") == ["urn:ngsi-ld:Bin:1"]
    assert ids("/+/Port") == ["urn:ngsi-ld:Bin:2"]
    assert ids("/Est/#") == []
    assert hub.get("/entities/urn:ngsi-ld:Bin:2").json()["scope"] == ["/Sud/Port", "/Nord/Mairie"]
    bad = hub.get("/entities", params={"type": "WasteContainer", "scopeQ": "Nord"})
    assert bad.status_code == 400


def _near(hub, lon: float, lat: float, metres: int = 100) -> list[str]:
    found = hub.get(
        "/entities",
        params={
            "type": "Lamp",
            "georel": f"near;maxDistance=={metres}",
            "geometry": "Point",
            "coordinates": f"[{lon},{lat}]",
        },
    )
    assert found.status_code == 200, found.text
    return [entity["id"] for entity in found.json()]


def _point(lon: float, lat: float) -> dict:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def test_spatial_index_follows_moves_and_deletes(hub, db):
    for n, lon in enumerate((0.70, 0.71, 0.72)):
        assert (
            hub.create(
                {"id": f"urn:ngsi-ld:Lamp:{n}", "type": "Lamp", "location": _point(lon, 47.4)}
            ).status_code
            == 201
        )
    assert _near(hub, 0.70, 47.4) == ["urn:ngsi-ld:Lamp:0"]
    moved = hub.request(
        "PATCH", "/entities/urn:ngsi-ld:Lamp:0/attrs", {"location": _point(0.75, 47.4)}
    )
    assert moved.status_code == 204
    assert _near(hub, 0.70, 47.4) == []
    assert _near(hub, 0.75, 47.4) == ["urn:ngsi-ld:Lamp:0"]
    assert hub.request("DELETE", "/entities/urn:ngsi-ld:Lamp:1").status_code == 204
    deleted = hub.request("POST", "/entityOperations/delete", ["urn:ngsi-ld:Lamp:2"])
    assert deleted.status_code == 204
    assert _near(hub, 0.71, 47.4, 5000) == ["urn:ngsi-ld:Lamp:0"]
    # The spatial index holds exactly the boxes of the remaining geometries.
    with db.read() as session:
        geometries = session.execute(text("SELECT count(*) FROM hub_geometries")).scalar()
        if session.get_bind().dialect.name == "sqlite":
            boxes = session.execute(text("SELECT count(*) FROM hub_geometry_boxes")).scalar()
            assert boxes == geometries
    assert geometries == 1


def test_trailing_slash_and_routing_errors_answer_problem_details(hub):
    entity = {"id": "urn:ngsi-ld:Lamp:slash", "type": "Lamp"}
    assert hub.request("POST", "/entities/", entity).status_code == 201
    listed = hub.get("/entities/", params={"type": "Lamp"})
    assert [e["id"] for e in listed.json()] == ["urn:ngsi-ld:Lamp:slash"]
    wrong_method = hub.request("DELETE", "/entityOperations/upsert")
    assert wrong_method.status_code == 405
    assert (
        wrong_method.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/OperationNotSupported"
    )
    unknown = hub.get("/no-such-resource")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
