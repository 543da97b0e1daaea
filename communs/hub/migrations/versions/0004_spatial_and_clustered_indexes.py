"""hub: spatial index on GeoProperty boxes; clustered type and value indexes

- SQLite: an R*Tree ``hub_geometry_boxes`` beside ``hub_geometries``, same ids. The hub
  inserts into both (twice as fast as an insert trigger); a delete trigger removes boxes,
  foreign-key cascades included. PostgreSQL: a GiST index on the box.
- ``hub_entity_types`` and the value index (split into ``hub_numbers`` and
  ``hub_texts``) become clustered on their lookup key (WITHOUT ROWID on SQLite): one
  B-tree insert per row instead of three.

Revision ID: 0004_spatial
Revises: 0003_values
Create Date: 2026-11-22 18:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_spatial"
down_revision = "0003_values"
branch_labels = None
depends_on = None

BOX = "box(point(min_lon, min_lat), point(max_lon, max_lat))"


def _clustered_table(name: str, *key: sa.Column) -> None:
    """A table keyed by (commune_id, *key, entity_pk), without a rowid on SQLite."""
    op.create_table(
        name,
        sa.Column("commune_id", sa.Integer(), nullable=False),
        *key,
        sa.Column("entity_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["entity_pk"],
            ["hub_entities.pk"],
            name=op.f(f"fk_{name}_entity_pk_hub_entities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "commune_id", *(column.name for column in key), "entity_pk", name=op.f(f"pk_{name}")
        ),
        sqlite_with_rowid=False,
    )
    op.create_index(op.f(f"ix_{name}_entity_pk"), name, ["entity_pk"])


def _iri(name: str) -> sa.Column:
    return sa.Column(name, sa.String(512), nullable=False)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    op.execute(
        "CREATE TEMPORARY TABLE hub_types_copy AS "
        "SELECT DISTINCT commune_id, type_iri, entity_pk FROM hub_entity_types"
    )
    op.drop_table("hub_entity_types")
    _clustered_table("hub_entity_types", _iri("type_iri"))
    op.execute(
        "INSERT INTO hub_entity_types (commune_id, type_iri, entity_pk) "
        "SELECT commune_id, type_iri, entity_pk FROM hub_types_copy"
    )
    op.execute("DROP TABLE hub_types_copy")

    _clustered_table(
        "hub_numbers", _iri("attribute_iri"), sa.Column("number", sa.Float(), nullable=False)
    )
    _clustered_table(
        "hub_texts", _iri("attribute_iri"), sa.Column("text", sa.String(256), nullable=False)
    )
    op.execute(
        "INSERT INTO hub_numbers (commune_id, attribute_iri, number, entity_pk) "
        "SELECT DISTINCT commune_id, attribute_iri, number, entity_pk FROM hub_values "
        "WHERE number IS NOT NULL"
    )
    op.execute(
        "INSERT INTO hub_texts (commune_id, attribute_iri, text, entity_pk) "
        "SELECT DISTINCT commune_id, attribute_iri, text, entity_pk FROM hub_values "
        "WHERE text IS NOT NULL"
    )
    op.drop_table("hub_values")

    op.drop_index("ix_hub_geometries_box", "hub_geometries")
    if sqlite:
        op.execute(
            "CREATE VIRTUAL TABLE hub_geometry_boxes "
            "USING rtree(id, min_lon, max_lon, min_lat, max_lat)"
        )
        op.execute(
            "INSERT INTO hub_geometry_boxes "
            "SELECT id, min_lon, max_lon, min_lat, max_lat FROM hub_geometries"
        )
        op.execute(
            "CREATE TRIGGER hub_geometries_box_delete AFTER DELETE ON hub_geometries BEGIN "
            "DELETE FROM hub_geometry_boxes WHERE id = old.id; END"
        )
    else:
        op.execute(f"CREATE INDEX ix_hub_geometries_gist ON hub_geometries USING gist ({BOX})")


def downgrade() -> None:
    raise NotImplementedError("0004_spatial cannot be downgraded; restore a backup instead")
