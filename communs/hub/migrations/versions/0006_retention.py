"""hub: history retention rules

Revision ID: 0006_retention
Revises: 0005_temporal
Create Date: 2026-11-22 18:46:48.179946
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_retention"
down_revision = "0005_temporal"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_retention_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("type_iri", sa.String(length=512), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["commune_id"],
            ["communes.id"],
            name=op.f("fk_hub_retention_rules_commune_id_communes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_retention_rules")),
        sa.UniqueConstraint(
            "commune_id", "type_iri", name=op.f("uq_hub_retention_rules_commune_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("hub_retention_rules")
