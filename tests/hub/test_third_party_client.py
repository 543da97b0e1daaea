"""A client not written by us drives the hub: ``ngsildclient`` (Orange, from PyPI).

ngsildclient 0.5.2 pins ``httpx<0.24`` and ``rich<13``, which the project's own
dependencies exclude, so it lives in a side virtual environment
(``.cache/ngsildclient-venv``, built once and reused). A real ``communs serve`` runs on
the test database (SQLite, and PostgreSQL when COMMUNS_TEST_DATABASE_URL is set); a
script run by the side environment's Python creates, reads, queries, updates and
deletes entities through ngsildclient's own API, writing with an API key of the
commune; the test then checks what the script saw and, through our own HTTP API, what
the hub really stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import IN_CI, make_commune
from live_server import communs_serve

from communs.core import service
from communs.core.db import Database

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENT = "ngsildclient==0.5.2"
SIDE_VENV = ROOT / ".cache" / "ngsildclient-venv"
INSTALL_HINT = "needs PyPI access to install ngsildclient into a side venv"
TENANT = "alpha"
SCRIPT_TIMEOUT = 60.0

AQ = "AirQualityObserved"
STATION_1 = "urn:ngsi-ld:AirQualityObserved:Tours:Station1"
STATION_2 = "urn:ngsi-ld:AirQualityObserved:Tours:Station2"
SQUARE = "urn:ngsi-ld:PointOfInterest:Tours:PlacePlumereau"

# Run by the side environment's Python: ngsildclient's own API, nothing of ours.
# Every HTTP exchange is recorded, so that a failing step shows what was said.
SCRIPT = r"""
import json
import sys

import requests
from requests.auth import AuthBase

from ngsildclient import Client, Entity
from ngsildclient.api.exceptions import NgsiContextBrokerError

port, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
exchanges, results = [], {}
_send = requests.Session.send


def send(session, request, **kwargs):
    response = _send(session, request, **kwargs)
    first = response.history[0] if response.history else response
    exchanges.append(
        {
            "request": f"{request.method} {request.url}",
            "body": (request.body or b"")[:500].decode() if isinstance(request.body, bytes)
            else (request.body or "")[:500],
            "status": first.status_code,
            "location": first.headers.get("location"),
            "response": first.text[:500],
        }
    )
    return response


requests.Session.send = send


class Bearer(AuthBase):
    def __init__(self, secret):
        self.secret = secret

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.secret}"
        return request


def step(name, action):
    start = len(exchanges)
    try:
        results[name] = {"ok": True, "value": action()}
    except Exception as error:
        failure = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        if isinstance(error, NgsiContextBrokerError):
            failure["problem"] = repr(error.problemdetails)
        failure["exchanges"] = exchanges[start:]
        results[name] = failure
    return results[name]


def batch(result):
    return {"ok": result.ok, "success": result.success, "errors": result.errors}


def ids(entities):
    return sorted(entity.id for entity in entities)


def missing(entity_id):
    try:
        client.get(entity_id)
    except NgsiContextBrokerError as error:
        return type(error).__name__
    return "found"


station1 = Entity("AirQualityObserved", "Tours:Station1")
station1.prop("NO2", 22, unitcode="GP").loc(47.3941, 0.6848)
station1.rel("refPointOfInterest", "PointOfInterest:Tours:PlacePlumereau")
station2 = Entity("AirQualityObserved", "Tours:Station2")
station2.prop("NO2", 41, unitcode="GP").loc(47.3829, 0.6924)
square = Entity("PointOfInterest", "Tours:PlacePlumereau")
square.prop("name", "Place Plumereau").loc(47.3943, 0.6842)

connected = step(
    "connect",
    lambda: Client(hostname="127.0.0.1", port=port, custom_auth=Bearer(key), verbose=False),
)
if connected["ok"]:
    client = connected.pop("value")
    step("create_one", lambda: client.create(station1))
    step("create_batch", lambda: batch(client.create(station2, square)))
    step("get", lambda: client.get(station1.id).to_dict())
    step("query_type", lambda: ids(client.query(type="AirQualityObserved")))
    step("query_q", lambda: ids(client.query(type="AirQualityObserved", q="NO2>30")))
    step("count", lambda: client.count(type="AirQualityObserved"))
    update = Entity("AirQualityObserved", "Tours:Station1").prop("NO2", 35, unitcode="GP")
    step("update", lambda: batch(client.batch.update([update])))
    step("get_updated", lambda: client.get(station1.id).to_dict())
    step("query_q_updated", lambda: ids(client.query(type="AirQualityObserved", q="NO2>30")))
    step("delete", lambda: client.delete(station2))
    step("exists_deleted", lambda: client.exists(station2.id))
    step("get_deleted", lambda: missing(station2.id))
    step("query_type_deleted", lambda: ids(client.query(type="AirQualityObserved")))
    client.close()

with open(out, "w") as handle:
    json.dump(results, handle, indent=2, default=str)
