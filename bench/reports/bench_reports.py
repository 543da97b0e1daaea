"""Citizen reports through Open311 GeoReport v2 on a real ``communs serve``.

    python bench/reports/bench_reports.py [--reports 100000] [--posts 3000]
        [--clients 8] [--repeat 30] [--database-url URL]

1. Creation: ``--posts`` reports through ``POST /open311/v2/requests.json`` from
   ``--clients`` concurrent clients (form-urlencoded, as Open311 clients send them):
   reports/s and p50/p95 latency. Reference, same run: the same reports filed
   in-process through ``service.create_report`` (the write path without HTTP).
2. Volume: the commune is filled up to ``--reports`` reports (in-process, spread over
   the last 120 days, 40 % of them closed), then ``GET /open311/v2/requests.json`` is
   timed with several filters: p50/p95 over ``--repeat`` runs each. Reference: the
   same selection by one SQLAlchemy Core query on the reports table (no rendering).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from bench_hub import TENANT, communs_server, database  # noqa: E402

from communs.core import service as core  # noqa: E402
from communs.core.db import Database, utcnow  # noqa: E402
from communs.reports import service  # noqa: E402
from communs.reports.models import CLOSED, OPEN, Report  # noqa: E402

CODES = [code for _service, code, _group, _name in service.DEFAULT_CATEGORIES]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summary(timings: list[float]) -> str:
    return f"p50 {statistics.median(timings):7.1f} ms  p95 {percentile(timings, 0.95):7.1f} ms"


def form(rng: random.Random, key: str) -> dict[str, str]:
    return {
        "jurisdiction_id": TENANT,
        "api_key": key,
        "service_code": rng.choice(CODES),
        "description": f"Signalement de charge n° {rng.randrange(10**6)} : trottoir abîmé "
        f"devant le numéro {rng.randrange(200)}.",
        "lat": f"{47.30 + rng.random() * 0.1:.6f}",
        "long": f"{0.80 + rng.random() * 0.1:.6f}",
        "email": f"habitant{rng.randrange(10**5)}@example.org",
    }


def post_reports(base: str, key: str, count: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(count // clients):
                begin = time.perf_counter()
                answer = client.post("/open311/v2/requests.json", data=form(rng, key))
                latencies.append((time.perf_counter() - begin) * 1000)
                if answer.status_code != 201:
                    raise SystemExit(f"POST failed: {answer.status_code} {answer.text[:300]}")

    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - begin, latencies


def file_in_process(db: Database, commune_id: int, count: int, seed: int, spread: bool) -> float:
    """Seconds to file ``count`` reports through the service, 500 per transaction."""
    rng = random.Random(seed)
    now = utcnow()

    def batch(session, size: int) -> None:
        for _ in range(size):
            fields = form(rng, "")
            report = service.create_report(
                session,
                commune_id,
                service.Submission(
                    category_code=fields["service_code"],
                    description=fields["description"],
                    lon=float(fields["long"]),
                    lat=float(fields["lat"]),
                    email=fields["email"],
                    channel="open311",
                ),
            )
            if spread:
                report.requested_at = now - dt.timedelta(seconds=rng.randrange(120 * 86_400))
                report.updated_at = report.requested_at
                if rng.random() < 0.4:
                    report.status = rng.choice(sorted(CLOSED))

    begin = time.perf_counter()
    left = count
    while left > 0:
        size = min(500, left)
        db.write(batch, size)
        left -= size
    return time.perf_counter() - begin


def queries(commune_id: int, pothole_id: int, rng: random.Random) -> dict[str, tuple[dict, object]]:
    """name → (Open311 parameters, the same selection as a Core statement)."""
    now = utcnow()
    week_end = now - dt.timedelta(days=30)
    week_start = week_end - dt.timedelta(days=7)
    ids = rng.sample(range(1, 50_000), 20)
    base = select(Report).where(Report.commune_id == commune_id, Report.confirmed.is_(True))
    recent = base.where(Report.requested_at >= now - dt.timedelta(days=90))
    newest = (Report.requested_at.desc(), Report.id.desc())
    return {
        "default (90 days, 1000)": ({}, recent.order_by(*newest).limit(1000)),
        "status=open&service_code": (
            {"status": "open", "service_code": "nid-de-poule"},
            recent.where(Report.status.in_(OPEN), Report.category_id == pothole_id)
            .order_by(*newest)
            .limit(1000),
        ),
        "start_date..end_date (a week)": (
            {"start_date": week_start.isoformat(), "end_date": week_end.isoformat()},
            base.where(Report.requested_at >= week_start, Report.requested_at <= week_end)
            .order_by(*newest)
            .limit(1000),
        ),
        "service_request_id (20 ids)": (
            {"service_request_id": ",".join(map(str, ids))},
            base.where(Report.id.in_(ids)).order_by(*newest),
        ),
        "page 5 of 100, extensions": (
            {"page": "5", "page_size": "100", "extensions": "true"},
            recent.order_by(*newest).offset(400).limit(100),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=3_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    store = "PostgreSQL" if args.database_url else "SQLite"
    with tempfile.TemporaryDirectory() as folder, database(args.database_url, Path(folder)) as url:
        with communs_server(url, Path(folder)) as (base, _hub_key):
            db = Database(url)
            with db.read() as session:
                commune_id = core.commune_by_slug(session, TENANT).id
            (pothole, *_rest) = db.write(service.install_default_categories, commune_id)
            key = db.write(
                core.create_api_key,
                commune_id=commune_id,
                name="open311",
                scopes=["reports:read", "reports:write"],
            ).secret
            posted, latencies = post_reports(base, key, args.posts, args.clients)
            made = len(latencies)
            reference = file_in_process(db, commune_id, made, seed=1, spread=False)
            left = max(args.reports - 2 * made, 0)
            loaded = file_in_process(db, commune_id, left, seed=2, spread=True)
            db.close()
            timings: dict[str, list[float]] = {}
            sizes: dict[str, int] = {}
            plans = queries(commune_id, pothole.id, random.Random(3))
            with httpx.Client(base_url=base, timeout=60) as client:
                for name, (params, _statement) in plans.items():
                    timings[name] = []
                    for _ in range(args.repeat):
                        begin = time.perf_counter()
                        answer = client.get(
                            "/open311/v2/requests.json",
                            params={"jurisdiction_id": TENANT} | params,
                        )
                        timings[name].append((time.perf_counter() - begin) * 1000)
                        if answer.status_code != 200:
                            raise SystemExit(f"{name}: {answer.status_code} {answer.text[:300]}")
                    sizes[name] = len(answer.json())
        engine = create_engine(url)
        references: dict[str, list[float]] = {}
        with engine.connect() as connection:
            for name, (_params, statement) in plans.items():
                references[name] = []
                for _ in range(args.repeat):
                    begin = time.perf_counter()
                    connection.execute(statement).all()
                    references[name].append((time.perf_counter() - begin) * 1000)
        engine.dispose()
    total = 2 * made + left
    print(f"Open311 reports, {store}, {total} reports in the commune")
    print(
        f"  creation : {made / posted:8.0f} reports/s through POST /open311/v2/requests.json "
        f"({args.clients} clients; {summary(latencies)})"
    )
    print(
        f"  reference: {made / reference:8.0f} reports/s through service.create_report "
        f"in-process; ratio {reference / posted:.2f}"
    )
    print(f"  loading  : {left / loaded if loaded else 0:8.0f} reports/s in-process (spread)")
    for name, values in timings.items():
        ratio = statistics.median(references[name]) / statistics.median(values)
        print(
            f"  GET {name:32s}: {summary(values)}  ({sizes[name]:4d} requests)   "
            f"SQL {summary(references[name])}  ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
