"""repairs, acknowledgements, severity policy

``repair_actions``: what ``regindex repair --apply`` / ``--undo`` did (who, when, which finding, path, action,
outcome, batch). ``acknowledgements``: "known, accepted" on one finding episode. ``findings.policy``: which
severity policy graded a finding (NULL: the built-in default). Nothing existing is rewritten: a database full
of history upgrades in place.

Revision ID: 0003_repair_ack
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_repair_ack"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("findings", sa.Column("policy", sa.Text(), nullable=True))
    op.create_table(
        "repair_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("os_user", sa.Text(), nullable=False),
        sa.Column("based_on_run", sa.Integer(), nullable=True),
        sa.Column("finding_id", sa.Integer(), nullable=True),
        sa.Column("finding_key", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("registry", sa.Text(), nullable=False),
        sa.Column("repository", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(length=140), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("quarantine_path", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("undone_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["based_on_run"], ["runs.id"], name=op.f("fk_repair_actions_based_on_run_runs")),
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"], name=op.f("fk_repair_actions_finding_id_findings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repair_actions")),
    )
    op.create_index("ix_repair_actions_batch", "repair_actions", ["batch"])
    op.create_index("ix_repair_actions_finding_key", "repair_actions", ["finding_key"])
    op.create_table(
        "acknowledgements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("finding_key", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("os_user", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["finding_id"], ["findings.id"],
                                name=op.f("fk_acknowledgements_finding_id_findings")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acknowledgements")),
    )
    op.create_index("ix_acknowledgements_finding", "acknowledgements", ["finding_id"])


def downgrade() -> None:
    op.drop_index("ix_acknowledgements_finding", table_name="acknowledgements")
    op.drop_table("acknowledgements")
    op.drop_index("ix_repair_actions_finding_key", table_name="repair_actions")
    op.drop_index("ix_repair_actions_batch", table_name="repair_actions")
    op.drop_table("repair_actions")
    op.drop_column("findings", "policy")