"""


# ---------------------------------------------------------------- side environment


def _side_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _side_venv_ready(venv: Path) -> bool:
    python = _side_python(venv)
    if not (venv / ".installed").is_file() or not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import ngsildclient; print(ngsildclient.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return check.returncode == 0 and check.stdout.strip() == REQUIREMENT.split("==")[1]


@pytest.fixture(scope="session")
def ngsildclient_python() -> Path:
    """The Python of a side virtual environment where ngsildclient is installed."""
    if not _side_venv_ready(SIDE_VENV):
        shutil.rmtree(SIDE_VENV, ignore_errors=True)
        SIDE_VENV.parent.mkdir(parents=True, exist_ok=True)
        python = str(_side_python(SIDE_VENV))
        commands = [
            [sys.executable, "-m", "venv", str(SIDE_VENV)],
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
        ]
        for command in commands:
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=240)
            except subprocess.TimeoutExpired:
                done = None
            if done is None or done.returncode != 0:
                shutil.rmtree(SIDE_VENV, ignore_errors=True)
                output = "timed out" if done is None else (done.stdout + done.stderr)[-2000:]
                if IN_CI:
                    pytest.fail(f"{' '.join(command)} failed:\n{output}")
                pytest.skip(INSTALL_HINT)
        (SIDE_VENV / ".installed").write_text(REQUIREMENT + "\n")
    return _side_python(SIDE_VENV)


# ---------------------------------------------------------------- server


@dataclass(frozen=True)
class Server:
    url: str
    key: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """``communs serve`` on a free port, on the test database, with one commune (the
    default tenant) and an API key of that commune that may read and write the hub."""
    db = Database(database_url)
    try:
        commune = make_commune(db, TENANT, "37001")
        key = db.write(
            service.create_api_key,
            commune_id=commune.id,
            name="ngsildclient",
            scopes=["hub:read", "hub:write"],
        ).secret
    finally:
        db.close()
    env = {"COMMUNS_SECRET_KEY": "test-secret-key", "COMMUNS_HUB_DEFAULT_TENANT": TENANT}
    with communs_serve(database_url, tmp_path, env=env) as url:
        yield Server(url, key)


# ---------------------------------------------------------------- test


def _failures(results: dict) -> str:
    return "\n\n".join(
        f"step {name}: {json.dumps(result, indent=2, ensure_ascii=False)}"
        for name, result in results.items()
        if not result["ok"]
    )


def test_ngsildclient_creates_queries_updates_and_deletes(
    ngsildclient_python: Path, server: Server, tmp_path: Path
) -> None:
    script, out = tmp_path / "ngsildclient_scenario.py", tmp_path / "results.json"
    script.write_text(SCRIPT)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    done = subprocess.run(
        [str(ngsildclient_python), str(script), str(server.port), server.key, str(out)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and out.exists(), done.stdout + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert all(result["ok"] for result in results.values()), _failures(results)
    value = {name: result.get("value") for name, result in results.items()}

    # What ngsildclient read back is what it wrote.
    assert value["create_one"] is True
    assert value["create_batch"]["ok"] and value["create_batch"]["errors"] == []
    station = value["get"]
    assert station["id"] == STATION_1 and station["type"] == AQ
    assert station["NO2"]["type"] == "Property"
    assert station["NO2"]["value"] == 22 and station["NO2"]["unitCode"] == "GP"
    assert station["location"]["type"] == "GeoProperty"
    assert station["location"]["value"] == {"type": "Point", "coordinates": [0.6848, 47.3941]}
    assert station["refPointOfInterest"] == {"type": "Relationship", "object": SQUARE}
    assert value["query_type"] == [STATION_1, STATION_2]
    assert value["query_q"] == [STATION_2]
    assert value["count"] == 2
    assert value["update"]["ok"] and value["update"]["errors"] == []
    updated = value["get_updated"]
    assert updated["NO2"]["value"] == 35 and updated["NO2"]["unitCode"] == "GP"
    assert updated["location"] == station["location"]
    assert updated["refPointOfInterest"] == station["refPointOfInterest"]
    assert value["query_q_updated"] == [STATION_1, STATION_2]
    assert value["delete"] is True
    assert value["exists_deleted"] is False
    assert value["get_deleted"] == "NgsiResourceNotFoundError"
    assert value["query_type_deleted"] == [STATION_1]

    # And the hub really stored it, in the commune of the key: seen through our own API.
    with httpx.Client(base_url=f"{server.url}/ngsi-ld/v1", timeout=10) as hub:
        headers = {"NGSILD-Tenant": TENANT, "Accept": "application/json"}
        stored = hub.get(f"/entities/{STATION_1}", headers=headers)
        assert stored.status_code == 200, stored.text
        body = stored.json()
        assert body["NO2"] == {"type": "Property", "value": 35, "unitCode": "GP"}
        assert body["location"]["value"]["coordinates"] == [0.6848, 47.3941]
        assert body["refPointOfInterest"]["object"] == SQUARE
        square = hub.get(f"/entities/{SQUARE}", headers=headers)
        assert square.status_code == 200, square.text
        assert square.json()["name"]["value"] == "Place Plumereau"
        gone = hub.get(f"/entities/{STATION_2}", headers=headers)
        assert gone.status_code == 404, gone.text
        listed = hub.get("/entities", params={"type": AQ}, headers=headers)
        assert listed.status_code == 200, listed.text
        assert [entity["id"] for entity in listed.json()] == [STATION_1]
