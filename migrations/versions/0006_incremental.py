"""incremental re-scans: when each link file last changed, and which runs read everything

Adds ``links.changed``: the link file's change time (the later of its mtime and ctime) when it was read, kept
only when that time was settled (older than the run's start minus the settle window); a later scan that
stats the same time reuses the row instead of reading the file. Adds ``runs.full_scan``: whether the run read
every file (``scan --full``, ``full_scan_every``, or a first scan). Existing rows keep every value: their new
columns are NULL, which means "read it again" for a link and "read everything" for a run (they did).

Revision ID: 0006_incremental
Revises: 0005_run_phases
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_incremental"
down_revision = "0005_run_phases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE (no batch copy: SQLite's views over links and runs would stop a table rebuild)
    op.add_column("links", sa.Column("changed", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("full_scan", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN full_scan")  # SQLite >= 3.35 and PostgreSQL
    op.execute("ALTER TABLE links DROP COLUMN changed")
