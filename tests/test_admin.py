import io

from conftest import (
    STRONG_PASSWORD,
    csrf_from,
    form_post,
    login,
    make_agent,
    make_commune,
    make_instance_admin,
)
from sqlalchemy import select
from test_addresses import GOOD, HEADER, bal_row

from communs.core import service
from communs.core.models import Address, Commune


def instance_admin(db, client):
    make_instance_admin(db)
    login(client, "root@example.org")


def test_instance_admin_edits_a_commune_and_bad_boundary_changes_nothing(client, db):
    commune = make_commune(db)
    instance_admin(db, client)
    page = f"/admin/communes/{commune.id}"
    assert client.get(page).status_code == 200
    boundary = '{"type": "Polygon", "coordinates": [[[1,47],[2,47],[2,48],[1,47]]]}'
    response = form_post(client, page, {"name": "Alpha-la-Belle", "boundary": boundary}, page)
    assert response.status_code == 303
    bad = form_post(client, page, {"name": "Autre", "boundary": '{"type": "Point"}'}, page)
    assert bad.status_code == 422 and "Polygon ou un MultiPolygon" in bad.text
    with db.read() as session:
        stored = session.get(Commune, commune.id)
    assert stored.name == "Alpha-la-Belle" and stored.max_lon == 2
    assert client.get("/admin/communes/999").status_code == 404


def test_suspended_user_loses_session_and_cannot_log_in(client, db):
    commune = make_commune(db)
    agent = make_agent(db, commune.id, "agent@example.org")
    from fastapi.testclient import TestClient

    with TestClient(client.app, follow_redirects=False) as agent_client:
        login(agent_client, "agent@example.org")
        assert agent_client.get("/alpha/api/services").status_code == 200
        instance_admin(db, client)
        response = form_post(
            client, f"/admin/users/{agent.id}/active", {"active": "false"}, "/admin/users"
        )
        assert response.status_code == 303
        assert agent_client.get("/alpha/api/services").status_code == 401
        token = csrf_from(agent_client.get("/login").text)
        refused = agent_client.post(
            "/login",
            data={"email": "agent@example.org", "password": STRONG_PASSWORD, "csrf_token": token},
        )
        assert refused.status_code == 401


def test_commune_admin_renames_a_service(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    login(client, "maire@example.org")
    with db.read() as session:
        voirie = next(s for s in service.list_services(session, commune.id) if s.slug == "voirie")
    page = "/alpha/admin/"
    response = form_post(
        client, f"/alpha/admin/services/{voirie.id}/rename", {"name": "Voirie et mobilités"}, page
    )
    assert response.status_code == 303
    with db.read() as session:
        names = [s.name for s in service.list_services(session, commune.id)]
    assert "Voirie et mobilités" in names


def upload(client, content: bytes, filename: str = "bal.csv", content_type: str = "text/csv"):
    token = csrf_from(client.get("/alpha/admin/").text)
    return client.post(
        "/alpha/admin/addresses",
        data={"csrf_token": token},
        files={"bal": (filename, io.BytesIO(content), content_type)},
    )


def test_bal_upload_imports_and_reports_rejected_lines(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    login(client, "maire@example.org")
    content = (GOOD + bal_row("37001_0040_00001", "Rue Basse", "x", 0.85, 47.35) + "\n").encode()
    response = upload(client, content)
    assert response.status_code == 200
    assert "4 adresses importées, 1 lignes rejetées." in response.text
    assert "ligne 6" in response.text
    with db.read() as session:
        assert len(session.scalars(select(Address.id)).all()) == 4


def test_bal_upload_refuses_bad_files_and_keeps_addresses(client, db, settings):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    login(client, "maire@example.org")
    assert upload(client, GOOD.encode()).status_code == 200
    malformed = upload(client, b"a;b\n1;2\n")
    assert malformed.status_code == 422 and "colonnes manquantes" in malformed.text
    not_csv = upload(client, b"\x89PNG....", filename="photo.png", content_type="image/png")
    assert not_csv.status_code == 422 and "CSV" in not_csv.text
    too_big = upload(client, HEADER.encode() + b"\n" + b"x" * settings.upload_max_bytes)
    assert too_big.status_code == 422 and "taille maximale" in too_big.text
    with db.read() as session:
        assert len(session.scalars(select(Address.id)).all()) == 4


def test_htmx_upload_answers_the_result_fragment(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    login(client, "maire@example.org")
    token = csrf_from(client.get("/alpha/admin/").text)
    response = client.post(
        "/alpha/admin/addresses",
        headers={"HX-Request": "true", "X-CSRF-Token": token},
        files={"bal": ("bal.csv", io.BytesIO(GOOD.encode()), "text/csv")},
    )
    assert response.status_code == 200
    assert "<html" not in response.text and "4 adresses importées" in response.text


def test_granting_a_role_in_an_unknown_commune_is_refused(client, db):
    commune = make_commune(db)
    agent = make_agent(db, commune.id, "agent@example.org")
    instance_admin(db, client)
    response = form_post(
        client,
        f"/admin/users/{agent.id}/roles",
        {"commune_id": "999", "role": "agent"},
        "/admin/users",
    )
    assert response.status_code == 303
    assert "Commune, compte ou service inconnu." in client.get("/admin/users").text
    bad_role = form_post(
        client,
        f"/admin/users/{agent.id}/roles",
        {"commune_id": str(commune.id), "role": "maire"},
        "/admin/users",
    )
    assert bad_role.status_code == 303
    with db.read() as session:
        members = service.commune_members(session, commune.id)
    assert [(m.user.email, m.role) for m in members] == [("agent@example.org", "agent")]
