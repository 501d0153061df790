"""The HTML trend report: new, persisting and resolved findings over time, for nightly review and post-mortems.

One self-contained HTML file per report (inline CSS and SVG, no script, no URL), rendered by one Jinja
``Environment`` with autoescaping on: every name that comes from storage is text, never markup. The full lists
go to a CSV beside the HTML; the page counts everything but shows per-finding sections only for the top
``limit`` findings of each state (by severity, then age).

Everything is computed from two reads of ``findings`` (the trend in one pass over first_run/resolved_run, not
one ``finding_trend`` query per run) plus the inventory episodes of the findings shown. The same timeline
(episodes of a finding's key, and what changed on disk in the runs it appeared and was resolved) backs the
post-mortem sections and ``regindex history DIGEST``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import Connection, Engine, or_, select

from regindex import __version__, output
from regindex.checks import KINDS
from regindex.errors import ReportError, UnknownDigest
from regindex.files import atomic_write
from regindex.models import (
    Blob,
    Finding,
    Link,
    Registry,
    Repository,
    Run,
    RunRegistry,
    table,
)
from regindex.store import as_utc, chunks

DEFAULT_RUNS = 30
DETAIL_LIMIT = 500  # per-finding sections per state (new, persisting, resolved)
GROUP_LIMIT = 50  # rows of the per-repository count tables per state
DEFAULT_OUT = "regindex-report.html"
FINISHED = ("complete", "partial")
SEVERITIES = ("error", "warning", "info")
_SEV_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DATED_RE = re.compile(r"^regindex-(\d{4}-\d{2}-\d{2})-run(\d+)\.html$")

F, R, RR = table(Finding), table(Run), table(RunRegistry)
L, B, P, G = table(Link), table(Blob), table(Repository), table(Registry)


# ---------------------------------------------------------------------------------------------
# Runs


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


# ---------------------------------------------------------------------------------------------
# Findings in the report


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
        return _PARENT_ROLE.get(self.kind, "parent")

    @property
    def section(self) -> str:
        return "new" if self.state == "reopened" else self.state


_ITEM_COLUMNS = [F.c[n] for n in ("id", "key", "episode", "kind", "severity", "registry", "repository", "digest",
                                   "tag", "parent_digest", "first_run", "last_seen_run", "resolved_run")]


def _with_detail(conn: Connection, items: Sequence[Item]) -> None:
    """Fill in the evidence and hint of these findings (kept out of the big read: most are never shown)."""
    by_id = {i.id: i for i in items}
    for part in chunks(sorted(by_id), 1000):
        for fid, detail, hint, policy in conn.execute(
                select(F.c.id, F.c.detail, F.c.hint, F.c.policy).where(F.c.id.in_(list(part)))):
            by_id[fid].detail, by_id[fid].hint, by_id[fid].policy = detail, hint, policy


def _sort_key(it: Item) -> tuple[Any, ...]:
    """Most severe first, then oldest, then by place."""
    return (_SEV_RANK.get(it.severity, 9), it.first_run, it.registry, it.repository or "", it.kind,
            it.digest or "", it.tag or "", it.id)


# ---------------------------------------------------------------------------------------------
# Post-mortem: timeline of a finding and what changed on disk around it


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


_LINK_NAMES = {"layer": "_layers link", "revision": "revision link", "tag_current": "current link",
               "tag_index": "tag index link"}
_SUBJECT_ROLE = {"orphan_index_child": "child", "unlinked_blob_ref": "blob", "size_mismatch": "blob",
                 "dangling_tag": "target", "dangling_revision": "manifest", "orphan_layer_link": "layer",
                 "truncated_manifest": "manifest"}
_PARENT_ROLE = {"orphan_index_child": "index", "unlinked_blob_ref": "manifest", "size_mismatch": "manifest"}


def short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "—"
    alg, _, hex_ = digest.partition(":")
    return f"{alg}:{hex_[:n]}…" if len(hex_) > n else digest


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _run_range(a: int, b: int) -> str:
    return f"run {a}" if a == b else f"runs {a}–{b}"


def timeline(episodes: Sequence[Item], runs: Runs) -> list[Step]:
    """First seen, the runs it was open in, resolved, re-opened; one step each."""
    steps: list[Step] = []
    for n, ep in enumerate(sorted(episodes, key=lambda e: e.episode)):
        last = runs.last_open(ep.first_run, ep.resolved_run)
        count = runs.count(ep.first_run, last)
        opened = "first seen" if n == 0 else f"re-opened (episode {ep.episode})"
        steps.append(Step(ep.first_run, runs.when(ep.first_run), opened, "open" if n == 0 else "reopened"))
        if ep.resolved_run is not None:
            steps.append(Step(ep.resolved_run, runs.when(ep.resolved_run),
                              f"resolved after {_plural(count, 'run')} open ({_run_range(ep.first_run, last)})",
                              "resolved"))
        elif last == ep.first_run:
            steps[-1].text += ", in the latest run"
        else:
            days = runs.days(ep.first_run, last)
            steps.append(Step(last, runs.when(last),
                              f"still open in the latest run: open in {_run_range(ep.first_run, last)} "
                              f"({_plural(count, 'run')}, {_plural(days, 'day')})", "latest"))
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
        for part in chunks(digests, 500):
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
        for part in chunks(sorted(blob_digests), 500):
            for r in conn.execute(select(B).where(B.c.registry_id.in_(regs), B.c.digest.in_(list(part)))):
                self.blobs[(r.registry_id, r.digest)].append(r)
        names = sorted({i.repository for i in items if i.repository})
        for part in chunks(names, 500):
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
            return _PARENT_ROLE.get(item.kind, "parent")
        return _SUBJECT_ROLE.get(item.kind, "")

    def _link_label(self, item: Item, r: Any) -> str:
        where = "" if item.repository else f" in {r.repository}"
        if r.kind in ("tag_current", "tag_index"):
            label = f"{_LINK_NAMES[r.kind]} of tag {r.tag}"
            return label + (f" (of {short(r.path_digest)})" if r.path_digest else "") + where
        d = r.path_digest or r.target_digest
        role = self._role(item, d) if d in (item.digest, item.parent_digest) else ""
        return f"{_LINK_NAMES[r.kind]} of {role} {short(d)}".replace("  ", " ") + where


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
    for part in chunks(sorted(set(keys)), 500):
        for r in conn.execute(select(*_ITEM_COLUMNS).where(F.c.key.in_(list(part)))):
            out[r.key].append(Item(*r))
    return out


def _cards(conn: Connection, items: Sequence[Item], runs: Runs, registry_ids: dict[str, int]) -> list[Card]:
    _with_detail(conn, items)
    episodes = _episodes_of(conn, (i.key for i in items))
    inv = Inventory(conn, items, registry_ids)
    return [
        Card(i, evidence(i.detail), timeline(episodes[i.key], runs), changes_around(i, episodes[i.key], inv, runs))
        for i in items
    ]


# ---------------------------------------------------------------------------------------------
# Charts, drawn server-side: geometry here, markup in the template


PALETTE = {
    "orphan_layer_link": "#d1495b", "orphan_index_child": "#ed7d3a", "dangling_revision": "#8e5ba6",
    "dangling_tag": "#8c564b", "unlinked_blob_ref": "#d45087", "corrupt_link": "#2f6db5",
    "misdirected_link": "#14a3b8", "empty_blob": "#a3a328", "truncated_manifest": "#5d6d7e",
    "size_mismatch": "#2e9e4f", "digest_mismatch": "#283d7a", "gc_blocker": "#d4a72c",
    "stale_upload": "#8fb36a", "unreferenced_blob": "#a59bd9", "storage_anomaly": "#a3acb9",
}
NEW_COLOR, RESOLVED_COLOR = "#d1495b", "#2e9e4f"


@dataclass
class Mark:
    run: int
    value: int
    x: float
    y: float
    h: float  # y is the top of the bar
    title: str = ""  # the hover text: run, date, this value and the run's totals


@dataclass
class Series:
    name: str
    label: str
    color: str
    marks: list[Mark]
    latest: int = 0  # the value in the latest run, for the legend


@dataclass
class Chart:
    id: str
    title: str
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    runs: list[int]
    series: list[Series]
    yticks: list[tuple[float, str]]
    xticks: list[tuple[float, str, str]]  # x, date (when the day changes), time (when a day has several runs)
    partial: list[tuple[float, float, int, str]]  # x, width, run, hover text
    zero_y: float
    bar_w: float = 0.0
    totals: list[tuple[float, float, int]] = field(default_factory=list)  # x, y, value above stacked bars
    failed: list[tuple[float, float, int, str]] = field(default_factory=list)  # x, width, run, hover text
    xpos: dict[int, float] = field(default_factory=dict)  # centre of each run's slot
    ylabel: str = "open findings"


def _nice_step(vmax: float, count: int = 5) -> int:
    if vmax <= count:
        return 1
    raw = vmax / count
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return max(1, int(m * mag))
    return max(1, int(10 * mag))  # pragma: no cover


def _when_text(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "unknown time"


def _slots(run_ids: Sequence[int], runs: Runs) -> list[int]:
    """The x axis: the window's finished runs and the failed runs between them (marked, without bars)."""
    if not run_ids:
        return []
    shown = set(run_ids)
    return [r for r in sorted(runs.by_id) if run_ids[0] <= r <= run_ids[-1]
            and (r in shown or runs.by_id[r]["status"] == "failed")]


