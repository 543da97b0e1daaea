"""Temporal queries over a year of hourly readings of many sensors.

    python bench/hub/bench_temporal.py [--sensors 1000] [--days 365] [--database-url URL]

Loads ``sensors`` × ``days`` × 24 readings through ``POST /temporal/entities`` of a
real ``communs serve``, then measures (p50/p95 over ``--repeat`` runs):

- a year of daily averages for one sensor (target p95 ≤ 100 ms);
- one day of hourly averages for all sensors (target p95 ≤ 1 s).

Reference, measured in the same run: the same aggregates computed by one SQL query
on the instance table (SQLAlchemy Core), without HTTP or NGSI-LD rendering.
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
import orjson
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).parent))

from bench_hub import communs_server, database  # noqa: E402

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
MICROS = 1_000_000


def readings(sensor: int, days: int) -> list[dict]:
    rng = random.Random(sensor)
    base = rng.uniform(5, 15)
    return [
        {
            "type": "Property",
            "value": round(base + 8 * ((hour % 24) / 24) + rng.uniform(-1, 1), 2),
            "observedAt": (START + dt.timedelta(hours=hour)).isoformat().replace("+00:00", "Z"),
        }
        for hour in range(days * 24)
    ]


def load(base: str, key: str, sensors: int, days: int) -> float:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def send(sensor: int) -> None:
        body = {
            "id": f"urn:ngsi-ld:Sensor:{sensor}",
            "type": "Sensor",
            "temperature": readings(sensor, days),
        }
        with httpx.Client(base_url=base, timeout=600) as client:
            answer = client.post(
                "/ngsi-ld/v1/temporal/entities", content=orjson.dumps(body), headers=headers
            )
        if answer.status_code != 201:
            raise SystemExit(f"load failed: {answer.status_code} {answer.text[:300]}")

    begin = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(1, sensors + 1)))
    return time.perf_counter() - begin


def timed(function, repeat: int) -> tuple[list[float], object]:
    timings, result = [], None
    for _ in range(repeat):
        begin = time.perf_counter()
        result = function()
        timings.append((time.perf_counter() - begin) * 1000)
    return timings, result


def summary(timings: list[float]) -> str:
    p95 = statistics.quantiles(timings, n=20)[18] if len(timings) >= 20 else max(timings)
    return f"p50 {statistics.median(timings):8.1f} ms  p95 {p95:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    year = {
        "attrs": "temperature",
        "options": "aggregatedValues",
        "aggrMethods": "avg",
        "aggrPeriodDuration": "P1D",
        "timerel": "between",
        "timeAt": START.isoformat().replace("+00:00", "Z"),
        "endTimeAt": (START + dt.timedelta(days=args.days)).isoformat().replace("+00:00", "Z"),
    }
    day_start = START + dt.timedelta(days=args.days // 2)
    day = {
        "type": "Sensor",
        "attrs": "temperature",
        "options": "aggregatedValues",
        "aggrMethods": "avg",
        "aggrPeriodDuration": "PT1H",
        "timerel": "between",
        "timeAt": day_start.isoformat().replace("+00:00", "Z"),
        "endTimeAt": (day_start + dt.timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "limit": "1000",
    }
    total = args.sensors * args.days * 24
    with tempfile.TemporaryDirectory() as folder, database(args.database_url, Path(folder)) as url:
        with communs_server(url, Path(folder)) as (base, key):
            seconds = load(base, key, args.sensors, args.days)
            with httpx.Client(base_url=base, timeout=600) as client:
                one = f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Sensor:{args.sensors // 2}"
                year_times, year_answer = timed(lambda: client.get(one, params=year), args.repeat)
                day_times, day_answer = timed(
                    lambda: client.get("/ngsi-ld/v1/temporal/entities", params=day), args.repeat
                )
        assert year_answer.status_code == 200, year_answer.text[:300]
        assert day_answer.status_code == 200, day_answer.text[:300]
        ref_year, ref_day = reference(url, args, day_start)
    days_found = len(year_answer.json()["temperature"]["avg"])
    sensors_found = len(day_answer.json())
    store = "PostgreSQL" if args.database_url else "SQLite"
    print(f"temporal queries, {args.sensors} sensors x {args.days} days hourly, {store}")
    print(f"  instances : {total}")
    print(f"  load      : {total / seconds:9.0f} instances/s through POST /temporal/entities")
    print(f"  year/daily: {summary(year_times)}  ({days_found} daily averages of one sensor)")
    print(f"     SQL    : {summary(ref_year)}  ratio {_ratio(ref_year, year_times)}")
    print(f"  day/hourly: {summary(day_times)}  ({sensors_found} sensors, 24 hourly averages each)")
    print(f"     SQL    : {summary(ref_day)}  ratio {_ratio(ref_day, day_times)}")


def _ratio(reference: list[float], ours: list[float]) -> str:
    return f"{statistics.median(reference) / statistics.median(ours):.2f}"


def reference(url: str, args: argparse.Namespace, day_start: dt.datetime):
    """The same aggregates by one GROUP BY over the instance table."""
    engine = create_engine(url)
    start_us = int(START.timestamp()) * MICROS
    end_us = start_us + args.days * 86_400 * MICROS
    # Driven from the series, as an index-aware hand-written query would be.
    year_sql = text(
        "SELECT (i.observed_at - :start) / :bucket AS b, avg(i.number) "
        "FROM hub_temporal_series s JOIN hub_temporal_instances i ON i.series_id = s.id "
        "AND i.observed_at >= :start AND i.observed_at < :end "
        "WHERE s.temporal_entity_id = "
        "(SELECT id FROM hub_temporal_entities WHERE entity_id = :entity) GROUP BY b ORDER BY b"
    )
    day_us = int(day_start.timestamp()) * MICROS
    day_sql = text(
        "SELECT s.temporal_entity_id, (i.observed_at - :start) / :bucket AS b, avg(i.number) "
        "FROM hub_temporal_series s JOIN hub_temporal_instances i ON i.series_id = s.id "
        "AND i.observed_at >= :start AND i.observed_at < :end "
        "GROUP BY s.temporal_entity_id, b"
    )
    with engine.connect() as connection:
        year_params = {
            "start": start_us,
            "end": end_us,
            "bucket": 86_400 * MICROS,
            "entity": f"urn:ngsi-ld:Sensor:{args.sensors // 2}",
        }
        ref_year, _ = timed(lambda: connection.execute(year_sql, year_params).all(), args.repeat)
        day_params = {"start": day_us, "end": day_us + 86_400 * MICROS, "bucket": 3600 * MICROS}
        ref_day, _ = timed(lambda: connection.execute(day_sql, day_params).all(), args.repeat)
    engine.dispose()
    return ref_year, ref_day


if __name__ == "__main__":
    main()
