"""The HTML trend report's model: new, persisting and resolved findings over time, for nightly review and
post-mortems (``collect``). Rendering and files: render.py; charts: charts.py; the cards: postmortem.py.

Everything is computed from two reads of ``findings`` (the trend in one pass over first_run/resolved_run, not
one ``finding_trend`` query per run) plus the inventory episodes of the findings shown. The page counts
everything but shows per-finding sections only for the top ``limit`` findings of each state (by severity, then
age); the full lists go to the CSV.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, or_, select

from regindex import __version__
from regindex.charts import Chart, report_charts
from regindex.checks import KINDS
from regindex.config import REPORT_RUNS
from regindex.episodes import ITEM_COLUMNS, Item, Runs, sort_key
from regindex.errors import ReportError
from regindex.history import state_of
from regindex.models import Finding, Registry, RunRegistry, table
from regindex.output import when_text
from regindex.postmortem import Card, cards_for

DETAIL_LIMIT = 500  # per-finding sections per state (new, persisting, resolved)
GROUP_LIMIT = 50  # rows of the per-repository count tables per state

F, RR, G = table(Finding), table(RunRegistry), table(Registry)


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
    q = select(*ITEM_COLUMNS).where(or_(F.c.resolved_run.is_(None), F.c.resolved_run >= since))
    return [Item(*r) for r in conn.execute(q)]


def collect(conn: Connection, runs: int = REPORT_RUNS, limit: int = DETAIL_LIMIT, since: datetime | None = None,
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
            raise ReportError(f"no finished scan started by {when_text(until)}")
        raise ReportError("no finished scan in the database: run `regindex scan` first")
    if since is not None:
        window = [r for r in run_info.finished if (w := run_info.when(r)) is not None and w >= since]
        if not window:
            raise ReportError(f"no finished scan between {when_text(since)} and "
                              f"{when_text(until) if until else 'now'}")
    else:
        window = run_info.finished[-max(1, runs):]
    items = _load_items(conn, window[0])

    registry_rows = [dict(r) for r in conn.execute(select(G).order_by(G.c.name)).mappings()]
    registry_ids = {r["name"]: r["id"] for r in registry_rows}
    scope: list[Item] = []
    for it in items:
        if it.first_run > latest:
            continue  # opened after the run reported on (report --until)
        it.state = state_of(it.first_run, it.episode, it.resolved_run, latest)
        if it.state != "resolved":
            last = latest
        elif it.resolved_run == latest:
            last = run_info.last_open(it.first_run, it.resolved_run)
        else:
            continue  # resolved before the run reported on
        it.age_runs = run_info.count(it.first_run, last, registry_ids.get(it.registry))
        it.age_days = run_info.days(it.first_run, last)
        scope.append(it)
    scope.sort(key=lambda i: (_STATE_ORDER[i.state], sort_key(i)))
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

    charts = report_charts(items, window, run_info)

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
        members = sorted((open_items[m.id] for m in g.members if m.id in open_items), key=sort_key)
        shown = members[:INCIDENT_CARDS] if len(members) > 1 else []
        if shown:
            under.update(m.id for m in members)  # all of them: the incident stands for them (the CSV lists each)
        views.append(IncidentView(g, cards_for(conn, shown, runs, registry_ids), len(members) - len(shown)))
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
    cards = cards_for(conn, shown, runs, registry_ids)
    nested: dict[str, dict[str | None, list[Card]]] = defaultdict(lambda: defaultdict(list))
    # registry by registry, repository by repository (registry-wide findings last), most severe first
    def place(c: Card) -> tuple[Any, ...]:
        return (c.item.registry, c.item.repository is None, c.item.repository or "", sort_key(c.item))

    for card in sorted(cards, key=place):
        nested[card.item.registry][card.item.repository].append(card)
    tree = [(reg, list(repos.items())) for reg, repos in nested.items()]
    return Section(state, title, blurb, len(mine), severity, ranked[:GROUP_LIMIT], max(0, len(ranked) - GROUP_LIMIT),
                   tree, len(shown), sum(1 for i in mine if i.id in under))


# ---------------------------------------------------------------------------------------------
