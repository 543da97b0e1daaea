"""Tenancy: nothing of commune B is reachable with the credentials of commune A.

The test walks every route of the application, so a route added without an access
policy, or a commune route that forgets its commune check, fails it.
"""

import re

import pytest
from conftest import csrf_from, login, make_agent, make_commune

from communs.core import service
from communs.core.auth import access_policy

POLICIES = {
    "public",
    "login",
    "instance_admin",
    "commune",
    "commune_public",
    "ngsild_read",
    "ngsild_write",
    "open311",
}


def routes_with_policy(app):
    for route in app.state.routes:
        policies = [
            access_policy(dependency.call)
            for dependency in route.dependant.dependencies
            if access_policy(dependency.call)
        ]
        yield route, policies


def concrete_path(path: str, commune: str) -> str:
    path = path.replace("{commune}", commune)
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_route_declares_exactly_one_access_policy(app):
    missing = [
        f"{sorted(route.methods)} {route.path}: {policies}"
        for route, policies in routes_with_policy(app)
        if len(policies) != 1 or policies[0] not in POLICIES
    ]
    assert not missing, "routes without exactly one access policy:\n" + "\n".join(missing)


def test_commune_routes_take_the_commune_from_the_path(app):
    for route, policies in routes_with_policy(app):
        if policies[0] in {"commune", "commune_public"}:
            assert route.path.startswith("/{commune}/"), route.path


@pytest.fixture
def two_communes(db):
    alpha = make_commune(db, "alpha", "37001")
    beta = make_commune(db, "beta", "37002")
    make_agent(db, alpha.id, "admin-a@example.org", role="commune_admin")
    make_agent(db, beta.id, "agent-b@example.org", role="agent")
    key = db.write(
        service.create_api_key, commune_id=alpha.id, name="A", scopes=list(service.API_SCOPES)
    )
    return alpha, beta, key.secret


def commune_routes(app):
    for route, policies in routes_with_policy(app):
        if policies[0] == "commune":
            for method in sorted(route.methods - {"HEAD"}):
                yield method, route.path


def test_agent_of_a_gets_403_on_every_route_of_b(client, app, two_communes):
    login(client, "admin-a@example.org")
    token = csrf_from(client.get("/alpha/admin/").text)
    checked = 0
    for method, path in commune_routes(app):
        own = client.request(
            method,
            concrete_path(path, "alpha"),
            data={"csrf_token": token} if method != "GET" else None,
        )
        other = client.request(
            method,
            concrete_path(path, "beta"),
            data={"csrf_token": token} if method != "GET" else None,
        )
        assert other.status_code == 403, f"{method} {path} answered {other.status_code} for B"
        assert own.status_code != 403 or path.startswith("/{commune}/api/"), (
            f"{method} {path} refused the admin of A in A"
        )
        checked += 1
    assert checked >= 6


def test_api_key_of_a_gets_403_on_every_route_of_b(client, app, two_communes):
    _alpha, _beta, secret = two_communes
    headers = {"Authorization": f"Bearer {secret}"}
    for method, path in commune_routes(app):
        response = client.request(method, concrete_path(path, "beta"), headers=headers)
        assert response.status_code == 403, f"{method} {path} answered {response.status_code}"
    assert client.get("/alpha/api/services", headers=headers).status_code == 200


def test_api_key_outside_its_capability_is_refused(client, db):
    alpha = make_commune(db, "alpha", "37001")
    key = db.write(
        service.create_api_key, commune_id=alpha.id, name="hub only", scopes=["hub:read"]
    )
    response = client.get("/alpha/api/services", headers={"Authorization": f"Bearer {key.secret}"})
    assert response.status_code == 403
    # A key never opens the pages meant for people.
    response = client.get("/alpha/admin/", headers={"Authorization": f"Bearer {key.secret}"})
    assert response.status_code == 403


def test_revoked_or_forged_keys_are_refused(client, db):
    alpha = make_commune(db, "alpha", "37001")
    key = db.write(service.create_api_key, commune_id=alpha.id, name="k", scopes=["communes:read"])
    forged = key.secret[:-4] + "AAAA"
    assert (
        client.get("/alpha/api/services", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )
    db.write(service.revoke_api_key, key.id)
    assert (
        client.get(
            "/alpha/api/services", headers={"Authorization": f"Bearer {key.secret}"}
        ).status_code
        == 401
    )


def test_commune_admin_cannot_reach_instance_admin_pages(client, app, two_communes):
    login(client, "admin-a@example.org")
    for route, policies in routes_with_policy(app):
        if policies[0] == "instance_admin" and "GET" in route.methods:
            assert client.get(concrete_path(route.path, "alpha")).status_code == 403, route.path


def test_anonymous_is_sent_to_login_on_pages_and_401_on_apis(client, two_communes):
    page = client.get("/beta/admin/")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert client.get("/beta/api/services").status_code == 401


def test_api_key_of_a_cannot_write_to_tenant_b_on_any_hub_route(client, app, two_communes):
    _alpha, _beta, secret = two_communes
    checked = 0
    for route, policies in routes_with_policy(app):
        if policies[0] != "ngsild_write":
            continue
        for method in sorted(route.methods - {"HEAD"}):
            response = client.request(
                method,
                concrete_path(route.path, "beta"),
                content=b"{}",
                headers={
                    "Authorization": f"Bearer {secret}",
                    "NGSILD-Tenant": "beta",
                    "Content-Type": "application/json",
                },
            )
            assert response.status_code == 403, f"{method} {route.path}: {response.status_code}"
            checked += 1
    assert checked >= 7
