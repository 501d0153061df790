"""a partial index on the _layers links that name another digest than their path (aliases)

The manifest walk reads a registry's aliases each time it runs (``regindex.store.layer_aliases``): a few
rows, but found by reading every open link of the registry (1.3 s of a 1M-file churn night, SQLite). The
index holds only those links, so the lookup reads them alone. Existing rows are indexed by the upgrade;
nothing else changes.

Revision ID: 0009_layer_alias_index
Revises: 0008_serving_lookups
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_layer_alias_index"
down_revision = "0008_serving_lookups"
branch_labels = None
depends_on = None

WHERE = "kind = 'layer' AND gone_run IS NULL AND path_digest <> target_digest"


def upgrade() -> None:
    op.create_index("ix_links_aliases", "links", ["registry_id", "path_digest", "target_digest"],
                    sqlite_where=sa.text(WHERE), postgresql_where=sa.text(WHERE))


def downgrade() -> None:
    op.drop_index("ix_links_aliases", table_name="links")
