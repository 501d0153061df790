"""per-run phase timings and storage work counts

Adds ``run_phases`` (wall time per phase of each run) and the counts of files stat'ed, read and skipped to
``runs``. Existing runs keep every value; their new columns are NULL (not measured then).

Revision ID: 0005_run_phases
Revises: 0004_run_open_errors
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_run_phases"
down_revision = "0004_run_open_errors"
branch_labels = None
depends_on = None

COLUMNS = ("files_stat", "files_read", "files_skipped")


def upgrade() -> None:
    op.create_table(
        "run_phases",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_phases_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", "phase", name=op.f("pk_run_phases")),
    )
    # plain ALTER TABLE (no batch copy: SQLite's views over runs would stop a table rebuild)
    for col in COLUMNS:
        op.add_column("runs", sa.Column(col, sa.Integer(), nullable=True))


def downgrade() -> None:
    for col in reversed(COLUMNS):
        op.execute(f"ALTER TABLE runs DROP COLUMN {col}")  # SQLite >= 3.35 and PostgreSQL
    op.drop_table("run_phases")
