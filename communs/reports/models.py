"""Citizen reports of problems in public space: categories, reports, their history."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from communs.core.db import Base, JSONType, UTCDateTime, utcnow


class Status(enum.StrEnum):
    """Where a report stands. Closed is not fixed: three closing reasons say why."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    PLANNED = "planned"
    RESOLVED = "resolved"
    NOT_COMPETENT = "not_competent"
    DUPLICATE = "duplicate"
    WONT_FIX = "wont_fix"


CLOSED = frozenset({Status.RESOLVED, Status.NOT_COMPETENT, Status.DUPLICATE, Status.WONT_FIX})
OPEN = frozenset(Status) - CLOSED


class Channel(enum.StrEnum):
    WEB = "web"
    PHONE = "phone"
    COUNTER = "counter"
    EMAIL = "email"
    OPEN311 = "open311"
    SENSOR = "sensor"


class ReportSettings(Base):
    """A commune's choices for reports."""

    __tablename__ = "reports_settings"

    commune_id: Mapped[int] = mapped_column(
        ForeignKey("communes.id", ondelete="CASCADE"), primary_key=True
    )
    anonymous_allowed: Mapped[bool] = mapped_column(Boolean, default=False)


class Category(Base):
    """A kind of problem residents report (an Open311 service), routed to one of the
    commune's services. ``attributes`` holds the extra questions as Open311 attribute
    definitions; a value may carry ``"blocks": true`` (that answer stops the report and
    shows ``emergency_notice`` instead)."""

    __tablename__ = "reports_categories"
    __table_args__ = (UniqueConstraint("commune_id", "code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="RESTRICT"))
    code: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(200))
    group: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    keywords: Mapped[str] = mapped_column(String(500), default="")
    notice: Mapped[str] = mapped_column(Text, default="")
    emergency_notice: Mapped[str] = mapped_column(Text, default="")
    attributes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    """One report. Its number (``id``) is the Open311 ``service_request_id`` and the
    reference given to the resident; ``tracking_token`` opens the tracking link."""

    __tablename__ = "reports"
    __table_args__ = (
        Index("ix_reports_commune_requested", "commune_id", "requested_at"),
        Index("ix_reports_commune_updated", "commune_id", "updated_at"),
        Index("ix_reports_commune_service_status", "commune_id", "service_id", "status"),
        Index("ix_reports_commune_category_requested", "commune_id", "category_id", "requested_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    category_id: Mapped[int] = mapped_column(
        ForeignKey("reports_categories.id", ondelete="RESTRICT")
    )
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16), default=Status.NEW)
    status_notes: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text)
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(400), default="")
    answers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    channel: Mapped[str] = mapped_column(String(16), default=Channel.WEB)
    email: Mapped[str] = mapped_column(String(254), default="")
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    phone: Mapped[str] = mapped_column(String(40), default="")
    device_id: Mapped[str] = mapped_column(String(100), default="")
    tracking_token: Mapped[str] = mapped_column(String(64), unique=True)
    confirmed: Mapped[bool] = mapped_column(Boolean, default=True)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    duplicate_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id", ondelete="SET NULL"), nullable=True
    )
    assigned_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ReportEvent(Base):
    """The audit trail of a report: every action, who did it, and whether the public
    sees it (status changes and replies do; internal notes do not)."""

    __tablename__ = "reports_events"
    __table_args__ = (
        Index("ix_reports_events_report", "report_id", "id"),
        Index("ix_reports_events_commune_public", "commune_id", "public", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    commune_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # the report's status after the action
    text: Mapped[str] = mapped_column(Text, default="")
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    actor_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Follower(Base):
    """Someone who receives a report's public changes by email (the reporter too)."""

    __tablename__ = "reports_followers"
    __table_args__ = (UniqueConstraint("report_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(254))
    unsubscribe_token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Photo(Base):
    """A photo of a report (or a proof of resolution), stored re-encoded, without
    metadata."""

    __tablename__ = "reports_photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"), index=True)
    commune_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="report")  # or "proof"
    media_type: Mapped[str] = mapped_column(String(32), default="image/jpeg")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReplyTemplate(Base):
    """A public reply the commune's agents reuse (and edit before sending)."""

    __tablename__ = "reports_reply_templates"
    __table_args__ = (UniqueConstraint("commune_id", "title"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
