"""The value index only narrows a query: results equal a full evaluation of q."""

import random

import pytest

from communs.hub import service
from communs.hub.context import term_map
from communs.hub.query_language import bind, matches, parse_q

QUERIES = [
    "level>0.5",
    "level>=0.5;level<0.8",
    "level==0.25",
    "level==0.2..0.4",
    "level==0.1,0.9",
    'status=="ok"',
    "status==ok,ko",
    'status=="ok"|level<0.1',
    "(status==ko;level>0.3)|count==3",
    "count==3",
    "count>2;count<5",
    'name=="Pont"',
    "seen==2026-01-01T10:00:00Z",
    "seen>=2026-01-01T00:00:00Z",
    'tags=="a"',
    "tags==b",
    "refSite==urn:ngsi-ld:Site:1",
    "kind==Bin",
    "level!=0.5",
    "level",
    "status~=o.",
    "wrapped==7",
    'note=="2026-01-01"',
]


def entity(n: int, rng: random.Random) -> dict:
    body = {"id": f"urn:ngsi-ld:T:{n}", "type": "T"}
    if rng.random() < 0.9:
        body["level"] = {"type": "Property", "value": round(rng.random(), 2)}
    if rng.random() < 0.8:
        body["status"] = {"type": "Property", "value": rng.choice(["ok", "ko", "maybe", 1])}
    if rng.random() < 0.5:
        body["count"] = {"type": "Property", "value": rng.choice([1, 2, 3, 4, 5, 3.0, True])}
    if rng.random() < 0.3:
        body["name"] = {"type": "LanguageProperty", "languageMap": {"fr": "Pont", "en": "Bridge"}}
    if rng.random() < 0.5:
        body["seen"] = {
            "type": "Property",
            "value": rng.choice(
                ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00+01:00", "2025-12-31T23:00:00Z"]
            ),
        }
    if rng.random() < 0.5:
        body["tags"] = {"type": "Property", "value": rng.sample(["a", "b", "c", 4], 2)}
    if rng.random() < 0.4:
        body["refSite"] = {
            "type": "Relationship",
            "object": f"urn:ngsi-ld:Site:{rng.randint(1, 3)}",
        }
    if rng.random() < 0.4:
        body["kind"] = {"type": "VocabProperty", "vocab": rng.choice(["Bin", "Lamp"])}
    if rng.random() < 0.3:
        body["wrapped"] = {"type": "Property", "value": {"@type": "Number", "@value": 7}}
    if rng.random() < 0.3:
        body["note"] = {"type": "Property", "value": rng.choice(["2026-01-01", "x" * 300])}
    if rng.random() < 0.2:
        body["level"] = [
            {"type": "Property", "value": 0.25, "datasetId": "urn:ngsi-ld:D:1"},
            {"type": "Property", "value": 0.9},
        ]
    return body


@pytest.mark.parametrize("query", QUERIES)
def test_query_results_equal_a_full_evaluation(hub, db, query):
    rng = random.Random(42)
    entities = [entity(n, rng) for n in range(80)]
    assert hub.request("POST", "/entityOperations/upsert", entities).status_code == 201
    # Some updates, so that the index is also maintained through writes.
    for n in range(0, 80, 7):
        hub.request(
            "PATCH",
            f"/entities/urn:ngsi-ld:T:{n}/attrs",
            {"level": {"type": "Property", "value": 0.5}},
        )
        hub.request(
            "POST",
            f"/entities/urn:ngsi-ld:T:{n}/attrs",
            {"count": {"type": "Property", "value": 3}},
        )
    response = hub.get("/entities", params={"type": "T", "q": query, "limit": "1000"})
    assert response.status_code == 200, response.text
    found = {e["id"] for e in response.json()}
    terms = term_map(None)
    bound = bind(parse_q(query), terms.expand)
    with db.read() as session:
        documents, _ = service.query_entities(
            session,
            1,
            service.EntityQuery(types=(terms.expand("T"),)),
            limit=1000,
            offset=0,
            count=False,
        )
    expected = {doc["id"] for doc in documents if matches(bound, doc)}
    assert len(documents) == 80
    assert found == expected
