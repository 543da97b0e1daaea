"""Report pages: residents report (by address, with a photo), confirm by the e-mailed
link, follow; agents handle their service's queue; French errors; escaping; rate limit."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from conftest import HEADER, bal_row, csrf_from, imported, login, make_agent, make_commune
from PIL import Image
from sqlalchemy import func, select

from communs.core import service as core
from communs.core.models import Job
from communs.reports import service, views
from communs.reports.models import Follower, Photo, Report, Status

LILAS = "3 Rue des Lilas"


@pytest.fixture(autouse=True)
def fresh_rate_limit():
    views.REPORT_LIMITER.events.clear()


@pytest.fixture
def town(db):
    commune = make_commune(db, "alpha", "37001")
    db.write(service.install_default_categories, commune.id)
    imported(
        db,
        commune,
        "\n".join([HEADER, bal_row("37001_0100_00003", "Rue des Lilas", 3, 0.853, 47.353)]) + "\n",
    )
    with db.read() as session:
        services = {item.slug: item for item in core.list_services(session, commune.id)}
    make_agent(db, commune.id, "eclairage@example.org", service_id=services["eclairage-public"].id)
    make_agent(db, commune.id, "voirie@example.org", service_id=services["voirie"].id)
    return commune


def photo_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def submit(client, **fields):
    token = csrf_from(client.get("/alpha/signalements/nouveau").text)
    data = {
        "csrf_token": token,
        "service_code": "lampadaire-en-panne",
        "description": "Le lampadaire est éteint depuis trois nuits.",
        "address": LILAS,
        "email": "habitant@example.org",
    } | fields
    files = [("photos", ("lampadaire.jpg", photo_bytes(), "image/jpeg"))]
    return client.post(
        "/alpha/signalements/nouveau",
        data={k: v for k, v in data.items() if v is not None},
        files=files,
    )


def emails(db, to: str) -> list[dict]:
    with db.read() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "core.email")).all()
    return [job.payload for job in jobs if job.payload["to"] == to]


def only_report(db) -> Report:
    with db.read() as session:
        (report,) = session.scalars(select(Report)).all()
    return report


def test_resident_reports_by_typing_an_address_then_confirms_by_email(client, db, town):
    form = client.get("/alpha/signalements/nouveau")
    assert form.status_code == 200
    assert "Signaler un problème" in form.text and 'name="address"' in form.text
    sent = submit(client)
    assert sent.status_code == 303, sent.text
    receipt = client.get(sent.headers["location"])
    report = only_report(db)
    assert f"Votre numéro de signalement : {report.id}" in receipt.text
    assert (report.lon, report.lat, report.address) == (0.853, 47.353, f"{LILAS}, Alpha")
    assert not report.confirmed
    assert client.get(f"/alpha/signalements/{report.id}").status_code == 404
    (confirmation,) = emails(db, "habitant@example.org")
    link = re.search(r"/alpha/signalements/\d+/confirmer/\S+", confirmation["body"]).group(0)
    confirmed = client.get(link)
    assert confirmed.status_code == 303
    page = client.get(f"/alpha/signalements/{report.id}")
    assert page.status_code == 200 and "Lampadaire en panne" in page.text
    assert f"/alpha/signalements/{report.id}/photos/" in page.text
    listed = client.get("/alpha/signalements")
    assert f"/alpha/signalements/{report.id}" in listed.text


def test_form_errors_are_french_keep_the_input_and_save_nothing(client, db, town):
    cases = [
        ({"service_code": ""}, "Choisissez une catégorie"),
        ({"description": "x" * 4001}, "4000 caractères"),
        ({"address": "", "lon": "2.35", "lat": "48.85"}, "aucune commune"),
        ({"address": "12 impasse Inconnue"}, "Adresse introuvable"),
        ({"email": ""}, "e-mail"),
    ]
    for fields, message in cases:
        answer = submit(client, **fields)
        assert answer.status_code == 400, fields
        assert message in answer.text, fields
        assert "Le lampadaire est éteint" in answer.text or "x" * 100 in answer.text
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0


def test_a_script_in_a_description_stays_text(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client, description='<script>alert("x")</script> trou', email="")
    report = only_report(db)
    page = client.get(f"/alpha/signalements/{report.id}")
    assert '<script>alert("x")</script>' not in page.text
    assert "&lt;script&gt;" in page.text


def test_the_public_form_is_rate_limited_per_client(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    for _ in range(views.RATE_MAX_REPORTS):
        assert submit(client, email="").status_code == 303
    refused = submit(client, email="")
    assert refused.status_code == 429
    assert "Trop de signalements" in refused.text


def test_agents_handle_only_their_service_and_followers_are_told(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client)
    report = only_report(db)
    login(client, "voirie@example.org")
    assert (
        f"/alpha/admin/signalements/{report.id}" not in client.get("/alpha/admin/signalements").text
    )
    assert client.get(f"/alpha/admin/signalements/{report.id}").status_code == 403
    token = csrf_from(client.get("/alpha/admin/signalements").text)
    refused = client.post(
        f"/alpha/admin/signalements/{report.id}/statut",
        data={"csrf_token": token, "status": "resolved"},
    )
    assert refused.status_code == 403
    assert only_report(db).status == Status.NEW
    client.cookies.clear()
    login(client, "eclairage@example.org")
    queue = client.get("/alpha/admin/signalements")
    assert f"/alpha/admin/signalements/{report.id}" in queue.text
    page = client.get(f"/alpha/admin/signalements/{report.id}")
    token = csrf_from(page.text)
    for status, reply in (("acknowledged", "Bien reçu."), ("resolved", "Lampe changée.")):
        done = client.post(
            f"/alpha/admin/signalements/{report.id}/statut",
            data={"csrf_token": token, "status": status, "reply": reply},
        )
        assert done.status_code == 303
    assert only_report(db).status == Status.RESOLVED
    bodies = [mail["body"] for mail in emails(db, "habitant@example.org")]
    assert any("Bien reçu." in body for body in bodies)
    (resolved,) = [body for body in bodies if "Lampe changée." in body]
    check = re.search(r"/alpha/signalements/\d+/verifier/\S+", resolved).group(0)
    client.cookies.clear()
    question = client.get(check)
    answer = client.post(check, data={"csrf_token": csrf_from(question.text), "repare": "non"})
    assert answer.status_code == 303
    reopened = only_report(db)
    assert reopened.status == Status.NEW
    assert any("rouvert" in mail["subject"] for mail in emails(db, "eclairage@example.org"))
    trail = client.get(f"/alpha/signalements/{report.id}").text
    assert "Le demandeur indique que le problème n&#39;est pas réglé." in trail


def test_an_agent_of_another_commune_sees_nothing(client, db, town):
    beta = make_commune(db, "beta", "37002")
    make_agent(db, beta.id, "agent-b@example.org")
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client)
    report = only_report(db)
    login(client, "agent-b@example.org")
    assert client.get("/alpha/admin/signalements").status_code == 403
    assert client.get(f"/alpha/admin/signalements/{report.id}").status_code == 403
    assert client.get(f"/beta/admin/signalements/{report.id}").status_code == 404  # not in B


def act(client, report_id: int, action: str, **fields):
    token = csrf_from(client.get(f"/alpha/admin/signalements/{report_id}").text)
    return client.post(
        f"/alpha/admin/signalements/{report_id}/action/{action}",
        data={"csrf_token": token, **fields},
    )


def events_of(db, commune_id: int, report_id: int) -> list[tuple[str, bool, str]]:
    with db.read() as session:
        trail = service.all_events(session, commune_id, report_id)
    return [(event.kind, event.public, event.text) for event in trail]


def test_back_office_actions_are_audited_and_reach_the_right_people(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client)
    submit(client, email="voisin@example.org", description="Toujours éteint, rue des Lilas.")
    with db.read() as session:
        first, second = session.scalars(select(Report).order_by(Report.id)).all()
    login(client, "eclairage@example.org")
    assert act(client, first.id, "note", note="Vu avec le prestataire.").status_code == 303
    assert act(client, first.id, "reponse", reply="Intervention cette semaine.").status_code == 303
    public = client.get(f"/alpha/signalements/{first.id}").text
    assert "Intervention cette semaine." in public and "prestataire" not in public
    assert any(
        "Intervention cette semaine." in m["body"] for m in emails(db, "habitant@example.org")
    )
    agents = {u.email: u.id for u in db.write(lambda s: service.commune_agents(s, town.id))}
    assert (
        act(client, first.id, "attribution", user_id=agents["eclairage@example.org"]).status_code
        == 303
    )
    assert only_first(db).assigned_user_id == agents["eclairage@example.org"]
    # Merging keeps every follower on the original.
    assert act(client, second.id, "fusion", duplicate_of=str(first.id)).status_code == 303
    with db.read() as session:
        merged = session.get(Report, second.id)
        followers = {
            f.email for f in session.scalars(select(Follower).where(Follower.report_id == first.id))
        }
    assert merged.status == Status.DUPLICATE and merged.duplicate_of_id == first.id
    assert followers == {"habitant@example.org", "voisin@example.org"}
    # Moderation: redact, hide a photo, hide the report (public page, Open311 and hub).
    photo_id = service_photo(db, town.id, first.id)
    assert (
        act(
            client,
            first.id,
            "moderation",
            description="Lampadaire éteint.",
            hide_photo=str(photo_id),
        ).status_code
        == 303
    )
    assert client.get(f"/alpha/signalements/{first.id}/photos/{photo_id}.jpg").status_code == 404
    assert act(client, first.id, "moderation", visibility="hide").status_code == 303
    assert client.get(f"/alpha/signalements/{first.id}").status_code == 404
    hub = client.get(
        f"/ngsi-ld/v1/entities/urn:ngsi-ld:service_requests:{first.id}",
        headers={"NGSILD-Tenant": "alpha"},
    )
    assert hub.status_code == 404
    # Changing the category re-routes: the lighting agent loses it, roads gets it.
    assert act(client, first.id, "categorie", service_code="nid-de-poule").status_code == 303
    assert client.get(f"/alpha/admin/signalements/{first.id}").status_code == 403
    kinds = [kind for kind, _public, _text in events_of(db, town.id, first.id)]
    assert kinds == [
        "created",
        "note",
        "reply",
        "assigned",
        "merged",
        "moderated",
        "moderated",
        "category",
    ]
    client.cookies.clear()
    login(client, "voirie@example.org")
    trail = client.get(f"/alpha/admin/signalements/{first.id}").text
    assert "Vu avec le prestataire." in trail


def only_first(db) -> Report:
    with db.read() as session:
        return session.scalars(select(Report).order_by(Report.id)).first()


def service_photo(db, commune_id: int, report_id: int) -> int:
    with db.read() as session:
        return service.visible_photo_ids(session, commune_id, [report_id])[report_id][0]


def test_an_agent_files_for_a_caller_and_updates_reports_in_bulk(client, db, town):
    login(client, "eclairage@example.org")
    token = csrf_from(client.get("/alpha/admin/signalements/nouveau").text)
    filed = client.post(
        "/alpha/admin/signalements/nouveau",
        data={
            "csrf_token": token,
            "channel": "phone",
            "address": LILAS,
            "service_code": "lampadaire-en-panne",
            "description": "Appel : lampadaire clignotant.",
            "phone": "02 47 00 00 00",
        },
    )
    assert filed.status_code == 303, filed.text
    again = client.post(
        "/alpha/admin/signalements/nouveau",
        data={
            **dict(csrf_token=token, channel="counter", address=LILAS),
            "service_code": "lampadaire-en-panne",
            "description": "Guichet : même lampadaire.",
        },
    )
    assert again.status_code == 303
    with db.read() as session:
        reports = session.scalars(select(Report).order_by(Report.id)).all()
    assert [r.channel for r in reports] == ["phone", "counter"] and all(
        r.confirmed for r in reports
    )
    bulk = client.post(
        "/alpha/admin/signalements/lot",
        data={"csrf_token": token, "ids": [str(r.id) for r in reports], "status": "in_progress"},
    )
    assert bulk.status_code == 303
    with db.read() as session:
        assert {r.status for r in session.scalars(select(Report))} == {Status.IN_PROGRESS}


def test_statistics_and_their_csv_agree_with_a_recount(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    for code in ("lampadaire-en-panne", "lampadaire-en-panne", "nid-de-poule"):
        submit(client, service_code=code)
    with db.read() as session:
        reports = session.scalars(select(Report).order_by(Report.id)).all()
    day = dt.timedelta(days=1)

    def age(session):
        for report, (ack, fixed) in zip(reports, ((1, 3), (2, 5), (4, None)), strict=True):
            stored = session.get(Report, report.id)
            stored.requested_at -= dt.timedelta(days=10)
            stored.acknowledged_at = stored.requested_at + ack * day
            if fixed is not None:
                service.set_status(session, stored, Status.RESOLVED, actor_user_id=None)
                stored.closed_at = stored.requested_at + fixed * day

    db.write(age)
    first = reports[0]
    db.write(service.answer_fixed, town.id, first.id, first.tracking_token, False, base_url="")
    page = client.get("/alpha/signalements/statistiques")
    assert page.status_code == 200
    assert "1 sur 2 (50.0 %)" in page.text
    exported = client.get("/alpha/signalements/statistiques.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text.lstrip("\ufeff")), delimiter=";"))
    assert rows[0] == ["indicateur", "service", "categorie", "mois", "valeur"]
    values = {(r[0], r[1], r[2]): r[4] for r in rows[1:]}
    month = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).strftime("%Y-%m")
    assert {r[3] for r in rows if r[0] == "signalements"} == {month}
    assert values[("signalements", "", "Lampadaire en panne")] == "2"
    assert values[("signalements", "", "Nid-de-poule")] == "1"
    assert values[("delai_median_prise_en_compte_jours", "Éclairage public", "")] == "1.5"
    assert values[("delai_median_prise_en_compte_jours", "Voirie", "")] == "4.0"
    # Only the second lighting report is still resolved (the first was reopened).
    assert values[("delai_median_resolution_jours", "Éclairage public", "")] == "5.0"
    assert values[("part_rouverts", "", "")] == "0.5"


def test_the_commune_admin_sets_categories_and_reply_templates(client, db, town):
    make_agent(db, town.id, "maire@example.org", role="commune_admin")
    login(client, "eclairage@example.org")
    assert client.get("/alpha/admin/signalements/reglages").status_code == 403
    client.cookies.clear()
    login(client, "maire@example.org")
    page = client.get("/alpha/admin/signalements/reglages")
    assert page.status_code == 200
    token = csrf_from(page.text)
    with db.read() as session:
        green = next(s for s in core.list_services(session, town.id) if s.slug == "espaces-verts")
    questions = (
        '[{"code": "bloque", "description": "Bloque la route ?", "datatype": "singlevaluelist",'
        ' "required": true, "values": [{"key": "oui", "name": "Oui", "blocks": true},'
        ' {"key": "non", "name": "Non"}]}]'
    )
    added = client.post(
        "/alpha/admin/signalements/reglages/categories",
        data={
            "csrf_token": token,
            "code": "arbre-tombe",
            "name": "Arbre tombé",
            "service_id": str(green.id),
            "emergency_notice": "Appelez le 18.",
            "attributes": questions,
        },
    )
    assert added.status_code == 303
    broken = client.post(
        "/alpha/admin/signalements/reglages/categories",
        data={
            "csrf_token": token,
            "code": "x",
            "name": "X",
            "service_id": str(green.id),
            "attributes": "{pas du json",
        },
    )
    assert broken.status_code == 400 and "liste JSON" in broken.text
    definition = client.get(
        "/open311/v2/services/arbre-tombe.json", params={"jurisdiction_id": "alpha"}
    ).json()
    assert definition["attributes"][0]["code"] == "bloque"
    saved = client.post(
        "/alpha/admin/signalements/reglages/modeles",
        data={"csrf_token": token, "title": "Transmis", "text": "Transmis au prestataire."},
    )
    assert saved.status_code == 303
    with db.read() as session:
        (template,) = service.reply_templates(session, town.id)
    db.write(service.set_anonymous_allowed, town.id, True)
    client.cookies.clear()
    submit(client)
    report = only_report(db)
    login(client, "eclairage@example.org")
    replied = act(client, report.id, "reponse", reply="", template=str(template.id))
    assert replied.status_code == 303
    assert "Transmis au prestataire." in client.get(f"/alpha/signalements/{report.id}").text


def test_follow_unfollow_nearby_and_list_filters(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client, email="")
    report = only_report(db)
    page = client.get(f"/alpha/signalements/{report.id}")
    followed = client.post(
        f"/alpha/signalements/{report.id}/suivre",
        data={"csrf_token": csrf_from(page.text), "email": "voisine@example.org"},
    )
    assert followed.status_code == 303
    nearby = client.get(
        "/alpha/signalements/proches",
        params={"lon": "0.8531", "lat": "47.3531", "categorie": "lampadaire-en-panne"},
    )
    assert (
        f"/alpha/signalements/{report.id}" in nearby.text and "Suivre ce signalement" in nearby.text
    )
    far = client.get(
        "/alpha/signalements/proches",
        params={"lon": "0.86", "lat": "47.36", "categorie": "lampadaire-en-panne"},
    )
    other = client.get(
        "/alpha/signalements/proches",
        params={"lon": "0.8531", "lat": "47.3531", "categorie": "nid-de-poule"},
    )
    assert f"/signalements/{report.id}" not in far.text + other.text
    db.write(
        lambda session: service.set_status(
            session,
            service.get_report(session, town.id, report.id),
            Status.IN_PROGRESS,
            actor_user_id=None,
            text="Équipe en route.",
        )
    )
    (news,) = emails(db, "voisine@example.org")
    stop = re.search(r"/alpha/signalements/\d+/desabonner/\S+", news["body"]).group(0)
    assert client.get(stop).status_code == 303
    db.write(
        lambda session: service.set_status(
            session,
            service.get_report(session, town.id, report.id),
            Status.RESOLVED,
            actor_user_id=None,
        )
    )
    assert len(emails(db, "voisine@example.org")) == 1  # nothing after unsubscribing
    assert (
        f"/alpha/signalements/{report.id}"
        in client.get("/alpha/signalements", params={"etat": "clos"}).text
    )
    assert (
        f"/alpha/signalements/{report.id}"
        not in client.get("/alpha/signalements", params={"etat": "ouverts"}).text
    )
    assert (
        f"/alpha/signalements/{report.id}"
        not in client.get("/alpha/signalements", params={"categorie": "nid-de-poule"}).text
    )


def test_resolved_with_a_proof_photo_shown_on_the_report(client, db, town):
    db.write(service.set_anonymous_allowed, town.id, True)
    submit(client)
    report = only_report(db)
    login(client, "eclairage@example.org")
    token = csrf_from(client.get(f"/alpha/admin/signalements/{report.id}").text)
    done = client.post(
        f"/alpha/admin/signalements/{report.id}/statut",
        data={"csrf_token": token, "status": "resolved", "reply": "Réparé, photo jointe."},
        files=[("proof", ("apres.jpg", photo_bytes(), "image/jpeg"))],
    )
    assert done.status_code == 303
    with db.read() as session:
        kinds = [p.kind for p in session.scalars(select(Photo).where(Photo.report_id == report.id))]
    assert kinds == ["report", "proof"]
    assert client.get(f"/alpha/signalements/{report.id}").text.count("/photos/") == 2
    queue = client.get("/alpha/admin/signalements", params={"etat": "tous"})
    assert 'id="reports-map"' in queue.text and f'"id": {report.id}' in queue.text.replace(
        "&#34;", '"'
    )


def test_a_new_commune_admin_adds_the_usual_categories(client, db):
    commune = make_commune(db, "gamma", "37003")
    make_agent(db, commune.id, "admin-g@example.org", role="commune_admin")
    login(client, "admin-g@example.org")
    page = client.get("/gamma/admin/signalements/reglages")
    with db.read() as session:
        assert service.categories(session, commune.id) == []
    added = client.post(
        "/gamma/admin/signalements/reglages/categories/usuelles",
        data={"csrf_token": csrf_from(page.text)},
    )
    assert added.status_code == 303
    with db.read() as session:
        codes = {c.code for c in service.categories(session, commune.id)}
    assert codes == {code for _s, code, _g, _n in service.DEFAULT_CATEGORIES}


def test_a_service_that_routes_categories_cannot_be_deleted(client, db, town):
    make_agent(db, town.id, "maire@example.org", role="commune_admin")
    login(client, "maire@example.org")
    with db.read() as session:
        lighting = next(
            s for s in core.list_services(session, town.id) if s.slug == "eclairage-public"
        )
    token = csrf_from(client.get("/alpha/admin/").text)
    refused = client.post(f"/alpha/admin/services/{lighting.id}/delete", data={"csrf_token": token})
    assert refused.status_code == 303
    assert "encore utilisé" in client.get("/alpha/admin/").text
    with db.read() as session:
        assert lighting.id in {s.id for s in core.list_services(session, town.id)}
