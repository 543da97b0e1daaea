"""History retention: rules per commune and entity type, enforced by a job."""

import asyncio
import datetime as dt

from hub.test_contexts import run_cli
from sqlalchemy import select

from communs.core.jobs import JobRunner
from communs.core.models import Job, JobStatus
from communs.core.plugins import load_job_handlers
from communs.core.service import commune_by_slug
from communs.hub import history

TODAY = dt.datetime.now(dt.UTC).replace(microsecond=0)


def days_ago(days: int) -> str:
    return (TODAY - dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


def provide(hub, entity_id: str, entity_type: str, ages: list[int]) -> None:
    readings = [{"type": "Property", "value": age, "observedAt": days_ago(age)} for age in ages]
    body = {"id": entity_id, "type": entity_type, "level": readings}
    assert hub.request("POST", "/temporal/entities", body).status_code == 201


def kept_ages(hub, entity_id: str) -> list[int]:
    found = hub.get(f"/temporal/entities/{entity_id}", params={"attrs": "level"})
    return sorted((i["value"] for i in found.json().get("level", [])), reverse=True)


def pending_retention_jobs(db) -> list[Job]:
    with db.read() as session:
        return list(
            session.scalars(
                select(Job).where(
                    Job.kind == history.RETENTION_JOB, Job.status == JobStatus.PENDING
                )
            )
        )


def test_rules_by_type_and_commune_are_enforced_by_the_job(hub, hub_beta, db, settings):
    load_job_handlers()
    provide(hub, "urn:ngsi-ld:Bin:1", "WasteContainer", [400, 40, 10, 1])
    provide(hub, "urn:ngsi-ld:Meter:1", "WaterMeter", [400, 40, 10, 1])
    provide(hub_beta, "urn:ngsi-ld:Bin:1", "WasteContainer", [400, 40, 10, 1])
    with db.read() as session:
        alpha = commune_by_slug(session, "alpha").id
    iri = "https://uri.etsi.org/ngsi-ld/default-context/WasteContainer"
    db.write(history.set_retention, alpha, 30, iri)
    db.write(history.set_retention, alpha, 365)
    assert len(pending_retention_jobs(db)) == 1
    asyncio.run(JobRunner(db, settings).run_until_idle())
    assert kept_ages(hub, "urn:ngsi-ld:Bin:1") == [10, 1]
    assert kept_ages(hub, "urn:ngsi-ld:Meter:1") == [40, 10, 1]
    assert kept_ages(hub_beta, "urn:ngsi-ld:Bin:1") == [400, 40, 10, 1]  # no rule there
    # The job comes back in an hour, as long as rules remain.
    (later,) = pending_retention_jobs(db)
    assert later.run_after > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=50)


def test_retention_from_the_cli(hub, database_url, tmp_path):
    assert run_cli(database_url, tmp_path, "hub", "retention", "set", "alpha", "90").returncode == 0
    set_typed = run_cli(
        database_url, tmp_path, "hub", "retention", "set", "alpha", "7", "--type", "WaterMeter"
    )
    assert set_typed.returncode == 0, set_typed.stderr
    listed = run_cli(database_url, tmp_path, "hub", "retention", "list", "alpha")
    assert "WaterMeter" in listed.stdout and "90" in listed.stdout and "7" in listed.stdout
    removed = run_cli(
        database_url, tmp_path, "hub", "retention", "remove", "alpha", "--type", "WaterMeter"
    )
    assert removed.returncode == 0
    again = run_cli(
        database_url, tmp_path, "hub", "retention", "remove", "alpha", "--type", "WaterMeter"
    )
    assert again.returncode == 2
    zero = run_cli(database_url, tmp_path, "hub", "retention", "set", "alpha", "0")
    assert zero.returncode != 0