def _frame(chart_id: str, title: str, run_ids: Sequence[int], runs: Runs, height: int) -> Chart:
    """One slot per run in time order, labelled with the run's date (UTC); a day with several runs shows
    each run's number and time too, so runs of one day stay apart."""
    width, left, right, top, bottom = 960, 64, 16, 14, 52
    plot_w, plot_h = width - left - right, height - top - bottom
    slots = _slots(run_ids, runs)
    step = plot_w / max(1, len(slots))
    every = max(1, math.ceil(len(slots) / 15))
    days = Counter(w.date() for r in slots if (w := runs.when(r)))
    xticks: list[tuple[float, str, str]] = []
    last_day = None
    for i, r in enumerate(slots):
        if (len(slots) - 1 - i) % every:
            continue
        when = runs.when(r)
        day = when.date() if when else None
        date_label = when.strftime("%b %d") if when and day != last_day else ""
        time_label = f"#{r} {when.strftime('%H:%M')}" if when and day and days[day] > 1 else ""
        last_day = day
        xticks.append((left + step * (i + 0.5), date_label, time_label))
    partial, failed = [], []
    for i, r in enumerate(slots):
        row = runs.by_id[r]
        if row["status"] == "partial":
            partial.append((left + step * i, step, r, f"run {r} · {_when_text(runs.when(r))} · partial: some "
                                                       "registries could not be read, nothing resolved there"))
        elif row["status"] == "failed":
            failed.append((left + step * i, step, r, f"run {r} · {_when_text(runs.when(r))} · failed: "
                                                      f"{_clip(row.get('error') or 'no detail', 200)}"))
    c = Chart(chart_id, title, width, height, left, top, int(plot_w), int(plot_h), list(run_ids), [], [], xticks,
              partial, top + plot_h, bar_w=min(22.0, step * 0.7), failed=failed)
    c.xpos = {r: left + step * (i + 0.5) for i, r in enumerate(slots)}
    return c


