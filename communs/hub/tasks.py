"""Background jobs of the hub."""

from __future__ import annotations

from typing import Any

from communs.core.db import utcnow
from communs.core.jobs import JobContext, job_handler
from communs.hub import history


@job_handler(history.RETENTION_JOB)
def enforce_retention(context: JobContext, _payload: dict[str, Any]) -> None:
    """Delete history older than the commune's rules, in batches, then come back later
    (the next run is queued in the transaction of the last batch)."""
    commune_id = context.commune_id
    if commune_id is None:
        return
    while True:
        deleted = context.db.write(_one_batch, commune_id)
        if deleted < history.RETENTION_BATCH:
            return


def _one_batch(session: Any, commune_id: int) -> int:
    now = utcnow()
    deleted = history.apply_retention(session, commune_id, now)
    if deleted < history.RETENTION_BATCH and history.retention_rules(session, commune_id):
        history.ensure_retention_job(session, commune_id, now + history.RETENTION_EVERY)
    return deleted
