"""Findings across runs: new, persisting, resolved, re-opened.

Only registries that this run scanned completely are compared: a registry that failed keeps its findings
exactly as they were (a partial view never resolves anything).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, insert, or_, select, true, update

from regindex.checks import FindingRow
from regindex.db import IN_LIST
from regindex.errors import ConfigError
from regindex.models import Finding, table
from regindex.store import chunks

F = table(Finding)
FINISHED = ("complete", "partial")  # the run statuses that changed findings: states are relative to these


@dataclass
class HistoryCounts:
    new: int = 0
    reopened: int = 0
    persisting: int = 0
    resolved: int = 0
    new_errors: int = 0


def apply(
    conn: Connection, run_id: int, found: Sequence[FindingRow], registries: Collection[str],
    carried: Collection[str] = (), derived: Collection[str] = (),
    scoped: Mapping[str, Collection[str]] | None = None, scoped_kinds: Collection[str] = (),
    digest_scoped: Mapping[str, Collection[str]] | None = None, digest_kinds: Collection[str] = (),
) -> HistoryCounts:
    """Compare the findings derived for ``registries`` with their open ones. For the ``carried`` registries
    (among ``registries``: nothing in their inventory changed, see regindex.scan) only the kinds in ``derived``
    were derived again; their open findings of every other kind are seen again as they are. For the
    ``scoped`` registries (name -> repositories in scope, regindex.checks.scope_repositories) the kinds in
    ``scoped_kinds`` were derived only for the repositories in scope; their open findings of those kinds in
    other repositories are seen again as they are. Likewise ``digest_scoped`` (name -> digests in scope,
    regindex.checks.scope_digests) for the kinds in ``digest_kinds``, by the finding's digest."""
    counts = HistoryCounts()
    regs = sorted(set(registries))
    if not regs:
        return counts
    scoped = {name: set(repos) for name, repos in (scoped or {}).items() if name in registries}
    scoped_kinds = set(scoped_kinds)
    by_digest = {name: set(ds) for name, ds in (digest_scoped or {}).items() if name in registries}
    digest_kinds = set(digest_kinds)

    def out_of_scope(registry: str, kind: str, repository: str | None, digest: str | None) -> bool:
        return ((registry in scoped and kind in scoped_kinds and repository not in scoped[registry])
                or (registry in by_digest and kind in digest_kinds and digest not in by_digest[registry]))

    # a derivation in scope never yields a finding out of it (the checks' SQL reads only the scope); were one
    # to, it must not open a second episode of a finding carried as it is
    current = {f.key: f for f in found if f.registry in registries
               and not out_of_scope(f.registry, f.kind, f.repository, f.digest)}
    kept = sorted(set(carried) & set(regs))
    for part in chunks(kept, IN_LIST):  # seen again as they are: not compared below
        same = and_(F.c.resolved_run.is_(None), F.c.registry.in_(list(part)), F.c.kind.not_in(list(derived)))
        counts.persisting += int(conn.execute(update(F).where(same).values(last_seen_run=run_id)).rowcount or 0)
    open_rows: dict[str, Any] = {}
    unscoped: list[int] = []
    for part in chunks(regs, IN_LIST):
        in_part = [r for r in part if r in kept]
        not_carried = ~and_(F.c.registry.in_(in_part), F.c.kind.not_in(list(derived))) if in_part else true()
        open_q = select(F.c.id, F.c.key, F.c.registry, F.c.kind, F.c.repository, F.c.digest).where(
            F.c.resolved_run.is_(None), F.c.registry.in_(list(part)), not_carried)
        for row in conn.execute(open_q):
            if out_of_scope(row.registry, row.kind, row.repository, row.digest):
                unscoped.append(row.id)
            else:
                open_rows[row.key] = row
    seen_again = update(F).where(F.c.id == bindparam("_id")).values(last_seen_run=run_id)
    for ids in chunks([{"_id": i} for i in unscoped]):  # seen again as they are
        conn.execute(seen_again, list(ids))
    counts.persisting += len(unscoped)

    persisting = [k for k in current if k in open_rows]
    fresh = [k for k in current if k not in open_rows]
    resolved = [row.id for k, row in open_rows.items() if k not in current]

    last_episode: dict[str, int] = {}
    for part in chunks(fresh, IN_LIST):
        q = select(F.c.key, func.max(F.c.episode)).where(F.c.key.in_(list(part))).group_by(F.c.key)
        for key, ep in conn.execute(q):
            last_episode[key] = int(ep)

    if persisting:
        stmt = (
            update(F)
            .where(F.c.id == bindparam("_id"))
            .values(last_seen_run=run_id, severity=bindparam("_sev"), detail=bindparam("_detail"),
                    hint=bindparam("_hint"), policy=bindparam("_policy"))
        )
        rows = [
            {"_id": open_rows[k].id, "_sev": current[k].severity, "_detail": current[k].detail_json(),
             "_hint": current[k].hint, "_policy": current[k].policy}
            for k in persisting
        ]
        for part in chunks(rows):
            conn.execute(stmt, list(part))
    if resolved:
        stmt = update(F).where(F.c.id == bindparam("_id")).values(resolved_run=run_id)
        for part in chunks([{"_id": i} for i in resolved]):
            conn.execute(stmt, list(part))
    new_rows = []
    for k in fresh:
        f = current[k]
        episode = last_episode.get(k, 0) + 1
        if episode > 1:
            counts.reopened += 1
        new_rows.append(
            {
                "key": k, "episode": episode, "kind": f.kind, "severity": f.severity, "registry": f.registry,
                "repository": f.repository, "digest": f.digest, "tag": f.tag, "parent_digest": f.parent_digest,
                "detail": f.detail_json(), "hint": f.hint, "first_run": run_id, "last_seen_run": run_id,
                "resolved_run": None, "policy": f.policy,
            }
        )
        if f.severity == "error":
            counts.new_errors += 1
    for part in chunks(new_rows):
        conn.execute(insert(F), list(part))

    counts.new = len(fresh)
    counts.persisting += len(persisting)
    counts.resolved = len(resolved)
    return counts


