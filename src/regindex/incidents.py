"""Incidents: open findings that share a cause, as one thing to act on.

Findings are one incident when they are in the same registry, appeared in the same run, and come from the same
inventory change: removed blob data and removed revision links of index children (what one
``garbage-collect --delete-untagged`` leaves: orphan children, orphan layer links, dangling revisions) are one
family; damaged blob data, rewritten links, broken tags and every other kind are families of their own. The run's
inventory episodes say what changed in it (how many blob data directories and revision links disappeared).

An incident's id is stable while its findings stay open: ``i<run>-<6 hex digits>`` of (registry, run, family).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from regindex.checks import KINDS
from regindex.errors import RepairError
from regindex.models import Blob, Finding, Link, Registry, Run, table
from regindex.store import as_utc

F, L, B, G, R = table(Finding), table(Link), table(Blob), table(Registry), table(Run)

GC = "gc"  # the family of what garbage-collect --delete-untagged leaves
_CAUSE = {
    "orphan_layer_link": GC, "dangling_revision": GC,
    "unlinked_blob_ref": "layer_link_gone", "dangling_tag": "tag_broken",
    "corrupt_link": "link_rewritten", "misdirected_link": "link_rewritten",
    "empty_blob": "data_damaged", "truncated_manifest": "data_damaged", "size_mismatch": "data_damaged",
    "digest_mismatch": "data_damaged",
}
_FAMILY_TITLE = {
    "cache_children": "index children a pull-through cache has not fetched (expected, fetched on first pull)",
    "layer_link_gone": "_layers links removed while manifests still name their blobs",
    "tag_broken": "tags that no longer serve their manifest",
    "link_rewritten": "link files rewritten with bytes that do not serve their path",
    "data_damaged": "blob data damaged (empty, truncated, other bytes)",
}
# which disappearances of a run explain a family (the run's other changes belong to other incidents)
_CHANGES = {GC: ("blobs", "revision", "layer"), "tag_broken": ("tag_current", "revision"),
            "layer_link_gone": ("layer",), "cache_children": ("revision",)}


@dataclass
class Member:
    id: int
    key: str
    kind: str
    severity: str
    repository: str | None
    digest: str | None
    acknowledged: bool


@dataclass
class Incident:
    id: str
    registry: str
    run: int
    family: str
    started_at: datetime | None = None
    title: str = ""
    cause: str = ""
    command: str | None = None
    next_step: str = ""
    members: list[Member] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # "repository:tag" a pull of which fails
    severity: Counter[str] = field(default_factory=Counter)  # open, not acknowledged
    kinds: Counter[str] = field(default_factory=Counter)
    repositories: set[str] = field(default_factory=set)
    acknowledged: int = 0
    first_scan: bool = False

    @property
    def errors(self) -> int:
        return self.severity["error"]

    @property
    def finding_ids(self) -> list[int]:
        return [m.id for m in self.members]

    def as_row(self) -> dict[str, Any]:
        return {
            "id": self.id, "registry": self.registry, "run": self.run,
            "started_at": self.started_at.isoformat(timespec="seconds") if self.started_at else None,
            "family": self.family, "title": self.title, "cause": self.cause,
            "errors": self.severity["error"], "warnings": self.severity["warning"], "info": self.severity["info"],
            "acknowledged": self.acknowledged, "findings": len(self.members),
            "repositories": len(self.repositories), "kinds": dict(sorted(self.kinds.items())), "tags": self.tags,
            "command": self.command, "next_step": self.next_step,
            "finding_keys": [m.key for m in self.members],
        }


def family_of(kind: str, detail: dict[str, Any]) -> str:
    if kind == "orphan_index_child":
        return "cache_children" if detail.get("note") else GC
    return _CAUSE.get(kind, kind)


def incident_id(registry: str, run: int, family: str) -> str:
    h = hashlib.sha256(json.dumps([registry, run, family]).encode()).hexdigest()[:6]
    return f"i{run}-{h}"


def group(conn: Connection, finding_ids: Collection[int] | None = None,
          registries: Collection[str] = ()) -> list[Incident]:
    """Open findings grouped into incidents, most errors first (then most findings, newest run)."""
    from regindex.ack import active

    q = select(F.c.id, F.c.key, F.c.kind, F.c.severity, F.c.registry, F.c.repository, F.c.digest, F.c.tag,
               F.c.first_run, F.c.detail, F.c.hint).where(F.c.resolved_run.is_(None))
    if registries:
        q = q.where(F.c.registry.in_(list(registries)))
    wanted = set(finding_ids) if finding_ids is not None else None
    acks = active(conn)
    by_key: dict[tuple[str, int, str], Incident] = {}
    hints: dict[str, Counter[str]] = defaultdict(Counter)
    child_data_kept: dict[str, int] = Counter()
    restorable: dict[str, int] = Counter()
    tags: dict[str, set[str]] = defaultdict(set)
    for r in conn.execute(q.order_by(F.c.id)):
        if wanted is not None and r.id not in wanted:
            continue
        detail = json.loads(r.detail or "{}")
        fam = family_of(r.kind, detail)
        k = (r.registry, r.first_run, fam)
        inc = by_key.get(k)
        if inc is None:
            inc = by_key[k] = Incident(incident_id(*k), r.registry, r.first_run, fam)
        acked = r.id in acks
        inc.members.append(Member(r.id, r.key, r.kind, r.severity, r.repository, r.digest, acked))
        if acked:
            inc.acknowledged += 1
        else:
            inc.severity[r.severity] += 1
        inc.kinds[r.kind] += 1
        if r.repository:
            inc.repositories.add(r.repository)
        if r.kind == "orphan_index_child" and detail.get("child_blob_data_present"):
            child_data_kept[inc.id] += 1
            n = detail.get("child_blobs")
            if n is not None and detail.get("child_blobs_present") == n and detail.get("child_blobs_linked") == n:
                restorable[inc.id] += 1
        if r.severity == "error":
            for t in _tags(r.kind, r.repository, r.tag, detail):
                tags[inc.id].add(t)
        if r.hint:
            hints[inc.id][r.hint] += 1
    incidents = list(by_key.values())
    _describe(conn, incidents, child_data_kept, restorable, tags, hints)
    incidents.sort(key=lambda i: (-i.errors, -i.severity["warning"], -len(i.members), -i.run, i.registry, i.id))
    return incidents


def _tags(kind: str, repository: str | None, tag: str | None, detail: dict[str, Any]) -> Iterable[str]:
    if not repository:
        return []
    if tag:
        return [f"{repository}:{tag}"]
    names = detail.get("index_tags") if kind == "orphan_index_child" else detail.get("tags")
    return [f"{repository}:{t}" for t in (names or []) if isinstance(t, str)]


def _removed_in(conn: Connection, registry_ids: dict[str, int], runs: set[int]) -> dict[tuple[str, int], dict[str, int]]:
    """Per (registry, run): blob data and link files that disappeared in that run, by kind."""
    out: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    names = {v: k for k, v in registry_ids.items()}
    if not runs:
        return out
    for rid, run, n in conn.execute(select(B.c.registry_id, B.c.gone_run, func.count()).where(
            B.c.gone_run.in_(sorted(runs))).group_by(B.c.registry_id, B.c.gone_run)):
        if rid in names:
            out[(names[rid], run)]["blobs"] = int(n)
    for rid, run, kind, n in conn.execute(select(L.c.registry_id, L.c.gone_run, L.c.kind, func.count()).where(
            L.c.gone_run.in_(sorted(runs))).group_by(L.c.registry_id, L.c.gone_run, L.c.kind)):
        if rid in names:
            out[(names[rid], run)][kind] = int(n)
    return out


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def _describe(conn: Connection, incidents: list[Incident], child_data_kept: dict[str, int],
              restorable: dict[str, int], tags: dict[str, set[str]], hints: dict[str, Counter[str]]) -> None:
    registry_rows = {r.name: (r.id, r.first_run) for r in conn.execute(select(G.c.name, G.c.id, G.c.first_run))}
    started = {r.id: as_utc(r.started_at) for r in conn.execute(
        select(R.c.id, R.c.started_at).where(R.c.id.in_(sorted({i.run for i in incidents}))))} if incidents else {}
    removed = _removed_in(conn, {k: v[0] for k, v in registry_rows.items()}, {i.run for i in incidents})
    for inc in incidents:
        inc.started_at = started.get(inc.run)
        inc.tags = sorted(tags.get(inc.id, ()))
        first = registry_rows.get(inc.registry, (None, None))[1]
        inc.first_scan = first == inc.run
        gone = removed.get((inc.registry, inc.run), {})
        n_repos = len(inc.repositories)
        where = f"in {_plural(n_repos, 'repository', 'repositories')}" if n_repos else ""
        if inc.family == GC:
            kept = child_data_kept.get(inc.id, 0)
            layers = inc.kinds["orphan_layer_link"]
            parts = []
            if kept:
                parts.append(f"{_plural(kept, 'revision link')} of index children removed, blob data kept")
            other_children = inc.kinds["orphan_index_child"] - kept
            if other_children:
                parts.append(f"{_plural(other_children, 'index child', 'index children')} whose manifest data is gone")
            if layers:
                parts.append(f"{_plural(layers, '_layers link')} whose blob data was removed")
            if inc.kinds["dangling_revision"]:
                parts.append(f"{_plural(inc.kinds['dangling_revision'], 'revision link')} whose manifest data was "
                             "removed")
            signature = ("the signature of garbage-collect --delete-untagged" if kept else
                         "the signature of garbage-collect after tags were removed (or of blob data removed by hand)")
            inc.title = " ".join(x for x in ("; ".join(parts), where, "—", signature) if x)
            can = restorable.get(inc.id, 0)
            steps = []
            if layers:
                steps.append(f"moves the {_plural(layers, 'orphan _layers link')} into the quarantine")
            if can:
                steps.append(f"restores the revision links of the {_plural(can, 'child', 'children')} whose "
                             "manifest and blobs were all kept")
            if len(inc.tags) == 1:
                push = f"push again: {inc.tags[0]}"
            elif inc.tags:
                push = f"push again the {len(inc.tags)} tags whose pulls fail ({inc.tags[0]}, …)"
            else:
                push = ""
            if steps:
                inc.command = f"regindex repair --incident {inc.id} --apply"
                inc.next_step = " and ".join(steps) + " (without --apply: a dry run)" + (f"; then {push}" if push
                                                                                         else "")
            else:
                inc.next_step = (f"Nothing can be repaired in place: {push}" if push else
                                 (hints[inc.id].most_common(1)[0][0] if hints.get(inc.id) else ""))
        else:
            what = _FAMILY_TITLE.get(inc.family) or KINDS.get(inc.family, inc.family)
            inc.title = f"{_plural(len(inc.members), 'finding')}: {what} {where}".strip()
            top = hints.get(inc.id)
            inc.next_step = top.most_common(1)[0][0] if top else ""
        if inc.first_scan:
            inc.cause = (f"found by the first scan of {inc.registry} (run {inc.run}): the change happened before "
                         "regindex watched")
        else:
            bits = []
            relevant = _CHANGES.get(inc.family, ())
            if gone.get("blobs") and "blobs" in relevant:
                bits.append(_plural(gone["blobs"], "blob data directory", "blob data directories"))
            for kind, word in (("revision", "revision link"), ("layer", "_layers link"),
                               ("tag_current", "tag current link")):
                if gone.get(kind) and kind in relevant:
                    bits.append(_plural(gone[kind], word))
            inc.cause = (f"run {inc.run} saw {', '.join(bits)} disappear" if bits
                         else f"appeared in run {inc.run}")


def finding_ids(conn: Connection, ident: str) -> list[int]:
    """The open findings of incident ``ident`` (for ``repair --incident`` and ``ack --incident``)."""
    ident = ident.strip()
    for inc in group(conn):
        if inc.id == ident:
            return inc.finding_ids
    raise RepairError(f"no open incident {ident!r} (see `regindex incidents`)")


INCIDENT_COLUMNS = ("id", "registry", "run", "errors", "warnings", "info", "acknowledged", "findings",
                    "repositories", "title", "cause", "tags", "command", "next_step", "started_at", "family",
                    "kinds", "finding_keys")
TABLE_COLUMNS = ("id", "registry", "run", "errors", "warnings", "info", "findings", "repositories", "title")
