"""link_sums: what the last scan saw of each repository's link files

One row per registry and repository: how many link files the layout names there (layer, revision, tag current
and tag index links) and a checksum of their (kind, tag, path digest, change time), kept when every one was a
regular file with a settled change time. An incremental crawl that finds a repository's link files stat the
same gives no row for them and asks nothing of the inventory about them (``regindex.crawl``). The table
starts empty: the first scan after the upgrade judges every link by itself, as before, and fills it. Nothing
else changes.

Revision ID: 0011_link_sums
Revises: 0010_blob_buckets
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_link_sums"
down_revision = "0010_blob_buckets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_sums",
        sa.Column("registry_id", sa.Integer(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("links", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["registry_id"], ["registries.id"],
                                name=op.f("fk_link_sums_registry_id_registries")),
        sa.PrimaryKeyConstraint("registry_id", "repository", name=op.f("pk_link_sums")),
    )


def downgrade() -> None:
    op.drop_table("link_sums")