def open_error_count(conn: Connection, acknowledged: bool = False) -> int:
    """Open errors that are not acknowledged (what --fail-on counts), or with ``acknowledged`` the ones that are."""
    from regindex.ack import acknowledged_exists

    acked = acknowledged_exists(F.c.id)
    return int(
        conn.execute(
            select(func.count()).select_from(F).where(F.c.resolved_run.is_(None), F.c.severity == "error",
                                                      acked if acknowledged else ~acked)
        ).scalar_one()
    )


def state_of(first_run: int, episode: int, resolved_run: int | None, latest_run: int | None) -> str:
    """A finding's state relative to a finished run (the latest, or ``findings --run N``)."""
    if resolved_run is not None and (latest_run is None or resolved_run <= latest_run):
        return "resolved"
    if latest_run is not None and first_run == latest_run:
        return "reopened" if episode > 1 else "new"
    return "persisting"


STATES = ("open", "new", "persisting", "resolved", "resolved-ever", "all")
SEVERITY_ORDER = ("error", "warning", "info")


def latest_run(conn: Connection) -> int | None:
    """The latest finished run: what finding states are relative to by default (episodes.Runs.latest is the
    same over the runs it loaded)."""
    from regindex.models import Run

    R = table(Run)
    return conn.execute(select(func.max(R.c.id)).where(R.c.status.in_(FINISHED))).scalar()


@dataclass
class FindingQuery:
    """What ``regindex findings`` asks for. ``run``: the finished run states are relative to (default the
    latest); ``since``: first seen in a run started at or after this time; globs use ``*`` and ``?``."""

    state: str = "open"
    kinds: Collection[str] = ()
    registries: Collection[str] = ()
    severities: Collection[str] = ()
    repositories: Collection[str] = ()
    digest: str | None = None
    tags: Collection[str] = ()
    run: int | None = None
    since: datetime | None = None
    limit: int | None = None


_DIGEST_PREFIX = re.compile(r"^(?:(sha256|sha384|sha512):)?([0-9a-f]{1,128})$")


