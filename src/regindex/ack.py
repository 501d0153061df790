"""Acknowledgements: "known, accepted (until a date)". An acknowledged finding stays listed, marked with who,
why and until when, but does not count for ``--fail-on``, the open-error metrics or the summary.

An acknowledgement belongs to one *episode* of a finding: it ends when it expires, when the finding resolves, or
with ``regindex unack``; a re-opened finding is a new episode and is not acknowledged. Whether one is active is
computed when read (``ended_at`` is set only by ``unack``), so an expiry needs no job to run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from regindex.errors import RepairError
from regindex.models import Acknowledgement, Finding, Registry, table
from regindex.store import as_utc, utcnow

F = table(Finding)
K = table(Acknowledgement)
G = table(Registry)


class AckError(RepairError):
    """A bad acknowledgement request (nothing selected, a date in the past, an unknown kind or registry)."""


@dataclass(frozen=True)
class AckSelection:
    key: str | None = None
    incident: str | None = None
    kind: str | None = None
    registry: str | None = None
    repositories: tuple[str, ...] = ()


def active_clause(now: datetime) -> ColumnElement[bool]:
    """SQL: this acknowledgement row is in force at ``now`` (its finding's resolution is checked by the caller)."""
    return and_(K.c.ended_at.is_(None), or_(K.c.until.is_(None), K.c.until > now))


def acknowledged_exists(finding_id: Any, now: datetime | None = None) -> ColumnElement[bool]:
    """SQL: the finding (an id column) has an active acknowledgement; use with ``resolved_run IS NULL``."""
    return exists(select(K.c.id).where(K.c.finding_id == finding_id, active_clause(now or utcnow())))


def active(conn: Connection, finding_ids: Collection[int] | None = None,
           now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """The active acknowledgement of each open finding: {finding id: {by, reason, since, until}}."""
    q = (select(K.c.finding_id, K.c.id, K.c.os_user, K.c.reason, K.c.created_at, K.c.until)
         .join(F, F.c.id == K.c.finding_id)
         .where(F.c.resolved_run.is_(None), active_clause(now or utcnow())).order_by(K.c.id))
    wanted = None if finding_ids is None else set(finding_ids)
    if wanted is not None:
        if not wanted:
            return {}
        if len(wanted) < 500:
            q = q.where(K.c.finding_id.in_(sorted(wanted)))
    out = {}
    for r in conn.execute(q):
        if wanted is not None and r.finding_id not in wanted:
            continue
        out[r.finding_id] = {"id": r.id, "by": r.os_user, "reason": r.reason,
                             "since": _iso(as_utc(r.created_at)), "until": _iso(as_utc(r.until))}
    return out


def _iso(v: datetime | None) -> str | None:
    return v.isoformat(timespec="seconds").replace("+00:00", "Z") if v else None


def parse_until(value: str | None, now: datetime | None = None) -> datetime | None:
    """``YYYY-MM-DD`` (the acknowledgement ends at the start of that day, UTC) or an ISO timestamp."""
    if value is None:
        return None
    v = value.strip()
    try:
        if len(v) == 10:
            when = datetime.combine(date.fromisoformat(v), time(0), tzinfo=timezone.utc)
        else:
            when = datetime.fromisoformat(v.replace("Z", "+00:00"))
            when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    except ValueError:
        raise AckError(f"--until {value!r}: give a date (YYYY-MM-DD) or an ISO timestamp") from None
    if when <= (now or utcnow()):
        raise AckError(f"--until {value!r} is not in the future")
    return when


def select_findings(conn: Connection, sel: AckSelection,
                    incident_findings: Callable[[Connection, str], list[int]] | None = None) -> list[Any]:
    """Open findings (their current episode) that ``sel`` names: exactly one way of naming them."""
    forms = [sel.key is not None, sel.incident is not None, sel.kind is not None or sel.registry is not None]
    if sum(forms) != 1:
        raise AckError("name the findings one way: a KEY, --incident ID, or --kind K --registry R "
                       "[--repository GLOB]")
    if sel.repositories and not (sel.kind or sel.registry):
        raise AckError("--repository goes with --kind and --registry")
    q = select(F.c.id, F.c.key, F.c.kind, F.c.severity, F.c.registry, F.c.repository, F.c.digest).where(
        F.c.resolved_run.is_(None))
    if sel.key is not None:
        from regindex.repair import resolve_key

        rows = list(conn.execute(q.where(F.c.id == resolve_key(conn, sel.key))))
    elif sel.incident is not None:
        if incident_findings is None:
            raise AckError("--incident needs the incidents module")
        ids = set(incident_findings(conn, sel.incident))
        rows = [r for r in conn.execute(q) if r.id in ids]
    else:
        if not (sel.kind and sel.registry):
            raise AckError("--kind and --registry go together (an acknowledgement never spans every registry)")
        from regindex.checks import KINDS

        if sel.kind not in KINDS:
            raise AckError(f"unknown kind {sel.kind!r}; kinds: {', '.join(KINDS)}")
        known = set(conn.execute(select(G.c.name)).scalars())
        if sel.registry not in known:
            raise AckError(f"unknown registry {sel.registry!r}; registries: {', '.join(sorted(known)) or 'none yet'}")
        rows = [r for r in conn.execute(q.where(F.c.kind == sel.kind, F.c.registry == sel.registry))
                if not sel.repositories
                or any(fnmatch.fnmatchcase(r.repository or "", g) for g in sel.repositories)]
    if not rows:
        raise AckError("no open finding matches")
    return rows


def acknowledge(conn: Connection, rows: list[Any], reason: str, until: datetime | None, user: str) -> int:
    """Acknowledge each finding episode; an active acknowledgement is replaced (ended, then a new one)."""
    if not reason.strip():
        raise AckError("--reason must say why the finding is accepted")
    now = utcnow()
    ids = [r.id for r in rows]
    _end(conn, ids, user, now)
    conn.execute(insert(K), [
        {"finding_id": r.id, "finding_key": r.key, "reason": reason.strip(), "until": until, "os_user": user,
         "created_at": now, "ended_at": None, "ended_by": None}
        for r in rows
    ])
    return len(rows)


def unacknowledge(conn: Connection, rows: list[Any], user: str) -> int:
    """End the active acknowledgements of these findings; returns how many there were."""
    return _end(conn, [r.id for r in rows], user, utcnow())


def _end(conn: Connection, ids: list[int], user: str, now: datetime) -> int:
    n = 0
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        res = conn.execute(update(K).where(K.c.finding_id.in_(part), active_clause(now))
                           .values(ended_at=now, ended_by=user))
        n += res.rowcount or 0
    return n
