"""Temporal API: history recorded on every change, read back in the three forms."""

import random
import statistics

import pytest
from sqlalchemy import text

from communs.hub import history

SENSOR = "urn:ngsi-ld:Sensor:t1"


def reading(value: float, at: str) -> dict:
    return {"temperature": {"type": "Property", "value": value, "observedAt": at}}


def make_sensor(hub) -> None:
    created = hub.create(
        {
            "id": SENSOR,
            "type": "Sensor",
            "temperature": {"type": "Property", "value": 10, "observedAt": "2026-11-01T00:00:00Z"},
            "status": {"type": "Property", "value": "ok"},
        }
    )
    assert created.status_code == 201, created.text
    for value, at in ((11, "2026-11-01T01:00:00Z"), (12.5, "2026-11-01T02:00:00Z")):
        patched = hub.request("PATCH", f"/entities/{SENSOR}/attrs", reading(value, at))
        assert patched.status_code == 204, patched.text


def test_every_change_is_recorded_and_read_back_in_order(hub):
    make_sensor(hub)
    found = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature"})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["id"] == SENSOR and body["type"] == "Sensor"
    instances = body["temperature"]
    assert [i["value"] for i in instances] == [10, 11, 12.5]
    assert [i["observedAt"] for i in instances][0].startswith("2026-11-01T00:00:00")
    assert len({i["instanceId"] for i in instances}) == 3
    assert "status" not in body


def test_timerel_last_n_and_temporal_values(hub):
    make_sensor(hub)
    between = hub.get(
        f"/temporal/entities/{SENSOR}",
        params={
            "attrs": "temperature",
            "timerel": "between",
            "timeAt": "2026-11-01T00:30:00Z",
            "endTimeAt": "2026-11-01T03:00:00Z",
        },
    )
    assert [i["value"] for i in between.json()["temperature"]] == [11, 12.5]
    last = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature", "lastN": "1"})
    assert [i["value"] for i in last.json()["temperature"]] == [12.5]
    simplified = hub.get(
        f"/temporal/entities/{SENSOR}",
        params={"attrs": "temperature", "options": "temporalValues"},
    )
    values = simplified.json()["temperature"]["values"]
    assert [v[0] for v in values] == [10, 11, 12.5]


def test_provided_history_aggregates_by_day(hub):
    readings = [
        {"type": "Property", "value": v, "observedAt": f"2026-10-0{day}T{hour:02d}:00:00Z"}
        for day, values in ((1, (1, 2, 3)), (2, (10, 20)))
        for hour, v in enumerate(values)
    ]
    posted = hub.request(
        "POST",
        "/temporal/entities",
        {"id": "urn:ngsi-ld:Meter:1", "type": "WaterMeter", "volume": readings},
    )
    assert posted.status_code == 201, posted.text
    again = hub.request(
        "POST",
        "/temporal/entities",
        {"id": "urn:ngsi-ld:Meter:1", "type": "WaterMeter", "volume": readings[:1]},
    )
    assert again.status_code == 204
    aggregated = hub.get(
        "/temporal/entities/urn:ngsi-ld:Meter:1",
        params={
            "options": "aggregatedValues",
            "aggrMethods": "avg,max,totalCount",
            "aggrPeriodDuration": "P1D",
            "timerel": "between",
            "timeAt": "2026-10-01T00:00:00Z",
            "endTimeAt": "2026-10-03T00:00:00Z",
        },
    )
    assert aggregated.status_code == 200, aggregated.text
    volume = aggregated.json()["volume"]
    averages = [entry[0] for entry in volume["avg"]]
    assert averages == [statistics.mean([1, 2, 3, 1]), statistics.mean([10, 20])]
    assert [entry[0] for entry in volume["max"]] == [3, 20]
    assert [entry[0] for entry in volume["totalCount"]] == [4, 2]


NUMBER_METHODS = "totalCount,distinctCount,sum,avg,min,max,sumsq"


