"""Benchmarks of the NGSI-LD hub against a reference measured in the same run.

    python bench/hub/bench_hub.py patch|batch|query|all [--database-url URL]

Each run starts a real ``communs serve`` on loopback, loads data through the API and
measures with ``wrk`` (PATCH) or an HTTP client (batch, query). Nothing is asserted:
the figures are printed, with their ratio to the reference.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from communs.core import migrate, service  # noqa: E402
from communs.core.db import Database, JSONType  # noqa: E402
from communs.core.settings import normalise_database_url  # noqa: E402

TENANT = "bench"
PATCH_LUA = """
local ids = {}
for i = 1, %(count)d do ids[i] = "urn:ngsi-ld:Sensor:" .. i end
request = function()
  local id = ids[math.random(1, #ids)]
  local body = '{"temperature":{"type":"Property","value":' .. math.random(0, 400) / 10 .. '}}'
  return wrk.format("PATCH", "/ngsi-ld/v1/entities/" .. id .. "/attrs", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(key)s",
    ["NGSILD-Tenant"] = "%(tenant)s",
  }, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base: str, process: subprocess.Popen, path: str = "/healthz") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(base + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


@contextmanager
def database(url: str | None, folder: Path, stem: str = "bench"):
    """A fresh database: a SQLite file in ``folder``, or one created (and dropped after)
    on the PostgreSQL server of ``url``."""
    if url is None or url.startswith("sqlite"):
        yield f"sqlite:///{folder / f'{stem}.sqlite3'}"
        return
    admin_url = normalise_database_url(url)
    name = f"communs_{stem}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def communs_server(database_url: str, folder: Path, env: dict[str, str] | None = None):
    """``communs serve`` on a fresh commune ``bench`` with an API key; ``env`` adds
    COMMUNS_ variables (the MQTT broker of bench_ingest.py)."""
    migrate.upgrade(database_url)
    db = Database(database_url)
    commune = db.write(
        service.create_commune, slug=TENANT, name="Banc d'essai", insee_code="37998", boundary=None
    )
    key = db.write(
        service.create_api_key,
        commune_id=commune.id,
        name="bench",
        scopes=["hub:read", "hub:write"],
    ).secret
    db.close()
    port = free_port()
    env = {
        **os.environ,
        "COMMUNS_DATABASE_URL": database_url,
        "COMMUNS_HUB_DEFAULT_TENANT": TENANT,
        "COMMUNS_SECRET_KEY": "bench",
        **(env or {}),
    }
    log = open(folder / "serve.log", "ab")  # noqa: SIM115 - closed with the server
    process = subprocess.Popen(
        [sys.executable, "-m", "communs", "serve", "--port", str(port), "--data-dir", str(folder)],
        env=env,
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base, key
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@contextmanager
def reference_server():
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "reference_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=Path(__file__).parent,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process, "/")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def sensors(count: int, start: int = 1) -> list[dict]:
    rng = random.Random(start)
    return [
        {
            "id": f"urn:ngsi-ld:Sensor:{n}",
            "type": "Sensor",
            "temperature": {
                "type": "Property",
                "value": round(rng.uniform(0, 40), 1),
                "unitCode": "CEL",
            },
            "status": {"type": "Property", "value": rng.choice(["ok", "ko", "maintenance"])},
            "location": {
                "type": "GeoProperty",
                "value": {
                    "type": "Point",
                    "coordinates": [
                        round(rng.uniform(0.6, 0.8), 6),
                        round(rng.uniform(47.3, 47.5), 6),
                    ],
                },
            },
        }
        for n in range(start, start + count)
    ]


def post_batches(
    base: str, key: str, entities: list[dict], size: int = 1000, clients: int = 1
) -> float:
    """Upsert ``entities`` in requests of ``size``, from ``clients`` concurrent clients."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    bodies = [orjson.dumps(entities[i : i + size]) for i in range(0, len(entities), size)]

    def send(client: httpx.Client, body: bytes) -> None:
        response = client.post("/ngsi-ld/v1/entityOperations/upsert", content=body, headers=headers)
        if response.status_code not in (201, 204):
            raise SystemExit(f"upsert failed: {response.status_code} {response.text[:300]}")

    def worker(index: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            for body in bodies[index::clients]:
                send(client, body)

    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - begin


def run_wrk(base: str, script: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", handle.name, base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(handle.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rps": rate,
        "p50": _latency(output, "50%"),
        "p99": _latency(output, "99%"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)", output)
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def bench_patch(args: argparse.Namespace, folder: Path) -> None:
    with database(args.database_url, folder) as url, communs_server(url, folder) as (base, key):
        post_batches(base, key, sensors(args.entities))
        script = PATCH_LUA % {"count": args.entities, "key": key, "tenant": TENANT}
        run_wrk(base, script, 2, args.connections)  # warm-up
        ours = run_wrk(base, script, args.seconds, args.connections)
    with reference_server() as base:
        reference = run_wrk(base, script, args.seconds, args.connections)
    print(
        f"PATCH /entities/{{id}}/attrs, {args.connections} clients, {args.seconds}s, "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}"
    )
    print(
        f"  communs   : {ours['rps']:8.0f} req/s  p50 {ours['p50']:6.2f} ms  "
        f"p99 {ours['p99']:6.2f} ms  non-2xx {ours['non_2xx']}"
    )
    print(
        f"  reference : {reference['rps']:8.0f} req/s  p50 {reference['p50']:6.2f} ms  "
        f"p99 {reference['p99']:6.2f} ms  (bare Starlette handler)"
    )
    print(f"  ratio     : {ours['rps'] / reference['rps']:.2f} of the reference")


def bench_batch(args: argparse.Namespace, folder: Path) -> None:
    total = args.batch_entities
    entities = sensors(total)
    with database(args.database_url, folder) as url:
        with communs_server(url, folder) as (base, key):
            elapsed = post_batches(base, key, entities, clients=args.batch_clients)
        stored = stored_rows(url)
        same_rows = reference_insert_stored(url, stored, folder)
        documents_only = reference_insert(url, entities)
        floor = None
        if not args.database_url:
            from bench_storage_floor import bare_insert_of_every_row

            floor = bare_insert_of_every_row(folder / "bench.sqlite3", folder)
    rate = total / elapsed
    index_rows = sum(
        len(rows) for name, rows in stored.items() if name != "hub_entities"
    )  # + history
    print(
        f"batch upsert, 1,000 entities per request, {total} entities, "
        f"{args.batch_clients} client(s), {'PostgreSQL' if args.database_url else 'SQLite'}"
    )
    print(f"  communs     : {rate:9.0f} entities/s (HTTP, parsing, validation, indexes)")
    print(
        f"  reference   : {total / same_rows:9.0f} entities/s (raw SQLAlchemy Core insert of the "
        f"same rows: {total} entities + {index_rows} index and history rows, same schema)"
    )
    print(f"  ratio       : {same_rows / elapsed:.2f} of the reference")
    if floor is not None:
        print(
            f"  floor       : {total / floor:9.0f} entities/s (the same rows through the bare "
            f"sqlite3 driver, prepared tuples, no SQLAlchemy: bench_storage_floor.py; "
            f"ratio {floor / elapsed:.2f})"
        )
    print(
        f"  for scale   : {total / documents_only:9.0f} entities/s (raw Core insert of the "
        f"documents alone into a table without indexes; ratio {documents_only / elapsed:.2f})"
    )


INDEXED_TABLES = ("hub_entities", "hub_entity_types", "hub_geometries", "hub_numbers", "hub_texts")
HISTORY_TABLES = ("hub_temporal_entities", "hub_temporal_series", "hub_temporal_instances")


def indexed_tables(url: str) -> tuple[str, ...]:
    spatial = ("hub_geometry_boxes",) if url.startswith("sqlite") else ()
    return (*INDEXED_TABLES, *spatial, *HISTORY_TABLES)


def stored_rows(url: str) -> dict[str, list[dict]]:
    """Every row the hub wrote for the benchmark's entities, table by table."""
    engine = create_engine(url)
    metadata = MetaData()
    rows = {}
    with engine.connect() as connection:
        for name in indexed_tables(url):
            table = Table(name, metadata, autoload_with=connection)
            rows[name] = [dict(row._mapping) for row in connection.execute(table.select())]
    engine.dispose()
    return rows


def reference_insert_stored(url: str, stored: dict[str, list[dict]], folder: Path) -> float:
    """Insert the same rows, 1,000 entities per transaction, through SQLAlchemy Core into a
    fresh database with the hub's schema (same indexes, same spatial index)."""
    with database(url, folder, stem="reference") as copy_url:
        migrate.upgrade(copy_url)
        db = Database(copy_url)
        commune = db.write(
            service.create_commune, slug="ref", name="Référence", insee_code="37997", boundary=None
        )
        db.close()
        engine = create_engine(copy_url, json_serializer=lambda v: orjson.dumps(v).decode())
        if engine.dialect.name == "sqlite":  # the hub's own settings: WAL, no fsync per commit
            event.listen(engine, "connect", _sqlite_pragmas)
        metadata = MetaData()
        with engine.connect() as connection:
            tables = {n: Table(n, metadata, autoload_with=connection) for n in stored}
        chunks = _chunks_by_entity(stored, commune.id)
        begin = time.perf_counter()
        with engine.connect() as connection:
            for chunk in chunks:
                with connection.begin():
                    for name, rows in chunk.items():
                        if rows:
                            connection.execute(insert(tables[name]), rows)
        elapsed = time.perf_counter() - begin
        engine.dispose()
    return elapsed


def _history_chunk(stored: dict[str, list[dict]], part: list[dict], commune_id: int) -> dict:
    """The history rows of the entities of ``part`` (they were recorded with them)."""
    entity_ids = {row["entity_id"] for row in part}
    owners = [r for r in stored["hub_temporal_entities"] if r["entity_id"] in entity_ids]
    owner_ids = {row["id"] for row in owners}
    series = [r for r in stored["hub_temporal_series"] if r["temporal_entity_id"] in owner_ids]
    series_ids = {row["id"] for row in series}
    return {
        "hub_temporal_entities": [{**row, "commune_id": commune_id} for row in owners],
        "hub_temporal_series": [{**row, "commune_id": commune_id} for row in series],
        "hub_temporal_instances": [
            row for row in stored["hub_temporal_instances"] if row["series_id"] in series_ids
        ],
    }


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _chunks_by_entity(stored: dict[str, list[dict]], commune_id: int, size: int = 1000) -> list:
    entities = stored["hub_entities"]
    chunks = []
    for start in range(0, len(entities), size):
        part = entities[start : start + size]
        pks = {row["pk"] for row in part}
        chunk = {"hub_entities": [{**row, "commune_id": commune_id} for row in part]}
        for name in INDEXED_TABLES[1:]:
            chunk[name] = [
                {**row, "commune_id": commune_id} for row in stored[name] if row["entity_pk"] in pks
            ]
        chunk.update(_history_chunk(stored, part, commune_id))
        if "hub_geometry_boxes" in stored:  # the SQLite R*Tree, keyed by geometry id
            ids = {row["id"] for row in chunk["hub_geometries"]}
            chunk["hub_geometry_boxes"] = [
                row for row in stored["hub_geometry_boxes"] if row["id"] in ids
            ]
        chunks.append(chunk)
    return chunks


def reference_insert(url: str, entities: list[dict]) -> float:
    engine = create_engine(url, json_serializer=lambda v: orjson.dumps(v).decode())
    metadata = MetaData()
    table = Table(
        f"bench_reference_{uuid.uuid4().hex[:6]}",
        metadata,
        Column("pk", Integer, primary_key=True),
        Column("commune_id", Integer),
        Column("entity_id", String(256)),
        Column("document", JSONType),
    )
    metadata.create_all(engine)
    rows = [{"commune_id": 1, "entity_id": e["id"], "document": e} for e in entities]
    begin = time.perf_counter()
    with engine.begin() as connection:
        for start in range(0, len(rows), 1000):
            connection.execute(insert(table), rows[start : start + 1000])
    elapsed = time.perf_counter() - begin
    metadata.drop_all(engine)
    engine.dispose()
    return elapsed


def bench_query(args: argparse.Namespace, folder: Path) -> None:
    queries = {
        "type + q": {"type": "Sensor", "q": 'temperature>39.5;status=="ok"', "limit": "100"},
        "geo near": {
            "type": "Sensor",
            "georel": "near;maxDistance==200",
            "geometry": "Point",
            "coordinates": "[0.7,47.4]",
            "limit": "100",
        },
    }
    with database(args.database_url, folder) as url, communs_server(url, folder) as (base, key):
        post_batches(base, key, sensors(args.query_entities))
        results = {}
        with httpx.Client(base_url=base, timeout=60) as client:
            for name, params in queries.items():
                timings = []
                for _ in range(args.repeat):
                    begin = time.perf_counter()
                    response = client.get("/ngsi-ld/v1/entities", params=params)
                    timings.append((time.perf_counter() - begin) * 1000)
                    assert response.status_code == 200, response.text
                results[name] = (timings, len(response.json()))
    print(
        f"queries over {args.query_entities} entities, "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}"
    )
    for name, (timings, found) in results.items():
        q = statistics.quantiles(timings, n=20)
        print(
            f"  {name:9}: p50 {statistics.median(timings):7.1f} ms  p95 {q[18]:7.1f} ms  "
            f"({found} results)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", choices=["patch", "batch", "query", "all"])
    parser.add_argument("--database-url")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--batch-entities", type=int, default=50_000)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--query-entities", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    for which in ["patch", "batch", "query"] if args.which == "all" else [args.which]:
        with tempfile.TemporaryDirectory() as folder:
            {"patch": bench_patch, "batch": bench_batch, "query": bench_query}[which](
                args, Path(folder)
            )


if __name__ == "__main__":
    main()
