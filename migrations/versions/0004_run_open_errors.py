"""runs.open_errors: the open errors a scan's summary line printed

``regindex runs`` showed open errors recounted from the findings with their *latest* severity and counting
acknowledged ones, so a severity policy or an ack rewrote what earlier runs had reported. The number is now
stored when the run finishes. Runs recorded before this migration keep NULL (``regindex runs`` recounts those).

Revision ID: 0004_run_open_errors
Revises: 0003_repair_ack
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_run_open_errors"
down_revision = "0003_repair_ack"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("open_errors", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "open_errors")
