"""views for people and for the checks

Every user-facing view is created here (and replaced by later migrations when it changes), so ad-hoc SQL
has stable names. "current_*" views show the inventory as of the latest scan of each registry.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

VIEWS: list[tuple[str, str]] = [
    (
        "current_repositories",
        """
        SELECT p.id, g.name AS registry, p.registry_id, p.name AS repository, p.has_manifests, p.has_tags_dir,
               p.first_run
        FROM repositories p JOIN registries g ON g.id = p.registry_id
        WHERE p.gone_run IS NULL
        """,
    ),
    (
        "current_links",
        """
        SELECT l.id, g.name AS registry, l.registry_id, l.repository, l.kind, l.tag, l.path_digest,
               l.target_digest, l.state, l.preview, l.first_run
        FROM links l JOIN registries g ON g.id = l.registry_id
        WHERE l.gone_run IS NULL
        """,
    ),
    (
        "current_blobs",
        """
        SELECT b.id, g.name AS registry, b.registry_id, b.digest, b.size, b.mtime, b.first_run
        FROM blobs b JOIN registries g ON g.id = b.registry_id
        WHERE b.gone_run IS NULL
        """,
    ),
    (
        "current_uploads",
        """
        SELECT u.id, g.name AS registry, u.registry_id, u.repository, u.uuid, u.started_at, u.started_raw,
               u.size, u.first_run
        FROM uploads u JOIN registries g ON g.id = u.registry_id
        WHERE u.gone_run IS NULL
        """,
    ),
    (
        "manifest_children",
        """
        SELECT m.digest AS index_digest, m.kind AS index_kind, m.media_type AS index_media_type,
               r.position, r.digest AS child_digest, r.media_type AS child_media_type, r.size AS child_size,
               r.platform
        FROM manifests m JOIN manifest_refs r ON r.manifest_id = m.id AND r.role = 'child'
        """,
    ),
    # How a repository answers GET /v2/<repo>/manifests/<digest>: through its revision link, or (only when
    # there is no revision link file) through its _layers link, as registry 2.8's linked blob statter does.
    # status: ok | corrupt_link (500) | data_missing (404) | data_empty (500) | unparsable | not_parsed
    #   | digest_mismatch (--verify-content hashed the current data and it is not its digest: 200 with bytes the
    #     client's digest check refuses, or the wrong image by tag)
    #   | misdirected (the link parses but names another digest of the same algorithm whose data exists: 200 with
    #     that object's bytes, so the client's digest check fails; a pull by tag silently gets the wrong image)
    (
        "manifest_serving",
        """
        SELECT l.registry_id, g.name AS registry, l.repository, l.path_digest AS digest, l.kind AS via,
               l.state AS link_state, l.target_digest, b.size AS data_size, m.id AS manifest_id,
               m.kind AS manifest_kind, m.media_type,
               CASE WHEN v.computed_digest <> v.digest THEN v.parse_error ELSE m.parse_error END AS parse_error,
               CASE WHEN l.state <> 'ok' THEN 'corrupt_link'
                    WHEN b.id IS NULL THEN 'data_missing'
                    WHEN b.size = 0 THEN 'data_empty'
                    WHEN v.computed_digest <> v.digest AND v.parse_error IS NOT NULL THEN 'unparsable'
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
        LEFT JOIN manifests m ON m.digest = l.target_digest AND m.size = b.size
        LEFT JOIN blob_verifications v ON v.registry_id = l.registry_id AND v.digest = l.target_digest
             AND v.size = b.size AND v.mtime IS NOT NULL AND ABS(v.mtime - b.mtime) < 0.000001
        WHERE l.gone_run IS NULL AND l.state <> 'absent'
          AND (l.kind = 'revision'
               OR (l.kind = 'layer' AND NOT EXISTS (
                     SELECT 1 FROM links r
                     WHERE r.registry_id = l.registry_id AND r.gone_run IS NULL AND r.kind = 'revision'
                       AND r.repository = l.repository AND r.path_digest = l.path_digest
                       AND r.state <> 'absent')))
        """,
    ),
    # How a repository answers GET /v2/<repo>/manifests/<tag>.
    (
        "tag_serving",
        """
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
        """,
    ),
    # A _layers link file whose blob data is gone. The reference scanner judged by the digest in the path;
    # regindex also follows the digest in the file (a sha512 path may legitimately alias sha256 content).
    (
        "orphan_layer_links",
        """
        SELECT l.id AS link_id, g.name AS registry, g.role AS registry_role, l.registry_id, l.repository,
               l.path_digest AS digest, l.target_digest, l.state AS link_state, l.first_run AS link_first_run
        FROM links l JOIN registries g ON g.id = l.registry_id
        WHERE l.gone_run IS NULL AND l.kind = 'layer' AND l.state <> 'absent'
          AND (
            (l.state = 'ok' AND NOT EXISTS (
                SELECT 1 FROM blobs b WHERE b.registry_id = l.registry_id AND b.gone_run IS NULL
                  AND b.digest = l.target_digest))
            OR (NOT EXISTS (
                SELECT 1 FROM blobs b WHERE b.registry_id = l.registry_id AND b.gone_run IS NULL
                  AND b.digest = l.path_digest)
                AND (l.state <> 'ok' OR substr(l.path_digest, 1, 7) = substr(l.target_digest, 1, 7)))
          )
        """,
    ),
    # Every index linked in a repository (servable or not: an index whose revision link was deleted through
    # the API still counts, as the reference scanner counts it) and each child the repository cannot serve.
    (
        "orphan_index_children",
        """
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
        """,
    ),
    (
        "open_findings",
        """
        SELECT f.id, f.kind, f.severity, f.registry, f.repository, f.digest, f.tag, f.parent_digest,
               f.first_run, f.last_seen_run, f.episode, f.detail, f.hint
        FROM findings f WHERE f.resolved_run IS NULL
        """,
    ),
    # Per finished run and kind: findings open at the end of the run, opened in it, resolved in it.
    (
        "finding_trend",
        """
        SELECT r.id AS run_id, r.started_at, f.kind, f.severity,
               SUM(CASE WHEN f.resolved_run IS NULL OR f.resolved_run > r.id THEN 1 ELSE 0 END) AS open,
               SUM(CASE WHEN f.first_run = r.id THEN 1 ELSE 0 END) AS new,
               SUM(CASE WHEN f.resolved_run = r.id THEN 1 ELSE 0 END) AS resolved
        FROM runs r
        JOIN findings f ON f.first_run <= r.id AND (f.resolved_run IS NULL OR f.resolved_run >= r.id)
        WHERE r.status IN ('complete', 'partial')
        GROUP BY r.id, r.started_at, f.kind, f.severity
        """,
    ),
]


def upgrade() -> None:
    for name, sql in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name, _sql in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