def post_readings(hub, entity_id: str, series: dict[str | None, list[tuple[float, str]]]) -> None:
    instances = [
        {"type": "Property", "value": value, "observedAt": at}
        | ({"datasetId": dataset} if dataset else {})
        for dataset, readings in series.items()
        for value, at in readings
    ]
    body = {"id": entity_id, "type": "Gauge", "level": instances}
    assert hub.request("POST", "/temporal/entities", body).status_code in (201, 204)


def aggregate(hub, entity_id: str, methods: str, **params) -> dict:
    answer = hub.get(
        f"/temporal/entities/{entity_id}",
        params={"options": "aggregatedValues", "aggrMethods": methods} | params,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["level"]


@pytest.fixture
def database_aggregations(monkeypatch) -> list[bool]:
    """Whether each aggregation was computed by the database (True) or fell back."""
    seen: list[bool] = []
    compute = history.number_aggregates

    def observed(*args, **kwargs):
        figures = compute(*args, **kwargs)
        seen.append(figures is not None)
        return figures

    monkeypatch.setattr(history, "number_aggregates", observed)
    return seen


def same_figures(database: dict, instances: dict) -> None:
    """The database's figures against those aggregated from the instances (which a
    request with stddev always uses)."""
    for method in NUMBER_METHODS.split(","):
        assert len(database[method]) == len(instances[method]), method
        for ours, theirs in zip(database[method], instances[method], strict=True):
            assert ours[1:] == theirs[1:], method
            assert ours[0] == pytest.approx(theirs[0], rel=1e-12), method


@pytest.mark.parametrize(
    "params",
    [
        {"aggrPeriodDuration": "PT1H", "timerel": "after", "timeAt": "2026-05-01T00:00:00Z"},
        {
            "aggrPeriodDuration": "P1D",
            "timerel": "between",
            "timeAt": "2026-05-01T06:00:00Z",
            "endTimeAt": "2026-05-03T07:30:00Z",
        },
        {"timerel": "before", "timeAt": "2026-05-02T12:00:00Z"},
        {},
        {"aggrPeriodDuration": "PT0S", "timerel": "after", "timeAt": "2026-05-02T00:00:00Z"},
    ],
)
def test_number_aggregates_from_the_database_match_the_instances(
    hub, params, database_aggregations
):
    rng = random.Random(7)
    hours = range(0, 80, 3)
    post_readings(
        hub,
        "urn:ngsi-ld:Gauge:1",
        {
            None: [
                (rng.choice((1, 2, 2.5, -4)), f"2026-05-{1 + h // 24:02d}T{h % 24:02d}:10:00Z")
                for h in hours
            ],
            "urn:ngsi-ld:Dataset:b": [
                (rng.uniform(-50, 50), f"2026-05-{1 + h // 24:02d}T{h % 24:02d}:40:00Z")
                for h in hours
            ],
        },
    )
    database = aggregate(hub, "urn:ngsi-ld:Gauge:1", NUMBER_METHODS, **params)
    instances = aggregate(hub, "urn:ngsi-ld:Gauge:1", NUMBER_METHODS + ",stddev", **params)
    assert database_aggregations == [True]  # stddev needs the instances
    assert isinstance(database, list) and len(database) == 2
    for ours, theirs in zip(database, instances, strict=True):
        assert ours.get("datasetId") == theirs.get("datasetId")
        same_figures(ours, theirs)
    integers = database[0]
    assert all(isinstance(entry[0], int) for entry in integers["totalCount"])


def test_a_series_with_other_values_is_aggregated_from_its_instances(hub, database_aggregations):
    post_readings(hub, "urn:ngsi-ld:Gauge:2", {None: [(3, "2026-05-01T00:00:00Z")]})
    text_reading = {"type": "Property", "value": "faulty", "observedAt": "2026-05-01T01:00:00Z"}
    body = {"id": "urn:ngsi-ld:Gauge:2", "type": "Gauge", "level": [text_reading]}
    assert hub.request("POST", "/temporal/entities", body).status_code == 204
    level = aggregate(
        hub,
        "urn:ngsi-ld:Gauge:2",
        "totalCount,sum,max",
        timerel="after",
        timeAt="2026-04-30T00:00:00Z",
    )
    assert database_aggregations == [False]
    assert [entry[0] for entry in level["totalCount"]] == [2]
    assert [entry[0] for entry in level["sum"]] == [3]
    assert [entry[0] for entry in level["max"]] == [3]


def test_query_by_type_and_tenant_isolation(hub, hub_beta):
    make_sensor(hub)
    listed = hub.get("/temporal/entities", params={"type": "Sensor", "attrs": "temperature"})
    assert [e["id"] for e in listed.json()] == [SENSOR]
    assert hub_beta.get("/temporal/entities", params={"type": "Sensor"}).json() == []
    assert hub_beta.get(f"/temporal/entities/{SENSOR}").status_code == 404
    assert hub_beta.request("DELETE", f"/temporal/entities/{SENSOR}").status_code == 404
    assert hub.get(f"/temporal/entities/{SENSOR}").status_code == 200


def test_history_outlives_the_entity_until_deleted(hub, db):
    make_sensor(hub)
    assert hub.request("DELETE", f"/entities/{SENSOR}").status_code == 204
    kept = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature"})
    assert len(kept.json()["temperature"]) == 3
    assert hub.request("DELETE", f"/temporal/entities/{SENSOR}").status_code == 204
    assert hub.get(f"/temporal/entities/{SENSOR}").status_code == 404
    with db.read() as session:
        left = session.execute(text("SELECT count(*) FROM hub_temporal_instances")).scalar()
    assert left == 0


def test_bad_temporal_requests_are_bad_request_data(hub):
    make_sensor(hub)
    for params in (
        {"timerel": "between", "timeAt": "2026-11-01T00:00:00Z"},
        {"timerel": "after"},
        {"timerel": "during", "timeAt": "2026-11-01T00:00:00Z"},
        {"lastN": "-1"},
        {"options": "aggregatedValues"},
        {"options": "aggregatedValues", "aggrMethods": "median"},
        {"options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "P-1D"},
    ):
        answer = hub.get(f"/temporal/entities/{SENSOR}", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["type"].endswith("/BadRequestData"), params
    assert hub.get("/temporal/entities").status_code == 400
    bad = hub.request("POST", "/temporal/entities", {"id": "urn:x:1", "type": "T"})
    assert bad.status_code == 400


def test_history_rows_deleted_behind_the_hubs_back_are_recreated(hub, db):
    """Ids the hub remembers may go stale; the next change still lands in the right place."""
    make_sensor(hub)
    db.write(lambda session: session.execute(text("DELETE FROM hub_temporal_entities")))
    patched = hub.request("PATCH", f"/entities/{SENSOR}/attrs", reading(13, "2026-11-01T03:00:00Z"))
    assert patched.status_code == 204, patched.text
    history = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature"})
    assert [i["value"] for i in history.json()["temperature"]] == [13]
    make_other = hub.create({"id": "urn:ngsi-ld:Sensor:t2", "type": "Sensor", "temperature": 1})
    assert make_other.status_code == 201
    other = hub.get("/temporal/entities/urn:ngsi-ld:Sensor:t2", params={"attrs": "temperature"})
    assert [i["value"] for i in other.json()["temperature"]] == [1]


def _history(hub, entity_id: str = SENSOR, **params) -> list:
    found = hub.get(f"/temporal/entities/{entity_id}", params={"attrs": "temperature", **params})
    assert found.status_code in (200, 206), found.text
    return found.json().get("temperature", [])


def test_instances_are_added_modified_and_deleted(hub, hub_beta):
    make_sensor(hub)
    added = hub.request(
        "POST",
        f"/temporal/entities/{SENSOR}/attrs",
        {"temperature": [{"type": "Property", "value": 9, "observedAt": "2026-10-31T23:00:00Z"}]},
    )
    assert added.status_code == 204, added.text
    instances = _history(hub)
    assert [i["value"] for i in instances] == [9, 10, 11, 12.5]
    target = instances[1]["instanceId"]
    path = f"/temporal/entities/{SENSOR}/attrs/temperature/{target}"
    change = {"temperature": {"type": "Property", "value": 100}}
    assert hub_beta.request("PATCH", path, change).status_code == 404  # another commune's
    assert hub.request("PATCH", path, change).status_code == 204
    assert [i["value"] for i in _history(hub)] == [9, 100, 11, 12.5]
    assert hub_beta.request("DELETE", path).status_code == 404
    assert hub.request("DELETE", path).status_code == 204
    assert hub.request("DELETE", path).status_code == 404
    assert [i["value"] for i in _history(hub)] == [9, 11, 12.5]
    wrong = hub.request("PATCH", f"/temporal/entities/{SENSOR}/attrs/status/{target}", change)
    assert wrong.status_code == 400
    missing = hub.request("POST", "/temporal/entities/urn:x:none/attrs", change)
    assert missing.status_code == 404


def test_attribute_history_is_deleted(hub):
    make_sensor(hub)
    gone = hub.request("DELETE", f"/temporal/entities/{SENSOR}/attrs/temperature")
    assert gone.status_code == 204, gone.text
    assert _history(hub) == []
    status = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "status"}).json()
    assert status["status"][0]["value"] == "ok"
    again = hub.request("DELETE", f"/temporal/entities/{SENSOR}/attrs/temperature")
    assert again.status_code == 404
    # New changes start a new history for the attribute.
    hub.request("PATCH", f"/entities/{SENSOR}/attrs", reading(14, "2026-11-02T00:00:00Z"))
    assert [i["value"] for i in _history(hub)] == [14]


def test_long_histories_come_in_pages_with_a_content_range(hub, monkeypatch):
    from communs.hub import temporal_api

    monkeypatch.setattr(temporal_api, "MAX_INSTANCES", 2)
    make_sensor(hub)
    first = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature"})
    assert first.status_code == 206
    assert [i["value"] for i in first.json()["temperature"]] == [10, 11]
    assert first.headers["Content-Range"] == (
        "date-time 2026-11-01T00:00:00.000Z-2026-11-01T01:00:00.000Z/*"
    )
    rest = hub.get(
        f"/temporal/entities/{SENSOR}",
        params={"attrs": "temperature", "timerel": "after", "timeAt": "2026-11-01T01:00:01Z"},
    )
    assert rest.status_code == 200
    assert [i["value"] for i in rest.json()["temperature"]] == [12.5]


def test_q_and_geo_query_select_entities_of_a_temporal_query(hub, hub_beta):
    for number, (level, lon) in enumerate(((5, 0.69), (50, 2.35)), 1):
        created = hub.create(
            {
                "id": f"urn:ngsi-ld:Bin:{number}",
                "type": "WasteContainer",
                "fillingLevel": {"type": "Property", "value": level},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [lon, 47.39]},
                },
            }
        )
        assert created.status_code == 201
    hub_beta.create(
        {
            "id": "urn:ngsi-ld:Bin:1",
            "type": "WasteContainer",
            "fillingLevel": {"type": "Property", "value": 99},
        }
    )
    full = hub.get("/temporal/entities", params={"type": "WasteContainer", "q": "fillingLevel>20"})
    assert full.status_code == 200, full.text
    assert [e["id"] for e in full.json()] == ["urn:ngsi-ld:Bin:2"]
    near = hub.get(
        "/temporal/entities",
        params={
            "georel": "near;maxDistance==2000",
            "geometry": "Point",
            "coordinates": "[0.69,47.39]",
            "attrs": "fillingLevel",
        },
    )
    assert [e["id"] for e in near.json()] == ["urn:ngsi-ld:Bin:1"]
    assert [i["value"] for i in near.json()[0]["fillingLevel"]] == [5]
    nothing = hub.get(
        "/temporal/entities", params={"type": "WasteContainer", "q": "fillingLevel>100"}
    )
    assert nothing.json() == []
    bad = hub.get("/temporal/entities", params={"q": "fillingLevel=="})
    assert bad.status_code == 400 and bad.json()["type"].endswith("BadRequestData")


