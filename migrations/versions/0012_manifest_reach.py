"""manifest_reach: the digests each registry's tree names as manifests; a stored parse counts only there

A parse is stored once per (digest, size), ever, and shared by every registry. Before this revision the views and
checks read any stored parse of the data a link names, so a database's findings depended on which manifests
had ever been parsed, in any registry, on any night: a blob its tree links only as a layer (an image config),
once the target of a tag, kept its parse ("not a valid manifest") after the tag moved away, and its _layers
link served it as a truncated manifest, while a fresh scan of the same tree found nothing.

``manifest_reach`` holds, per registry, every digest the manifest walk reaches in the current tree: the
targets of revision and tag links that parse, every revision's path digest, the children and subjects named by
the parse that stands for a reached manifest's data (the data's own parse, or, for bytes that are not their
digest's content, the parse of what they hash to), and the targets of _layers aliases of reached digests. The
scan keeps it (``regindex.store``): written whole by a walk from every root, added to and taken from by an
incremental one. ``registries.reached_run`` is the run that last recorded it; NULL (every registry of a database
upgraded from 0011) makes the next scan walk from every root, changed or not.

Views: ``manifest_serving`` reads a stored parse (and the parse error of bytes that are not their digest's) for a
link whose target is reached: always for a revision link (its target is a root), for a _layers link only
when the target is reached; otherwise the status is what it is without a parse (``not_parsed``, or
``digest_mismatch`` when hashed bytes are not the digest's). Bytes that are not their digest's content get no
parse of the genuine content (``manifest_id``, ``manifest_kind`` and ``media_type`` NULL): a database that
stored it on an earlier night described them by it, a fresh one could not. ``orphan_index_children`` starts from the indexes
reached in the registry whose data is their own content. ``tag_serving`` reads ``manifest_serving`` and
follows.

Revision ID: 0012_manifest_reach
Revises: 0011_link_sums
"""

import importlib.util
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012_manifest_reach"
down_revision = "0011_link_sums"
branch_labels = None
depends_on = None

# The link's target is reached in its registry: a revision link's always is (targets of revision links that
# parse are roots of the walk); a _layers link's when the walk reached it.
_REACHED = """(l.kind = 'revision' OR EXISTS (SELECT 1 FROM manifest_reach x WHERE x.registry_id = l.registry_id
                AND x.digest = l.target_digest))"""

MANIFEST_SERVING = f"""
SELECT l.registry_id, g.name AS registry, l.repository, l.path_digest AS digest, l.kind AS via,
       l.state AS link_state, l.target_digest, b.size AS data_size, m.id AS manifest_id,
       m.kind AS manifest_kind, m.media_type,
       CASE WHEN v.computed_digest <> v.digest THEN (CASE WHEN {_REACHED} THEN v.parse_error END)
            ELSE m.parse_error END AS parse_error,
       CASE WHEN l.state <> 'ok' THEN 'corrupt_link'
            WHEN b.id IS NULL THEN 'data_missing'
            WHEN b.size = 0 THEN 'data_empty'
            WHEN v.computed_digest <> v.digest AND v.parse_error IS NOT NULL AND {_REACHED} THEN 'unparsable'
            WHEN v.computed_digest <> v.digest THEN 'digest_mismatch'
            WHEN m.id IS NULL THEN 'not_parsed'
            WHEN m.parse_error IS NOT NULL THEN 'unparsable'
            WHEN l.target_digest <> l.path_digest
                 AND substr(l.target_digest, 1, 7) = substr(l.path_digest, 1, 7) THEN 'misdirected'
            ELSE 'ok' END AS status
FROM links l
JOIN registries g ON g.id = l.registry_id
LEFT JOIN blobs b ON b.registry_id = l.registry_id AND b.digest = l.target_digest
     AND b.gone_run IS NULL AND l.state = 'ok'
LEFT JOIN blob_verifications v ON v.registry_id = l.registry_id AND v.digest = l.target_digest
     AND v.size = b.size AND v.mtime IS NOT NULL AND ABS(v.mtime - b.mtime) < 0.000001
LEFT JOIN manifests m ON m.digest = l.target_digest AND m.size = b.size
     AND (v.computed_digest IS NULL OR v.computed_digest = v.digest) AND {_REACHED}
WHERE l.gone_run IS NULL AND l.state <> 'absent'
  AND (l.kind = 'revision'
       OR (l.kind = 'layer' AND NOT EXISTS (
             SELECT 1 FROM links r
             WHERE r.registry_id = l.registry_id AND r.gone_run IS NULL AND r.kind = 'revision'
               AND r.repository = l.repository AND r.path_digest = l.path_digest
               AND r.state <> 'absent')))
"""


def _earlier(name: str) -> Any:
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_regindex_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# As 0008 (its lookups of manifest_serving per row), starting from the indexes the registry reaches whose data
# is their own content (not bytes hashed to another digest).
ORPHAN_INDEX_CHILDREN = _earlier("0008_serving_lookups").ORPHAN_INDEX_CHILDREN.replace(
    """        WHERE pm.kind = 'index') p""",
    """        WHERE pm.kind = 'index'
          AND EXISTS (SELECT 1 FROM manifest_reach x WHERE x.registry_id = l.registry_id AND x.digest = pm.digest)
          AND NOT EXISTS (SELECT 1 FROM blob_verifications v WHERE v.registry_id = l.registry_id
                            AND v.digest = pm.digest AND v.size = b.size AND v.mtime IS NOT NULL
                            AND ABS(v.mtime - b.mtime) < 0.000001 AND v.computed_digest <> v.digest)) p""",
)
assert ORPHAN_INDEX_CHILDREN != _earlier("0008_serving_lookups").ORPHAN_INDEX_CHILDREN


def _manifest_serving(sql: str) -> None:
    if op.get_context().dialect.name == "postgresql":  # the views over it stay: same columns, same types
        op.execute(f"CREATE OR REPLACE VIEW manifest_serving AS {sql}")
    else:  # SQLite resolves the views over it when they are read
        op.execute("DROP VIEW manifest_serving")
        op.execute(f"CREATE VIEW manifest_serving AS {sql}")


def _orphan_index_children(sql: str) -> None:
    op.execute("DROP VIEW orphan_index_children")  # nothing is defined over it
    op.execute(f"CREATE VIEW orphan_index_children AS {sql}")


def upgrade() -> None:
    op.create_table(
        "manifest_reach",
        sa.Column("registry_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=140), nullable=False),
        sa.Column("first_run", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["registry_id"], ["registries.id"],
                                name=op.f("fk_manifest_reach_registry_id_registries")),
        sa.ForeignKeyConstraint(["first_run"], ["runs.id"], name=op.f("fk_manifest_reach_first_run_runs")),
        sa.PrimaryKeyConstraint("registry_id", "digest", name=op.f("pk_manifest_reach")),
    )
    # plain ALTER TABLE (no batch copy: SQLite's views over registries would stop a table rebuild)
    op.add_column("registries", sa.Column("reached_run", sa.Integer(), nullable=True))
    _manifest_serving(MANIFEST_SERVING)
    _orphan_index_children(ORPHAN_INDEX_CHILDREN)


def downgrade() -> None:
    _orphan_index_children(_earlier("0008_serving_lookups").ORPHAN_INDEX_CHILDREN)
    _manifest_serving(dict(_earlier("0002_views").VIEWS)["manifest_serving"])
    op.execute("ALTER TABLE registries DROP COLUMN reached_run")  # SQLite >= 3.35 and PostgreSQL
    op.drop_table("manifest_reach")
