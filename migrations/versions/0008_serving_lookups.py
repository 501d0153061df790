"""tag_serving and orphan_index_children look up what they need instead of evaluating manifest_serving whole

Same columns, same rows (tests/test_rules_parity.py compares them with the 0002 definitions on damaged trees,
on SQLite and PostgreSQL); only the plans change:

- ``orphan_index_children`` starts from the index manifests (a few thousand) instead of every linked blob,
  and asks ``manifest_serving`` about each (repository, digest) it needs with a correlated lookup. The 0002
  definition made SQLite materialize ``manifest_serving`` twice, for every link of every repository (1.3 s of
  a 200k-file tree's checks; 0.28 s now; PostgreSQL 0.67 s -> 0.46 s).
- ``tag_serving`` on SQLite asks ``manifest_serving`` about each tag's target with a correlated lookup
  (0.81 s -> 0.13 s): SQLite cannot push a LEFT JOIN's condition into a join view, so it materialized the
  whole view. PostgreSQL keeps the 0002 join, which its planner hashes (the lookups would cost it 2x).

Revision ID: 0008_serving_lookups
Revises: 0007_checks_fingerprint
"""

from alembic import op

revision = "0008_serving_lookups"
down_revision = "0007_checks_fingerprint"
branch_labels = None
depends_on = None

# What GET /v2/<repo>/manifests/<digest> answers, for one (registry, repository, digest) of the outer query.
_SERVED = """(SELECT s.{col} FROM manifest_serving s WHERE s.registry_id = {reg} AND s.repository = {repo}
                 AND s.digest = {digest}{extra})"""


def _served(col: str, reg: str, repo: str, digest: str, extra: str = "") -> str:
    return _SERVED.format(col=col, reg=reg, repo=repo, digest=digest, extra=extra)


TAG_SERVING_SQLITE = f"""
SELECT t.registry_id, g.name AS registry, t.repository, t.tag, t.state AS link_state, t.target_digest,
       {_served("via", "t.registry_id", "t.repository", "t.target_digest", " AND t.state = 'ok'")} AS via,
       {_served("status", "t.registry_id", "t.repository", "t.target_digest", " AND t.state = 'ok'")}
         AS target_status,
       CASE WHEN t.state = 'absent' THEN 'no_current_link'
            WHEN t.state <> 'ok' THEN 'corrupt_link'
            ELSE COALESCE({_served("status", "t.registry_id", "t.repository", "t.target_digest")},
                          'target_not_linked') END AS status
FROM links t
JOIN registries g ON g.id = t.registry_id
WHERE t.gone_run IS NULL AND t.kind = 'tag_current'
"""

# As 0002 (kept for PostgreSQL, and what downgrade restores everywhere).
TAG_SERVING_0002 = """
SELECT t.registry_id, g.name AS registry, t.repository, t.tag, t.state AS link_state,
       t.target_digest, s.via, s.status AS target_status,
       CASE WHEN t.state = 'absent' THEN 'no_current_link'
            WHEN t.state <> 'ok' THEN 'corrupt_link'
            WHEN s.status IS NULL THEN 'target_not_linked'
            ELSE s.status END AS status
FROM links t
JOIN registries g ON g.id = t.registry_id
LEFT JOIN manifest_serving s ON s.registry_id = t.registry_id AND s.repository = t.repository
     AND s.digest = t.target_digest AND t.state = 'ok'
WHERE t.gone_run IS NULL AND t.kind = 'tag_current'
"""

ORPHAN_INDEX_CHILDREN = f"""
SELECT * FROM (
  SELECT p.registry_id, g.name AS registry, g.role AS registry_role, p.repository,
         p.digest AS index_digest,
         COALESCE({_served("status", "p.registry_id", "p.repository", "p.digest")}, 'not_linked') AS index_status,
         r.digest AS child_digest, r.platform, r.position, r.size AS declared_size,
         {_served("via", "p.registry_id", "p.repository", "r.digest")} AS child_via,
         {_served("link_state", "p.registry_id", "p.repository", "r.digest")} AS child_link_state,
         COALESCE({_served("status", "p.registry_id", "p.repository", "r.digest")}, 'not_linked') AS child_status,
         cb.size AS child_data_size,
         (SELECT cl.state FROM links cl WHERE cl.registry_id = p.registry_id AND cl.gone_run IS NULL
            AND cl.repository = p.repository AND cl.kind = 'revision' AND cl.path_digest = r.digest
         ) AS child_revision_link
  -- every index linked in a repository (its revision or _layers link) whose data is that index's bytes
  FROM (SELECT DISTINCT l.registry_id, l.repository, l.path_digest AS digest, pm.id AS manifest_id
        FROM manifests pm
        JOIN links l ON l.path_digest = pm.digest AND l.gone_run IS NULL AND l.kind IN ('revision', 'layer')
        JOIN blobs b ON b.registry_id = l.registry_id AND b.digest = l.path_digest AND b.gone_run IS NULL
             AND b.size = pm.size
        WHERE pm.kind = 'index') p
  JOIN manifest_refs r ON r.manifest_id = p.manifest_id AND r.role = 'child'
  JOIN registries g ON g.id = p.registry_id
  LEFT JOIN blobs cb ON cb.registry_id = p.registry_id AND cb.digest = r.digest AND cb.gone_run IS NULL
) children
WHERE child_status <> 'ok'
"""

ORPHAN_INDEX_CHILDREN_0002 = """
SELECT p.registry_id, g.name AS registry, g.role AS registry_role, p.repository,
       p.digest AS index_digest, COALESCE(ps.status, 'not_linked') AS index_status,
       r.digest AS child_digest, r.platform, r.position, r.size AS declared_size,
       c.via AS child_via, c.link_state AS child_link_state,
       COALESCE(c.status, 'not_linked') AS child_status,
       cb.size AS child_data_size,
       (SELECT cl.state FROM links cl WHERE cl.registry_id = p.registry_id AND cl.gone_run IS NULL
          AND cl.repository = p.repository AND cl.kind = 'revision' AND cl.path_digest = r.digest
       ) AS child_revision_link
FROM (SELECT DISTINCT l.registry_id, l.repository, l.path_digest AS digest, b.size AS size
      FROM links l
      JOIN blobs b ON b.registry_id = l.registry_id AND b.digest = l.path_digest AND b.gone_run IS NULL
      WHERE l.gone_run IS NULL AND l.kind IN ('revision', 'layer')) p
JOIN manifests pm ON pm.digest = p.digest AND pm.size = p.size AND pm.kind = 'index'
JOIN manifest_refs r ON r.manifest_id = pm.id AND r.role = 'child'
JOIN registries g ON g.id = p.registry_id
LEFT JOIN manifest_serving ps ON ps.registry_id = p.registry_id AND ps.repository = p.repository
     AND ps.digest = p.digest
LEFT JOIN manifest_serving c ON c.registry_id = p.registry_id AND c.repository = p.repository
     AND c.digest = r.digest
LEFT JOIN blobs cb ON cb.registry_id = p.registry_id AND cb.digest = r.digest AND cb.gone_run IS NULL
WHERE c.status IS NULL OR c.status <> 'ok'
"""


def _replace(name: str, sql: str) -> None:
    op.execute(f"DROP VIEW {name}")  # nothing is defined over these two views
    op.execute(f"CREATE VIEW {name} AS {sql}")


def upgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace("tag_serving", TAG_SERVING_SQLITE)
    _replace("orphan_index_children", ORPHAN_INDEX_CHILDREN)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        _replace("tag_serving", TAG_SERVING_0002)
    _replace("orphan_index_children", ORPHAN_INDEX_CHILDREN_0002)