def _mark_title(run: int, runs: Runs, label: str, value: int, notes: dict[int, str]) -> str:
    note = notes.get(run)
    return f"run {run} · {_when_text(runs.when(run))} · {label}: {value:,}" + (f" ({note})" if note else "")


def stacked_chart(chart_id: str, title: str, run_ids: Sequence[int], runs: Runs,
                  values: dict[str, list[int]], notes: dict[int, str] | None = None,
                  ylabel: str = "open findings") -> Chart:
    """Open findings per kind as stacked bars: one segment (mark) per run and kind, the total on top."""
    c = _frame(chart_id, title, run_ids, runs, 300)
    c.ylabel = ylabel
    totals = [sum(v[i] for v in values.values()) for i in range(len(run_ids))]
    vmax = max(totals + [1])
    ystep = _nice_step(vmax)
    ytop = ystep * math.ceil(vmax / ystep)
    scale = c.plot_h / ytop
    c.yticks = [(c.zero_y - t * scale, f"{t:,}") for t in range(0, ytop + 1, ystep)]
    base = [0.0] * len(run_ids)
    for name, vals in values.items():
        marks = []
        for i, (r, v) in enumerate(zip(run_ids, vals)):
            h = v * scale
            x = round(c.xpos[r] - c.bar_w / 2, 1)
            marks.append(Mark(r, v, x, round(c.zero_y - base[i] - h, 1), round(h, 1),
                              _mark_title(r, runs, name, v, notes or {})))
            base[i] += h
        c.series.append(Series(name, name, PALETTE.get(name, "#555"), marks, vals[-1] if vals else 0))
    if len(c.xpos) <= 32:
        c.totals = [(round(c.xpos[r], 1), round(c.zero_y - base[i] - 5, 1), t)
                    for i, (r, t) in enumerate(zip(run_ids, totals))]
    return c


FLOW_SERIES = (  # name, label, colour, above the axis
    ("new-error", "new errors (incl. re-opened)", NEW_COLOR, True),
    ("new-other", "new warnings and info", "#f2a7a0", True),
    ("resolved-error", "resolved errors", RESOLVED_COLOR, False),
    ("resolved-other", "resolved warnings and info", "#a6d8b2", False),
)


def flow_chart(chart_id: str, title: str, run_ids: Sequence[int], runs: Runs,
               values: dict[str, list[int]], notes: dict[int, str] | None = None) -> Chart:
    """New findings as bars above the axis, resolved ones below it, errors nearest the axis and warnings and
    info stacked beyond them; one bar (mark) per run and series."""
    c = _frame(chart_id, title, run_ids, runs, 240)
    c.ylabel = "resolved ↓   new ↑"
    n = len(run_ids)
    up = [values["new-error"][i] + values["new-other"][i] for i in range(n)]
    down = [values["resolved-error"][i] + values["resolved-other"][i] for i in range(n)]
    vmax = max(up + down + [1])
    ystep = _nice_step(vmax, 3)
    ytop = ystep * math.ceil(vmax / ystep)
    half = c.plot_h / 2
    scale = half / ytop
    c.zero_y = c.top + half
    c.yticks = [(c.zero_y - t * scale, f"{abs(t):,}") for t in range(-ytop, ytop + 1, ystep)]
    above, below = [0.0] * n, [0.0] * n
    for name, label, color, is_up in FLOW_SERIES:
        vals = values[name]
        marks = []
        for i, (r, v) in enumerate(zip(run_ids, vals)):
            h = round(v * scale, 1)
            x = round(c.xpos[r] - c.bar_w / 2, 1)
            if is_up:
                y = round(c.zero_y - above[i] - h, 1)
                above[i] += h
            else:
                y = round(c.zero_y + below[i], 1)
                below[i] += h
            marks.append(Mark(r, v, x, y, h, _mark_title(r, runs, label, v, notes or {})))
        c.series.append(Series(name, label, color, marks, vals[-1] if vals else 0))
    return c


def _charts(items: Sequence[Item], window: Sequence[int], runs: Runs) -> list[Chart]:
    """Open errors, open warnings and info, and the flow of new and resolved findings, per run of the window."""
    errors = [it for it in items if it.severity == "error"]
    others = [it for it in items if it.severity != "error"]
    open_err, new_err, res_err = trend(errors, window)
    open_other, new_other, res_other = trend(others, window)
    notes = {}
    for i, r in enumerate(window):
        notes[r] = (f"open: {sum(v[i] for v in open_err.values()):,} errors, "
                    f"{sum(v[i] for v in open_other.values()):,} warnings and info; "
                    f"new {new_err[i] + new_other[i]:,}, resolved {res_err[i] + res_other[i]:,}")
    return [
        stacked_chart("trend-open", "Open errors per kind, at the end of each run", window, runs, open_err, notes,
                      "open errors"),
        stacked_chart("trend-open-other", "Open warnings and info per kind, at the end of each run", window, runs,
                      open_other, notes, "open warnings and info"),
        flow_chart("trend-flow", "New and resolved findings per run", window, runs,
                   {"new-error": new_err, "new-other": new_other, "resolved-error": res_err,
                    "resolved-other": res_other}, notes),
    ]


