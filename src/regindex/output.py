"""Rendering rows for the terminal: aligned table, JSON or CSV. Presentation only."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import itertools
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regindex.scan import ScanOutcome
    from regindex.timeline import Timeline

FORMATS = ("table", "json", "csv")
STREAM_FORMATS = ("table", "json", "nl", "csv", "tsv")
TABLE_SAMPLE = 1000  # a streamed table takes its column widths from the first rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, max_width: int = 72) -> str:
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2, default=json_default) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_safe(_cell(r.get(c))) for c in columns])
        return buf.getvalue()
    cells = [[_trim(printable(_cell(r.get(c))), max_width) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def fit_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], width: int, flexible: Sequence[str],
              headers: dict[str, str] | None = None, min_width: int = 8) -> list[str]:
    """An aligned table no wider than ``width``: the ``flexible`` columns give up space (widest first, values
    trimmed with …) until it fits. ``headers`` renames columns for display."""
    heads = [(headers or {}).get(c, c) for c in columns]
    cells = [[printable(_cell(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    flex = [i for i, c in enumerate(columns) if c in flexible]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        shrinkable = [i for i in flex if widths[i] > max(min_width, len(heads[i]))]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(_trim(v, w).ljust(w) for v, w in zip(row, widths)).rstrip())
    return lines


def short_digest(digest: str | None, n: int = 12) -> str:
    """Docker's short form: the first 12 hex digits, without the algorithm."""
    if not digest:
        return ""
    return digest.partition(":")[2][:n] or digest[:n]


def csv_safe(v: Any) -> Any:
    """A storage name that starts like a formula must not run as one in a spreadsheet."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def printable(s: str) -> str:
    """Storage names are hostile: never send control characters to a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _trim(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def json_default(v: Any) -> Any:
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, decimal.Decimal):  # PostgreSQL's SUM and numeric: a number, not a string
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    return str(v)


def _json_value(v: Any, as_json: bool, detect: bool) -> Any:
    """A JSON column's text becomes JSON; with ``detect`` any text that parses as an object or array does."""
    if isinstance(v, str) and (as_json or (detect and v[:1] in ("{", "["))):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def write_stream(
    out: IO[str],
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str,
    headers: bool = True,
    json_columns: Collection[str] = (),
    detect_json: bool = False,
    max_width: int = 72,
) -> int:
    """Write rows as they come (constant memory); returns how many were written.

    json: an array, one object per line (sqlite-utils' layout); nl: one object per line; csv/tsv: a header
    line unless ``headers`` is false; table: aligned on the widths of the first TABLE_SAMPLE rows.
    """
    count = 0
    if fmt in ("json", "nl"):
        as_json = [c in json_columns for c in columns]
        out.write("[" if fmt == "json" else "")
        for row in rows:
            obj = {c: _json_value(v, j, detect_json) for c, v, j in zip(columns, row, as_json)}
            text_ = json.dumps(obj, default=json_default)
            if fmt == "json":
                out.write(("" if count == 0 else ",\n ") + text_)
            else:
                out.write(text_ + "\n")
            count += 1
        if fmt == "json":
            out.write("]\n")
        return count
    if fmt in ("csv", "tsv"):
        w = csv.writer(out, lineterminator="\n", delimiter="\t" if fmt == "tsv" else ",")
        if headers:
            w.writerow(columns)
        for row in rows:
            w.writerow([csv_safe(_cell(v)) for v in row])
            count += 1
        return count
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    it = iter(rows)
    sample = [[_trim(printable(_cell(v)), max_width) for v in row] for row in itertools.islice(it, TABLE_SAMPLE)]
    widths = [max([len(c) if headers else 0] + [len(r[i]) for r in sample]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip() + "\n"

    if headers:
        out.write(line(list(columns)))
        out.write("  ".join("-" * w for w in widths) + "\n")
    for cells in sample:
        out.write(line(cells))
        count += 1
    del sample
    for row in it:
        out.write(line([_trim(printable(_cell(v)), max_width) for v in row]))
        count += 1
    return count


def clip(value: str, limit: int = 140) -> str:
    """A storage value cut short for a one-line message."""
    return value if len(value) <= limit else value[:limit] + "…"


def when_text(when: dt.datetime | None) -> str:
    """A run's time in messages and hover text."""
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else "unknown time"


def fmt_when(v: dt.datetime | None) -> str:
    """A time in a table cell (the report, the history timeline): ``—`` when unknown."""
    return v.strftime("%Y-%m-%d %H:%M UTC") if v else "—"


def format_timeline(h: Timeline, printable: Callable[[str], str] = str) -> str:
    """``regindex history``: the timeline as terminal text (``printable`` makes storage names safe for a terminal)."""
    from regindex.episodes import PARENT_ROLE
    from regindex.postmortem import LINK_NAMES, plural, short

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
        out.append(f"Findings naming it ({plural(len(h.cards), 'problem')}):")
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
            extra.append(f"{PARENT_ROLE.get(it.kind, 'parent')} {it.parent_digest}")
        elif it.parent_digest == h.digest:
            extra.append(f"as the {PARENT_ROLE.get(it.kind, 'parent')}")
        state = "open" if it.resolved_run is None else f"resolved in run {it.resolved_run}"
        out.append("")
        head = f"  {it.kind} ({it.severity}, {state}) · {where}"
        out.append(printable(head + (f" · {', '.join(extra)}" if extra else "")))
        for s in card.steps:
            out.append(printable(f"    run {s.run:<5} {fmt_when(s.when):<21} {s.text}"))
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
        label = LINK_NAMES.get(r["kind"], r["kind"]) + (f" of tag {r['tag']}" if r["tag"] else "")
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


def scan_summary(outcome: ScanOutcome) -> str:
    """The line ``regindex scan`` prints after a run."""
    c = outcome.counts
    return (
        f"run {outcome.run_id} {outcome.status}: {outcome.registries} registries, {outcome.repositories} "
        f"repositories, {outcome.links} links, {outcome.blobs} blobs, {outcome.manifests_parsed} manifests "
        f"parsed, {outcome.inventory_changes} inventory changes; findings: {c.new} new "
        f"({c.reopened} re-opened), {c.persisting} persisting, {c.resolved} resolved; "
        f"{outcome.open_errors} open errors"
        + (f" ({outcome.acknowledged_errors} more acknowledged)" if outcome.acknowledged_errors else "")
        + f" ({outcome.duration_seconds:.1f}s)"
    )
