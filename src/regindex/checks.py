"""The integrity model: each check is SQL over the current inventory and yields findings.

A finding's identity is (kind, registry, repository, digest, tag, parent digest[, subject]); its ``detail`` is
the evidence (which files exist and which do not) and ``hint`` what a person can do about it. Severity
``error`` means a pull fails now; the registry's HTTP API is the judge of every error (see tests/realreg).
Storage values reach SQL only as bound parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, text

from regindex import rules
from regindex.layout import EMPTY_DIGESTS, blob_file, link_file, names_other_content
from regindex.store import CHANGES_TABLE, as_utc, digest_table, plain_filter

ERROR, WARNING, INFO = "error", "warning", "info"




@dataclass
class FindingRow:
    kind: str
    severity: str
    registry: str
    repository: str | None
    digest: str | None
    tag: str | None = None
    parent_digest: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None
    subject: str | None = None  # extra identity (e.g. a path) when the columns above do not identify it
    policy: str | None = None  # the severity rule that graded it (regindex.policy); None: the built-in severity

    @property
    def key(self) -> str:
        ident = [self.kind, self.registry, self.repository, self.digest, self.tag, self.parent_digest, self.subject]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def detail_json(self) -> str:
        return json.dumps(self.detail, sort_keys=True, default=str)


@dataclass(frozen=True)
class CheckOptions:
    stale_upload_hours: float = rules.UPLOAD_PURGE_HOURS
    now: datetime | None = None


def _q(conn: Connection, sql: str, regs: Sequence[int], **params: Any) -> list[Any]:
    stmt = text(sql).bindparams(bindparam("regs", expanding=True))
    return list(conn.execute(stmt, {"regs": list(regs), **params}).mappings())


class _Context:
    """Lookups shared by several checks, loaded once per run."""

    def __init__(self, conn: Connection, regs: Sequence[int], scope: Collection[str] | None = None,
                 digests: Collection[str] | None = None) -> None:
        self.conn = conn
        self.regs = regs
        # the repositories the per-repository checks read (one registry's: see scope_repositories); None: all
        self.scope = None if scope is None else sorted(scope)
        # the digests the digest-scoped checks read (scope_digests), in a temporary table; None: all
        self.digests = digests is not None
        if digests is not None:
            digest_table(conn, "scope_digests", digests)
        self._tags: dict[tuple[int, str, str], list[str]] | None = None
        self._gone: dict[tuple[int, str], int | None] = {}
        self._linkers: dict[tuple[int, str], list[tuple[str, str, str]]] = {}

    def linkers(self, registry_id: int, digest: str) -> list[tuple[str, str, str]]:
        """(repository, kind, path digest) of every _layers and revision link that parses and names
        ``digest``: one indexed query per digest asked about (findings are few; the links are many, so they
        are never all loaded into memory)."""
        key = (registry_id, digest)
        hit = self._linkers.get(key)
        if hit is None:
            hit = [(r["repository"], r["kind"], r["path_digest"]) for r in self.conn.execute(
                text("SELECT repository, kind, path_digest FROM links WHERE registry_id = :rid "
                     "AND target_digest = :d AND gone_run IS NULL AND kind IN ('layer', 'revision') "
                     "AND state = 'ok'"), {"rid": registry_id, "d": digest}).mappings()]
            self._linkers[key] = hit
        return hit

    def layer_linkers(self, registry_id: int, digest: str) -> list[str]:
        """Repositories whose _layers link names ``digest`` (state ok)."""
        return [repo for repo, kind, _path in self.linkers(registry_id, digest) if kind == "layer"]

    def tags_for(self, registry_id: int, repo: str, digest: str) -> list[str]:
        if self._tags is None:  # (the per-repository checks ask: only the repositories in scope)
            self._tags = defaultdict(list)
            for r in self.rows(
                "SELECT registry_id, repository, tag, target_digest FROM links l WHERE gone_run IS NULL "
                "AND kind = 'tag_current' AND state = 'ok' AND registry_id IN :regs" + self.in_scope("l")
            ):
                self._tags[(r["registry_id"], r["repository"], r["target_digest"])].append(r["tag"])
        return sorted(self._tags.get((registry_id, repo, digest), []))

    def prefetch_gone(self, keys: Iterable[tuple[int, str]]) -> None:
        """``data_gone_run`` of many (registry id, digest) at once, a query per 500 digests instead of one each
        (a cache registry's orphan children: 1,178 round trips at 200k, 0.6 s on PostgreSQL)."""
        wanted: dict[int, set[str]] = defaultdict(set)
        for key in keys:
            if key not in self._gone:
                wanted[key[0]].add(key[1])
        stmt = text("SELECT digest, MAX(gone_run) FROM blobs WHERE registry_id = :rid AND gone_run IS NOT NULL "
                    "AND digest IN :ds GROUP BY digest").bindparams(bindparam("ds", expanding=True))
        for rid, digests in wanted.items():
            ordered = sorted(digests)
            for i in range(0, len(ordered), 500):
                part = ordered[i:i + 500]
                found = {d: gone for d, gone in self.conn.execute(stmt, {"rid": rid, "ds": part})}
                self._gone.update({(rid, d): found.get(d) for d in part})

    def in_scope(self, alias: str) -> str:
        """The condition that keeps a per-repository check's rows (``alias`` has a repository column) to the
        repositories in scope, or nothing when every repository is. A list of values, not a subquery: the
        planners push it into the views' subqueries and look the links up by repository (SQLite pushes no
        term with a subquery down, and materialized every index of the registry)."""
        return "" if self.scope is None else f" AND {alias}.repository IN :scope"

    def in_digests(self, column: str) -> str:
        """The condition that keeps a digest-scoped check's rows to the digests in scope (or nothing)."""
        return f" AND {column} IN (SELECT digest FROM scope_digests)" if self.digests else ""

    def rows(self, sql: str) -> list[Any]:
        """The rows of a check's SQL over the context's registries (``:regs``) and scope (``:scope``)."""
        if self.scope is None:
            return _q(self.conn, sql, self.regs)
        stmt = text(sql).bindparams(bindparam("regs", expanding=True), bindparam("scope", expanding=True))
        return list(self.conn.execute(stmt, {"regs": list(self.regs), "scope": self.scope}).mappings())

    def data_gone_run(self, registry_id: int, digest: str) -> int | None:
        """The run in which a blob's data was last seen to disappear (None if never seen): one indexed query
        per digest asked about (or prefetched), not the whole history of blobs in memory."""
        key = (registry_id, digest)
        self.prefetch_gone([key])
        return self._gone[key]


# ---------------------------------------------------------------------------------------------
# The checks, each registered once: the function's name is the finding kind, registration order is the order
# findings are derived and kinds are listed (report, CLI).

CheckFn = Callable[[_Context, CheckOptions], Iterable[FindingRow]]


@dataclass(frozen=True)
class Check:
    kind: str
    description: str
    run: CheckFn
    clock: bool = False  # its findings depend on the time of the run, not only on the inventory
    # its findings are per repository, and read only the evidence _SCOPE_SQL follows (see scope_repositories)
    per_repository: bool = False


CHECKS: dict[str, Check] = {}


def check(description: str, clock: bool = False, per_repository: bool = False) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[fn.__name__] = Check(fn.__name__, description, fn, clock, per_repository)
        return fn

    return register



@check("a _layers link file whose blob data is gone", per_repository=True)
def orphan_layer_link(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    rows = ctx.rows("SELECT * FROM orphan_layer_links o WHERE o.registry_id IN :regs" + ctx.in_scope("o"))
    ctx.prefetch_gone((r["registry_id"], r["target_digest"] if r["link_state"] == "ok" else r["digest"]) for r in rows)
    for r in rows:
        target = r["target_digest"] if r["link_state"] == "ok" else r["digest"]
        others = [p for p in ctx.layer_linkers(r["registry_id"], target) if p != r["repository"]]
        yield FindingRow(
            "orphan_layer_link",
            ERROR,
            r["registry"],
            r["repository"],
            r["digest"],
            detail={
                "link": link_file("layer", r["repository"], r["digest"]),
                "link_state": r["link_state"],
                "link_target": r["target_digest"],
                "link_first_seen_run": r["link_first_run"],
                "blob_data": blob_file(target),
                "blob_data_present": False,
                "blob_data_gone_in_run": ctx.data_gone_run(r["registry_id"], target),
                "other_repositories_linking_it": len(others),
            },
            hint=(
                f"Removing the link {link_file('layer', r['repository'], r['digest'])} is safe: the blob data is gone, "
                "so the link only turns pulls into 'unexpected EOF'/BLOB_UNKNOWN; images that need this layer "
                "must be pushed again."
            ),
        )


@check("an index names a child manifest the repository cannot serve", per_repository=True)
def orphan_index_child(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """
    SELECT o.*,
      (SELECT COUNT(*) FROM manifests cm JOIN manifest_refs cr ON cr.manifest_id = cm.id
        WHERE cm.digest = o.child_digest AND cm.size = o.child_data_size AND {counts}
          AND cr.role IN ('config', 'layer') AND NOT cr.is_foreign) AS child_blobs,
      (SELECT COUNT(*) FROM manifests cm JOIN manifest_refs cr ON cr.manifest_id = cm.id
        WHERE cm.digest = o.child_digest AND cm.size = o.child_data_size AND {counts}
          AND cr.role IN ('config', 'layer') AND NOT cr.is_foreign
          AND EXISTS (SELECT 1 FROM blobs b WHERE b.registry_id = o.registry_id AND b.gone_run IS NULL
                        AND b.digest = cr.digest)) AS child_blobs_present,
      (SELECT COUNT(*) FROM manifests cm JOIN manifest_refs cr ON cr.manifest_id = cm.id
        WHERE cm.digest = o.child_digest AND cm.size = o.child_data_size AND {counts}
          AND cr.role IN ('config', 'layer') AND NOT cr.is_foreign
          AND EXISTS (SELECT 1 FROM links l WHERE l.registry_id = o.registry_id AND l.gone_run IS NULL
                        AND l.repository = o.repository AND l.kind = 'layer' AND l.state = 'ok'
                        AND l.path_digest = cr.digest)) AS child_blobs_linked,
      (SELECT cm.kind FROM manifests cm WHERE cm.digest = o.child_digest AND cm.size = o.child_data_size
        AND {counts})
        AS child_kind,
      (SELECT COUNT(*) FROM blob_verifications cv JOIN blobs cd ON cd.registry_id = cv.registry_id
         AND cd.digest = cv.digest AND cd.gone_run IS NULL AND cd.size = cv.size
       WHERE cv.registry_id = o.registry_id AND cv.digest = o.child_digest AND cv.computed_digest <> cv.digest
         AND cv.mtime IS NOT NULL AND ABS(cv.mtime - cd.mtime) < 0.000001) AS child_data_altered
    FROM orphan_index_children o WHERE {reg} IN :regs
    """
    # SQLite, whole registries: given the registry term to use, its planner started the view from every link
    # of the registries (4.9 s at 1M files); as a plain filter (a unary +) 1.8 s, the same rows. A scope's
    # repositories are looked up through it (0.14 s against 0.29 s for 500 repositories at 1M): kept there.
    reg = plain_filter(ctx.conn, "o.registry_id") if ctx.scope is None else "o.registry_id"
    # the child's parse as it counts in the registry (_PARSE_COUNTS): not the genuine content's when its data is
    # other bytes
    rows = ctx.rows(sql.format(reg=reg, counts=_parse_counts("cm", "o.registry_id")) + ctx.in_scope("o"))
    ctx.prefetch_gone((r["registry_id"], r["child_digest"]) for r in rows if r["child_data_size"] is None)
    for r in rows:
        repo, child, index = r["repository"], r["child_digest"], r["index_digest"]
        cache = r["registry_role"] == "cache"
        parent_ok = r["index_status"] == "ok"
        severity = INFO if cache else (ERROR if parent_ok else WARNING)
        data_present = r["child_data_size"] is not None
        tags = ctx.tags_for(r["registry_id"], repo, index)
        detail = {
            "index_status": r["index_status"],
            "platform": r["platform"],
            "child_status": r["child_status"],
            "child_revision_link": link_file("revision", repo, child),
            "child_revision_link_state": r["child_revision_link"] or "no directory",
            "child_served_via": r["child_via"],
            "child_blob_data": blob_file(child),
            "child_blob_data_present": data_present,
            "child_blob_data_size": r["child_data_size"],
            "child_blob_data_gone_in_run": None if data_present else ctx.data_gone_run(r["registry_id"], child),
            "child_blobs": r["child_blobs"] if data_present else None,
            "child_blobs_present": r["child_blobs_present"] if data_present else None,
            "child_blobs_linked": r["child_blobs_linked"] if data_present else None,
            "index_tags": tags,
        }
        if cache:
            detail["note"] = "pull-through cache: children are fetched on demand, a missing one is expected"
        yield FindingRow(
            "orphan_index_child", severity, r["registry"], repo, child, parent_digest=index, detail=detail,
            hint=_child_hint(r, repo, child, tags, cache, parent_ok),
        )


def _child_hint(r: Any, repo: str, child: str, tags: list[str], cache: bool, parent_ok: bool) -> str:
    tag_text = ", ".join(tags) if tags else "no tag"
    if cache:
        return "Expected in a pull-through cache: the child is fetched from upstream on its first pull."
    if not parent_ok:
        return (
            f"The index itself is not servable ({r['index_status']}); nothing pulls this child through it. "
            "Remove the index's leftovers or push the image again."
        )
    if r["child_data_size"] is None:
        return (
            f"The child manifest's data is gone: rebuild and push the image (tags affected: {tag_text}). "
            "Restoring a link cannot help."
        )
    if r["child_data_size"] == 0 or r["child_kind"] in ("invalid", "unknown") or r["child_data_altered"]:
        return f"The child manifest's data is damaged: rebuild and push the image (tags affected: {tag_text})."
    total, present, linked = r["child_blobs"], r["child_blobs_present"], r["child_blobs_linked"]
    if present < total:
        return (
            f"{total - present} of {total} blobs of the child are gone: restoring its revision link would not "
            f"make it pullable. Rebuild and push the image (tags affected: {tag_text})."
        )
    fix = f"Restore the revision link {link_file('revision', repo, child)} containing {child}"
    if linked < total:
        fix += f" and the {total - linked} missing _layers links of its blobs"
    return fix + f": the child's manifest and all {total} of its blobs are present, so it would be servable again."


@check("a revision link whose manifest data is gone", per_repository=True)
def dangling_revision(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    # The last term is implied by the status (data_missing: the link parses and no open blob holds its
    # target): it lets the planner drop a revision link whose data is there before the view's joins to the
    # manifest and its verification (1M files, SQLite: 1.7 s -> 0.4 s; the view still decides every row).
    sql = """SELECT * FROM manifest_serving s WHERE s.registry_id IN :regs AND s.via = 'revision'
             AND s.status = 'data_missing'
             AND NOT EXISTS (SELECT 1 FROM blobs x WHERE x.registry_id = s.registry_id
                             AND x.digest = s.target_digest AND x.gone_run IS NULL)"""
    rows = ctx.rows(sql + ctx.in_scope("s"))
    ctx.prefetch_gone((r["registry_id"], r["target_digest"]) for r in rows)
    for r in rows:
        repo, d = r["repository"], r["digest"]
        tags = ctx.tags_for(r["registry_id"], repo, d)
        yield FindingRow(
            "dangling_revision", ERROR, r["registry"], repo, d,
            detail={
                "revision_link": link_file("revision", repo, d),
                "link_target": r["target_digest"],
                "blob_data": blob_file(r["target_digest"]),
                "blob_data_present": False,
                "blob_data_gone_in_run": ctx.data_gone_run(r["registry_id"], r["target_digest"]),
                "tags": tags,
            },
            hint=(
                f"The manifest data is gone: push the image again (tags affected: {', '.join(tags)})."
                if tags
                else f"The manifest data is gone and no tag names it: remove {link_file('revision', repo, d)[:-5]} "
                "or push the image again."
            ),
        )


_TAG_HINTS = {
    "no_current_link": "The tag directory has no current/link (a half-deleted tag): push the tag again or remove "
    "the tag directory.",
    "corrupt_link": "The tag's current/link does not parse: push the tag again (or write the intended digest, no "
    "newline).",
    "target_not_linked": "The tag names a manifest the repository has no revision link for: push the image again.",
    "data_missing": "The tag's manifest data is gone: push the image again.",
    "data_empty": "The tag's manifest data is empty: push the image again.",
    "unparsable": "The tag's manifest data is damaged: push the image again.",
    "not_parsed": "The tag's target is not a manifest: push the image again.",
    "digest_mismatch": "The tag's manifest data does not hash to its digest: push the image again.",
    "misdirected": "The link that serves the tag's target (its revision link, or its _layers link when there is "
    "none) names another manifest, so the tag serves the wrong bytes: rewrite that link with the target digest "
    "(see the misdirected_link finding).",
}


@check("a tag without a current link, or whose target the repository cannot serve", per_repository=True)
def dangling_tag(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = "SELECT * FROM tag_serving t WHERE t.registry_id IN :regs AND t.status <> 'ok'"
    for r in ctx.rows(sql + ctx.in_scope("t")):
        repo, tag = r["repository"], r["tag"]
        yield FindingRow(
            "dangling_tag", ERROR, r["registry"], repo, r["target_digest"], tag=tag,
            detail={
                "current_link": link_file("tag_current", repo, None, tag),
                "current_link_state": r["link_state"],
                "target": r["target_digest"],
                "target_served_via": r["via"],
                "status": r["status"],
            },
            hint=_TAG_HINTS.get(r["status"], "Push the tag again."),
        )


@check("a servable image manifest names a config or layer the repository cannot serve", per_repository=True)
def unlinked_blob_ref(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """
    SELECT s.registry_id, s.registry, g.role AS registry_role, s.repository, s.digest AS manifest_digest,
           r.digest, r.role, r.size,
           (SELECT b.size FROM blobs b WHERE b.registry_id = s.registry_id AND b.gone_run IS NULL
              AND b.digest = r.digest) AS data_size
    FROM manifest_serving s
    JOIN registries g ON g.id = s.registry_id
    JOIN manifest_refs r ON r.manifest_id = s.manifest_id AND r.role IN ('config', 'layer') AND NOT r.is_foreign
    WHERE s.registry_id IN :regs AND s.status = 'ok' AND s.manifest_kind = 'image'
      -- a counted lookup, not NOT EXISTS: PostgreSQL flattens NOT EXISTS into an anti-join that probes
      -- ix_links_path_digest (one row per repository sharing the layer, ~31 at 200k) instead of
      -- ix_links_current; a scalar subquery stays a per-row lookup on the full key (1.6 -> 0.8 s at 200k)
      AND (SELECT count(*) FROM links l WHERE l.registry_id = s.registry_id AND l.gone_run IS NULL
             AND l.repository = s.repository AND l.kind = 'layer' AND l.path_digest = r.digest
             AND l.state <> 'absent') = 0
    """
    # Every repository: implied by manifest_kind (the view's m.digest is its target), it lets the planner start
    # from the image manifests instead of every link (SQLite: 0.77 -> 0.45 s on the 200k tree). A scope: the
    # links of the repositories in it are fewer still (SQLite: 0.14 -> 0.05 s for 160 repositories).
    only = ctx.in_scope("s") or " AND s.target_digest IN (SELECT im.digest FROM manifests im WHERE im.kind = 'image')"
    for r in ctx.rows(sql + only):
        repo, d = r["repository"], r["digest"]
        present = r["data_size"] is not None
        cache = r["registry_role"] == "cache"
        yield FindingRow(
            "unlinked_blob_ref", INFO if cache else ERROR, r["registry"], repo, d, parent_digest=r["manifest_digest"],
            detail={
                "role": r["role"],
                "layer_link": link_file("layer", repo, d),
                "layer_link_present": False,
                "blob_data": blob_file(d),
                "blob_data_present": present,
                "declared_size": r["size"],
            },
            hint=(
                f"Restore the link {link_file('layer', repo, d)} containing {d}: the blob data is present."
                if present
                else "The blob data is gone too: push the image again."
            ),
        )


@check("link bytes that do not parse (empty, garbage, whitespace, unreadable)", per_repository=True)
def corrupt_link(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT l.*, g.name AS registry FROM links l JOIN registries g ON g.id = l.registry_id
             WHERE l.registry_id IN :regs AND l.gone_run IS NULL AND l.state IN ('empty', 'whitespace', 'garbage',
             'unreadable')"""
    for r in ctx.rows(sql + ctx.in_scope("l")):
        kind, repo = r["kind"], r["repository"]
        path = link_file(kind, repo, r["path_digest"], r["tag"])
        served = kind != "tag_index"
        yield FindingRow(
            "corrupt_link", ERROR if served else WARNING, r["registry"], repo, r["path_digest"], tag=r["tag"],
            detail={"link": path, "link_kind": kind, "state": r["state"], "bytes": r["preview"],
                    "digest_inside": r["target_digest"]},
            hint=(
                f"Rewrite {path} with exactly {r['path_digest']} (no newline)."
                if r["path_digest"]
                else f"{path} does not parse: push the tag again."
            )
            + ("" if served else " Pulls do not read this link; tag deletion and GC may."),
            subject=kind,
        )


@check("a link that names another digest than its path", per_repository=True)
def misdirected_link(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT l.*, g.name AS registry,
               (SELECT b.size FROM blobs b WHERE b.registry_id = l.registry_id AND b.gone_run IS NULL
                  AND b.digest = l.target_digest) AS target_size
             FROM links l JOIN registries g ON g.id = l.registry_id
             WHERE l.registry_id IN :regs AND l.gone_run IS NULL AND l.state = 'ok' AND l.path_digest IS NOT NULL
               AND l.target_digest <> l.path_digest
               AND (substr(l.target_digest, 1, 7) = substr(l.path_digest, 1, 7)
                    -- an alias across algorithms whose content (--verify-content) is not the path's digest
                    OR EXISTS (SELECT 1 FROM blob_verifications v JOIN blobs b ON b.registry_id = v.registry_id
                                 AND b.digest = l.target_digest AND b.gone_run IS NULL AND b.size = v.size
                               WHERE v.registry_id = l.registry_id AND v.digest = l.path_digest
                                 AND v.computed_digest IS NOT NULL AND v.computed_digest <> v.digest))"""
    for r in ctx.rows(sql + ctx.in_scope("l")):
        kind, repo = r["kind"], r["repository"]
        path = link_file(kind, repo, r["path_digest"], r["tag"])
        served = kind in ("layer", "revision")
        yield FindingRow(
            "misdirected_link", ERROR if served else WARNING, r["registry"], repo, r["path_digest"], tag=r["tag"],
            detail={"link": path, "link_kind": kind, "names": r["target_digest"],
                    "named_data_present": r["target_size"] is not None},
            hint=f"{path} names {r['target_digest']}: the registry serves that object's bytes for "
            f"{r['path_digest']}. Rewrite the link with {r['path_digest']}.",
            subject=kind,
        )


def _linking_repos(ctx: _Context, registry_id: int, digest: str) -> list[tuple[str, str]]:
    """Repositories serving ``digest`` through its own link, or an alias under another algorithm (a misdirected
    link is its own finding)."""
    return sorted({
        (repo, kind) for repo, kind, path in ctx.linkers(registry_id, digest)
        if not names_other_content(path, digest)
    })


def _per_linking_repo(
    ctx: _Context, kind: str, r: Any, detail: dict[str, Any], hint: str
) -> Iterable[FindingRow]:
    repos = _linking_repos(ctx, r["registry_id"], r["digest"])
    if not repos:
        yield FindingRow(kind, WARNING, r["registry"], None, r["digest"], detail={**detail, "linked_by": []},
                         hint=hint + " No repository links it, so no pull fails now.")
        return
    by_repo: dict[str, list[str]] = defaultdict(list)
    for repo, lk in repos:
        by_repo[repo].append(lk)
    for repo, kinds in by_repo.items():
        yield FindingRow(kind, ERROR, r["registry"], repo, r["digest"], detail={**detail, "linked_as": kinds},
                         hint=hint)


@check("0-byte data for a digest that is not the empty digest")
def empty_blob(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT b.registry_id, g.name AS registry, b.digest FROM blobs b JOIN registries g ON g.id = b.registry_id
             WHERE b.registry_id IN :regs AND b.gone_run IS NULL AND b.size = 0 AND b.digest NOT IN :empty"""
    sql += ctx.in_digests("b.digest")
    stmt_rows = ctx.conn.execute(
        text(sql).bindparams(bindparam("regs", expanding=True), bindparam("empty", expanding=True)),
        {"regs": list(ctx.regs), "empty": list(EMPTY_DIGESTS)},
    ).mappings()
    for r in list(stmt_rows):
        yield from _per_linking_repo(
            ctx, "empty_blob", r, {"blob_data": blob_file(r["digest"]), "size": 0},
            "The blob data is 0 bytes: delete it and push the image again (the registry serves it with 200 and an "
            "empty body; clients fail the digest check).",
        )


# The parse ``{pm}`` counts in registry ``{reg}``: its digest is reached there as a manifest (manifest_reach: the
# tree names it so, whatever was ever parsed), the registry holds that digest's data at the parse's size, and
# the data is its own content (not bytes hashed to another digest, whose own parse stands for them).
_PARSE_COUNTS = """EXISTS (SELECT 1 FROM manifest_reach x WHERE x.registry_id = {reg} AND x.digest = {pm}.digest)
    AND EXISTS (SELECT 1 FROM blobs mb WHERE mb.registry_id = {reg} AND mb.gone_run IS NULL AND mb.digest = {pm}.digest
                AND mb.size = {pm}.size AND NOT EXISTS (
                  SELECT 1 FROM blob_verifications mv WHERE mv.registry_id = mb.registry_id AND mv.digest = mb.digest
                    AND mv.size = mb.size AND mv.mtime IS NOT NULL AND ABS(mv.mtime - mb.mtime) < 0.000001
                    AND mv.computed_digest <> mv.digest))"""


def _parse_counts(pm: str, reg: str) -> str:
    return _PARSE_COUNTS.format(pm=pm, reg=reg)


@check("manifest data that is not a valid manifest (truncated, not JSON)")
def truncated_manifest(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT DISTINCT s.registry_id, s.registry, s.target_digest AS digest, s.data_size, s.manifest_kind,
                    s.parse_error
             FROM manifest_serving s
             WHERE s.registry_id IN :regs AND s.status = 'unparsable'
               -- implied by the status (a parse or a hash of the target's data failed): lets the planner start
               -- from the few unparsable digests instead of every link (SQLite: 0.48 -> 0.01 s at 200k)
               AND s.target_digest IN (SELECT m.digest FROM manifests m WHERE m.parse_error IS NOT NULL
                                       UNION SELECT v.digest FROM blob_verifications v
                                       WHERE v.parse_error IS NOT NULL)"""
    for r in _q(ctx.conn, sql, ctx.regs):
        yield from _per_linking_repo(
            ctx, "truncated_manifest", r,
            {"blob_data": blob_file(r["digest"]), "size": r["data_size"], "parse_error": r["parse_error"],
             "kind": r["manifest_kind"]},
            "The manifest data is not a valid manifest: delete the blob data and push the image again.",
        )


@check("blob data whose size differs from what a manifest declares")
def size_mismatch(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    # A digest names one content, so the size any valid manifest of this registry declares for it is the size
    # of its data: data of another size is broken in every repository that links it, whether or not that
    # repository still serves a manifest naming it (after GC a repo may keep only the _layers link). The
    # manifests of this registry: those whose parse counts there (_PARSE_COUNTS).
    sql = """
    SELECT b.registry_id, g.name AS registry, b.digest, b.size AS actual, r.size AS declared, r.role,
           pm.digest AS manifest_digest
    FROM blobs b
    JOIN registries g ON g.id = b.registry_id
    JOIN manifest_refs r ON r.digest = b.digest AND r.size IS NOT NULL AND r.role <> 'subject'
    JOIN manifests pm ON pm.id = r.manifest_id AND pm.parse_error IS NULL
    WHERE b.registry_id IN :regs AND b.gone_run IS NULL AND b.size > 0 AND b.size <> r.size{scoped}
      AND {counts}
    ORDER BY b.registry_id, b.digest, pm.digest, r.role
    """.format(scoped=ctx.in_digests("b.digest"), counts=_parse_counts("pm", "b.registry_id"))
    grouped: dict[tuple[int, str], list[Any]] = defaultdict(list)
    for r in _q(ctx.conn, sql, ctx.regs):
        grouped[(r["registry_id"], r["digest"])].append(r)
    for rows in grouped.values():
        first = rows[0]
        declared_by = sorted({(r["manifest_digest"], r["role"], r["declared"]) for r in rows})
        yield from _per_linking_repo(
            ctx, "size_mismatch", first,
            {"blob_data": blob_file(first["digest"]), "data_size": first["actual"],
             "declared_sizes": sorted({r["declared"] for r in rows}),
             "declared_by": [{"manifest": m, "role": role, "size": size} for m, role, size in declared_by[:20]],
             "declared_by_count": len(declared_by)},
            "The blob data is not the content its digest names (truncated or overwritten; the registry serves it "
            "with 200 and the client's digest check fails): delete it and push the image again.",
        )


@check("blob data whose hash is not its digest (--verify-content)")
def digest_mismatch(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT v.registry_id, g.name AS registry, v.digest, v.computed_digest, v.size, v.verified_run
             FROM blob_verifications v
             JOIN registries g ON g.id = v.registry_id
             JOIN blobs b ON b.registry_id = v.registry_id AND b.gone_run IS NULL AND b.digest = v.digest
                          AND b.size = v.size AND v.mtime IS NOT NULL AND ABS(v.mtime - b.mtime) < 0.000001
             WHERE v.registry_id IN :regs AND v.computed_digest IS NOT NULL AND v.computed_digest <> v.digest
               AND b.size > 0
               -- data that is short, long or not JSON is already truncated_manifest / size_mismatch
               AND v.parse_error IS NULL
               AND NOT EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests pm ON pm.id = r.manifest_id
                                 AND pm.parse_error IS NULL
                               WHERE r.digest = v.digest AND r.size IS NOT NULL AND r.role <> 'subject'
                                 AND r.size <> v.size AND {counts})""".format(
        counts=_parse_counts("pm", "v.registry_id"))
    for r in _q(ctx.conn, sql, ctx.regs):
        yield from _per_linking_repo(
            ctx, "digest_mismatch", r,
            {"blob_data": blob_file(r["digest"]), "size": r["size"], "computed": r["computed_digest"],
             "verified_run": r["verified_run"]},
            "The blob data does not hash to its digest: delete it and push the image again.",
        )


_BLOCKER_HINTS = {
    "invalid_name": "garbage-collect aborts on a repository name the registry refuses: rename or remove it.",
    "no_tags_dir": "{aborts} aborts on a repository with revisions but no _manifests/tags directory: create the "
    "empty directory.",
    "invalid_manifest": "garbage-collect reads this manifest to mark its blobs and aborts on it: push the image "
    "again or remove the revision directory.",
}


@check("something that makes registry garbage-collect abort", per_repository=True)
def gc_blocker(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    """What makes registry 2.8's garbage-collect abort with nothing deleted: the blockers of
    :func:`regindex.rules.mark`, the mark phase gc-preview runs, in either mode. Each is a repository's: its
    name, its ``_manifests/tags`` directory, its own links and the data, hashes and parses they name (what
    ``scope_repositories`` follows), so a scoped derivation reads the repositories in scope only."""
    for reg in _q(ctx.conn, "SELECT id, name FROM registries WHERE id IN :regs ORDER BY name", ctx.regs):
        name = reg["name"]
        # only the repositories where a blocker can be (found in SQL), a part at a time: a repository's blockers
        # read only its own links and the data they name, and the whole inventory would grow with the tree
        candidates = rules.blocker_candidates(ctx.conn, reg["id"], ctx.scope)
        parts = rules.load_parts(ctx.conn, reg["id"], name, only=candidates)
        for b, aborts in (x for inv in parts for x in rules.blockers(inv)):
            if b.what == "invalid_name":
                detail: dict[str, Any] = {"repository": b.path}
            elif b.what == "no_tags_dir":
                detail = {"missing": b.path}
            elif b.what == "invalid_manifest":
                detail = {"revision_link": b.path, "parse_error": b.error}
            else:
                detail = {"link": b.path, "state": b.state}
            hint = _BLOCKER_HINTS.get(b.what, "{aborts} aborts on {path} and deletes nothing: fix or remove the "
                                      "link first.")
            yield FindingRow(
                "gc_blocker", WARNING, name, b.repository, b.digest, tag=b.tag,
                detail={**detail, "aborts": aborts, "reason": b.reason},
                hint=hint.format(aborts=aborts, path=b.path), subject=b.what,
            )


@check("an upload older than the purge age", clock=True)
def stale_upload(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    now = opts.now or datetime.now(timezone.utc)
    cutoff = now - timedelta(hours=opts.stale_upload_hours)
    sql = """SELECT u.*, g.name AS registry FROM uploads u JOIN registries g ON g.id = u.registry_id
             WHERE u.registry_id IN :regs AND u.gone_run IS NULL"""
    for r in _q(ctx.conn, sql, ctx.regs):
        started = as_utc(r["started_at"])
        if started is not None and started >= cutoff:
            continue
        age_h = None if started is None else round((now - started).total_seconds() / 3600, 1)
        yield FindingRow(
            "stale_upload", WARNING, r["registry"], r["repository"], None,
            detail={"upload": f"repositories/{r['repository']}/_uploads/{r['uuid']}", "started_at": r["started_raw"],
                    "age_hours": age_h, "bytes": r["size"], "purge_age_hours": opts.stale_upload_hours},
            hint="An abandoned upload: the registry's upload purger removes it (if enabled); garbage-collect never "
            "does. Removing the directory is safe once no client is pushing.",
            subject=r["uuid"],
        )


@check("blob data no link names (reclaimable)")
def unreferenced_blob(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT b.registry_id, g.name AS registry, b.digest, b.size,
               EXISTS (SELECT 1 FROM manifest_refs r JOIN manifests pm ON pm.id = r.manifest_id
                       WHERE r.digest = b.digest AND {counts}) AS named_by_manifest
             FROM blobs b JOIN registries g ON g.id = b.registry_id
             WHERE b.registry_id IN :regs AND b.gone_run IS NULL
               AND NOT EXISTS (SELECT 1 FROM links l WHERE l.registry_id = b.registry_id AND l.gone_run IS NULL
                                 AND l.state <> 'absent' AND l.target_digest = b.digest)
               AND NOT EXISTS (SELECT 1 FROM links l WHERE l.registry_id = b.registry_id AND l.gone_run IS NULL
                                 AND l.state <> 'absent' AND l.path_digest = b.digest)""".format(
        counts=_parse_counts("pm", "b.registry_id"))
    # two NOT EXISTS, not one with an OR: each is a hashable anti-join (PostgreSQL otherwise loops per blob)
    for r in _q(ctx.conn, sql + ctx.in_digests("b.digest"), ctx.regs):
        named = bool(r["named_by_manifest"])
        yield FindingRow(
            "unreferenced_blob", INFO, r["registry"], None, r["digest"],
            detail={"blob_data": blob_file(r["digest"]), "bytes": r["size"],
                    "reclaimable_bytes": 0 if named else r["size"], "named_by_a_manifest": named},
            hint=(
                "No link names this blob, but a manifest does: garbage-collect keeps it while that manifest is "
                "marked (regindex gc-preview tells whether it would go)."
                if named
                else "No link and no manifest names this blob: garbage-collect reclaims it."
            ),
        )


@check("something in the tree regindex did not index (symlink, odd name, stray entry)")
def storage_anomaly(ctx: _Context, opts: CheckOptions) -> Iterable[FindingRow]:
    sql = """SELECT a.path, a.reason, g.name AS registry FROM anomalies a JOIN registries g ON g.id = a.registry_id
             WHERE a.registry_id IN :regs AND a.gone_run IS NULL"""
    for r in _q(ctx.conn, sql, ctx.regs):
        yield FindingRow(
            "storage_anomaly", WARNING, r["registry"], None, None,
            detail={"path": r["path"], "reason": r["reason"]},
            hint=(
                "The registry refuses this name, so nothing under it can be pulled; regindex indexed it anyway."
                if "refuse" in r["reason"]
                else "regindex did not index this entry (it never follows symlinks): look at it by hand."
            ),
            subject=r["path"],
        )


# ---------------------------------------------------------------------------------------------
# A night that changed little: the per-repository checks derive only the repositories whose evidence changed.

# The digests whose evidence changed in a registry this run (the closure's seeds): its blobs opened, closed or
# updated (data, size, mtime), the digests that entered or left its manifest reach (their parse began or
# ceased to count there), manifests parsed (in any registry: parses are shared by digest) and content hashed
# this run.
_SEEDS_SQL = f"""
    SELECT c.registry_id, c.digest FROM {CHANGES_TABLE} c WHERE c.what IN ('blob', 'reach')
        AND c.registry_id IN :regs
    UNION SELECT g.id, m.digest FROM manifests m JOIN registries g ON g.id IN :regs WHERE m.parsed_run = :run
    UNION SELECT v.registry_id, v.digest FROM blob_verifications v
        WHERE v.verified_run = :run AND v.registry_id IN :regs"""

_GONE = "NOT EXISTS (SELECT 1 FROM blobs b WHERE b.registry_id = c.registry_id AND b.gone_run IS NULL AND b.digest = {d})"
# The digests changed links name whose data is gone, each once: found before the links to them are joined (a
# shared base layer's digest names hundreds of layer links; PostgreSQL, misled by the unanalysed temporary
# table, joined all 1.2M of them for a 1M churn night and asked about the data for each: 5 s instead of 0.1 s)
_GONE_LINKED = (f"SELECT DISTINCT c.registry_id, c.digest FROM {CHANGES_TABLE} c WHERE c.what = 'link' "
                f"AND c.registry_id IN :regs AND {_GONE.format(d='c.digest')}")

# The repositories whose per-repository findings may differ from their open ones:
# - those with a link or the repository itself opened, closed or changed this run (their own evidence);
# - those linking (by path or by target) a digest in the upward closure of the seeds through manifest_refs: a
#   manifest's status and findings read its data and parse, its children's (an index's orphan children) and
#   their configs' and layers' data (unlinked refs, the child's blobs), so a change under any of them reaches
#   it;
# - those whose orphan _layers link names a digest whose linkers changed (a link to it opened or closed in
#   another repository): orphan_layer_link's detail counts the other repositories linking it. Such a link's
#   finding reads the linkers of its target if it parses, else of its path digest; it is an orphan when that
#   digest's data is gone, or (it parses) when its path digest's data is gone and the link names another
#   digest. Asking about the data once per changed digest, not once per link to it, keeps a shared base layer
#   (linked by hundreds of repositories, its data present) from costing a lookup per link.
_SCOPE_SQL = f"""
WITH RECURSIVE up(registry_id, digest) AS (
    {_SEEDS_SQL}
    UNION
    SELECT u.registry_id, pm.digest FROM up u JOIN manifest_refs r ON r.digest = u.digest
    JOIN manifests pm ON pm.id = r.manifest_id
)
SELECT c.registry_id, c.repository FROM {CHANGES_TABLE} c
WHERE c.what IN ('link', 'repository') AND c.registry_id IN :regs
UNION SELECT l.registry_id, l.repository FROM up u JOIN links l ON l.registry_id = u.registry_id
    AND l.path_digest = u.digest AND l.gone_run IS NULL
UNION SELECT l.registry_id, l.repository FROM up u JOIN links l ON l.registry_id = u.registry_id
    AND l.target_digest = u.digest AND l.gone_run IS NULL
UNION SELECT l.registry_id, l.repository FROM ({_GONE_LINKED}) c JOIN links l ON l.registry_id = c.registry_id
    AND l.gone_run IS NULL AND l.kind = 'layer' AND l.target_digest = c.digest
UNION SELECT l.registry_id, l.repository FROM ({_GONE_LINKED}) c JOIN links l ON l.registry_id = c.registry_id
    AND l.gone_run IS NULL AND l.kind = 'layer' AND l.path_digest = c.digest
UNION SELECT l.registry_id, l.repository FROM links l
    WHERE l.registry_id IN :regs AND l.gone_run IS NULL AND l.kind = 'layer' AND l.state = 'ok'
      AND l.path_digest <> l.target_digest
      AND l.target_digest IN (SELECT c.digest FROM {CHANGES_TABLE} c WHERE c.what = 'link'
                              AND c.registry_id = l.registry_id)
"""


def scope_repositories(conn: Connection, run_id: int, registry_ids: Sequence[int]) -> dict[int, set[str]]:
    """The repositories of each registry whose per-repository findings (``Check.per_repository``) this run's
    changes can reach, from the changes the scan recorded (``regindex.store.start_changes``) and the parses
    and hashes it made: what ``run_checks(..., scope=...)`` reads. Every other repository's findings of those
    kinds are what a derivation would give again, provided the registry's findings were derived at the end of
    the previous run under the same fingerprint (the caller's condition). The kinds that are not per
    repository are derived in full."""
    out: dict[int, set[str]] = {rid: set() for rid in registry_ids}
    if not registry_ids:
        return out
    stmt = text(_SCOPE_SQL).bindparams(bindparam("regs", expanding=True))
    for rid, repo in conn.execute(stmt, {"regs": list(registry_ids), "run": run_id}):
        out[rid].add(repo)
    return out


# Finding kind -> what it means, in the order the checks are registered.
KINDS: dict[str, str] = {kind: c.description for kind, c in CHECKS.items()}
# The kinds whose findings change with the clock (an upload ages): derived again even when nothing changed.
CLOCK_KINDS: frozenset[str] = frozenset(kind for kind, c in CHECKS.items() if c.clock)
# The kinds a scoped derivation derives only for the repositories in scope (scope_repositories).
PER_REPOSITORY_KINDS: frozenset[str] = frozenset(kind for kind, c in CHECKS.items() if c.per_repository)
# The registry-wide kinds a scoped derivation derives only for the digests in scope (scope_digests): findings
# about one blob, whose evidence is that digest's rows (its data, the links naming it, the manifests naming it).
DIGEST_KINDS: frozenset[str] = frozenset({"unreferenced_blob", "empty_blob", "size_mismatch"})

# The digests whose findings of those kinds may differ from their open ones:
# - a blob of the registry opened, closed or changed;
# - a digest a link of the registry that changed names by target or path (any kind: a tag's target counts as
#   a reference for unreferenced_blob; empty_blob and size_mismatch name the repositories linking it);
# - a digest named by a manifest parsed this run (in any registry: parses are shared), or by a manifest whose
#   blob in the registry opened, closed or changed, or that entered or left the registry's manifest reach
#   (size_mismatch and unreferenced_blob count only the manifests whose parse counts there: _PARSE_COUNTS).
_SCOPE_DIGESTS_SQL = f"""
SELECT c.digest FROM {CHANGES_TABLE} c WHERE c.registry_id = :rid AND c.what IN ('blob', 'linked')
    AND c.digest IS NOT NULL
UNION SELECT r.digest FROM manifest_refs r JOIN manifests m ON m.id = r.manifest_id WHERE m.parsed_run = :run
UNION SELECT r.digest FROM {CHANGES_TABLE} c JOIN manifests m ON m.digest = c.digest
    JOIN manifest_refs r ON r.manifest_id = m.id WHERE c.registry_id = :rid AND c.what IN ('blob', 'reach')
"""


def scope_digests(conn: Connection, run_id: int, registry_id: int) -> set[str]:
    """The digests of a registry whose ``DIGEST_KINDS`` findings this run's changes can reach (from the changes
    the scan recorded and the parses it made): what ``run_checks(..., digests=...)`` reads. Every other
    digest's findings of those kinds are what a derivation would give again, under the same condition as
    ``scope_repositories``."""
    return {d for (d,) in conn.execute(text(_SCOPE_DIGESTS_SQL), {"rid": registry_id, "run": run_id})}


def run_checks(
    conn: Connection, registry_ids: Sequence[int], opts: CheckOptions | None = None,
    kinds: Collection[str] | None = None, scope: Collection[str] | None = None,
    digests: Collection[str] | None = None,
) -> list[FindingRow]:
    """Every check (or those of ``kinds``) over the current inventory of the given registries. Findings are
    unique by key. ``scope``: the per-repository checks read only these repositories (of the one registry
    given: see scope_repositories). ``digests``: the digest-scoped checks (``DIGEST_KINDS``) read only these
    digests (of the one registry given: see scope_digests)."""
    if not registry_ids:
        return []
    if scope is not None or digests is not None:
        if len(registry_ids) != 1:
            raise ValueError("a scope names the repositories or digests of one registry")
        if scope is not None and not scope:  # nothing in scope: no per-repository check has a row to read
            kinds = [k for k in (kinds if kinds is not None else CHECKS) if k not in PER_REPOSITORY_KINDS]
        if digests is not None and not digests:
            kinds = [k for k in (kinds if kinds is not None else CHECKS) if k not in DIGEST_KINDS]
    ctx = _Context(conn, list(registry_ids), scope, digests)
    out: dict[str, FindingRow] = {}
    for c in CHECKS.values():
        if kinds is not None and c.kind not in kinds:
            continue
        # in a stable order (the SQL has no ORDER BY): findings get their ids in the same order on every
        # database, whatever plan it chose
        for f in sorted(c.run(ctx, opts or CheckOptions()), key=_order):
            out.setdefault(f.key, f)
    return list(out.values())


def fingerprint(role: str, opts: CheckOptions, severity_rules: Sequence[Any]) -> str:
    """What a registry's findings are derived under, besides its inventory: the checks' code and the rules
    they read (their source files), the schema (views), the registry's role, the options and the severity
    rules that grade them. Two scans of an unchanged inventory under the same fingerprint derive the same
    findings, except the clock's kinds (``CLOCK_KINDS``). Where the sources cannot be read, a fingerprint that
    never matches (every check runs)."""
    settings = [_code_fingerprint(), role, opts.stale_upload_hours, [repr(r) for r in severity_rules]]
    return hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()


@cache
def _code_fingerprint() -> str:
    from regindex import __version__, layout, policy
    from regindex.db import head_revision

    h = hashlib.sha256(f"{__version__} {head_revision()}".encode())
    for module in (sys.modules[__name__], rules, layout, policy):
        try:
            h.update(Path(module.__file__ or "").read_bytes())
        except OSError:
            h.update(os.urandom(16))
    return h.hexdigest()


def _order(f: FindingRow) -> tuple[str, ...]:
    return (f.registry, f.repository or "", f.digest or "", f.tag or "", f.parent_digest or "", f.key)
