"""Third-party Open311 clients from PyPI against a real ``communs serve``.

``three`` (Code for America) posts a request with a photo and reads requests back (in
JSON; its XML reader is Python 2 only). ``georeport`` reads services, definitions and
requests in JSON and in XML; it cannot post, so its request is posted exactly as the
GeoReport v2 specification describes it: a form-urlencoded POST with ``api_key``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
from conftest import make_commune
from georeport import GeoReport
from live_server import communs_serve
from PIL import Image

from communs.core import service as core
from communs.core.db import Database
from communs.reports import service


def test_georeport_reads_what_a_form_post_created(database_url: str, tmp_path: Path):
    db = Database(database_url)
    commune = make_commune(db, "alpha", "37001")
    db.write(service.install_default_categories, commune.id)
    key = db.write(
        core.create_api_key, commune_id=commune.id, name="client", scopes=["reports:write"]
    ).secret
    db.close()
    with communs_serve(database_url, tmp_path) as url:
        posted = httpx.post(
            f"{url}/open311/v2/requests.json",
            data={
                "jurisdiction_id": "alpha",
                "api_key": key,
                "service_code": "depot-sauvage",
                "description": "Un canapé abandonné sur le trottoir.",
                "lat": "47.35",
                "long": "0.85",
                "email": "habitant@example.org",
                "first_name": "Camille",
            },
        )
        assert posted.status_code == 201, posted.text
        number = posted.json()[0]["service_request_id"]
        for output in ("json", "xml"):
            client = GeoReport(f"{url}/open311/v2", jurisdiction="alpha", output_format=output)
            services = client.get_service_list()
            assert "depot-sauvage" in {item["service_code"] for item in services}
            definition = client.get_service_definition("depot-sauvage")
            assert definition["service_code"] == "depot-sauvage"
            request = client.get_service_request(number)
            assert request["service_request_id"] == number
            assert request["status"] == "open"
            assert request["service_code"] == "depot-sauvage"
            assert request["description"] == "Un canapé abandonné sur le trottoir."
            listed = client.get_service_requests(service_code="depot-sauvage", status="open")
            listed = listed if isinstance(listed, list) else [listed]
            assert [item["service_request_id"] for item in listed] == [number]


def test_three_posts_with_a_photo_and_reads_back(
    database_url: str, tmp_path: Path, monkeypatch
) -> None:
    # three 0.8 (PyPI, by Code for America) predates Python 3: ``itertools.ifilter`` is its
    # only obstacle on import; ``filter`` is the same function in Python 3.
    monkeypatch.setattr(itertools, "ifilter", filter, raising=False)
    from three import Three

    db = Database(database_url)
    commune = make_commune(db, "alpha", "37001")
    db.write(service.install_default_categories, commune.id)
    key = db.write(
        core.create_api_key, commune_id=commune.id, name="three", scopes=["reports:write"]
    ).secret
    db.close()
    photo = tmp_path / "tas.jpg"
    Image.new("RGB", (200, 150), (90, 90, 90)).save(photo, "JPEG")
    with communs_serve(database_url, tmp_path) as url:
        client = Three(f"{url}/open311/v2", api_key=key, jurisdiction="alpha")
        codes = {item["service_code"] for item in client.services()}
        assert "depot-sauvage" in codes
        with photo.open("rb") as media:
            created = client.post(
                "depot-sauvage",
                description="Gravats déposés au coin de la rue.",
                lat="47.36",
                long="0.86",
                email="habitant@example.org",
                name="Camille Martin",
                media=media,
            )
        assert client.post_response.status_code == 201, created
        number = created[0]["service_request_id"]
        (request,) = client.request(number)
        assert request["description"] == "Gravats déposés au coin de la rue."
        assert request["media_url"].endswith(".jpg")
        assert httpx.get(request["media_url"]).headers["content-type"] == "image/jpeg"
        listed = client.requests("depot-sauvage")
        assert [item["service_request_id"] for item in listed] == [number]
        refused = Three(f"{url}/open311/v2", api_key="wrong", jurisdiction="alpha")
        assert (
            refused.post("depot-sauvage", description="x", lat="47.36", long="0.86")[0]["code"]
            == 403
        )
