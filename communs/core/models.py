"""Core tables: communes (tenants), services, accounts, roles, keys, addresses, jobs."""

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
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from communs.core.db import Base, JSONType, UTCDateTime, utcnow


class Role(enum.StrEnum):
    COMMUNE_ADMIN = "commune_admin"
    AGENT = "agent"
    OPERATOR = "operator"
    VIEWER = "viewer"


class UserKind(enum.StrEnum):
    AGENT = "agent"
    RESIDENT = "resident"


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


class Commune(Base):
    __tablename__ = "communes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    insee_code: Mapped[str] = mapped_column(String(5), unique=True)
    boundary: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    min_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    services: Mapped[list[Service]] = relationship(
        back_populates="commune", order_by="Service.name", cascade="all, delete-orphan"
    )


class Service(Base):
    """A municipal service (voirie, propreté…) that agents belong to."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("commune_id", "slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(200))

    commune: Mapped[Commune] = relationship(back_populates="services")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default=UserKind.AGENT)
    is_instance_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    locale: Mapped[str | None] = mapped_column(String(8), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class Membership(Base):
    """A role of a user in one commune, optionally restricted to one service."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "commune_id", "role", "service_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    commune_id: Mapped[int] = mapped_column(
        ForeignKey("communes.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(32))
    service_id: Mapped[int | None] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), nullable=True
    )

    user: Mapped[User] = relationship(back_populates="memberships")
    commune: Mapped[Commune] = relationship()
    service: Mapped[Service | None] = relationship()


class ApiKey(Base):
    """A machine credential scoped to one commune and a set of capabilities."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(
        ForeignKey("communes.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    commune: Mapped[Commune] = relationship()


class WebSession(Base):
    """A server-side login session; the cookie carries a token, the table its hash."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class LoginThrottle(Base):
    """Failed logins per key (an e-mail or a client address) for rate limiting."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Address(Base):
    """One address point of a commune's Base Adresse Locale."""

    __tablename__ = "addresses"
    __table_args__ = (
        Index("ix_addresses_commune_position", "commune_id", "lat", "lon"),
        Index("ix_addresses_commune_key", "commune_id", "cle_interop"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    cle_interop: Mapped[str] = mapped_column(String(64))
    uid_adresse: Mapped[str | None] = mapped_column(String(64), nullable=True)
    numero: Mapped[int] = mapped_column(Integer)
    suffixe: Mapped[str | None] = mapped_column(String(16), nullable=True)
    voie_nom: Mapped[str] = mapped_column(String(200))
    lieudit: Mapped[str | None] = mapped_column(String(200), nullable=True)
    commune_nom: Mapped[str] = mapped_column(String(200))
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(400))
    search_text: Mapped[str] = mapped_column(Text)


class Job(Base):
    """Outbox row: work promised to the outside, written with the change causing it."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "run_after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int | None] = mapped_column(
        ForeignKey("communes.id", ondelete="CASCADE"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=8)
    run_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
