"""Shared fixtures: every database test runs on SQLite and, when
COMMUNS_TEST_DATABASE_URL is set (as in CI), on PostgreSQL too."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ngsi_client import Hub
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from communs.core import migrate, service
from communs.core.db import Base, Database
from communs.core.settings import Settings, normalise_database_url

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("COMMUNS_TEST_DATABASE_URL")
STRONG_PASSWORD = "Correct-Horse-42-Battery"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated once, dropped at the end."""
    assert PG_URL, "COMMUNS_TEST_DATABASE_URL is not set"
    admin_url = normalise_database_url(PG_URL)
    name = f"communs_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "communs.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    engine = create_engine(url)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        secret_key="test-secret-key",
        login_max_failures=3,
        login_lock_seconds=30,
        job_backoff_seconds=0.05,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url)
    yield database
    database.close()


@pytest.fixture
def app(settings: Settings, db: Database):
    from communs.core.web import create_app

    return create_app(settings, db)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def make_commune(db: Database, slug: str = "alpha", insee: str = "37001", **extra):
    boundary = extra.pop(
        "boundary",
        {
            "type": "Polygon",
            "coordinates": [
                [[0.80, 47.30], [0.90, 47.30], [0.90, 47.40], [0.80, 47.40], [0.80, 47.30]]
            ],
        },
    )
    return db.write(
        service.create_commune,
        slug=slug,
        name=extra.pop("name", slug.title()),
        insee_code=insee,
        boundary=boundary,
    )


HEADER = (
    "uid_adresse;cle_interop;commune_insee;commune_nom;commune_deleguee_insee;"
    "commune_deleguee_nom;voie_nom;lieudit_complement_nom;numero;suffixe;position;x;y;"
    "long;lat;cad_parcelles;source;date_der_maj;certification_commune"
)


def bal_row(key, street, number, lon, lat, insee="37001", suffix=""):
    return (
        f";{key};{insee};Alpha;;;{street};;{number};{suffix};entrée;;;{lon};{lat};;"
        f"Commune;2026-01-01;1"
    )


def imported(db, commune, content: str):
    """Import a BAL CSV into a commune's addresses."""
    from communs.core import addresses

    parsed = addresses.parse_bal(content.encode(), commune)
    db.write(addresses.replace_addresses, commune.id, parsed.rows)
    return parsed


def make_agent(
    db: Database, commune_id: int, email: str, role: str = "agent", service_id: int | None = None
):
    return db.write(
        service.create_agent,
        commune_id=commune_id,
        email=email,
        name=email.split("@")[0],
        password=STRONG_PASSWORD,
        role=role,
        service_id=service_id,
    )


def make_instance_admin(db: Database, email: str = "root@example.org"):
    return db.write(
        service.create_user,
        email=email,
        name="Root",
        password=STRONG_PASSWORD,
        is_instance_admin=True,
    )


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, email: str, password: str = STRONG_PASSWORD) -> None:
    token = csrf_from(client.get("/login").text)
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.text


def form_post(client: TestClient, url: str, data: dict, page: str | None = None):
    """Post a form the way a browser does: with the CSRF token of a page."""
    token = csrf_from(client.get(page or "/login").text)
    return client.post(url, data={**data, "csrf_token": token})


@pytest.fixture
def hub(client, db):
    alpha = make_commune(db, "alpha", "37001")
    key = db.write(
        service.create_api_key, commune_id=alpha.id, name="hub", scopes=["hub:read", "hub:write"]
    )
    return Hub(client, "alpha", key.secret)


@pytest.fixture
def hub_beta(client, db, hub):
    beta = make_commune(db, "beta", "37002")
    key = db.write(
        service.create_api_key, commune_id=beta.id, name="hub", scopes=["hub:read", "hub:write"]
    )
    return Hub(client, "beta", key.secret)


MQTT_URL = os.environ.get("COMMUNS_TEST_MQTT_URL")


@pytest.fixture
def mqtt_url() -> str:
    """The real broker of COMMUNS_TEST_MQTT_URL; in CI an unreachable one is a failure."""
    if not MQTT_URL:
        if IN_CI:
            pytest.fail("COMMUNS_TEST_MQTT_URL is not set")
        pytest.skip("MQTT broker not configured: set COMMUNS_TEST_MQTT_URL=mqtt://127.0.0.1:1883")
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(MQTT_URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 1883), timeout=3).close()
    except OSError as error:
        if IN_CI:
            pytest.fail(f"MQTT broker {MQTT_URL} unreachable: {error}")
        pytest.skip(f"MQTT broker {MQTT_URL} unreachable: start mosquitto")
    return MQTT_URL
