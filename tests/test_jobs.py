import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from conftest import STRONG_PASSWORD, csrf_from, make_agent, make_commune
from sqlalchemy import select

from communs.core import jobs, service
from communs.core.db import utcnow
from communs.core.jobs import JobRunner, enqueue, job_handler
from communs.core.models import Job, JobStatus

DELIVERED: list[dict] = []


@job_handler("test.record")
def record(context, payload):
    if payload.get("fail_times", 0) >= context.attempt:
        raise RuntimeError(f"boom on attempt {context.attempt}")
    DELIVERED.append(payload)


def run(coroutine):
    return asyncio.run(coroutine)


def all_jobs(db):
    with db.read() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def test_job_exists_only_if_its_change_commits(db):
    commune = make_commune(db)

    def failing_change(session):
        service.add_service(session, commune.id, "Piscine")
        enqueue(session, "test.record", {"n": 1}, commune_id=commune.id)
        raise service.InvalidInput("refusé")

    with pytest.raises(service.InvalidInput):
        db.write(failing_change)
    assert all_jobs(db) == []
    db.write(lambda s: enqueue(s, "test.record", {"n": 2}, commune_id=commune.id))
    assert [job.payload for job in all_jobs(db)] == [{"n": 2}]


def test_runner_retries_with_backoff_then_delivers(db, settings):
    DELIVERED.clear()
    db.write(lambda s: enqueue(s, "test.record", {"n": 3, "fail_times": 2}))
    runner = JobRunner(db, settings)
    assert run(runner.run_one()) is True
    job = all_jobs(db)[0]
    assert job.status == JobStatus.PENDING and job.attempts == 1
    assert "boom on attempt 1" in job.last_error
    assert job.run_after > utcnow() - dt.timedelta(seconds=1)
    for _ in range(50):
        run(runner.run_until_idle())
        if all_jobs(db)[0].status == JobStatus.DONE:
            break
        time.sleep(0.05)
    job = all_jobs(db)[0]
    assert job.status == JobStatus.DONE and job.attempts == 3
    assert DELIVERED == [{"n": 3, "fail_times": 2}]


def test_dead_letter_after_max_attempts_and_admin_retry(db, settings):
    DELIVERED.clear()
    db.write(lambda s: enqueue(s, "test.record", {"fail_times": 99}, max_attempts=2))
    runner = JobRunner(db, settings.with_overrides(job_backoff_seconds=0))
    run(runner.run_until_idle())
    run(runner.run_until_idle())
    job = all_jobs(db)[0]
    assert job.status == JobStatus.DEAD and job.attempts == 2
    assert "boom on attempt 2" in job.last_error
    db.write(jobs.retry_dead, job.id)
    assert all_jobs(db)[0].status == JobStatus.PENDING
    assert DELIVERED == []


def test_expired_lease_is_claimed_again(db, settings):
    db.write(lambda s: enqueue(s, "test.record", {"n": 4}))
    claimed = db.write(jobs.claim_next, 60)
    assert claimed is not None
    assert db.write(jobs.claim_next, 60) is None  # leased: nobody else takes it
    with db.read() as session:
        assert session.get(Job, claimed.id).status == JobStatus.RUNNING

    def expire(session):
        session.get(Job, claimed.id).locked_until = utcnow() - dt.timedelta(seconds=1)

    db.write(expire)
    again = db.write(jobs.claim_next, 60)
    assert again.id == claimed.id and again.attempts == 2


def test_unknown_job_kind_fails_visibly(db, settings):
    db.write(lambda s: enqueue(s, "nobody.handles.this", {}, max_attempts=1))
    run(JobRunner(db, settings).run_until_idle())
    job = all_jobs(db)[0]
    assert job.status == JobStatus.DEAD and "no handler" in job.last_error


# ---------------------------------------------------------------- crash and restart


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(tmp_path: Path, database_url: str, http_port: int, smtp_port: int):
    env = {
        **os.environ,
        "COMMUNS_DATABASE_URL": database_url,
        "COMMUNS_SMTP_HOST": "127.0.0.1",
        "COMMUNS_SMTP_PORT": str(smtp_port),
        "COMMUNS_JOB_POLL_SECONDS": "0.1",
        "COMMUNS_JOB_BACKOFF_SECONDS": "0.2",
        "COMMUNS_JOB_LEASE_SECONDS": "2",
    }
    with open(tmp_path / "serve.log", "ab") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "communs",
                "serve",
                "--port",
                str(http_port),
                "--data-dir",
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError((tmp_path / "serve.log").read_text())


def wait_for(predicate, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_sigkill_between_commit_and_delivery_then_delivered_once(tmp_path, db, database_url):
    commune = make_commune(db)
    make_agent(db, commune.id, "maire@example.org", role="commune_admin")
    db.write(lambda s: [s.delete(job) for job in s.scalars(select(Job))])
    http_port, smtp_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    serve = start_serve(tmp_path, database_url, http_port, smtp_port)
    try:
        with httpx.Client(base_url=base) as client:
            token = csrf_from(client.get("/login").text)
            client.post(
                "/login",
                data={
                    "email": "maire@example.org",
                    "password": STRONG_PASSWORD,
                    "csrf_token": token,
                },
            )
            token = csrf_from(client.get("/alpha/admin/").text)
            created = client.post(
                "/alpha/admin/agents",
                data={
                    "name": "Nouvel Agent",
                    "email": "nouvel.agent@example.org",
                    "password": STRONG_PASSWORD,
                    "role": "agent",
                    "csrf_token": token,
                },
            )
            assert created.status_code == 303
        # The change is committed; its e-mail cannot be delivered yet (no SMTP server).
        job = wait_for(lambda: next((j for j in all_jobs(db) if j.attempts >= 1), None))
        assert job.kind == "core.email" and job.status != JobStatus.DONE
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=10)
    finally:
        if serve.poll() is None:
            serve.kill()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    serve = start_serve(tmp_path, database_url, http_port, smtp_port)
    try:
        wait_for(lambda: all_jobs(db)[0].status == JobStatus.DONE)
        time.sleep(1.0)  # a duplicate delivery would arrive here
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=15)
        controller.stop()
    assert len(inbox.messages) == 1
    _sender, recipients, content = inbox.messages[0]
    assert recipients == ["nouvel.agent@example.org"]
    assert "Votre compte Communs pour Alpha" in content.decode()
    assert [j.status for j in all_jobs(db)] == [JobStatus.DONE]
    assert json.dumps(all_jobs(db)[0].payload)