def trend(items: Iterable[Item], run_ids: Sequence[int]) -> tuple[dict[str, list[int]], list[int], list[int]]:
    """Open findings per kind per run, new and resolved per run: one pass over the episodes.

    An episode is open in the runs [first_run, resolved_run); a difference array per kind turns that into
    counts without a query per run.
    """
    n = len(run_ids)
    pos = {r: i for i, r in enumerate(run_ids)}
    diff: dict[str, list[int]] = {}
    new, resolved = [0] * n, [0] * n
    for it in items:
        start = bisect_left(run_ids, it.first_run)
        end = n if it.resolved_run is None else bisect_left(run_ids, it.resolved_run)
        if start < end:
            d = diff.get(it.kind)
            if d is None:
                d = diff[it.kind] = [0] * (n + 1)
            d[start] += 1
            d[end] -= 1
        if it.first_run in pos:
            new[pos[it.first_run]] += 1
        if it.resolved_run in pos:
            resolved[pos[it.resolved_run]] += 1
    open_by_kind: dict[str, list[int]] = {}
    for kind in sorted(diff, key=lambda k: (list(KINDS).index(k) if k in KINDS else 99, k)):
        acc, vals = 0, []
        for i in range(n):
            acc += diff[kind][i]
            vals.append(acc)
        open_by_kind[kind] = vals
    return open_by_kind, new, resolved


# ---------------------------------------------------------------------------------------------
# The report's data


@dataclass
class RepoGroup:
    registry: str
    repository: str | None
    total: int = 0
    severity: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class Section:
    state: str  # new | persisting | resolved
    title: str
    blurb: str
    total: int
    severity: Counter[str]
    repos: list[RepoGroup]
    repos_more: int
    groups: list[tuple[str, list[tuple[str | None, list[Card]]]]]  # registry → repository → cards
    shown: int
    under_incidents: int = 0  # findings of this state whose cards are under their incident (Do this first)

    @property
    def more(self) -> int:
        return self.total - self.shown - self.under_incidents


@dataclass
class IncidentView:
    """An incident in the report: its summary, and the cards of its findings (collapsed under it)."""

    incident: Any  # regindex.incidents.Incident
    cards: list[Card]
    more: int  # findings of the incident not shown as cards (every one is in the CSV)


INCIDENTS_SHOWN = 25  # incidents in "do this first"
INCIDENT_CARDS = 20  # cards under each


@dataclass
class Report:
    run: dict[str, Any]
    previous: dict[str, Any] | None
    generated_at: datetime
    version: str
    counts: dict[str, int]
    by_kind: list[dict[str, Any]]
    by_registry: list[dict[str, Any]]
    charts: list[Chart]
    window: list[int]
    sections: list[Section]
    run_log: list[dict[str, Any]]
    kinds: dict[str, str]
    limit: int
    failures: list[tuple[str, str]]
    csv_name: str | None = None
    items: list[Item] = field(default_factory=list, repr=False)
    later_runs: list[dict[str, Any]] = field(default_factory=list)  # failed or unfinished runs after ``run``
    period: tuple[datetime | None, datetime | None] = (None, None)  # report --since/--until
    repairs: list[dict[str, Any]] = field(default_factory=list)  # the latest repair actions (regindex repairs)
    incidents: list[IncidentView] = field(default_factory=list)  # "do this first", most errors first
    incidents_more: int = 0

    @property
    def title(self) -> str:
        return f"regindex report — run {self.run['id']}"


def _load_items(conn: Connection, since: int) -> list[Item]:
    """Every episode open now or resolved in the window (what the trend and the report's lists need)."""
    q = select(*_ITEM_COLUMNS).where(or_(F.c.resolved_run.is_(None), F.c.resolved_run >= since))
    return [Item(*r) for r in conn.execute(q)]


