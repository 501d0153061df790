"""The post-mortem questions as parameterised SQL: the README's examples and Datasette's canned queries.

One text per question, in SQLite's dialect (Datasette serves SQLite; `regindex sql -f` runs them too). Every
query takes its values as named parameters (``:registry``, ``:run`` …) and is scoped by registry. ``example``
holds values that answer with rows on the demo's database (``regindex demo``); the test suite runs each query
with them, and checks that the README shows the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Canned:
    name: str
    title: str
    description: str
    sql: str
    example: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        return list(self.example)


_API_INDEX = "sha256:6fee91d6ecaa1049b262ab2e117c9ee766f2bcec22731f0f3ec5092cabf3e62d"
_WEB_CHILD = "sha256:b8fceda21b782e2913eecc0a8b87ad4c76831fbae21ef8347f8e790d5d6b30cd"

CANNED: tuple[Canned, ...] = (
    Canned(
        "orphans_new_this_week",
        "Orphans that appeared this week",
        "Open orphan_layer_link and orphan_index_child findings of a registry first seen in a run started in the "
        "last 7 days.",
        """\
SELECT f.kind, f.repository, f.digest, f.parent_digest, f.first_run, r.started_at
FROM findings f JOIN runs r ON r.id = f.first_run
WHERE f.registry = :registry AND f.resolved_run IS NULL
  AND f.kind IN ('orphan_layer_link', 'orphan_index_child')
  AND r.started_at >= datetime('now', '-7 days')
ORDER BY r.started_at, f.repository, f.digest""",
        {"registry": "private"},
    ),
    Canned(
        "changed_on_disk_in_run",
        "What changed on disk in run N",
        "Link files and blob data of a registry that appeared or vanished in run N (compared with the previous "
        "complete scan of that registry). A link whose state is absent is the directory left without its link file.",
        """\
SELECT 'appeared' AS change, 'link' AS what, l.kind, l.repository, l.tag, l.path_digest AS digest, l.state
FROM links l JOIN registries g ON g.id = l.registry_id
WHERE g.name = :registry AND l.first_run = :run
UNION ALL
SELECT 'vanished', 'link', l.kind, l.repository, l.tag, l.path_digest, l.state
FROM links l JOIN registries g ON g.id = l.registry_id
WHERE g.name = :registry AND l.gone_run = :run
UNION ALL
SELECT 'appeared', 'blob data', NULL, NULL, NULL, b.digest, NULL
FROM blobs b JOIN registries g ON g.id = b.registry_id
WHERE g.name = :registry AND b.first_run = :run
UNION ALL
SELECT 'vanished', 'blob data', NULL, NULL, NULL, b.digest, NULL
FROM blobs b JOIN registries g ON g.id = b.registry_id
WHERE g.name = :registry AND b.gone_run = :run
ORDER BY 1, 2, 4, 3, 6""",
        {"registry": "private", "run": "2"},
    ),
    Canned(
        "when_did_this_link_vanish",
        "When did this link vanish, and was the data still there?",
        "Every episode of the link files a repository has for a digest (revision, _layers or tag index links), "
        "when each vanished, whether the API DELETE left its directory behind (the absent state), and whether "
        "the blob data is still on disk.",
        """\
SELECT l.kind, l.tag, l.state, l.first_run, l.gone_run, r.started_at AS vanished_at,
       (SELECT COUNT(*) FROM links a
        WHERE a.registry_id = l.registry_id AND a.repository = l.repository AND a.kind = l.kind
          AND a.path_digest = l.path_digest AND a.state = 'absent' AND a.first_run = l.gone_run
       ) AS directory_left_behind,
       (SELECT COUNT(*) FROM current_blobs b
        WHERE b.registry_id = l.registry_id AND b.digest = l.path_digest) AS data_still_present
FROM links l JOIN registries g ON g.id = l.registry_id
LEFT JOIN runs r ON r.id = l.gone_run
WHERE g.name = :registry AND l.repository = :repository AND l.path_digest = :digest
  AND l.state <> 'absent'
ORDER BY l.kind, l.first_run""",
        {"registry": "private", "repository": "team/app/web", "digest": _WEB_CHILD},
    ),
    Canned(
        "children_of_an_index",
        "All children of an index, and whether the repository serves them",
        "Each child an index names, its platform, and how the repository answers GET of the child's digest now "
        "(manifest_serving's status; not linked when it has neither a revision nor a _layers link).",
        """\
SELECT c.position, c.platform, c.child_digest, c.child_size,
       COALESCE(s.status, 'not linked') AS served, s.via
FROM manifest_children c
LEFT JOIN manifest_serving s
  ON s.registry = :registry AND s.repository = :repository AND s.digest = c.child_digest
WHERE c.index_digest = :index
ORDER BY c.position""",
        {"registry": "private", "repository": "team/app/api", "index": _API_INDEX},
    ),
    Canned(
        "open_findings_of_a_repository",
        "The open findings of a repository",
        "Every finding not resolved in a repository, errors first, with the repair hint.",
        """\
SELECT severity, kind, digest, tag, parent_digest, first_run, last_seen_run, hint
FROM open_findings
WHERE registry = :registry AND repository = :repository
ORDER BY CASE severity WHEN 'error' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, kind, digest, tag""",
        {"registry": "private", "repository": "team/app/api"},
    ),
)


def by_name(name: str) -> Canned:
    for c in CANNED:
        if c.name == name:
            return c
    raise KeyError(name)
