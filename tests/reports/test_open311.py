"""Open311 GeoReport v2: every endpoint in JSON and XML, checked against the published
JSON Schemas; errors in the Open311 format; tenancy; the hub mirror of each report."""

from __future__ import annotations

import datetime as dt
import io
import json
from xml.etree import ElementTree

import pytest
from conftest import SHARED, make_commune
from jsonschema import Draft7Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from sqlalchemy import func, select, update

from communs.core import service as core
from communs.reports import service
from communs.reports.models import Report, Status

SCHEMAS = SHARED / "conformance" / "open311"
INSIDE = {"lat": "47.35", "long": "0.85"}  # inside the test communes' boundary


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft7Validator]:
    if not SCHEMAS.exists():
        pytest.skip(f"conformance schemas not found at {SCHEMAS} (clone beside ../shared)")
    schemas = {path.name: json.loads(path.read_text()) for path in SCHEMAS.glob("*.json")}
    registry = Registry().with_resources(
        (name, Resource.from_contents(schema, default_specification=DRAFT7))
        for name, schema in schemas.items()
    )
    return {
        name.removesuffix(".json"): Draft7Validator(schema, registry=registry)
        for name, schema in schemas.items()
        if name != "swagger.json"
    }


def valid(validators, schema: str, body) -> None:
    errors = [error.message for error in validators[schema].iter_errors(body)]
    assert not errors, errors


class City:
    """A commune with its report categories and an Open311 key."""

    def __init__(self, client, db, slug: str, insee: str) -> None:
        self.client, self.db = client, db
        self.commune = make_commune(db, slug, insee)
        self.slug = slug
        services = {item.slug: item for item in self._services()}
        db.write(service.install_default_categories, self.commune.id)
        db.write(
            service.create_category,
            self.commune.id,
            code="arbre-tombe",
            name="Arbre tombé",
            service_id=services["espaces-verts"].id,
            group="Espaces verts",
            notice="Un agent passe sous 48 h.",
            emergency_notice="Un arbre bloque la route ? Appelez le 18.",
            attributes=[
                {
                    "code": "bloque",
                    "description": "L'arbre bloque-t-il la chaussée ?",
                    "datatype": "singlevaluelist",
                    "required": True,
                    "values": [
                        {"key": "oui", "name": "Oui", "blocks": True},
                        {"key": "non", "name": "Non"},
                    ],
                },
                {"code": "diametre", "description": "Diamètre (cm)", "datatype": "number"},
            ],
        )
        self.key = db.write(
            core.create_api_key,
            commune_id=self.commune.id,
            name="open311",
            scopes=["reports:read", "reports:write"],
        ).secret

    def _services(self):
        with self.db.read() as session:
            return core.list_services(session, self.commune.id)

    def get(self, path: str, **params):
        return self.client.get(
            f"/open311/v2/{path}", params={"jurisdiction_id": self.slug} | params
        )

    def post(self, fmt: str = "json", **fields):
        data = {
            "jurisdiction_id": self.slug,
            "api_key": self.key,
            "service_code": "lampadaire-en-panne",
            "description": "Le lampadaire devant le 3 rue des Lilas ne s'allume plus.",
            "email": "habitant@example.org",
            **INSIDE,
        } | fields
        return self.client.post(
            f"/open311/v2/requests.{fmt}", data={k: v for k, v in data.items() if v is not None}
        )

    def count(self) -> int:
        with self.db.read() as session:
            return session.scalar(select(func.count()).where(Report.commune_id == self.commune.id))


@pytest.fixture
def city(client, db) -> City:
    return City(client, db, "alpha", "37001")


def xml_items(text: str) -> list[dict[str, str | None]]:
    """The flat children of each item of an Open311 XML list."""
    root = ElementTree.fromstring(text)
    return [{child.tag: child.text for child in item} for item in root]