def collect(conn: Connection, runs: int = DEFAULT_RUNS, limit: int = DETAIL_LIMIT, since: datetime | None = None,
            until: datetime | None = None, fold: bool = True) -> Report:
    """Everything the report shows, about the latest finished run and the ``runs`` finished runs up to it.

    ``until``: report as of the last finished run started by then (an incident's window; later runs are
    ignored); ``since``: the trend covers every finished run started since then (instead of ``runs``)."""
    run_info = Runs(conn)
    if until is not None:
        run_info.finished = [r for r in run_info.finished if (w := run_info.when(r)) is not None and w <= until]
    latest = run_info.latest
    if latest is None:
        if until is not None:
            raise ReportError(f"no finished scan started by {_when_text(until)}")
        raise ReportError("no finished scan in the database: run `regindex scan` first")
    if since is not None:
        window = [r for r in run_info.finished if (w := run_info.when(r)) is not None and w >= since]
        if not window:
            raise ReportError(f"no finished scan between {_when_text(since)} and "
                              f"{_when_text(until) if until else 'now'}")
    else:
        window = run_info.finished[-max(1, runs):]
    items = _load_items(conn, window[0])

    registry_rows = [dict(r) for r in conn.execute(select(G).order_by(G.c.name)).mappings()]
    registry_ids = {r["name"]: r["id"] for r in registry_rows}
    scope: list[Item] = []
    for it in items:
        if it.first_run > latest:
            continue  # opened after the run reported on (report --until)
        if it.resolved_run is None or it.resolved_run > latest:
            if it.first_run == latest:
                it.state = "reopened" if it.episode > 1 else "new"
            else:
                it.state = "persisting"
            last = latest
        elif it.resolved_run == latest:
            it.state = "resolved"
            last = run_info.last_open(it.first_run, it.resolved_run)
        else:
            continue
        it.age_runs = run_info.count(it.first_run, last, registry_ids.get(it.registry))
        it.age_days = run_info.days(it.first_run, last)
        scope.append(it)
    scope.sort(key=lambda i: (_STATE_ORDER[i.state], _sort_key(i)))
    from regindex.ack import active

    acks = active(conn)
    for it in scope:
        if it.resolved_run is None:
            it.ack = acks.get(it.id)

    counts = Counter[str]()
    kind_rows: dict[str, Counter[str]] = defaultdict(Counter)
    reg_rows: dict[str, Counter[str]] = defaultdict(Counter)
    for it in scope:
        sec = it.section
        counts[sec] += 1
        kind_rows[it.kind][sec] += 1
        reg_rows[it.registry][sec] += 1
        if it.state == "reopened":
            counts["reopened"] += 1
        if sec != "resolved" and it.ack:
            counts["acknowledged"] += 1  # listed and marked, but not counted as open
            counts[f"acknowledged_{it.severity}"] += 1
        elif sec != "resolved":
            counts["open"] += 1
            counts[f"open_{it.severity}"] += 1
            kind_rows[it.kind][f"open_{it.severity}"] += 1
            kind_rows[it.kind]["open"] += 1
            reg_rows[it.registry][f"open_{it.severity}"] += 1
            reg_rows[it.registry]["open"] += 1
    by_kind = [{"kind": k, "description": KINDS.get(k, ""), **kind_rows[k]}
               for k in sorted(kind_rows, key=lambda k: (list(KINDS).index(k) if k in KINDS else 99, k))]
    by_kind = [_with_defaults(r) for r in by_kind]
    latest_reg = {rid: (st, err) for rid, st, err in conn.execute(
        select(RR.c.registry_id, RR.c.status, RR.c.error).where(RR.c.run_id == latest))}
    by_registry = []
    for r in registry_rows:
        status, error = latest_reg.get(r["id"], ("not scanned", None))
        by_registry.append(_with_defaults({
            "name": r["name"], "role": r["role"], "status": status, "error": error,
            "last_scanned_run": r["last_scanned_run"], **reg_rows.get(r["name"], {}),
            # new / resolved are relative to the registry's own previous complete scan (a partial run that
            # could not read it is skipped)
            "compared_with": run_info.before(latest, r["id"]) if status == "complete" else None,
        }))

    charts = _charts(items, window, run_info)

    # fold=False: the page as it was before incidents (benchmarks/bench_incidents.py compares the two)
    views, under, incidents_more = _incident_views(conn, scope, run_info, registry_ids) if fold else ([], set(), 0)
    sections = [
        _section(conn, "new", "New", "Opened in this run, re-opened problems included.", scope, limit, run_info,
                 registry_ids, under),
        _section(conn, "persisting", "Persisting", "Open before this run and still open.", scope, limit, run_info,
                 registry_ids, under),
        _section(conn, "resolved", "Resolved", "Open in the previous scan, gone in this one.", scope, limit,
                 run_info, registry_ids),
    ]

    shown_until = [r for r in sorted(run_info.by_id) if until is None or (
        (w := run_info.when(r)) is not None and w <= until)]
    log = [dict(run_info.by_id[r]) for r in reversed(shown_until) if r >= window[0]]
    for row in log:
        row["failures"] = run_info.failures.get(row["id"], [])
    prev = run_info.finished[-2] if len(run_info.finished) > 1 else None
    return Report(
        run=run_info.by_id[latest], previous=run_info.by_id.get(prev) if prev else None,
        generated_at=datetime.now(timezone.utc), version=__version__, counts=_with_defaults(dict(counts)),
        by_kind=by_kind, by_registry=by_registry, charts=charts, window=window, sections=sections, run_log=log,
        kinds=dict(KINDS), limit=limit, failures=run_info.failures.get(latest, []), items=scope,
        later_runs=[run_info.by_id[i] for i in reversed(shown_until) if i > latest], period=(since, until),
        repairs=_repairs(conn), incidents=views, incidents_more=incidents_more,
    )


def _incident_views(conn: Connection, scope: Sequence[Item], runs: Runs,
                    registry_ids: dict[str, int]) -> tuple[list[IncidentView], set[int], int]:
    """The incidents of the open findings, most errors first; the findings of an incident of two or more are
    shown (collapsed, the first INCIDENT_CARDS) under it instead of one by one in their section."""
    from regindex import incidents as inc_mod

    open_items = {it.id: it for it in scope if it.resolved_run is None}
    every = inc_mod.group(conn, open_items)
    groups = [g for g in every if g.errors or g.severity["warning"] or len(g.members) > 1]
    views: list[IncidentView] = []
    under: set[int] = set()
    for g in every:
        for m in g.members:
            if m.id in open_items:
                open_items[m.id].incident = g.id
    for g in groups[:INCIDENTS_SHOWN]:
        members = sorted((open_items[m.id] for m in g.members if m.id in open_items), key=_sort_key)
        shown = members[:INCIDENT_CARDS] if len(members) > 1 else []
        if shown:
            under.update(m.id for m in members)  # all of them: the incident stands for them (the CSV lists each)
        views.append(IncidentView(g, _cards(conn, shown, runs, registry_ids), len(members) - len(shown)))
    return views, under, max(0, len(groups) - INCIDENTS_SHOWN)


REPAIRS_SHOWN = 30


def _repairs(conn: Connection) -> list[dict[str, Any]]:
    from regindex.repair import list_actions

    return list_actions(conn, REPAIRS_SHOWN)


_STATE_ORDER = {"new": 0, "reopened": 0, "persisting": 1, "resolved": 2}
_COUNT_KEYS = ("open", "new", "reopened", "persisting", "resolved", "open_error", "open_warning", "open_info",
               "acknowledged", "acknowledged_error")


def _with_defaults(row: dict[str, Any]) -> dict[str, Any]:
    for k in _COUNT_KEYS:
        row.setdefault(k, 0)
    return row


