import pytest
from conftest import STRONG_PASSWORD, csrf_from, login, make_agent, make_commune

from communs.core import service


def test_wrong_password_refused_right_one_accepted(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "agent@example.org")
    token = csrf_from(client.get("/login").text)
    wrong = client.post(
        "/login", data={"email": "agent@example.org", "password": "nope", "csrf_token": token}
    )
    assert wrong.status_code == 401
    assert "mot de passe incorrect" in wrong.text
    assert "communs_session" not in wrong.cookies
    login(client, "agent@example.org")
    assert client.get("/alpha/api/services").status_code == 200


def test_repeated_failures_lock_the_account_even_with_the_right_password(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "agent@example.org")
    token = csrf_from(client.get("/login").text)
    statuses = [
        client.post(
            "/login",
            data={"email": "agent@example.org", "password": f"bad{i}", "csrf_token": token},
        ).status_code
        for i in range(3)  # settings fixture: 3 failures lock
    ]
    assert statuses == [401, 401, 429]
    locked = client.post(
        "/login",
        data={"email": "agent@example.org", "password": STRONG_PASSWORD, "csrf_token": token},
    )
    assert locked.status_code == 429
    assert "Trop de tentatives" in locked.text


def test_form_without_valid_csrf_token_is_refused_with_403(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    no_token = client.post("/login", data={"email": "x@example.org", "password": "y"})
    assert no_token.status_code == 403
    assert "jeton de sécurité" in no_token.text
    login(client, "maire@example.org")
    forged = client.post("/alpha/admin/services", data={"name": "Piscine", "csrf_token": "0" * 64})
    assert forged.status_code == 403
    missing = client.post("/alpha/admin/services", data={"name": "Piscine"})
    assert missing.status_code == 403
    with db.read() as session:
        assert "Piscine" not in [s.name for s in service.list_services(session, commune.id)]


def test_logout_ends_the_server_session(client, db):
    commune = make_commune(db)
    make_agent(db, commune.id, "agent@example.org")
    login(client, "agent@example.org")
    cookie = client.cookies.get("communs_session")
    token = csrf_from(client.get("/alpha/").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    client.cookies.set("communs_session", cookie)  # replaying the old cookie must not work
    assert client.get("/alpha/api/services").status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/", "/\\evil.example/", "https://evil.example/", "javascript:x"]
)
def test_login_next_is_never_an_open_redirect(client, db, target):
    commune = make_commune(db)
    make_agent(db, commune.id, "agent@example.org")
    token = csrf_from(client.get("/login").text)
    response = client.post(
        "/login",
        data={
            "email": "agent@example.org",
            "password": STRONG_PASSWORD,
            "csrf_token": token,
            "next": target,
        },
    )
    assert response.headers["location"] == "/"
    assert client.get("/langue/en", params={"next": target}).headers["location"] == "/"


def test_passwords_are_hashed_with_argon2(db):
    commune = make_commune(db)
    user = make_agent(db, commune.id, "agent@example.org")
    assert user.password_hash.startswith("$argon2")
    assert STRONG_PASSWORD not in user.password_hash


def test_language_switch_sets_cookie_and_html_lang(client):
    assert 'lang="fr"' in client.get("/").text
    response = client.get("/langue/en?next=/accessibilite")
    assert response.status_code == 303 and response.headers["location"] == "/accessibilite"
    assert '<html lang="en">' in client.get("/").text
    assert client.get("/").headers["content-language"] == "en"


def test_security_headers_present(client):
    response = client.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