def _like_glob(pattern: str) -> str:
    """A shell glob (``*``, ``?``) as a LIKE pattern with ``\\`` as the escape character."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def selected_run(conn: Connection, run: int | None) -> int | None:
    """The run states are relative to: ``run`` if it finished, else ``ConfigError``; default the latest."""
    if run is None:
        return latest_run(conn)
    from regindex.models import Run

    R = table(Run)
    status = conn.execute(select(R.c.status).where(R.c.id == run)).scalar()
    if status is None:
        raise ConfigError(f"--run {run}: no such run (see `regindex runs`)")
    if status not in FINISHED:
        raise ConfigError(f"--run {run}: that run is {status} and changed no finding; pick a complete or partial run")
    return run


def list_findings(conn: Connection, query: FindingQuery | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Findings as dicts (key, kind, severity, registry, repository, digest, tag, parent_digest, state,
    first_seen_run, last_seen_run, resolved_run, detail, ack, policy, hint), ``state`` relative to the selected
    run.

    ``state``: open (new, re-opened and persisting), new (opened in the run, re-opened included), persisting,
    resolved (in the run), resolved-ever (in the run or before), all (everything seen up to the run). Sorted
    by severity (errors first), registry, repository.
    """
    import json

    from regindex.models import Run
    from regindex.timespec import for_column

    q_ = query or FindingQuery(**kwargs)
    if q_.state not in STATES:
        raise ConfigError(f"unknown state {q_.state!r}; states: {', '.join(STATES)}")
    n = selected_run(conn, q_.run)
    if n is None:
        return []
    open_at = or_(F.c.resolved_run.is_(None), F.c.resolved_run > n)
    q = select(F)
    if q_.state == "open":
        q = q.where(F.c.first_run <= n, open_at)
    elif q_.state == "new":
        q = q.where(F.c.first_run == n, open_at)
    elif q_.state == "persisting":
        q = q.where(F.c.first_run < n, open_at)
    elif q_.state == "resolved":
        q = q.where(F.c.resolved_run == n)
    elif q_.state == "resolved-ever":
        q = q.where(F.c.resolved_run <= n)
    else:
        q = q.where(F.c.first_run <= n)
    if q_.kinds:
        q = q.where(F.c.kind.in_(list(q_.kinds)))
    if q_.registries:
        q = q.where(F.c.registry.in_(list(q_.registries)))
    if q_.severities:
        q = q.where(F.c.severity.in_(list(q_.severities)))
    if q_.repositories:
        q = q.where(or_(*[F.c.repository.like(_like_glob(g), escape="\\") for g in q_.repositories]))
    wanted_tags = set(q_.tags)  # the finding's own tag, or a tag whose pull it breaks (filtered below)
    if q_.digest is not None:
        m = _DIGEST_PREFIX.match(q_.digest.strip().lower())
        if not m:
            raise ConfigError(f"--digest: not a digest or hex prefix: {q_.digest[:80]!r}")
        algs = [m.group(1)] if m.group(1) else ["sha256", "sha384", "sha512"]
        prefixes = [f"{a}:{m.group(2)}%" for a in algs]
        q = q.where(or_(*[c.like(p) for c in (F.c.digest, F.c.parent_digest) for p in prefixes]))
    if q_.since is not None:
        R = table(Run)
        first = conn.execute(select(func.min(R.c.id)).where(
            R.c.started_at >= for_column(q_.since, conn.dialect.name))).scalar()
        q = q.where(F.c.first_run >= (first if first is not None else n + 1))
    rank = case({s: i for i, s in enumerate(SEVERITY_ORDER)}, value=F.c.severity, else_=len(SEVERITY_ORDER))
    q = q.order_by(rank, F.c.registry, F.c.repository, F.c.kind, F.c.digest, F.c.tag, F.c.parent_digest, F.c.id)
    if q_.limit is not None and not wanted_tags:
        q = q.limit(q_.limit)
    from regindex.ack import active

    acks = active(conn) if q_.state not in ("resolved", "resolved-ever") else {}
    out: list[dict[str, Any]] = []
    for r in conn.execute(q).mappings():
        if q_.limit is not None and len(out) >= q_.limit:
            break
        detail = json.loads(r["detail"])
        if wanted_tags and not wanted_tags & _tags_of(r["kind"], r["tag"], detail):
            continue
        if r["hint"]:
            detail["hint"] = r["hint"]  # the JSON keys are fixed; the repair hint travels with the evidence
        out.append(
            {
                "key": r["key"], "kind": r["kind"], "severity": r["severity"], "registry": r["registry"],
                "repository": r["repository"], "digest": r["digest"], "tag": r["tag"],
                "parent_digest": r["parent_digest"],
                "state": state_of(r["first_run"], r["episode"], r["resolved_run"], n),
                "first_seen_run": r["first_run"], "last_seen_run": r["last_seen_run"],
                "resolved_run": r["resolved_run"], "detail": detail, "hint": r["hint"],
                "ack": _public_ack(acks.get(r["id"])), "policy": r["policy"],
            }
        )
    return out


def _tags_of(kind: str, tag: str | None, detail: dict[str, Any]) -> set[str]:
    """The finding's own tag and the tags whose pulls it breaks (an index's missing child, a dangling revision)."""
    names = detail.get("index_tags") if kind == "orphan_index_child" else detail.get("tags")
    return ({tag} if tag else set()) | {t for t in (names or []) if isinstance(t, str)}


def list_runs(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """Runs, newest first, with ISO 8601 UTC times and ``open_errors``: the unacknowledged open errors the scan's
    summary line printed (stored by the run; runs recorded before that column existed are recounted from the
    findings, with their latest severity)."""
    import json

    from regindex.models import Run
    from regindex.store import as_utc
    from regindex.timespec import iso

    R = table(Run)
    rows = [dict(r) for r in conn.execute(select(R).order_by(R.c.id.desc()).limit(limit)).mappings()]
    finished = [r["id"] for r in rows if r["status"] in FINISHED and r["open_errors"] is None]
    errors: dict[int, int] = {}
    for part in chunks(finished, IN_LIST):
        q = (
            select(R.c.id, func.count(F.c.id))
            .join(F, (F.c.first_run <= R.c.id) & or_(F.c.resolved_run.is_(None), F.c.resolved_run > R.c.id))
            .where(R.c.id.in_(list(part)), F.c.severity == "error")
            .group_by(R.c.id)
        )
        errors.update({rid: int(n) for rid, n in conn.execute(q)})
    for r in rows:
        r["started_at"], r["finished_at"] = iso(as_utc(r["started_at"])), iso(as_utc(r["finished_at"]))
        if r["status"] not in FINISHED:
            r["open_errors"] = None
        elif r["open_errors"] is None:
            r["open_errors"] = errors.get(r["id"], 0)
        if r["duration_seconds"] is not None:
            r["duration_seconds"] = round(r["duration_seconds"], 2)
        if r.get("options"):
            try:
                r["options"] = json.loads(r["options"])
            except ValueError:
                pass
    return rows
def _public_ack(a: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if a is None else {k: a[k] for k in ("by", "reason", "since", "until")}