def _section(conn: Connection, state: str, title: str, blurb: str, scope: Sequence[Item], limit: int,
             runs: Runs, registry_ids: dict[str, int], under: Collection[int] = ()) -> Section:
    mine = [i for i in scope if i.section == state]  # already in report order: severity, then age
    groups: dict[tuple[str, str | None], RepoGroup] = {}
    severity: Counter[str] = Counter()
    for it in mine:
        g = groups.get((it.registry, it.repository))
        if g is None:
            g = groups[(it.registry, it.repository)] = RepoGroup(it.registry, it.repository)
        g.total += 1
        g.severity[it.severity] += 1
        g.kinds[it.kind] += 1
        severity[it.severity] += 1
    ranked = sorted(groups.values(), key=lambda g: (-g.severity["error"], -g.total, g.registry, g.repository or ""))
    shown = [i for i in mine if i.id not in under][:limit]
    cards = _cards(conn, shown, runs, registry_ids)
    nested: dict[str, dict[str | None, list[Card]]] = defaultdict(lambda: defaultdict(list))
    # registry by registry, repository by repository (registry-wide findings last), most severe first
    def place(c: Card) -> tuple[Any, ...]:
        return (c.item.registry, c.item.repository is None, c.item.repository or "", _sort_key(c.item))

    for card in sorted(cards, key=place):
        nested[card.item.registry][card.item.repository].append(card)
    tree = [(reg, list(repos.items())) for reg, repos in nested.items()]
    return Section(state, title, blurb, len(mine), severity, ranked[:GROUP_LIMIT], max(0, len(ranked) - GROUP_LIMIT),
                   tree, len(shown), sum(1 for i in mine if i.id in under))


# ---------------------------------------------------------------------------------------------
# Rendering


def _fmt_when(v: datetime | None) -> str:
    return v.strftime("%Y-%m-%d %H:%M UTC") if v else "—"


