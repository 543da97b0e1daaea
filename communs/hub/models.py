"""Hub tables: entities with their type and geometry indexes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from communs.core.db import Base, JSONType, UTCDateTime, utcnow


class HubEntity(Base):
    """One NGSI-LD entity of a commune; ``document`` holds it with expanded names."""

    __tablename__ = "hub_entities"
    __table_args__ = (
        UniqueConstraint("commune_id", "entity_id"),
        # Rows of one commune in key (creation) order: pages without sorting.
        Index("ix_hub_entities_commune_order", "commune_id", "pk"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    entity_id: Mapped[str] = mapped_column(String(256))
    document: Mapped[dict[str, Any]] = mapped_column(JSONType)


class HubEntityType(Base):
    """Type index: one row per (entity, type IRI), clustered by type for lookups."""

    __tablename__ = "hub_entity_types"
    __table_args__ = ({"sqlite_with_rowid": False},)

    commune_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type_iri: Mapped[str] = mapped_column(String(512), primary_key=True)
    entity_pk: Mapped[int] = mapped_column(
        ForeignKey("hub_entities.pk", ondelete="CASCADE"), primary_key=True, index=True
    )


class HubGeometry(Base):
    """Bounding box of each GeoProperty instance, for geo-query pre-filtering.

    The boxes are indexed spatially: on SQLite an R*Tree, ``hub_geometry_boxes``, with
    the same ids (written with these rows; a trigger deletes them), on PostgreSQL a GiST
    index on ``box(…)`` (migration 0004).
    """

    __tablename__ = "hub_geometries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_pk: Mapped[int] = mapped_column(
        ForeignKey("hub_entities.pk", ondelete="CASCADE"), index=True
    )
    commune_id: Mapped[int] = mapped_column(Integer)
    attribute_iri: Mapped[str] = mapped_column(String(512))
    min_lon: Mapped[float] = mapped_column(Float)
    min_lat: Mapped[float] = mapped_column(Float)
    max_lon: Mapped[float] = mapped_column(Float)
    max_lat: Mapped[float] = mapped_column(Float)


class HubContext(Base):
    """A JSON-LD @context the hub serves or knows (instance-wide, not per commune).

    ``kind`` is "hosted" (pushed through the API and served by us), "cached" (an
    operator-provided copy of a remote context, for air-gapped sites) or "fetched"
    (fetched from its URL on first use and kept).
    """

    __tablename__ = "hub_contexts"

    url: Mapped[str] = mapped_column(String(512), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    document: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class HubNumber(Base):
    """Value index for ``q``: the numbers a term can compare, per attribute, clustered
    so that a range is one index scan."""

    __tablename__ = "hub_numbers"
    __table_args__ = ({"sqlite_with_rowid": False},)

    commune_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    attribute_iri: Mapped[str] = mapped_column(String(512), primary_key=True)
    number: Mapped[float] = mapped_column(Float, primary_key=True)
    entity_pk: Mapped[int] = mapped_column(
        ForeignKey("hub_entities.pk", ondelete="CASCADE"), primary_key=True, index=True
    )


class HubText(Base):
    """Value index for ``q``: the texts (up to 256 characters) a term can compare."""

    __tablename__ = "hub_texts"
    __table_args__ = ({"sqlite_with_rowid": False},)

    commune_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    attribute_iri: Mapped[str] = mapped_column(String(512), primary_key=True)
    text: Mapped[str] = mapped_column(String(256), primary_key=True)
    entity_pk: Mapped[int] = mapped_column(
        ForeignKey("hub_entities.pk", ondelete="CASCADE"), primary_key=True, index=True
    )


class HubTemporalEntity(Base):
    """An entity as the temporal API knows it: it outlives the entity itself, whose
    history stays until deleted through ``/temporal/entities``."""

    __tablename__ = "hub_temporal_entities"
    __table_args__ = (UniqueConstraint("commune_id", "entity_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    entity_id: Mapped[str] = mapped_column(String(256))
    types: Mapped[list[str]] = mapped_column(JSONType)


class HubSeries(Base):
    """The history of one attribute instance (attribute and datasetId) of an entity."""

    __tablename__ = "hub_temporal_series"
    __table_args__ = (
        UniqueConstraint("temporal_entity_id", "attribute_iri", "dataset_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    temporal_entity_id: Mapped[int] = mapped_column(
        ForeignKey("hub_temporal_entities.id", ondelete="CASCADE")
    )
    commune_id: Mapped[int] = mapped_column(Integer)
    attribute_iri: Mapped[str] = mapped_column(String(512))
    dataset_id: Mapped[str] = mapped_column(String(256), default="")


class HubInstance(Base):
    """One recorded attribute instance; append-only. Times are microseconds since the
    epoch (UTC): compact rows, cheap range scans. ``instance`` is the stored instance
    without the three times, which the columns hold. On PostgreSQL the table is
    partitioned by month of ``observed_at`` (migration 0008, ``communs.hub.partitions``),
    and its primary key is (id, observed_at) there."""

    __tablename__ = "hub_temporal_instances"
    __table_args__ = (Index("ix_hub_temporal_instances_series_time", "series_id", "observed_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("hub_temporal_series.id", ondelete="CASCADE"))
    observed_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    number: Mapped[float | None] = mapped_column(Float, nullable=True)
    instance: Mapped[dict[str, Any]] = mapped_column(JSONType)


class HubRetentionRule(Base):
    """How long a commune keeps history: for entities of one type, or (no type) all."""

    __tablename__ = "hub_retention_rules"
    __table_args__ = (UniqueConstraint("commune_id", "type_iri"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    type_iri: Mapped[str] = mapped_column(String(512), default="")  # "" = every type
    days: Mapped[int] = mapped_column(Integer)


class HubSubscription(Base):
    """An NGSI-LD subscription. ``document`` holds it as given, with attribute and type
    names expanded; the columns are what delivery and its status need."""

    __tablename__ = "hub_subscriptions"
    __table_args__ = (UniqueConstraint("commune_id", "subscription_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    subscription_id: Mapped[str] = mapped_column(String(256))
    document: Mapped[dict[str, Any]] = mapped_column(JSONType)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    times_sent: Mapped[int] = mapped_column(Integer, default=0)
    times_failed: Mapped[int] = mapped_column(Integer, default=0)
    last_notification: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_success: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_failure: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    modified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class HubNotification(Base):
    """The outbox of notifications: written in the transaction of the change that
    causes it, deleted once its endpoint has accepted it. Each endpoint is its own
    queue, delivered in ``id`` order (rows are read by id only: no other index to keep
    up on this hot table). Times are microseconds since the epoch."""

    __tablename__ = "hub_notifications"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    commune_id: Mapped[int] = mapped_column(Integer)
    subscription_pk: Mapped[int] = mapped_column(
        ForeignKey("hub_subscriptions.pk", ondelete="CASCADE"), index=True
    )
    endpoint: Mapped[str] = mapped_column(String(2048))
    notification_id: Mapped[str] = mapped_column(String(80))
    # the entity, for coalescing a throttled subscription's notifications ("" if several)
    entity_id: Mapped[str] = mapped_column(String(256), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[int] = mapped_column(BigInteger)
    not_before: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class HubIngestRejection(Base):
    """A device message the MQTT consumer could not store, with the reason (dead letters)."""

    __tablename__ = "hub_ingest_rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int | None] = mapped_column(
        ForeignKey("communes.id", ondelete="CASCADE"), nullable=True, index=True
    )
    topic: Mapped[str] = mapped_column(String(1024))
    payload: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class HubDeviceMapping(Base):
    """How a simple device payload becomes one attribute: for MQTT messages on
    ``communs/<commune>/<entity_type>/…``, ``{value_key: 23.5, time_key: "…"}`` becomes
    ``attribute`` with that value, ``observedAt`` the time, and ``unit_code``."""

    __tablename__ = "hub_device_mappings"
    __table_args__ = (UniqueConstraint("commune_id", "entity_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commune_id: Mapped[int] = mapped_column(ForeignKey("communes.id", ondelete="CASCADE"))
    entity_type: Mapped[str] = mapped_column(String(256))  # as in the topic (short name)
    attribute: Mapped[str] = mapped_column(String(512))  # short name or IRI
    value_key: Mapped[str] = mapped_column(String(64), default="v")
    time_key: Mapped[str | None] = mapped_column(String(64), nullable=True, default="t")
    unit_code: Mapped[str | None] = mapped_column(String(16), nullable=True)
