"""hub: instance table partitioned by month on PostgreSQL

Revision ID: 0008_partitions
Revises: 0007_subscriptions
Create Date: 2026-11-22 20:50:00
"""

import sqlalchemy as sa
from alembic import op

from communs.hub.partitions import create_partition_sql

revision = "0008_partitions"
down_revision = "0007_subscriptions"
branch_labels = None
depends_on = None

OLD = "hub_temporal_instances_unpartitioned"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite has no partitions
    op.execute(f"ALTER TABLE hub_temporal_instances RENAME TO {OLD}")
    sequence = bind.scalar(sa.text(f"SELECT pg_get_serial_sequence('{OLD}', 'id')"))
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_hub_temporal_instances TO pk_{OLD}")
    op.execute(f"ALTER INDEX ix_hub_temporal_instances_series_time RENAME TO ix_{OLD}_series_time")
    op.execute(
        f"""
        CREATE TABLE hub_temporal_instances (
            id BIGINT NOT NULL DEFAULT nextval('{sequence}'),
            series_id INTEGER NOT NULL,
            observed_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            number DOUBLE PRECISION,
            instance JSONB NOT NULL,
            CONSTRAINT pk_hub_temporal_instances PRIMARY KEY (id, observed_at),
            CONSTRAINT fk_hub_temporal_instances_series_id_hub_temporal_series
                FOREIGN KEY (series_id) REFERENCES hub_temporal_series (id) ON DELETE CASCADE
        ) PARTITION BY RANGE (observed_at)
        """
    )
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY hub_temporal_instances.id")
    op.execute(
        "CREATE INDEX ix_hub_temporal_instances_series_time "
        "ON hub_temporal_instances (series_id, observed_at)"
    )
    op.execute(
        "CREATE TABLE hub_temporal_instances_default PARTITION OF hub_temporal_instances DEFAULT"
    )
    months = bind.execute(
        sa.text(
            "SELECT DISTINCT extract(year FROM t)::int, extract(month FROM t)::int FROM ("
            f"SELECT to_timestamp(observed_at / 1000000.0) AT TIME ZONE 'UTC' AS t FROM {OLD}) m"
        )
    ).all()
    for year, month in months:
        op.execute(create_partition_sql(year, month))
    op.execute(
        "INSERT INTO hub_temporal_instances "
        f"SELECT id, series_id, observed_at, created_at, number, instance FROM {OLD}"
    )
    op.execute(f"DROP TABLE {OLD}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    sequence = bind.scalar(sa.text("SELECT pg_get_serial_sequence('hub_temporal_instances', 'id')"))
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    op.execute(f"ALTER TABLE hub_temporal_instances RENAME TO {OLD}")
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_hub_temporal_instances TO pk_{OLD}")
    op.execute(f"ALTER INDEX ix_hub_temporal_instances_series_time RENAME TO ix_{OLD}_series_time")
    op.execute(
        f"""
        CREATE TABLE hub_temporal_instances (
            id BIGINT NOT NULL DEFAULT nextval('{sequence}'),
            series_id INTEGER NOT NULL REFERENCES hub_temporal_series (id) ON DELETE CASCADE,
            observed_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            number DOUBLE PRECISION,
            instance JSONB NOT NULL,
            CONSTRAINT pk_hub_temporal_instances PRIMARY KEY (id)
        )
        """
    )
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY hub_temporal_instances.id")
    op.execute(
        "CREATE INDEX ix_hub_temporal_instances_series_time "
        "ON hub_temporal_instances (series_id, observed_at)"
    )
    op.execute(f"INSERT INTO hub_temporal_instances SELECT * FROM {OLD}")
    op.execute(f"DROP TABLE {OLD}")