def _fmt_duration(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 60:
        return f"{v:.1f} s" if v < 10 else f"{v:.0f} s"
    m, s = divmod(round(v), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def _fmt_bytes(v: int | None) -> str:
    if v is None:
        return "—"
    size = float(v)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return str(v)  # pragma: no cover


def _fmt_num(v: float | None) -> str:
    return "—" if v is None else f"{v:,}"


def _csv_href(name: str) -> str:
    """A relative link to the CSV beside the page, whatever its file name (#, ?, spaces, a colon)."""
    from urllib.parse import quote

    return "./" + quote(name)


FILTERS: dict[str, Callable[..., str]] = {
    "csv_href": _csv_href,
    "when": _fmt_when,
    "duration": _fmt_duration,
    "bytes": _fmt_bytes,
    "num": _fmt_num,
    "short": short,
    "plural": _plural,
}


def visible(value: Any) -> Any:
    """Every expression's output: control and format characters of storage names (a right-to-left override
    that shows ``gnp.exe`` as ``exe.png``, zero-width joiners) are shown escaped, as on the terminal."""
    if type(value) is not str or value.isprintable():
        return value
    return output.printable(value)


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment: templates shipped as ``regindex.templates``, autoescaped, strict."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("regindex.templates"))),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        finalize=visible,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def render_report(report: Report) -> str:
    return environment().get_template("report.html.j2").render(r=report)


def render(conn: Connection, runs: int = DEFAULT_RUNS, limit: int = DETAIL_LIMIT, csv_name: str | None = None,
           since: datetime | None = None, until: datetime | None = None) -> str:
    """The report as one HTML string."""
    report = collect(conn, runs, limit, since, until)
    report.csv_name = csv_name
    return render_report(report)


CSV_COLUMNS = ("state", "severity", "kind", "registry", "repository", "digest", "tag", "parent_digest",
               "first_run", "last_seen_run", "resolved_run", "episode", "age_runs", "age_days", "hint", "detail",
               "policy", "acknowledged", "incident", "anchor")


def _csv_cell(v: Any) -> Any:
    return "" if v is None else output.csv_safe(v)


def write_csv(conn: Connection, items: Sequence[Item], path: Path, shown: Collection[int] = ()) -> None:
    """Every finding of the report, in report order, evidence and hint included (read in chunks).
    ``anchor`` is the finding's section in the HTML page, for the ones shown there."""
    def rows() -> Iterable[list[Any]]:
        yield list(CSV_COLUMNS)
        for part in chunks(items, 2000):
            _with_detail(conn, part)
            for it in part:
                row = [_csv_cell(getattr(it, c)) for c in CSV_COLUMNS[:-1]]
                yield row + ["#" + it.anchor if it.id in shown else ""]

    atomic_write(path, rows=rows(), make_parents=True)


def write(conn: Connection, out: Path, runs: int = DEFAULT_RUNS, limit: int = DETAIL_LIMIT,
          since: datetime | None = None, until: datetime | None = None) -> Path:
    """Write the report to ``out`` and every finding it covers to a CSV beside it (same name, ``.csv``)."""
    out = Path(out)
    csv_path = out.with_suffix(".csv")
    report = collect(conn, runs, limit, since, until)
    report.csv_name = csv_path.name
    shown = {card.item.id for s in report.sections for _reg, repos in s.groups for _repo, cards in repos
             for card in cards}
    shown |= {card.item.id for v in report.incidents for card in v.cards}
    write_csv(conn, report.items, csv_path, shown)
    atomic_write(out, render_report(report), make_parents=True)
    return out


def write_dated(engine: Engine, report_dir: Path, runs: int = DEFAULT_RUNS, limit: int = DETAIL_LIMIT) -> Path:
    """``DIR/regindex-<date>-run<N>.html`` (+ ``.csv``) for the latest finished run; ``DIR/index.html`` lists
    every dated report, newest first. Returns the report's path."""
    report_dir = Path(report_dir)
    with engine.connect() as conn:
        run_info = Runs(conn)
        if run_info.latest is None:
            raise ReportError("no finished scan in the database: run `regindex scan` first")
        run = run_info.by_id[run_info.latest]
        day = (run["started_at"] or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
        path = write(conn, report_dir / f"regindex-{day}-run{run['id']}.html", runs, limit)
        write_index(report_dir, run_info)
    return path


def write_index(report_dir: Path, run_info: Runs | None = None) -> Path:
    """``index.html``: every dated report in the directory, newest first, with its run's numbers."""
    entries = []
    for p in Path(report_dir).iterdir():
        m = DATED_RE.match(p.name)
        if not m:
            continue
        run_id = int(m.group(2))
        csv_path = p.with_suffix(".csv")
        entries.append({
            "name": p.name, "date": m.group(1), "run_id": run_id,
            "csv": csv_path.name if csv_path.exists() else None,
            "run": run_info.by_id.get(run_id) if run_info else None,
        })
    entries.sort(key=lambda e: (e["run_id"], e["date"]), reverse=True)
    html = environment().get_template("index.html.j2").render(
        entries=entries, generated_at=datetime.now(timezone.utc), version=__version__)
    path = Path(report_dir) / "index.html"
    atomic_write(path, html, make_parents=True)
    return path


# ---------------------------------------------------------------------------------------------
# regindex history DIGEST


_HEX_RE = re.compile(r"^[0-9a-f]+$")


def _clip(value: str, limit: int = 140) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def resolve_digest(conn: Connection, value: str) -> str:
    """A full ``alg:hex`` digest, or a unique prefix (≥ 8 hex digits) of one the database knows."""
    value = value.strip().lower()
    alg, sep, hex_ = value.rpartition(":")
    if not sep:
        alg, hex_ = "", value
    if not _HEX_RE.match(hex_ or "-") or (alg and alg not in ("sha256", "sha384", "sha512")):
        raise UnknownDigest(f"not a digest or digest prefix: {_clip(value)!r}")
    if len(hex_) < 8:
        raise UnknownDigest(f"digest prefix {value!r} is too short: give at least 8 hex digits")
    algs = [alg] if alg else ["sha256", "sha384", "sha512"]
    found: set[str] = set()
    for a in algs:
        low = f"{a}:{hex_}"
        for col in (F.c.digest, F.c.parent_digest, L.c.path_digest, B.c.digest):
            # a range, not LIKE, so the digest indexes answer it ("g" sorts after every hex digit)
            q = select(col).where(col >= low, col < low + "g").distinct().limit(3)
            found.update(d for (d,) in conn.execute(q) if d)
    if not found:
        raise UnknownDigest(f"unknown digest {_clip(value)}: no finding, link or blob names it")
    if len(found) > 1:
        raise UnknownDigest(f"digest prefix {value} is ambiguous: {', '.join(sorted(found)[:3])}…")
    return found.pop()


@dataclass
class History:
    digest: str | None
    cards: list[Card]
    links: list[dict[str, Any]]
    blobs: list[dict[str, Any]]
    latest: int | None
    tag: str | None = None  # ``repo:tag`` when the history was asked for a tag
    tag_links: list[dict[str, Any]] = field(default_factory=list)


_DIGEST_LIKE = re.compile(r"^(?:sha256|sha384|sha512):|^[0-9a-fA-F]+$")  # an algorithm prefix: a digest, never REPO:TAG
_TAG_REF = re.compile(r"^(?P<repo>[^:\s]+):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


def history(conn: Connection, value: str) -> History:
    """Every finding whose digest or parent is DIGEST (all episodes), and the digest's inventory episodes.

    ``repo:tag`` instead of a digest: the tag's link episodes (which digest it named, when), the findings about
    the tag, and the history of the digest it names now (or named last)."""
    ref = _TAG_REF.match(value.strip())
    if ref and not _DIGEST_LIKE.match(value.strip()):
        return _tag_history(conn, ref.group("repo"), ref.group("tag"))
    return _digest_history(conn, resolve_digest(conn, value))


def _digest_history(conn: Connection, digest: str | None, extra: Any = None, tag: str | None = None,
                    tag_links: list[dict[str, Any]] | None = None) -> History:
    runs = Runs(conn)
    conds = [] if digest is None else [F.c.digest == digest, F.c.parent_digest == digest]
    if extra is not None:
        conds.append(extra)
    rows = [Item(*r) for r in conn.execute(select(*_ITEM_COLUMNS).where(or_(*conds)))] if conds else []
    latest_of_key: dict[str, Item] = {}
    for it in sorted(rows, key=lambda i: i.episode):
        latest_of_key[it.key] = it
    registry_ids = {name: rid for rid, name in conn.execute(select(G.c.id, G.c.name))}
    names = {rid: name for name, rid in registry_ids.items()}
    items = sorted(latest_of_key.values(), key=_sort_key)
    cards = _cards(conn, items, runs, registry_ids)
    links: list[dict[str, Any]] = []
    blobs: list[dict[str, Any]] = []
    if digest is not None:
        links = [dict(r, registry=names.get(r["registry_id"], "?")) for r in conn.execute(
            select(L).where(or_(L.c.path_digest == digest, L.c.target_digest == digest))
            .order_by(L.c.registry_id, L.c.repository, L.c.kind, L.c.tag, L.c.first_run)).mappings()]
        blobs = [dict(r, registry=names.get(r["registry_id"], "?")) for r in conn.execute(
            select(B).where(B.c.digest == digest).order_by(B.c.registry_id, B.c.first_run)).mappings()]
    for r in tag_links or []:
        r["registry"] = names.get(r["registry_id"], "?")
    return History(digest, cards, links, blobs, runs.latest, tag, tag_links or [])


def _tag_history(conn: Connection, repo: str, tag: str) -> History:
    tag_links = [dict(r) for r in conn.execute(
        select(L).where(L.c.repository == repo, L.c.tag == tag, L.c.kind.in_(["tag_current", "tag_index"]))
        .order_by(L.c.registry_id, L.c.kind, L.c.first_run, L.c.path_digest)).mappings()]
    about_tag = (F.c.repository == repo) & (F.c.tag == tag)
    if not tag_links and conn.execute(select(F.c.id).where(about_tag).limit(1)).first() is None:
        raise UnknownDigest(f"unknown tag {_clip(repo)}:{_clip(tag)}: no link or finding names it")
    current = [r for r in tag_links if r["kind"] == "tag_current" and r["target_digest"]]
    current = current or [r for r in tag_links if r["target_digest"]]  # no readable current link: its index
    # the digest the tag names now, else the one it named last
    current.sort(key=lambda r: (r["gone_run"] is None, r["gone_run"] or 0, r["first_run"]))
    digest = current[-1]["target_digest"] if current else None
    return _digest_history(conn, digest, about_tag, f"{repo}:{tag}", tag_links)


def history_json(h: History) -> dict[str, Any]:
    """``history --format json``: the same facts as the text, as data."""

    def episode(r: dict[str, Any]) -> dict[str, Any]:
        keep = ("registry", "repository", "kind", "tag", "path_digest", "target_digest", "state", "digest", "size",
                "first_run", "gone_run")
        return {k: r[k] for k in keep if k in r}

    findings = []
    for card in h.cards:
        it = card.item
        try:
            detail = json.loads(it.detail)
        except ValueError:
            detail = it.detail
        findings.append({
            "key": it.key, "episode": it.episode, "kind": it.kind, "severity": it.severity,
            "registry": it.registry, "repository": it.repository, "digest": it.digest, "tag": it.tag,
            "parent_digest": it.parent_digest, "first_seen_run": it.first_run, "last_seen_run": it.last_seen_run,
            "resolved_run": it.resolved_run, "hint": it.hint, "detail": detail,
            "timeline": [{"run": s.run, "when": _iso(s.when), "event": s.tone, "text": s.text} for s in card.steps],
            "on_disk": [{"run": c.run, "moment": c.moment, "changes": c.texts} for c in card.changes],
        })
    return {"digest": h.digest, "tag": h.tag, "latest_run": h.latest, "findings": findings,
            "tag_links": [episode(r) for r in h.tag_links], "links": [episode(r) for r in h.links],
            "blobs": [episode(r) for r in h.blobs]}


def _iso(v: datetime | None) -> str | None:
    from regindex.timespec import iso

    return iso(v)


def format_history(h: History, printable: Callable[[str], str] = str) -> str:
    """The timeline as terminal text (``printable`` makes storage names safe for a terminal)."""
    out = [h.digest or "", ""]
    if h.tag:
        out = [f"{h.tag} → {h.digest or 'no digest (the tag has no readable current link)'}", ""]
        out.append("Tag episodes:")
        for r in h.tag_links:
            label = "current link" if r["kind"] == "tag_current" else f"index entry {short(r['path_digest'])}"
            target = r["target_digest"] or "(nothing readable)"
            out.append(printable(f"  {r['registry']} · {label} → {target} ({r['state']}): {_episode_text(r)}"))
        if not h.tag_links:
            out.append("  none (no link of this tag was ever seen)")
        out.append("")
    if h.cards:
        out.append(f"Findings naming it ({_plural(len(h.cards), 'problem')}):")
    else:
        out.append("No finding names it.")
    for card in h.cards:
        it = card.item
        where = " / ".join(x for x in (it.registry, it.repository) if x)
        extra = []
        if it.tag:
            extra.append(f"tag {it.tag}")
        if it.digest and it.digest != h.digest:
            extra.append(f"digest {it.digest}")
        if it.parent_digest and it.parent_digest != h.digest:
            extra.append(f"{_PARENT_ROLE.get(it.kind, 'parent')} {it.parent_digest}")
        elif it.parent_digest == h.digest:
            extra.append(f"as the {_PARENT_ROLE.get(it.kind, 'parent')}")
        state = "open" if it.resolved_run is None else f"resolved in run {it.resolved_run}"
        out.append("")
        head = f"  {it.kind} ({it.severity}, {state}) · {where}"
        out.append(printable(head + (f" · {', '.join(extra)}" if extra else "")))
        for s in card.steps:
            out.append(printable(f"    run {s.run:<5} {_fmt_when(s.when):<21} {s.text}"))
        for ch in card.changes:
            for t in ch.texts:
                out.append(printable(f"    on disk, run {ch.run} ({ch.moment}): {t}"))
        if it.hint:
            out.append(printable(f"    hint: {it.hint}"))
    out.append("")
    out.append("Inventory episodes:")
    if not h.links and not h.blobs:
        out.append("  none (no link or blob data with this digest was ever seen)")
    for r in h.links:
        label = _LINK_NAMES.get(r["kind"], r["kind"]) + (f" of tag {r['tag']}" if r["tag"] else "")
        via = "path" if r["path_digest"] == h.digest else f"target of {short(r['path_digest'])}"
        out.append(printable(f"  {r['registry']} · {r['repository']} · {label} ({r['state']}, by {via}): "
                             f"{_episode_text(r)}"))
    for r in h.blobs:
        out.append(printable(f"  {r['registry']} · blob data ({r['size']:,} bytes): {_episode_text(r)}"))
    return "\n".join(out) + "\n"


def _episode_text(r: dict[str, Any]) -> str:
    if r["gone_run"] is None:
        return f"present since run {r['first_run']}"
    return f"present from run {r['first_run']}, gone in run {r['gone_run']}"
