"""hub: the JSON-LD @context store (hosted, cached and fetched contexts)

Revision ID: 0002_contexts
Revises: 0001_hub
Create Date: 2026-11-22 15:59:53.194369
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import communs.core.db

revision = "0002_contexts"
down_revision = "0001_hub"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_contexts",
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "document",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", communs.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("url", name=op.f("pk_hub_contexts")),
    )


def downgrade() -> None:
    op.drop_table("hub_contexts")
