import pytest
from conftest import STRONG_PASSWORD, form_post, login, make_commune, make_instance_admin
from sqlalchemy import select

from communs.core import service
from communs.core.models import Commune, Service, User
from communs.core.service import InvalidInput


@pytest.mark.parametrize("code", ["37261", "2A004", "2B033", "97411", "01001", "95690"])
def test_valid_insee_codes(code):
    assert service.validate_insee_code(code) == code


@pytest.mark.parametrize(
    "code", ["", "3726", "372611", "00123", "96001", "20001", "97712", "2C001", "ABCDE"]
)
def test_invalid_insee_code_has_a_french_message(code):
    with pytest.raises(InvalidInput) as error:
        service.validate_insee_code(code)
    assert "Le code INSEE" in str(error.value)
    assert error.value.field == "insee_code"


def test_create_commune_with_default_services_and_boundary(db):
    commune = make_commune(db, "alpha", "37001")
    with db.read() as session:
        names = [s.name for s in service.list_services(session, commune.id)]
        stored = service.commune_by_slug(session, "alpha")
    assert {"Voirie", "Propreté", "Éclairage public"} <= set(names)
    assert stored.min_lon == pytest.approx(0.80) and stored.max_lat == pytest.approx(0.40 + 47)


def test_duplicate_slug_and_insee_refused_nothing_written(db):
    make_commune(db, "alpha", "37001")
    with pytest.raises(InvalidInput, match="identifiant « alpha »"):
        make_commune(db, "alpha", "37002")
    with pytest.raises(InvalidInput, match="code INSEE 37001"):
        make_commune(db, "beta", "37001")
    with db.read() as session:
        assert session.scalars(select(Commune.slug)).all() == ["alpha"]
        assert service.count_rows(session, Service) == len(service.DEFAULT_SERVICES)


@pytest.mark.parametrize("slug", ["admin", "api", "Bad Slug", "-x", "a--b", "é"])
def test_bad_or_reserved_slug_refused(db, slug):
    with pytest.raises(InvalidInput):
        make_commune(db, slug, "37003")


@pytest.mark.parametrize(
    "boundary",
    [
        {"type": "Point", "coordinates": [0.8, 47.3]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
        {"type": "Polygon", "coordinates": [[[500, 0], [501, 1], [501, 0], [500, 0]]]},
        {"type": "Polygon", "coordinates": "nope"},
    ],
)
def test_invalid_boundary_refused(db, boundary):
    with pytest.raises(InvalidInput) as error:
        make_commune(db, "gamma", "37004", boundary=boundary)
    assert error.value.field == "boundary"


@pytest.mark.parametrize(
    "password, fragment",
    [
        ("court", "au moins 12 caractères"),
        ("toutenminuscules", "trois types de caractères"),
        ("Motdepasse123", "trop facile"),
        ("Jeanne-Dupont-2026", "trop facile"),
    ],
)
def test_weak_password_refused_with_french_message(db, password, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        db.write(
            service.create_user, email="jeanne.dupont@example.org", name="Jeanne", password=password
        )
    with db.read() as session:
        assert service.count_rows(session, User) == 0


def test_api_communes_lists_slug_name_insee_boundary(client, db):
    make_commune(db, "alpha", "37001", name="Alpha-sur-Loire")
    body = client.get("/api/communes").json()
    assert body == [
        {
            "slug": "alpha",
            "name": "Alpha-sur-Loire",
            "insee_code": "37001",
            "boundary": body[0]["boundary"],
        }
    ]
    assert body[0]["boundary"]["type"] == "Polygon"


def test_admin_form_shows_french_errors_and_writes_nothing(client, db):
    make_instance_admin(db)
    make_commune(db, "alpha", "37001")
    login(client, "root@example.org")
    bad_insee = form_post(
        client, "/admin/communes", {"name": "Beta", "slug": "beta", "insee_code": "99999"}
    )
    assert bad_insee.status_code == 422
    assert "Le code INSEE « 99999 » n&#39;est pas valide" in bad_insee.text
    assert 'aria-invalid="true"' in bad_insee.text
    duplicate = form_post(
        client, "/admin/communes", {"name": "Alpha bis", "slug": "alpha", "insee_code": "37005"}
    )
    assert duplicate.status_code == 422
    assert "Une commune utilise déjà l&#39;identifiant « alpha »" in duplicate.text
    weak = form_post(
        client, "/admin/users", {"name": "Bob", "email": "bob@example.org", "password": "bob"}
    )
    assert weak.status_code == 422 and "au moins 12 caractères" in weak.text
    bad_geojson = form_post(
        client, "/admin/communes", {"name": "Delta", "insee_code": "37006", "boundary": "{not json"}
    )
    assert bad_geojson.status_code == 422 and "JSON valide" in bad_geojson.text
    ok = form_post(client, "/admin/communes", {"name": "Val d'Été", "insee_code": "37007"})
    assert ok.status_code == 303
    with db.read() as session:
        assert sorted(session.scalars(select(Commune.slug))) == ["alpha", "val-d-ete"]
        assert service.user_by_email(session, "bob@example.org") is None


def test_commune_admin_manages_services_and_agents(client, db):
    commune = make_commune(db, "alpha", "37001")
    db.write(
        service.create_agent,
        commune_id=commune.id,
        email="maire@example.org",
        name="Maire",
        password=STRONG_PASSWORD,
        role="commune_admin",
    )
    login(client, "maire@example.org")
    page = "/alpha/admin/"
    assert client.get(page).status_code == 200
    assert (
        form_post(client, "/alpha/admin/services", {"name": "Cimetières"}, page).status_code == 303
    )
    duplicate = form_post(client, "/alpha/admin/services", {"name": "Cimetières"}, page)
    assert duplicate.status_code == 422 and "existe déjà" in duplicate.text
    created = form_post(
        client,
        "/alpha/admin/agents",
        {
            "name": "Agent Voirie",
            "email": "voirie@example.org",
            "password": STRONG_PASSWORD,
            "role": "agent",
        },
        page,
    )
    assert created.status_code == 303
    with db.read() as session:
        assert "Cimetières" in [s.name for s in service.list_services(session, commune.id)]
        members = service.commune_members(session, commune.id)
    assert {(m.user.email, m.role) for m in members} == {
        ("maire@example.org", "commune_admin"),
        ("voirie@example.org", "agent"),
    }
