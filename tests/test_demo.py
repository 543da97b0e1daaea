import json

from conftest import login
from shapely.geometry import Point, shape

from communs.core import service
from communs.core.models import Address, Commune, User
from communs.demo.service import DEMO_SLUG, ensure_demo


def test_demo_is_idempotent_and_its_credentials_work(db, settings, client):
    first = ensure_demo(db, settings)
    second = ensure_demo(db, settings)
    assert first == second
    saved = json.loads((settings.data_dir / "demo-credentials.json").read_text())
    assert saved == first and set(saved) == {"commune", "admin_email", "admin_password", "api_key"}
    with db.read() as session:
        assert service.count_rows(session, Commune) == 1
        assert service.count_rows(session, User) == 1
        commune = service.commune_by_slug(session, DEMO_SLUG)
        assert service.count_rows(session, Address, commune_id=commune.id) > 50
    # The demo addresses lie inside the demo boundary.
    found = client.get(f"/{DEMO_SLUG}/api/addresses", params={"q": "mairie"}).json()
    assert found["features"]
    headers = {"Authorization": f"Bearer {saved['api_key']}"}
    assert client.get(f"/{DEMO_SLUG}/api/services", headers=headers).status_code == 200
    login(client, saved["admin_email"], saved["admin_password"])
    assert client.get("/admin/").status_code == 200
    # The hub holds the seven city models, every one inside the commune.
    counts = {}
    for model in (
        "Streetlight",
        "StreetlightControlCabinet",
        "ParkingSpot",
        "OffStreetParking",
        "AirQualityObserved",
        "WaterConsumptionObserved",
        "WasteContainer",
    ):
        response = client.get(
            "/ngsi-ld/v1/entities",
            params={"type": model, "count": "true", "limit": "1000"},
            headers={"NGSILD-Tenant": DEMO_SLUG},
        )
        counts[model] = int(response.headers["NGSILD-Results-Count"])
        for entity in response.json():
            lon, lat = entity["location"]["value"]["coordinates"]
            assert shape(commune.boundary).contains(Point(lon, lat))
    assert all(counts.values()) and sum(counts.values()) >= 300, counts


def test_demo_recreates_lost_credentials(db, settings):
    first = ensure_demo(db, settings)
    (settings.data_dir / "demo-credentials.json").unlink()
    again = ensure_demo(db, settings)
    assert again["admin_password"] != first["admin_password"]
    with db.read() as session:
        assert service.api_key_for_secret(session, again["api_key"]) is not None
        assert service.count_rows(session, Commune) == 1
