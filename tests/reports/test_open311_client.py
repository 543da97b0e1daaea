"""A third-party Open311 client from PyPI against a real ``communs serve``.

``georeport`` (PyPI, Python 3) reads services, definitions and requests, in JSON and in
XML. It cannot post (its documentation says so), and the older PyPI clients that can
(``three``, ``open311``) are Python 2 only; posting is done here exactly as the
GeoReport v2 specification describes it: a form-urlencoded POST with ``api_key``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import make_commune
from georeport import GeoReport
from live_server import communs_serve

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
