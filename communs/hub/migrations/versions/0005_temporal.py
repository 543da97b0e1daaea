"""hub: temporal history (entities, series, instances)

Revision ID: 0005_temporal
Revises: 0004_spatial
Create Date: 2026-11-22 18:21:22.473325
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_temporal"
down_revision = "0004_spatial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_temporal_entities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("entity_id", sa.String(length=256), nullable=False),
        sa.Column(
            "types",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["commune_id"],
            ["communes.id"],
            name=op.f("fk_hub_temporal_entities_commune_id_communes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_temporal_entities")),
        sa.UniqueConstraint(
            "commune_id", "entity_id", name=op.f("uq_hub_temporal_entities_commune_id")
        ),
        sqlite_autoincrement=True,  # ids never reused: see communs.hub.history
    )
    op.create_table(
        "hub_temporal_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("temporal_entity_id", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("attribute_iri", sa.String(length=512), nullable=False),
        sa.Column("dataset_id", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["temporal_entity_id"],
            ["hub_temporal_entities.id"],
            name=op.f("fk_hub_temporal_series_temporal_entity_id_hub_temporal_entities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_temporal_series")),
        sa.UniqueConstraint(
            "temporal_entity_id",
            "attribute_iri",
            "dataset_id",
            name=op.f("uq_hub_temporal_series_temporal_entity_id"),
        ),
        sqlite_autoincrement=True,  # ids never reused: see communs.hub.history
    )
    op.create_table(
        "hub_temporal_instances",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("observed_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.Float(), nullable=True),
        sa.Column(
            "instance",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["hub_temporal_series.id"],
            name=op.f("fk_hub_temporal_instances_series_id_hub_temporal_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_temporal_instances")),
    )
    with op.batch_alter_table("hub_temporal_instances", schema=None) as batch_op:
        batch_op.create_index(
            "ix_hub_temporal_instances_series_time", ["series_id", "observed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("hub_temporal_instances", schema=None) as batch_op:
        batch_op.drop_index("ix_hub_temporal_instances_series_time")

    op.drop_table("hub_temporal_instances")
    op.drop_table("hub_temporal_series")
    op.drop_table("hub_temporal_entities")
