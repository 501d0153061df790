"""carried findings: what each registry's open findings were last derived under

Adds ``registries.checks_fingerprint`` (regindex.checks.fingerprint). A scan that changes nothing in a
registry's inventory, under the same fingerprint, carries its open findings forward instead of running every
check again. Existing registries get NULL, which matches no fingerprint: the first scan after the upgrade runs
every check, as before.

Revision ID: 0007_checks_fingerprint
Revises: 0006_incremental
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_checks_fingerprint"
down_revision = "0006_incremental"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE (no batch copy: SQLite's views over registries would stop a table rebuild)
    op.add_column("registries", sa.Column("checks_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE registries DROP COLUMN checks_fingerprint")  # SQLite >= 3.35 and PostgreSQL
