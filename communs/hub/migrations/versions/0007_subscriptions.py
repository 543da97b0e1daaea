"""hub: subscriptions, notification outbox, MQTT ingestion

Revision ID: 0007_subscriptions
Revises: 0006_retention
Create Date: 2026-11-22 20:00:02.053674
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import communs.core.db

revision = "0007_subscriptions"
down_revision = "0006_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_device_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("entity_type", sa.String(length=256), nullable=False),
        sa.Column("attribute", sa.String(length=512), nullable=False),
        sa.Column("value_key", sa.String(length=64), nullable=False),
        sa.Column("time_key", sa.String(length=64), nullable=True),
        sa.Column("unit_code", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["commune_id"],
            ["communes.id"],
            name=op.f("fk_hub_device_mappings_commune_id_communes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_device_mappings")),
        sa.UniqueConstraint(
            "commune_id", "entity_type", name=op.f("uq_hub_device_mappings_commune_id")
        ),
    )
    op.create_table(
        "hub_ingest_rejections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=True),
        sa.Column("topic", sa.String(length=1024), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", communs.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["commune_id"],
            ["communes.id"],
            name=op.f("fk_hub_ingest_rejections_commune_id_communes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_ingest_rejections")),
    )
    with op.batch_alter_table("hub_ingest_rejections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hub_ingest_rejections_commune_id"), ["commune_id"], unique=False
        )

    op.create_table(
        "hub_subscriptions",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(length=256), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("expires_at", communs.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("times_sent", sa.Integer(), nullable=False),
        sa.Column("times_failed", sa.Integer(), nullable=False),
        sa.Column("last_notification", communs.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_success", communs.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_failure", communs.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", communs.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("modified_at", communs.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["commune_id"],
            ["communes.id"],
            name=op.f("fk_hub_subscriptions_commune_id_communes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_hub_subscriptions")),
        sa.UniqueConstraint(
            "commune_id", "subscription_id", name=op.f("uq_hub_subscriptions_commune_id")
        ),
    )
    op.create_table(
        "hub_notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("subscription_pk", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("notification_id", sa.String(length=80), nullable=False),
        sa.Column("entity_id", sa.String(length=256), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subscription_pk"],
            ["hub_subscriptions.pk"],
            name=op.f("fk_hub_notifications_subscription_pk_hub_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_notifications")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("hub_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hub_notifications_subscription_pk"), ["subscription_pk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hub_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_notifications_subscription_pk"))

    op.drop_table("hub_notifications")
    op.drop_table("hub_subscriptions")
    with op.batch_alter_table("hub_ingest_rejections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hub_ingest_rejections_commune_id"))

    op.drop_table("hub_ingest_rejections")
    op.drop_table("hub_device_mappings")
