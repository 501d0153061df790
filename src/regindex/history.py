"""Findings across runs: new, persisting, resolved, re-opened.

Only registries that this run scanned completely are compared: a registry that failed keeps its findings
exactly as they were (a partial view never resolves anything).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from regindex.checks import FindingRow
from regindex.models import Finding, table
from regindex.store import chunks

F = table(Finding)


@dataclass
class HistoryCounts:
    new: int = 0
    reopened: int = 0
    persisting: int = 0
    resolved: int = 0
    new_errors: int = 0


def apply(conn: Connection, run_id: int, found: Sequence[FindingRow], registries: Collection[str]) -> HistoryCounts:
    counts = HistoryCounts()
    regs = sorted(set(registries))
    if not regs:
        return counts
    current = {f.key: f for f in found if f.registry in registries}
    open_rows: dict[str, Any] = {}
    for part in chunks(regs, 500):
        q = select(F.c.id, F.c.key).where(F.c.resolved_run.is_(None), F.c.registry.in_(list(part)))
        for row in conn.execute(q):
            open_rows[row.key] = row

    persisting = [k for k in current if k in open_rows]
    fresh = [k for k in current if k not in open_rows]
    resolved = [row.id for k, row in open_rows.items() if k not in current]

    last_episode: dict[str, int] = {}
    for part in chunks(fresh, 500):
        q = select(F.c.key, func.max(F.c.episode)).where(F.c.key.in_(list(part))).group_by(F.c.key)
        for key, ep in conn.execute(q):
            last_episode[key] = int(ep)

    if persisting:
        stmt = (
            update(F)
            .where(F.c.id == bindparam("_id"))
            .values(last_seen_run=run_id, severity=bindparam("_sev"), detail=bindparam("_detail"),
                    hint=bindparam("_hint"))
        )
        rows = [
            {"_id": open_rows[k].id, "_sev": current[k].severity, "_detail": current[k].detail_json(),
             "_hint": current[k].hint}
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
                "resolved_run": None,
            }
        )
        if f.severity == "error":
            counts.new_errors += 1
    for part in chunks(new_rows):
        conn.execute(insert(F), list(part))

    counts.new = len(fresh)
    counts.persisting = len(persisting)
    counts.resolved = len(resolved)
    return counts


def open_error_count(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(F).where(F.c.resolved_run.is_(None), F.c.severity == "error")
        ).scalar_one()
    )


def state_of(first_run: int, episode: int, resolved_run: int | None, latest_run: int | None) -> str:
    """A finding's state relative to the latest finished run."""
    if resolved_run is not None:
        return "resolved"
    if latest_run is not None and first_run == latest_run:
        return "reopened" if episode > 1 else "new"
    return "persisting"


def latest_run(conn: Connection) -> int | None:
    from regindex.models import Run

    R = table(Run)
    return conn.execute(select(func.max(R.c.id)).where(R.c.status.in_(["complete", "partial"]))).scalar()


def list_findings(
    conn: Connection,
    state: str = "open",
    kinds: Collection[str] = (),
    registries: Collection[str] = (),
    severities: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Findings as dicts (kind, severity, registry, repository, digest, tag, parent_digest, state,
    first_seen_run, last_seen_run, resolved_run, detail with the hint in it), ``state`` relative to the latest
    finished run.

    ``state``: open (new, re-opened and persisting), new (opened in the latest run, re-opened included),
    persisting, resolved (every resolved episode), all.
    """
    import json

    latest = latest_run(conn)
    q = select(F)
    if state == "resolved":
        q = q.where(F.c.resolved_run.is_not(None))
    elif state != "all":
        q = q.where(F.c.resolved_run.is_(None))
        if state == "new":
            q = q.where(F.c.first_run == (latest if latest is not None else -1))
        elif state == "persisting":
            q = q.where(F.c.first_run != (latest if latest is not None else -1))
    if kinds:
        q = q.where(F.c.kind.in_(list(kinds)))
    if registries:
        q = q.where(F.c.registry.in_(list(registries)))
    if severities:
        q = q.where(F.c.severity.in_(list(severities)))
    q = q.order_by(F.c.registry, F.c.repository, F.c.kind, F.c.digest, F.c.tag, F.c.parent_digest, F.c.id)
    out = []
    for r in conn.execute(q).mappings():
        detail = json.loads(r["detail"])
        if r["hint"]:
            detail["hint"] = r["hint"]  # the JSON keys are fixed; the repair hint travels with the evidence
        out.append(
            {
                "kind": r["kind"], "severity": r["severity"], "registry": r["registry"],
                "repository": r["repository"], "digest": r["digest"], "tag": r["tag"],
                "parent_digest": r["parent_digest"],
                "state": state_of(r["first_run"], r["episode"], r["resolved_run"], latest),
                "first_seen_run": r["first_run"], "last_seen_run": r["last_seen_run"],
                "resolved_run": r["resolved_run"], "detail": detail, "hint": r["hint"],
            }
        )
    return out