def test_history_lands_in_monthly_partitions_on_postgresql(hub, db):
    """Imported past readings and new ones each go to their month's partition (created
    on first use); SQLite keeps one table. Both answer the same."""
    old = {
        "id": "urn:ngsi-ld:Sensor:old",
        "type": "Sensor",
        "temperature": [
            {"type": "Property", "value": v, "observedAt": f"2019-03-0{d}T10:00:00Z"}
            for v, d in ((1, 1), (2, 2))
        ]
        + [{"type": "Property", "value": 3, "observedAt": "2019-04-01T00:00:00Z"}],
    }
    assert hub.request("POST", "/temporal/entities", old).status_code == 201
    make_sensor(hub)
    values = hub.get(
        "/temporal/entities/urn:ngsi-ld:Sensor:old", params={"attrs": "temperature"}
    ).json()["temperature"]
    assert [i["value"] for i in values] == [1, 2, 3]
    with db.engine.connect() as connection:
        if db.is_sqlite:
            total = connection.execute(text("SELECT count(*) FROM hub_temporal_instances"))
            assert total.scalar() == 7  # 3 imported, 4 of make_sensor
            return
        counts = dict(
            connection.execute(
                text(
                    "SELECT c.relname, (xpath('/row/n/text()', query_to_xml("
                    "'SELECT count(*) AS n FROM ' || c.relname, false, true, '')))[1]::text::int "
                    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent "
                    "WHERE p.relname = 'hub_temporal_instances'"
                )
            ).all()
        )
    assert counts["hub_temporal_instances_y2019m03"] == 2
    assert counts["hub_temporal_instances_y2019m04"] == 1
    assert counts["hub_temporal_instances_y2026m11"] >= 3  # and status, stamped now
    assert sum(counts.values()) == 7
    assert counts["hub_temporal_instances_default"] == 0


