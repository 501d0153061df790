"""blob_buckets: what the last scan saw of each registry's blobs, by digest prefix

One row per registry and bucket (an algorithm and the first four hex digits of the digest): the number of
blobs, their bytes, and a checksum of their (digest, size, mtime). An incremental crawl skips the rows of
every bucket it finds the same (``regindex.crawl`` / ``regindex.store.Stage``), so an unchanged blob is
neither staged nor diffed. The table starts empty: the first scan after the upgrade stages every blob, as
before, and fills it. Nothing else changes.

Revision ID: 0010_blob_buckets
Revises: 0009_partial_link_indexes
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_blob_buckets"
down_revision = "0009_partial_link_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_buckets",
        sa.Column("registry_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=32), nullable=False),
        sa.Column("blobs", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["registry_id"], ["registries.id"],
                                name=op.f("fk_blob_buckets_registry_id_registries")),
        sa.PrimaryKeyConstraint("registry_id", "bucket", name=op.f("pk_blob_buckets")),
    )


def downgrade() -> None:
    op.drop_table("blob_buckets")
