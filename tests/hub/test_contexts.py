"""The @context store (NGSI-LD clause 5.13): hosted contexts through the API, operator
copies through the CLI, remote contexts fetched with a deadline. No network but 127.0.0.1."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from ngsi_client import BASE

from communs.core.auth import access_policy
from communs.core.settings import load_settings
from communs.hub import context as jsonld_context
from communs.hub import contexts
from communs.hub.context import ContextNotAvailable
from communs.hub.contexts import ContextLoader

ROOT = Path(__file__).resolve().parents[2]
NS = "https://example.org/city#"
CITY = {"@context": {"Lamp": f"{NS}Lamp", "brightness": f"{NS}brightness"}}
LAMP = {
    "id": "urn:ngsi-ld:Lamp:1",
    "type": "Lamp",
    "brightness": {"type": "Property", "value": 0.7},
}


def problem_type(response) -> str:
    return response.json()["type"].rsplit("/", 1)[-1]


def link(url: str) -> dict[str, str]:
    rel = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    return {"Link": f"<{url}>; {rel}"}


@pytest.fixture(autouse=True)
def fresh_term_maps() -> Iterator[None]:
    # Term maps are cached per process by context URL; each test starts without them.
    jsonld_context.clear_cache()
    yield
    jsonld_context.clear_cache()


@pytest.fixture
def use_loader(app):
    """Install a ContextLoader as the app's loader; closed at the end of the test."""
    loaders: list[ContextLoader] = []

    def install(loader: ContextLoader) -> ContextLoader:
        app.state.hub_context_loader = loader
        loaders.append(loader)
        return loader

    yield install
    for loader in loaders:
        loader.close()


def local_fetching(settings):
    """These tests fetch from servers on 127.0.0.1, which the default refuses."""
    return settings.with_overrides(hub_fetch_private_contexts=True)


@pytest.fixture
def offline(use_loader, db, settings) -> ContextLoader:
    return use_loader(ContextLoader(db, settings.with_overrides(hub_fetch_contexts=False)))


def add_hosted(hub, document=CITY) -> str:
    response = hub.request("POST", "/jsonldContexts", document)
    assert response.status_code == 201, response.text
    return response.headers["location"]


def assert_lamp_stored_with_iris(hub) -> None:
    """Without a Link header the lamp reads with full IRIs: its context was really used."""
    body = hub.get(f"/entities/{LAMP['id']}").json()
    assert body["type"] == f"{NS}Lamp"
    assert body[f"{NS}brightness"]["value"] == 0.7
    assert "brightness" not in body


# ---------------------------------------------------------------- hosted contexts


def test_routes_are_served_with_one_ngsild_policy_each(app):
    found = {
        (method, route.path): [access_policy(d.call) for d in route.dependant.dependencies]
        for route in app.state.routes
        if route.path.startswith(f"{BASE}/jsonldContexts")
        for method in route.methods
    }
    assert found == {
        ("POST", f"{BASE}/jsonldContexts"): ["ngsild_write"],
        ("GET", f"{BASE}/jsonldContexts"): ["ngsild_read"],
        ("GET", f"{BASE}/jsonldContexts/{{context_id:path}}"): ["ngsild_read"],
        ("DELETE", f"{BASE}/jsonldContexts/{{context_id:path}}"): ["ngsild_write"],
    }


def test_add_serve_list_and_delete_a_hosted_context(hub, settings, offline):
    url = add_hosted(hub)
    assert url.startswith(f"{settings.base_url}{BASE}/jsonldContexts/")
    local_id = url.rsplit("/", 1)[-1]

    served = hub.get(f"/jsonldContexts/{local_id}")
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/ld+json"
    assert served.json() == CITY
    by_url = hub.get(f"/jsonldContexts/{quote(url, safe='')}")
    assert by_url.json() == CITY

    assert hub.get("/jsonldContexts").json() == [url]
    details = hub.get("/jsonldContexts", params={"details": "true"}).json()
    assert len(details) == 1
    info = details[0]
    assert info["URL"] == url and info["localId"] == local_id
    assert info["kind"] == "Hosted" and info["numberOfHits"] == 2
    assert info["createdAt"].endswith("Z")
    assert hub.get(f"/jsonldContexts/{local_id}", params={"details": "true"}).json() == {
        **info,
        "numberOfHits": 2,
    }
    assert hub.get("/jsonldContexts", params={"kind": "Cached"}).json() == []
    assert hub.get("/jsonldContexts", params={"kind": "Hosted"}).json() == [url]

    deleted = hub.request("DELETE", f"/jsonldContexts/{local_id}")
    assert deleted.status_code == 204
    gone = hub.get(f"/jsonldContexts/{local_id}")
    assert gone.status_code == 404 and problem_type(gone) == "ResourceNotFound"
    again = hub.request("DELETE", f"/jsonldContexts/{local_id}")
    assert again.status_code == 404
    assert hub.get("/jsonldContexts").json() == []


