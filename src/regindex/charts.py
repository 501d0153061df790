"""The report's charts, drawn server-side: geometry here (bars, ticks, hover text), markup in the template;
and the trend they draw (open findings per kind, new and resolved per run) in one pass over the episodes."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from regindex.checks import KINDS
from regindex.episodes import Item, Runs
from regindex.output import clip, when_text


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
            partial.append((left + step * i, step, r, f"run {r} · {when_text(runs.when(r))} · partial: some "
                                                       "registries could not be read, nothing resolved there"))
        elif row["status"] == "failed":
            failed.append((left + step * i, step, r, f"run {r} · {when_text(runs.when(r))} · failed: "
                                                      f"{clip(row.get('error') or 'no detail', 200)}"))
    c = Chart(chart_id, title, width, height, left, top, int(plot_w), int(plot_h), list(run_ids), [], [], xticks,
              partial, top + plot_h, bar_w=min(22.0, step * 0.7), failed=failed)
    c.xpos = {r: left + step * (i + 0.5) for i, r in enumerate(slots)}
    return c


def _mark_title(run: int, runs: Runs, label: str, value: int, notes: dict[int, str]) -> str:
    note = notes.get(run)
    return f"run {run} · {when_text(runs.when(run))} · {label}: {value:,}" + (f" ({note})" if note else "")


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


def report_charts(items: Sequence[Item], window: Sequence[int], runs: Runs) -> list[Chart]:
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
