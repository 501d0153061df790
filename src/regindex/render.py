"""Rendering the report: one self-contained HTML file per report (inline CSS and SVG, no script, no URL),
rendered by one Jinja ``Environment`` with autoescaping on: every name that comes from storage is text, never
markup. The full lists go to a CSV beside the HTML; dated reports and their ``index.html``."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import Connection, Engine

from regindex import __version__, output
from regindex.episodes import Item, Runs, with_detail
from regindex.errors import ReportError
from regindex.files import atomic_write, check_target
from regindex.postmortem import plural, short
from regindex.config import REPORT_RUNS
from regindex.report import DETAIL_LIMIT, Report, collect
from regindex.store import chunks

DATED_RE = re.compile(r"^regindex-(\d{4}-\d{2}-\d{2})-run(\d+)\.html$")


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
    "when": output.fmt_when,
    "duration": _fmt_duration,
    "bytes": _fmt_bytes,
    "num": _fmt_num,
    "short": short,
    "plural": plural,
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


def render(conn: Connection, runs: int = REPORT_RUNS, limit: int = DETAIL_LIMIT, csv_name: str | None = None,
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
            with_detail(conn, part)
            for it in part:
                row = [_csv_cell(getattr(it, c)) for c in CSV_COLUMNS[:-1]]
                yield row + ["#" + it.anchor if it.id in shown else ""]

    atomic_write(path, rows=rows(), make_parents=True, what="report")


def write(conn: Connection, out: Path, runs: int = REPORT_RUNS, limit: int = DETAIL_LIMIT,
          since: datetime | None = None, until: datetime | None = None) -> Path:
    """Write the report to ``out`` and every finding it covers to a CSV beside it (same name, ``.csv``)."""
    out = Path(out)
    csv_path = out.with_suffix(".csv")
    for target in (out, csv_path):  # before anything is written
        check_target(target, "report")
    report = collect(conn, runs, limit, since, until)
    report.csv_name = csv_path.name
    shown = {card.item.id for s in report.sections for _reg, repos in s.groups for _repo, cards in repos
             for card in cards}
    shown |= {card.item.id for v in report.incidents for card in v.cards}
    write_csv(conn, report.items, csv_path, shown)
    atomic_write(out, render_report(report), make_parents=True, what="report")
    return out


def write_dated(engine: Engine, report_dir: Path, runs: int = REPORT_RUNS, limit: int = DETAIL_LIMIT) -> Path:
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
    atomic_write(path, html, make_parents=True, what="report")
    return path


