"""E-mail, always through the job outbox so that a crash never loses a message."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from sqlalchemy.orm import Session

from communs.core.jobs import JobContext, enqueue, job_handler

EMAIL_JOB = "core.email"


def queue_email(
    session: Session, *, to: str, subject: str, body: str, commune_id: int | None = None
) -> None:
    """Promise an e-mail in the caller's unit of work; the job runner sends it."""
    enqueue(
        session,
        EMAIL_JOB,
        {"to": to, "subject": subject, "body": body, "message_id": make_msgid("communs")},
        commune_id=commune_id,
    )


@job_handler(EMAIL_JOB)
def send_email(context: JobContext, payload: dict[str, Any]) -> None:
    settings = context.settings
    if not settings.smtp_host:
        raise RuntimeError("COMMUNS_SMTP_HOST is not set: e-mail cannot be sent")
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = payload["to"]
    message["Subject"] = payload["subject"]
    # The same Message-ID on every attempt lets a receiving server drop a duplicate.
    message["Message-ID"] = payload["message_id"]
    message.set_content(payload["body"])
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(message)
