"""Post-mortem cards: a finding's timeline (first seen, resolved, re-opened) and what changed on disk, among
the links, blobs and repository it names, in the runs it appeared and was resolved. The report shows one card
per finding shown; ``regindex history`` shows one per finding on a digest or tag (timeline.py)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from regindex.db import IN_LIST
from regindex.episodes import ITEM_COLUMNS, PARENT_ROLE, Item, Runs, with_detail
from regindex.models import Blob, Finding, Link, Repository, table
from regindex.store import chunks

F, L, B, P = table(Finding), table(Link), table(Blob), table(Repository)


@dataclass
class Step:
    run: int
    when: datetime | None
    text: str
    tone: str  # open | reopened | resolved | latest


@dataclass
class Change:
    run: int
    moment: str  # appeared | re-opened | resolved
    texts: list[str]


@dataclass
class Card:
    item: Item
    evidence: list[tuple[str, str]]
    steps: list[Step]
    changes: list[Change]


LINK_NAMES = {"layer": "_layers link", "revision": "revision link", "tag_current": "current link",
               "tag_index": "tag index link"}
_SUBJECT_ROLE = {"orphan_index_child": "child", "unlinked_blob_ref": "blob", "size_mismatch": "blob",
                 "dangling_tag": "target", "dangling_revision": "manifest", "orphan_layer_link": "layer",
                 "truncated_manifest": "manifest"}
PARENT_ROLE = {"orphan_index_child": "index", "unlinked_blob_ref": "manifest", "size_mismatch": "manifest"}


def short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "—"
    alg, _, hex_ = digest.partition(":")
    return f"{alg}:{hex_[:n]}…" if len(hex_) > n else digest


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _run_range(a: int, b: int) -> str:
    return f"run {a}" if a == b else f"runs {a}–{b}"


def steps(episodes: Sequence[Item], runs: Runs) -> list[Step]:
    """First seen, the runs it was open in, resolved, re-opened; one step each."""
    steps: list[Step] = []
    for n, ep in enumerate(sorted(episodes, key=lambda e: e.episode)):
        last = runs.last_open(ep.first_run, ep.resolved_run)
        count = runs.count(ep.first_run, last)
        opened = "first seen" if n == 0 else f"re-opened (episode {ep.episode})"
        steps.append(Step(ep.first_run, runs.when(ep.first_run), opened, "open" if n == 0 else "reopened"))
        if ep.resolved_run is not None:
            steps.append(Step(ep.resolved_run, runs.when(ep.resolved_run),
                              f"resolved after {plural(count, 'run')} open ({_run_range(ep.first_run, last)})",
                              "resolved"))
        elif last == ep.first_run:
            steps[-1].text += ", in the latest run"
        else:
            days = runs.days(ep.first_run, last)
            steps.append(Step(last, runs.when(last),
                              f"still open in the latest run: open in {_run_range(ep.first_run, last)} "
                              f"({plural(count, 'run')}, {plural(days, 'day')})", "latest"))
    return steps


class Inventory:
    """Inventory episodes (links, blobs, repositories) related to a set of findings, loaded in a few queries."""

    def __init__(self, conn: Connection, items: Sequence[Item], registry_ids: dict[str, int]) -> None:
        self.registry_ids = registry_ids
        regs = sorted({registry_ids[i.registry] for i in items if i.registry in registry_ids})
        digests = sorted({d for i in items for d in (i.digest, i.parent_digest) if d})
        self.links: dict[tuple[int, str], dict[int, Any]] = defaultdict(dict)
        self.tag_links: dict[tuple[int, str | None, str], list[Any]] = defaultdict(list)
        self.blobs: dict[tuple[int, str], list[Any]] = defaultdict(list)
        self.repos: dict[tuple[int, str], list[Any]] = defaultdict(list)
        if not regs:
            return
        for part in chunks(digests, IN_LIST):
            # each through its own index: ix_links_path_digest, ix_links_target (registry_id, target_digest)
            for q in (select(L).where(L.c.path_digest.in_(list(part))),
                      select(L).where(L.c.registry_id.in_(regs), L.c.target_digest.in_(list(part)))):
                for r in conn.execute(q):
                    for d in (r.path_digest, r.target_digest):
                        if d:
                            self.links[(r.registry_id, d)][r.id] = r
        # a half-deleted tag has no digest: find its links by name
        tagged = sorted({(i.repository, i.tag) for i in items if i.tag and not i.digest and i.repository})
        for part in chunks(tagged, 200):
            q = select(L).where(L.c.registry_id.in_(regs), L.c.kind == "tag_current",
                                L.c.repository.in_(sorted({r for r, _ in part})),
                                L.c.tag.in_(sorted({t for _, t in part})))
            for r in conn.execute(q):
                self.tag_links[(r.registry_id, r.repository, r.tag)].append(r)
        blob_digests = set(digests)
        for rows in self.links.values():
            blob_digests.update(d for r in rows.values() for d in (r.path_digest, r.target_digest) if d)
        for part in chunks(sorted(blob_digests), IN_LIST):
            for r in conn.execute(select(B).where(B.c.registry_id.in_(regs), B.c.digest.in_(list(part)))):
                self.blobs[(r.registry_id, r.digest)].append(r)
        names = sorted({i.repository for i in items if i.repository})
        for part in chunks(names, IN_LIST):
            for r in conn.execute(select(P).where(P.c.registry_id.in_(regs), P.c.name.in_(list(part)))):
                self.repos[(r.registry_id, r.name)].append(r)

    def blob_state(self, rid: int, digest: str | None, run: int) -> str:
        if not digest:
            return ""
        eps = self.blobs.get((rid, digest), [])
        if any(b.first_run <= run and (b.gone_run is None or b.gone_run > run) for b in eps):
            return "blob data still present"
        if any(b.gone_run == run for b in eps):
            return "blob data removed in the same run"
        gone = [b.gone_run for b in eps if b.gone_run is not None and b.gone_run < run]
        return f"blob data gone since run {max(gone)}" if gone else "no blob data ever seen"

    def changes(self, item: Item, run: int, runs: Runs) -> list[str]:
        """What changed on disk, in ``run``, among the links, blobs and repository the finding names."""
        rid = self.registry_ids.get(item.registry)
        if rid is None:
            return []
        prev = runs.before(run, rid)
        if prev is None:
            return [f"first scan of registry {item.registry}: no earlier inventory to compare with"]
        between = f"between run {prev} and run {run}"
        digests = [d for d in (item.digest, item.parent_digest) if d]
        links: dict[int, Any] = {}
        for d in digests:
            links.update(self.links.get((rid, d), {}))
        if item.tag:
            links.update({r.id: r for r in self.tag_links.get((rid, item.repository, item.tag), [])})
        rows = [r for r in links.values()
                if (item.repository is None or r.repository == item.repository) and run in (r.first_run, r.gone_run)]
        out: list[str] = []
        # a link whose state or target changed is a closed episode and a new one in the same run
        by_place: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
        for r in rows:
            by_place[(r.repository, r.kind, r.tag, r.path_digest)]["gone" if r.gone_run == run else "new"] = r
        for place in sorted(by_place, key=lambda p: tuple("" if v is None else str(v) for v in p)):
            pair = by_place[place]
            old, new = pair.get("gone"), pair.get("new")
            what = self._link_label(item, old or new)
            if old is not None and new is not None:
                if new.state == "absent":
                    cause = ("a half-finished tag cleanup" if new.kind == "tag_current"
                             else "the trace of an API DELETE")
                    change = f"deleted {between} (file gone, directory kept: {cause})"
                elif old.state == "absent":
                    change = f"written again {between} ({new.state})"
                elif old.state != new.state:
                    change = f"changed from {old.state} to {new.state} {between}"
                else:
                    names = f"{short(new.target_digest)} instead of {short(old.target_digest)}"
                    change = f"changed to name {names} {between}"
                clause = self.blob_state(rid, old.target_digest or old.path_digest, run)
                out.append(f"{what} {change}" + (f", {clause}" if clause else ""))
            elif old is not None:
                clause = self.blob_state(rid, old.target_digest or old.path_digest, run)
                out.append(f"{what} removed {between}" + (f", {clause}" if clause else ""))
            elif new is not None:
                clause = self.blob_state(rid, new.target_digest or new.path_digest, run)
                out.append(f"{what} appeared {between}" + (f", {clause}" if clause else ""))
        for d in digests:
            eps = [b for b in self.blobs.get((rid, d), []) if run in (b.first_run, b.gone_run)]
            gone = [b for b in eps if b.gone_run == run]
            new_ = [b for b in eps if b.first_run == run]
            what = f"blob data of {self._role(item, d)} {short(d)}".replace("  ", " ")
            if gone and new_:
                out.append(f"{what} changed size from {gone[0].size:,} to {new_[0].size:,} bytes {between}")
            elif gone:
                out.append(f"{what} ({gone[0].size:,} bytes) removed {between}")
            elif new_:
                out.append(f"{what} ({new_[0].size:,} bytes) written {between}")
        if item.repository:
            eps = [p for p in self.repos.get((rid, item.repository), []) if run in (p.first_run, p.gone_run)]
            gone = [p for p in eps if p.gone_run == run]
            new_ = [p for p in eps if p.first_run == run]
            if gone and new_:
                if gone[0].has_tags_dir != new_[0].has_tags_dir:
                    verb = "created" if new_[0].has_tags_dir else "removed"
                    out.append(f"_manifests/tags directory of repository {item.repository} {verb} {between}")
                if gone[0].has_manifests != new_[0].has_manifests:
                    verb = "created" if new_[0].has_manifests else "removed"
                    out.append(f"_manifests directory of repository {item.repository} {verb} {between}")
            elif gone:
                out.append(f"repository {item.repository} removed {between}")
            elif new_:
                out.append(f"repository {item.repository} created {between}")
        return out or [f"no related link, blob data or repository changed {between}"]

    def _role(self, item: Item, digest: str) -> str:
        if digest == item.parent_digest and digest != item.digest:
            return PARENT_ROLE.get(item.kind, "parent")
        return _SUBJECT_ROLE.get(item.kind, "")

    def _link_label(self, item: Item, r: Any) -> str:
        where = "" if item.repository else f" in {r.repository}"
        if r.kind in ("tag_current", "tag_index"):
            label = f"{LINK_NAMES[r.kind]} of tag {r.tag}"
            return label + (f" (of {short(r.path_digest)})" if r.path_digest else "") + where
        d = r.path_digest or r.target_digest
        role = self._role(item, d) if d in (item.digest, item.parent_digest) else ""
        return f"{LINK_NAMES[r.kind]} of {role} {short(d)}".replace("  ", " ") + where


def changes_around(item: Item, episodes: Sequence[Item], inv: Inventory, runs: Runs) -> list[Change]:
    """What changed on disk in each run the problem appeared, was resolved or re-opened."""
    out: list[Change] = []
    for n, ep in enumerate(sorted(episodes, key=lambda e: e.episode)):
        out.append(Change(ep.first_run, "appeared" if n == 0 else "re-opened", inv.changes(item, ep.first_run, runs)))
        if ep.resolved_run is not None:
            out.append(Change(ep.resolved_run, "resolved", inv.changes(item, ep.resolved_run, runs)))
    return out


def evidence(detail: str) -> list[tuple[str, str]]:
    """The ``detail`` JSON as (label, text) pairs for a small key/value list."""
    try:
        data = json.loads(detail)
    except ValueError:
        return [("detail", detail)]
    if not isinstance(data, dict):
        return [("detail", json.dumps(data))]
    return [(k.replace("_", " "), _value_text(v)) for k, v in data.items()]


def _value_text(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, list):
        return ", ".join(_value_text(x) for x in v) if v else "none"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _episodes_of(conn: Connection, keys: Iterable[str]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = defaultdict(list)
    for part in chunks(sorted(set(keys)), IN_LIST):
        for r in conn.execute(select(*ITEM_COLUMNS).where(F.c.key.in_(list(part)))):
            out[r.key].append(Item(*r))
    return out


def cards_for(conn: Connection, items: Sequence[Item], runs: Runs, registry_ids: dict[str, int]) -> list[Card]:
    with_detail(conn, items)
    episodes = _episodes_of(conn, (i.key for i in items))
    inv = Inventory(conn, items, registry_ids)
    return [
        Card(i, evidence(i.detail), steps(episodes[i.key], runs), changes_around(i, episodes[i.key], inv, runs))
        for i in items
    ]

