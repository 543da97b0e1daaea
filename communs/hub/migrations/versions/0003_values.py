"""hub: value index for q (numbers and texts per attribute), entities in key order

Revision ID: 0003_values
Revises: 0002_contexts
Create Date: 2026-11-22 16:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_values"
down_revision = "0002_contexts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_values",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity_pk", sa.Integer(), nullable=False),
        sa.Column("commune_id", sa.Integer(), nullable=False),
        sa.Column("attribute_iri", sa.String(length=512), nullable=False),
        sa.Column("number", sa.Float(), nullable=True),
        sa.Column("text", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["entity_pk"],
            ["hub_entities.pk"],
            name=op.f("fk_hub_values_entity_pk_hub_entities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hub_values")),
    )
    op.create_index("ix_hub_values_number", "hub_values", ["commune_id", "attribute_iri", "number"])
    op.create_index("ix_hub_values_text", "hub_values", ["commune_id", "attribute_iri", "text"])
    op.create_index(op.f("ix_hub_values_entity_pk"), "hub_values", ["entity_pk"])
    op.create_index("ix_hub_entities_commune_order", "hub_entities", ["commune_id", "pk"])
    # Existing entities are indexed by the application on their next write; a fresh
    # database (the only kind before this revision shipped) has none.


def downgrade() -> None:
    op.drop_index("ix_hub_entities_commune_order", "hub_entities")
    op.drop_table("hub_values")
