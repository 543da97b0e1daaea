"""Durable jobs: an outbox table and the runner that delivers it.

A capability calls ``enqueue(session, ...)`` inside the same unit of work as the
change that causes the job, so the job exists if and only if the change committed.
The runner, inside ``communs serve`` (or ``communs worker``), claims due jobs with a
lease, runs their handler, and marks them done; a failure is retried with
exponential backoff and, after ``max_attempts``, dead-lettered with its last error.
A runner killed mid-job leaves a lease that expires, and the job runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from communs.core.db import Database, utcnow
from communs.core.models import Job, JobStatus
from communs.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    job_id: int
    commune_id: int | None
    attempt: int
    settings: Settings
    db: Database


JobHandler = Callable[[JobContext, dict[str, Any]], Awaitable[None] | None]
HANDLERS: dict[str, JobHandler] = {}


def job_handler(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Register the function that delivers jobs of ``kind``."""

    def register(function: JobHandler) -> JobHandler:
        HANDLERS[kind] = function
        return function

    return register


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    commune_id: int | None = None,
    max_attempts: int = 8,
    run_after: dt.datetime | None = None,
) -> Job:
    job = Job(
        kind=kind,
        payload=payload,
        commune_id=commune_id,
        max_attempts=max_attempts,
        run_after=run_after or utcnow(),
        status=JobStatus.PENDING,
    )
    session.add(job)
    session.flush()
    return job


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    commune_id: int | None
    attempts: int
    max_attempts: int


def claim_next(session: Session, lease_seconds: int) -> ClaimedJob | None:
    """Take the oldest due job (or one whose lease expired) and lease it."""
    now = utcnow()
    query = (
        select(Job)
        .where(
            or_(
                (Job.status == JobStatus.PENDING) & (Job.run_after <= now),
                (Job.status == JobStatus.RUNNING) & (Job.locked_until < now),
            )
        )
        .order_by(Job.run_after, Job.id)
        .limit(1)
    )
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job = session.scalar(query)
    if job is None:
        return None
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.locked_until = now + dt.timedelta(seconds=lease_seconds)
    return ClaimedJob(
        job.id, job.kind, dict(job.payload), job.commune_id, job.attempts, job.max_attempts
    )


def mark_done(session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status=JobStatus.DONE, finished_at=utcnow(), locked_until=None)
    )


def mark_failed(session: Session, job: ClaimedJob, error: str, backoff_seconds: float) -> str:
    """Schedule a retry, or dead-letter the job once it has used its attempts."""
    now = utcnow()
    if job.attempts >= job.max_attempts:
        values: dict[str, Any] = {"status": JobStatus.DEAD, "finished_at": now}
    else:
        delay = min(backoff_seconds * 2 ** (job.attempts - 1), 3600)
        values = {"status": JobStatus.PENDING, "run_after": now + dt.timedelta(seconds=delay)}
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(last_error=error[-4000:], locked_until=None, **values)
    )
    return values["status"]


def retry_dead(session: Session, job_id: int) -> None:
    """Give a dead-lettered job a fresh set of attempts (instance admin action)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.DEAD)
        .values(status=JobStatus.PENDING, attempts=0, run_after=utcnow(), finished_at=None)
    )


def list_jobs(session: Session, status: str | None = None, limit: int = 200) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    return list(session.scalars(query))


class JobRunner:
    """Runs due jobs one at a time; ``run_until_idle`` serves tests and the CLI."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while not self._stopping:
            try:
                worked = await self.run_one()
            except Exception:
                log.exception("job runner iteration failed")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.job_poll_seconds)
                self._wake.clear()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run_until_idle(self, max_jobs: int = 10_000) -> int:
        done = 0
        while done < max_jobs and await self.run_one():
            done += 1
        return done

    async def run_one(self) -> bool:
        claimed = await self.db.awrite(claim_next, self.settings.job_lease_seconds)
        if claimed is None:
            return False
        handler = HANDLERS.get(claimed.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler registered for job kind {claimed.kind!r}")
            context = JobContext(
                claimed.id, claimed.commune_id, claimed.attempts, self.settings, self.db
            )
            if inspect.iscoroutinefunction(handler):
                await handler(context, claimed.payload)
            else:
                await asyncio.to_thread(handler, context, claimed.payload)
        except Exception as error:  # noqa: BLE001 - recorded on the job
            detail = "".join(traceback.format_exception_only(error)).strip()
            status = await self.db.awrite(
                mark_failed, claimed, detail, self.settings.job_backoff_seconds
            )
            log.warning("job %s (%s) failed, now %s: %s", claimed.id, claimed.kind, status, detail)
        else:
            await self.db.awrite(mark_done, claimed.id)
            log.info("job %s (%s) done", claimed.id, claimed.kind)
        return True
