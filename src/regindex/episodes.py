"""Finding episodes and the runs they span: what the report, the post-mortem cards and the timeline read.

``Runs`` holds every run and which runs scanned each registry completely (an episode's age and "what changed"
compare against those); ``Item`` is one row of ``findings`` (one episode of a finding key).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from regindex.history import FINISHED
from regindex.models import Finding, Registry, Run, RunRegistry, table
from regindex.store import as_utc, chunks

SEVERITIES = ("error", "warning", "info")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
PARENT_ROLE = {"orphan_index_child": "index", "unlinked_blob_ref": "manifest", "size_mismatch": "manifest"}

F, R, RR, G = table(Finding), table(Run), table(RunRegistry), table(Registry)


class Runs:
    """Every run, and which runs scanned each registry completely (episodes compare against those)."""

    def __init__(self, conn: Connection) -> None:
        self.by_id: dict[int, dict[str, Any]] = {}
        for r in conn.execute(select(R).order_by(R.c.id)).mappings():
            row = dict(r)
            row["started_at"], row["finished_at"] = as_utc(row["started_at"]), as_utc(row["finished_at"])
            self.by_id[row["id"]] = row
        self.finished = [i for i, r in self.by_id.items() if r["status"] in FINISHED]
        self.scanned: dict[int, list[int]] = defaultdict(list)
        self.failures: dict[int, list[tuple[str, str]]] = defaultdict(list)
        q = (
            select(RR.c.run_id, RR.c.registry_id, RR.c.status, RR.c.error, G.c.name)
            .join(G, G.c.id == RR.c.registry_id)
            .order_by(RR.c.run_id)
        )
        for run_id, reg_id, status, error, name in conn.execute(q):
            if status == "complete":
                self.scanned[reg_id].append(run_id)
            else:
                message = error or status
                if message.startswith(f"{name}: "):  # scan errors already name their registry
                    message = message[len(name) + 2:]
                self.failures[run_id].append((name, message))

    @property
    def latest(self) -> int | None:
        """The latest finished run of those loaded (history.latest_run asks the database the same)."""
        return self.finished[-1] if self.finished else None

    def count(self, first: int, last: int, registry_id: int | None = None) -> int:
        """Finished runs with ids in [first, last]; with ``registry_id``, only those that scanned it (a partial
        run that could not read the registry did not see the finding)."""
        seq = self.scanned.get(registry_id) or self.finished if registry_id is not None else self.finished
        return max(0, bisect_right(seq, last) - bisect_left(seq, first))

    def before(self, run: int, registry_id: int | None = None) -> int | None:
        """The scan that ``run`` was compared with: the previous complete scan of the registry."""
        seq = self.scanned.get(registry_id, []) if registry_id is not None else self.finished
        if registry_id is not None and not seq:
            seq = self.finished
        i = bisect_left(seq, run)
        return seq[i - 1] if i > 0 else None

    def last_open(self, first: int, resolved: int | None) -> int:
        """The last finished run in which an episode was open."""
        if resolved is None:
            return self.latest or first
        i = bisect_left(self.finished, resolved)
        return self.finished[i - 1] if i > 0 else first

    def when(self, run: int | None) -> datetime | None:
        row = self.by_id.get(run) if run is not None else None
        return row["started_at"] if row else None

    def days(self, first: int, last: int) -> int:
        a, b = self.when(first), self.when(last)
        return max(0, (b - a).days) if a and b else 0




@dataclass(slots=True)
class Item:
    """One finding episode."""

    id: int
    key: str
    episode: int
    kind: str
    severity: str
    registry: str
    repository: str | None
    digest: str | None
    tag: str | None
    parent_digest: str | None
    first_run: int
    last_seen_run: int
    resolved_run: int | None
    detail: str = "{}"  # loaded only for the findings shown (and streamed into the CSV)
    hint: str | None = None
    state: str = ""  # new | reopened | persisting | resolved (relative to the report's run)
    age_runs: int = 0
    age_days: int = 0
    ack: dict[str, Any] | None = None  # the active acknowledgement of an open finding (regindex ack)
    policy: str | None = None  # the severity rule of the config file that graded it (None: built-in)
    incident: str | None = None  # the id of its incident (regindex incidents), for open findings

    @property
    def acknowledged(self) -> str:
        if not self.ack:
            return ""
        until = f" (until {self.ack['until']})" if self.ack.get("until") else ""
        return f"{self.ack['by']}: {self.ack['reason']}{until}"

    @property
    def anchor(self) -> str:
        return "f-" + self.key[:16]

    @property
    def parent_role(self) -> str:
        return PARENT_ROLE.get(self.kind, "parent")

    @property
    def section(self) -> str:
        return "new" if self.state == "reopened" else self.state


ITEM_COLUMNS = [F.c[n] for n in ("id", "key", "episode", "kind", "severity", "registry", "repository", "digest",
                                   "tag", "parent_digest", "first_run", "last_seen_run", "resolved_run")]


def with_detail(conn: Connection, items: Sequence[Item]) -> None:
    """Fill in the evidence and hint of these findings (kept out of the big read: most are never shown)."""
    by_id = {i.id: i for i in items}
    for part in chunks(sorted(by_id), 1000):
        for fid, detail, hint, policy in conn.execute(
                select(F.c.id, F.c.detail, F.c.hint, F.c.policy).where(F.c.id.in_(list(part)))):
            by_id[fid].detail, by_id[fid].hint, by_id[fid].policy = detail, hint, policy


def sort_key(it: Item) -> tuple[Any, ...]:
    """Most severe first, then oldest, then by place."""
    return (_SEV_RANK.get(it.severity, 9), it.first_run, it.registry, it.repository or "", it.kind,
            it.digest or "", it.tag or "", it.id)


# ---------------------------------------------------------------------------------------------