def as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def test_discovery_and_services_in_both_formats(city, validators):
    discovery = city.client.get("/open311/v2/discovery.json").json()
    assert discovery["endpoints"][0]["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert "text/xml" in discovery["endpoints"][0]["formats"]
    services = city.get("services.json")
    assert services.status_code == 200
    body = services.json()
    valid(validators, "services", body)
    codes = {item["service_code"]: item for item in body}
    assert codes["lampadaire-en-panne"]["agency_responsible"] == "Éclairage public"
    assert codes["arbre-tombe"]["metadata"] is True
    assert codes["nid-de-poule"]["metadata"] is False
    xml = city.get("services.xml")
    assert xml.headers["content-type"].startswith("text/xml")
    as_xml = xml_items(xml.text)
    assert as_xml == [{key: as_text(value) for key, value in item.items()} for item in body]


def test_service_definition_lists_questions_without_internal_flags(city, validators):
    definition = city.get("services/arbre-tombe.json").json()
    valid(validators, "service-definition", definition)
    questions = {item["code"]: item for item in definition["attributes"]}
    assert questions["bloque"]["datatype"] == "singlevaluelist"
    assert questions["bloque"]["values"] == [
        {"key": "oui", "name": "Oui"},
        {"key": "non", "name": "Non"},
    ]
    xml = ElementTree.fromstring(city.get("services/arbre-tombe.xml").text)
    assert xml.tag == "service_definition"
    assert [a.findtext("code") for a in xml.iter("attribute")] == ["bloque", "diametre"]
    missing = city.get("services/inconnu.json")
    assert missing.status_code == 404
    assert missing.json()[0]["code"] == 404


def test_post_then_read_a_request_in_json_and_xml(city, validators):
    posted = city.post(address_string="3 rue des Lilas")
    assert posted.status_code == 201, posted.text
    (created,) = posted.json()
    number = created["service_request_id"]
    read = city.get(f"requests/{number}.json")
    assert read.status_code == 200
    body = read.json()
    valid(validators, "requests", body)
    (request,) = body
    assert request["status"] == "open"
    assert request["service_code"] == "lampadaire-en-panne"
    assert request["agency_responsible"] == "Éclairage public"
    assert request["address"] == "3 rue des Lilas"
    assert (request["lat"], request["long"]) == (47.35, 0.85)
    assert "email" not in request  # personal data stays in the back-office
    (as_xml,) = xml_items(city.get(f"requests/{number}.xml").text)
    assert as_xml == {key: as_text(value) for key, value in request.items()}
    xml_post = city.post(fmt="xml")
    assert xml_post.status_code == 201
    assert ElementTree.fromstring(xml_post.text).findtext("request/service_request_id")
    token = city.get(f"tokens/{number}.json").json()
    assert token == [{"service_request_id": number, "token": number}]


def test_questions_are_checked_and_a_blocking_answer_shows_the_emergency_notice(city):
    missing = city.post(service_code="arbre-tombe")
    assert missing.status_code == 400
    assert "L'arbre bloque-t-il la chaussée" in missing.json()[0]["description"]
    blocked = city.post(service_code="arbre-tombe", **{"attribute[bloque]": "oui"})
    assert blocked.status_code == 400
    assert "Appelez le 18" in blocked.json()[0]["description"]
    not_a_number = city.post(
        service_code="arbre-tombe", **{"attribute[bloque]": "non", "attribute[diametre]": "gros"}
    )
    assert not_a_number.status_code == 400
    assert city.count() == 0
    accepted = city.post(
        service_code="arbre-tombe", **{"attribute[bloque]": "non", "attribute[diametre]": "40"}
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()[0]["service_notice"] == "Un agent passe sous 48 h."
    with city.db.read() as session:
        (report,) = session.scalars(select(Report)).all()
    assert report.answers == {"bloque": "non", "diametre": 40.0}


def test_errors_use_the_open311_format(city):
    no_code = city.post(service_code="")
    assert no_code.status_code == 400
    assert no_code.json() == [{"code": 400, "description": "service_code is required"}]
    no_code_xml = city.post(fmt="xml", service_code="")
    assert no_code_xml.status_code == 400
    error = ElementTree.fromstring(no_code_xml.text)
    assert error.tag == "errors" and error.findtext("error/code") == "400"
    bad_key = city.post(api_key="not-a-key")
    assert bad_key.status_code == 403 and bad_key.json()[0]["code"] == 403
    no_key = city.post(api_key=None)
    assert no_key.status_code == 403
    unknown = city.get("requests/999999.json")
    assert unknown.status_code == 404 and unknown.json()[0]["code"] == 404
    assert city.get("requests/abc.xml").status_code == 404
    nowhere = city.client.get("/open311/v2/services.json", params={"jurisdiction_id": "atlantide"})
    assert nowhere.status_code == 404
    assert city.get("requests.json", start_date="hier").status_code == 400
    assert city.get("requests.json", status="fixed").status_code == 400
    assert city.count() == 0


def test_bad_input_gets_french_messages_and_saves_nothing(city):
    outside = city.post(lat="48.85", long="2.35")
    assert outside.status_code == 400
    assert "aucune commune" in outside.json()[0]["description"]
    too_long = city.post(description="x" * 4001)
    assert too_long.status_code == 400
    assert "4000 caractères" in too_long.json()[0]["description"]
    no_place = city.post(lat=None, long=None)
    assert "saisissez une adresse" in no_place.json()[0]["description"]
    unknown = city.post(service_code="ovni")
    assert unknown.status_code == 400 and "n'existe pas" in unknown.json()[0]["description"]
    anonymous = city.post(email=None)
    assert anonymous.status_code == 400 and "e-mail" in anonymous.json()[0]["description"]
    assert city.count() == 0
    city.db.write(service.set_anonymous_allowed, city.commune.id, True)
    assert city.post(email=None).status_code == 201


def test_a_point_in_a_neighbouring_commune_is_named(client, db, city):
    make_commune(
        db,
        "voisine",
        "37002",
        name="Voisine",
        boundary={
            "type": "Polygon",
            "coordinates": [[[0.9, 47.3], [1.0, 47.3], [1.0, 47.4], [0.9, 47.4], [0.9, 47.3]]],
        },
    )
    answer = city.post(lat="47.35", long="0.95")
    assert answer.status_code == 400
    assert "Voisine" in answer.json()[0]["description"]


def test_request_filters_status_dates_pages_and_extensions(city, validators):
    numbers = [int(city.post().json()[0]["service_request_id"]) for _ in range(3)]
    city.post(service_code="nid-de-poule")
    agent = None
    with city.db.read() as session:
        first = service.get_report(session, city.commune.id, numbers[0])
    city.db.write(
        lambda session: service.set_status(
            session,
            service.get_report(session, city.commune.id, first.id),
            Status.RESOLVED,
            actor_user_id=agent,
            text="Lampe remplacée.",
        )
    )
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=120)
    city.db.write(
        lambda session: session.execute(
            update(Report).where(Report.id == numbers[2]).values(requested_at=old)
        )
    )
    recent = city.get("requests.json").json()
    valid(validators, "requests", recent)
    assert {int(r["service_request_id"]) for r in recent} == {
        numbers[0],
        numbers[1],
        numbers[1] + 2,
    }
    closed = city.get("requests.json", status="closed").json()
    assert [r["service_request_id"] for r in closed] == [str(numbers[0])]
    assert closed[0]["status_notes"] == "Lampe remplacée."
    potholes = city.get("requests.json", service_code="nid-de-poule").json()
    assert [r["service_code"] for r in potholes] == ["nid-de-poule"]
    ranged = city.get(
        "requests.json",
        start_date=(old - dt.timedelta(days=1)).isoformat(),
        end_date=(old + dt.timedelta(days=1)).isoformat(),
    ).json()
    assert [int(r["service_request_id"]) for r in ranged] == [numbers[2]]
    listed = city.get("requests.json", service_request_id=f"{numbers[2]},{numbers[0]}").json()
    assert {int(r["service_request_id"]) for r in listed} == {numbers[0], numbers[2]}
    page_one = city.get("requests.json", page_size="2", page="1").json()
    page_two = city.get("requests.json", page_size="2", page="2").json()
    assert len(page_one) == 2 and len(page_two) == 1
    assert not {r["service_request_id"] for r in page_one} & {
        r["service_request_id"] for r in page_two
    }
    extended = city.get("requests.json", service_request_id=str(numbers[0]), extensions="true")
    history = extended.json()[0]["extended_attributes"]
    assert history["detailed_status"] == "resolved" and history["channel"] == "open311"
    assert [h["detailed_status"] for h in history["history"]] == ["new", "resolved"]
    updates = city.get("servicerequestupdates.json").json()
    assert [u["detailed_status"] for u in updates][-1] == "resolved"
    assert updates[-1]["description"] == "Lampe remplacée."


def test_communes_never_see_each_other(client, db, city):
    beta = City(client, db, "beta", "37002")
    number = city.post().json()[0]["service_request_id"]
    assert beta.get(f"requests/{number}.json").status_code == 404
    assert beta.get("requests.json").json() == []
    assert beta.get("servicerequestupdates.json").json() == []
    alpha_key_on_beta = beta.post(api_key=city.key)
    assert alpha_key_on_beta.status_code == 403
    assert beta.count() == 0
    ambiguous = client.get("/open311/v2/requests.json")
    assert ambiguous.status_code == 400  # two communes: jurisdiction_id is required


def test_each_report_is_an_ngsi_ld_entity_in_the_hub(city):
    number = city.post().json()[0]["service_request_id"]
    entity_url = f"/ngsi-ld/v1/entities/urn:ngsi-ld:service_requests:{number}"
    headers = {"NGSILD-Tenant": "alpha"}
    entity = city.client.get(entity_url, headers=headers, params={"options": "keyValues"})
    assert entity.status_code == 200, entity.text
    body = entity.json()
    assert body["type"] == "service_requests"
    assert body["status"] == "open" and body["service_code"] == "lampadaire-en-panne"
    assert body["location"] == {"type": "Point", "coordinates": [0.85, 47.35]}
    assert "email" not in body and "habitant@example.org" not in entity.text
    city.db.write(
        lambda session: service.set_status(
            session,
            service.get_report(session, city.commune.id, int(number)),
            Status.WONT_FIX,
            actor_user_id=None,
        )
    )
    closed = city.client.get(entity_url, headers=headers, params={"options": "keyValues"})
    assert closed.json()["status"] == "closed"


def jpeg_with_gps() -> bytes:
    image = Image.new("RGB", (640, 480), (200, 120, 40))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    gps = {1: "N", 2: (47.0, 21.0, 7.5), 3: "E", 4: (0.0, 51.0, 2.25)}
    exif[0x8825] = gps
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the fixture has a position
    return data


def test_photos_are_reencoded_without_location_and_served(city):
    posted = city.client.post(
        "/open311/v2/requests.json",
        data={
            "jurisdiction_id": city.slug,
            "api_key": city.key,
            "service_code": "depot-sauvage",
            "description": "Sacs abandonnés au pied du conteneur.",
            "email": "habitant@example.org",
            **INSIDE,
        },
        files=[("media", ("photo.jpg", jpeg_with_gps(), "image/jpeg"))],
    )
    assert posted.status_code == 201, posted.text
    number = posted.json()[0]["service_request_id"]
    (request,) = city.get(f"requests/{number}.json").json()
    media_url = request["media_url"]
    assert media_url.endswith(".jpg") and f"/alpha/signalements/{number}/photos/" in media_url
    served = city.client.get(media_url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    stored = Image.open(io.BytesIO(served.content))
    assert stored.size == (640, 480)
    assert not stored.getexif().get_ifd(0x8825) and not stored.getexif()
    assert b"PhoneMaker" not in served.content and b"Exif" not in served.content


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("photo.jpg", b"#!/bin/sh\necho not an image\n", "n'est pas une photo lisible"),
        ("huge.jpg", b"\xff\xd8\xff" + b"0" * (8 * 1024 * 1024), "dépasse 8 Mo"),
    ],
)
def test_files_that_are_not_acceptable_photos_are_refused(city, name, content, message):
    posted = city.client.post(
        "/open311/v2/requests.json",
        data={
            "jurisdiction_id": city.slug,
            "api_key": city.key,
            "service_code": "depot-sauvage",
            "description": "Sacs abandonnés.",
            "email": "habitant@example.org",
            **INSIDE,
        },
        files=[("media", (name, content, "image/jpeg"))],
    )
    assert posted.status_code == 400
    assert message in posted.json()[0]["description"]
    assert city.count() == 0
