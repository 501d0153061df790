"""two partial indexes on links: the _layers aliases, and the open links read while unsettled

- ``ix_links_aliases``: the _layers links that name another digest than their path. The manifest walk reads
  a registry's aliases each time it runs (``regindex.store.layer_aliases``): a few rows, found by reading
  every open link of the registry (0.7 s at 1M files, SQLite).
- ``ix_links_unsettled``: the open links without a settled change time (``changed`` NULL: read within the
  settle window, or absent). An incremental load compares them with the crawl again
  (``regindex.store._RECHECKABLE``); found through a condition on every open link they cost 0.4 s a night
  at 1M files.

Existing rows are indexed by the upgrade; nothing else changes.

Revision ID: 0009_partial_link_indexes
Revises: 0008_serving_lookups
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_partial_link_indexes"
down_revision = "0008_serving_lookups"
branch_labels = None
depends_on = None

ALIASES = "kind = 'layer' AND gone_run IS NULL AND path_digest <> target_digest"
UNSETTLED = "changed IS NULL AND gone_run IS NULL"


def upgrade() -> None:
    op.create_index("ix_links_aliases", "links", ["registry_id", "path_digest", "target_digest"],
                    sqlite_where=sa.text(ALIASES), postgresql_where=sa.text(ALIASES))
    op.create_index("ix_links_unsettled", "links", ["registry_id"],
                    sqlite_where=sa.text(UNSETTLED), postgresql_where=sa.text(UNSETTLED))


def downgrade() -> None:
    op.drop_index("ix_links_unsettled", table_name="links")
    op.drop_index("ix_links_aliases", table_name="links")