def test_an_entity_updated_twice_in_one_batch_keeps_both_readings(hub):
    make_sensor(hub)
    other = {"id": "urn:ngsi-ld:Sensor:t2", "type": "Sensor", **reading(1, "2026-11-01T00:00:00Z")}
    assert hub.create(other).status_code == 201
    batch = [
        {"id": SENSOR, "type": "Sensor", **reading(20, "2026-11-02T00:00:00Z")},
        {"id": "urn:ngsi-ld:Sensor:t2", "type": "Sensor", **reading(2, "2026-11-02T00:00:00Z")},
        {"id": SENSOR, "type": "Sensor", **reading(21, "2026-11-02T01:00:00Z")},
    ]
    response = hub.request("POST", "/entityOperations/upsert", batch, params={"options": "update"})
    assert response.status_code in (200, 204), response.text
    values = hub.get(f"/temporal/entities/{SENSOR}", params={"attrs": "temperature"}).json()
    assert [i["value"] for i in values["temperature"]] == [10, 11, 12.5, 20, 21]
    current = hub.get(f"/entities/{SENSOR}").json()
    assert current["temperature"]["value"] == 21
    found = hub.get("/entities", params={"type": "Sensor", "q": "temperature==21"}).json()
    assert [e["id"] for e in found] == [SENSOR]


def test_a_large_batch_update_of_existing_entities_is_stored_and_recorded(hub):
    """Many index and history rows in one batch (bulk paths, pipelined on PostgreSQL)."""
    sensors = [
        {"id": f"urn:ngsi-ld:Sensor:b{n}", "type": "Sensor", **reading(n, "2026-11-01T00:00:00Z")}
        for n in range(60)
    ]
    assert hub.request("POST", "/entityOperations/create", sensors).status_code == 201
    for sensor in sensors:
        sensor["temperature"]["value"] += 1000
        sensor["temperature"]["observedAt"] = "2026-11-02T00:00:00Z"
    response = hub.request(
        "POST", "/entityOperations/upsert", sensors, params={"options": "update"}
    )
    assert response.status_code in (200, 204), response.text
    found = hub.get(
        "/entities", params={"type": "Sensor", "q": "temperature>=1000", "limit": "100"}
    )
    assert len(found.json()) == 60
    history = hub.get(
        "/temporal/entities/urn:ngsi-ld:Sensor:b7", params={"attrs": "temperature"}
    ).json()
    assert [i["value"] for i in history["temperature"]] == [7, 1007]