def test_writes_need_an_api_key(hub, offline):
    response = hub.client.post(
        f"{BASE}/jsonldContexts",
        content=orjson.dumps(CITY),
        headers={"Content-Type": "application/json", "NGSILD-Tenant": "alpha"},
    )
    assert response.status_code == 401
    url = add_hosted(hub)
    response = hub.client.delete(
        f"{BASE}/jsonldContexts/{url.rsplit('/', 1)[-1]}", headers={"NGSILD-Tenant": "alpha"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "document",
    [
        [CITY],
        {"Lamp": f"{NS}Lamp"},
        {"@context": 5},
        {"@context": {"Lamp": 5}},
        {"@context": "not-a-url"},
        {"@context": ["https://example.org/other.jsonld", {"Lamp": {"@id": 3}}]},
        {"@context": {"a": "b:x", "b": "a:y"}},
    ],
)
def test_invalid_documents_are_bad_request_data(hub, offline, document):
    response = hub.request("POST", "/jsonldContexts", document)
    assert response.status_code == 400, response.text
    assert problem_type(response) == "BadRequestData"
    assert hub.get("/jsonldContexts").json() == []


def test_malformed_requests(hub, offline):
    not_json = hub.client.post(
        f"{BASE}/jsonldContexts",
        content=b"{nope",
        headers=hub.headers({"Content-Type": "application/json"}, write=True),
    )
    assert not_json.status_code == 400 and problem_type(not_json) == "InvalidRequest"
    text = hub.client.post(
        f"{BASE}/jsonldContexts",
        content=orjson.dumps(CITY),
        headers=hub.headers({"Content-Type": "text/plain"}, write=True),
    )
    assert text.status_code == 415
    assert hub.get("/jsonldContexts", params={"details": "yes"}).status_code == 400
    assert hub.get("/jsonldContexts", params={"kind": "Remote"}).status_code == 400
    assert hub.get("/jsonldContexts/not-an-id").status_code == 404
    url = add_hosted(hub)
    reload = hub.request("DELETE", f"/jsonldContexts/{url.rsplit('/', 1)[-1]}?reload=true")
    assert reload.status_code == 400 and problem_type(reload) == "BadRequestData"


def test_an_entity_created_with_a_hosted_context_uses_its_terms(hub, offline):
    url = add_hosted(hub)
    created = hub.create(LAMP, headers=link(url))
    assert created.status_code == 201, created.text
    assert_lamp_stored_with_iris(hub)
    compacted = hub.get(f"/entities/{LAMP['id']}", headers=link(url)).json()
    assert compacted["type"] == "Lamp" and compacted["brightness"]["value"] == 0.7
    found = hub.get("/entities", params={"type": "Lamp"}, headers=link(url)).json()
    assert [entity["id"] for entity in found] == [LAMP["id"]]


def test_a_deleted_hosted_context_is_no_longer_resolved(hub, offline):
    url = add_hosted(hub)
    assert hub.create(LAMP, headers=link(url)).status_code == 201
    assert hub.request("DELETE", f"/jsonldContexts/{url.rsplit('/', 1)[-1]}").status_code == 204
    response = hub.get(f"/entities/{LAMP['id']}", headers=link(url))
    assert response.status_code == 503 and problem_type(response) == "LdContextNotAvailable"


# ---------------------------------------------------------------- operator copies (CLI)


def run_cli(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "COMMUNS_DATABASE_URL": database_url,
        "COMMUNS_DATA_DIR": str(data_dir),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "communs", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_context_added_with_the_cli_resolves_without_network(
    hub, offline, database_url, tmp_path
):
    url = "https://contexts.example.invalid/city/context.jsonld"
    file = tmp_path / "city.jsonld"
    file.write_text(orjson.dumps(CITY).decode())
    data_dir = tmp_path / "cli"

    added = run_cli(database_url, data_dir, "hub", "context", "add", url, str(file))
    assert added.returncode == 0, added.stderr
    assert url in added.stdout and "cached" in added.stdout
    listed = run_cli(database_url, data_dir, "hub", "context", "list")
    assert listed.returncode == 0, listed.stderr
    assert url in listed.stdout and "cached" in listed.stdout

    created = hub.create(LAMP, headers=link(url))
    assert created.status_code == 201, created.text
    assert_lamp_stored_with_iris(hub)
    info = hub.get("/jsonldContexts", params={"details": "true"}).json()
    assert [(i["URL"], i["kind"], i["extraInfo"]) for i in info] == [
        (url, "Cached", {"origin": "cached"})
    ]
    served = hub.get(f"/jsonldContexts/{quote(url, safe='')}")
    assert served.status_code == 200 and served.json() == CITY

    removed = run_cli(database_url, data_dir, "hub", "context", "remove", url)
    assert removed.returncode == 0, removed.stderr
    assert hub.get("/jsonldContexts").json() == []
    missing = run_cli(database_url, data_dir, "hub", "context", "remove", url)
    assert missing.returncode == 2


def test_the_cli_refuses_what_is_not_a_context(database_url, tmp_path):
    file = tmp_path / "bad.json"
    file.write_text('{"no": "context"}')
    result = run_cli(
        database_url, tmp_path / "cli", "hub", "context", "add", "https://x.org/c", str(file)
    )
    assert result.returncode == 2 and "@context" in result.stderr
    file.write_text(orjson.dumps(CITY).decode())
    result = run_cli(
        database_url, tmp_path / "cli", "hub", "context", "add", "ftp://x.org/c", str(file)
    )
    assert result.returncode == 2


# ---------------------------------------------------------------- remote contexts


class ContextServer:
    """An HTTP server on 127.0.0.1 answering from ``routes``: path → (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                owner.requests.append(self.path)
                status, headers, body = owner.routes.get(self.path, (404, {}, b"no"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def serve_json(self, path: str, document) -> str:
        body = orjson.dumps(document)
        self.routes[path] = (200, {"Content-Type": "application/ld+json"}, body)
        return self.base + path

    def redirect(self, path: str, target: str) -> str:
        self.routes[path] = (302, {"Location": target}, b"")
        return self.base + path

    def count(self, path: str) -> int:
        return self.requests.count(path)


@pytest.fixture
def context_server() -> Iterator[ContextServer]:
    server = ContextServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections on 127.0.0.1 and never answers; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    connections: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in connections:
            connection.close()
        listener.close()


def test_unknown_remote_context_without_fetching_fails_at_once(hub, offline):
    started = time.monotonic()
    response = hub.create(LAMP, headers=link("https://contexts.example.invalid/none.jsonld"))
    assert response.status_code == 503 and problem_type(response) == "LdContextNotAvailable"
    assert time.monotonic() - started < 1.0
    assert hub.get("/entities", params={"type": "Lamp"}).json() == []


def test_fetching_is_a_setting(monkeypatch, tmp_path):
    assert load_settings(tmp_path).hub_fetch_contexts is True
    monkeypatch.setenv("COMMUNS_HUB_FETCH_CONTEXTS", "false")
    assert load_settings(tmp_path).hub_fetch_contexts is False


def test_a_server_that_never_answers_costs_one_timeout_then_fails_fast(
    hub, use_loader, db, settings
):
    use_loader(ContextLoader(db, local_fetching(settings)))
    with silent_server() as base:
        url = f"{base}/context.jsonld"
        started = time.monotonic()
        first = hub.get("/entities", params={"type": "Lamp"}, headers=link(url))
        elapsed = time.monotonic() - started
        assert first.status_code == 503 and problem_type(first) == "LdContextNotAvailable"
        assert 2.5 <= elapsed < 3.5, elapsed
        started = time.monotonic()
        second = hub.get("/entities", params={"type": "Lamp"}, headers=link(url))
        assert second.status_code == 503 and problem_type(second) == "LdContextNotAvailable"
        assert time.monotonic() - started < 0.5


def test_a_remote_context_is_fetched_stored_and_used(hub, use_loader, db, settings, context_server):
    loader = use_loader(ContextLoader(db, local_fetching(settings)))
    url = context_server.serve_json("/city.jsonld", CITY)
    created = hub.create(LAMP, headers=link(url))
    assert created.status_code == 201, created.text
    assert_lamp_stored_with_iris(hub)
    assert hub.get(f"/entities/{LAMP['id']}", headers=link(url)).json()["type"] == "Lamp"
    assert context_server.count("/city.jsonld") == 1

    with db.read() as session:
        row = contexts.get_context(session, url)
        assert row is not None and row.kind == "fetched" and row.document == CITY
    info = hub.get("/jsonldContexts", params={"kind": "Cached", "details": "true"}).json()
    assert [(i["URL"], i["extraInfo"]) for i in info] == [(url, {"origin": "fetched"})]

    # Reloading fetches it again (and takes the new version).
    changed = {"@context": {"Lamp": f"{NS}StreetLamp", "brightness": f"{NS}brightness"}}
    context_server.serve_json("/city.jsonld", changed)
    reloaded = hub.request("DELETE", f"/jsonldContexts/{quote(url, safe='')}?reload=true")
    assert reloaded.status_code == 204, reloaded.text
    assert context_server.count("/city.jsonld") == 2
    with db.read() as session:
        assert contexts.get_context(session, url).document == changed
    found = hub.get("/entities", params={"type": "Lamp"}, headers=link(url)).json()
    assert found == []  # "Lamp" now names another type

    # Once stored, it resolves without the remote server.
    loader.close()
    context_server.routes.clear()
    use_loader(ContextLoader(db, local_fetching(settings)))
    jsonld_context.clear_cache()
    lamp = hub.get(f"/entities/{LAMP['id']}", headers=link(url)).json()
    assert lamp["type"] == f"{NS}Lamp" and "brightness" in lamp
    assert context_server.count("/city.jsonld") == 2


def test_reload_of_an_unreachable_context_keeps_the_stored_copy(
    hub, use_loader, db, settings, context_server
):
    use_loader(ContextLoader(db, local_fetching(settings)))
    url = context_server.serve_json("/city.jsonld", CITY)
    assert hub.create(LAMP, headers=link(url)).status_code == 201
    context_server.routes.clear()
    reloaded = hub.request("DELETE", f"/jsonldContexts/{quote(url, safe='')}?reload=true")
    assert reloaded.status_code == 503 and problem_type(reloaded) == "LdContextNotAvailable"
    with db.read() as session:
        assert contexts.get_context(session, url).document == CITY


def test_fetch_limits_redirects_size_and_content(db, settings, context_server):
    loader = ContextLoader(db, local_fetching(settings))
    try:
        target = context_server.serve_json("/ok.jsonld", CITY)
        hops = [target]
        for n in range(4):
            hops.append(context_server.redirect(f"/hop{n}", hops[-1]))
        assert loader(hops[3]) == CITY  # three redirects are followed
        with pytest.raises(ContextNotAvailable):
            loader(hops[4])  # four are not

        gzipped = gzip.compress(orjson.dumps(CITY))
        context_server.routes["/gz"] = (200, {"Content-Encoding": "gzip"}, gzipped)
        assert loader(context_server.base + "/gz") == CITY

        big = {"@context": {f"t{n}": f"{NS}{'x' * 100}{n}" for n in range(12_000)}}
        with pytest.raises(ContextNotAvailable):
            loader(context_server.serve_json("/big.jsonld", big))
        context_server.routes["/html"] = (200, {"Content-Type": "text/html"}, b"<html></html>")
        with pytest.raises(ContextNotAvailable):
            loader(context_server.base + "/html")
        with pytest.raises(ContextNotAvailable):
            loader(context_server.serve_json("/list.jsonld", [CITY]))
        with pytest.raises(ContextNotAvailable):
            loader(context_server.base + "/missing.jsonld")
        with pytest.raises(ContextNotAvailable):
            loader("urn:example:not-http")
    finally:
        loader.close()


def test_failures_are_remembered_for_a_while(db, settings, context_server):
    now = [1000.0]
    loader = ContextLoader(db, local_fetching(settings), clock=lambda: now[0])
    try:
        url = context_server.base + "/late.jsonld"
        with pytest.raises(ContextNotAvailable):
            loader(url)
        context_server.serve_json("/late.jsonld", CITY)
        now[0] += 59
        with pytest.raises(ContextNotAvailable):
            loader(url)
        assert context_server.count("/late.jsonld") == 1
        now[0] += 2
        assert loader(url) == CITY
        assert context_server.count("/late.jsonld") == 2
    finally:
        loader.close()


def test_the_store_validates_urls_and_kinds(db):
    from communs.hub.errors import BadRequestData

    for url in ("ftp://x.org/c", "/relative", "https://", "https://x.org/" + "a" * 600):
        with pytest.raises(BadRequestData):
            db.write(contexts.add_context, url, CITY, "cached")
    with pytest.raises(BadRequestData):
        db.write(contexts.add_context, "https://x.org/c", CITY, "borrowed")
    row = db.write(contexts.add_context, "https://x.org/c", CITY, "cached")
    assert row.kind == "cached" and row.hits == 0
    # A fetched copy never replaces an operator's copy.
    db.write(contexts.add_context, "https://x.org/c", {"@context": {}}, "fetched")
    with db.read() as session:
        assert [(r.url, r.kind, r.document) for r in contexts.list_contexts(session)] == [
            ("https://x.org/c", "cached", CITY)
        ]
        assert contexts.list_contexts(session, "fetched") == []


def test_fetching_refuses_non_public_addresses_by_default(db, settings, context_server):
    url = context_server.serve_json("/city.jsonld", CITY)
    loader = ContextLoader(db, settings)
    try:
        begin = time.monotonic()
        with pytest.raises(ContextNotAvailable):
            loader(url)
        assert time.monotonic() - begin < 2
        assert context_server.requests == []
    finally:
        loader.close()
