"""Command line. Thin: parse options, call the core, map core exceptions to one line and an exit code."""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from regindex import __version__, output
from regindex import config as config_mod
from regindex import db as dbmod
from regindex.errors import RegindexError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
MAX_HOURS = 24 * 365 * 10


class Failure(click.ClickException):
    exit_code = EXIT_ERROR


def core_errors(fn: F) -> F:
    """Every expected failure becomes one line on stderr and exit 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RegindexError as exc:
            raise Failure(str(exc)) from None
        except SQLAlchemyError as exc:
            raise Failure(f"database error: {dbmod._one_line(exc)}") from None
        except OSError as exc:
            raise Failure(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        except KeyboardInterrupt:
            raise Failure("interrupted") from None

    return wrapper  # type: ignore[return-value]


def _terminate_as_interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM (a CronJob's deadline, systemd stop) ends a scan like Ctrl-C: rolled back, run marked failed."""
    raise KeyboardInterrupt


def _finite_hours(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_HOURS):
        raise click.BadParameter(f"must be a number of hours between 0 and {MAX_HOURS}")
    return value


def _writable_target(path: Path, what: str, is_dir: bool) -> None:
    """Fail before scanning, not after the run is committed, when an output cannot be written."""
    if path.exists() and path.is_dir() != is_dir:
        raise Failure(f"{what}: {path} is {'not ' if is_dir else ''}a directory")
    where = path if is_dir and path.exists() else path.parent
    if not where.is_dir():
        raise Failure(f"{what}: directory {where} does not exist")
    if not os.access(where, os.W_OK):
        raise Failure(f"{what}: {where} is not writable")


db_option = click.option(
    "--db",
    envvar="REGINDEX_DB",
    default=None,
    metavar="PATH|URL",
    help="Database: a SQLite file path or a SQLAlchemy URL (env REGINDEX_DB; default ./regindex.db).",
)
config_option = click.option(
    "--config", "config_path", envvar="REGINDEX_CONFIG", type=click.Path(dir_okay=False), default=None,
    help="TOML settings file (env REGINDEX_CONFIG); options on the command line win.",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(output.FORMATS), default="table", show_default=True, help="Output format."
)


def _db(db: str | None, config_path: str | None = None) -> str | None:
    return db or config_mod.load(config_path).db


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="regindex")
def cli() -> None:
    """Index Docker Distribution registry storage into SQL and track its integrity across runs."""


# ---------------------------------------------------------------------------------------------
# scan


@cli.command()
@click.argument("base", type=click.Path(path_type=Path))
@db_option
@config_option
@click.option("--cache", "caches", multiple=True, metavar="NAME",
              help="Registry that is a pull-through cache (repeatable): missing index children are info there.")
@click.option("--fail-on", type=click.Choice(["new", "open", "never"]), default=None,
              help="Exit 1 when there are open error findings (open, the default), only new ones (new), or never.")
@click.option("--verify-content", is_flag=True, default=None,
              help="Re-hash blob data (once per change of its size or mtime) to find digest mismatches.")
@click.option("--stale-upload-hours", type=float, default=None, callback=_finite_hours,
              help="Age after which an upload is stale (default 168, the registry's purge age).")
@click.option("--allow-empty", is_flag=True,
              help="Accept a registry that became empty or vanished (otherwise that is an error, exit 2).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the HTML report into this directory after the run.")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write Prometheus textfile metrics here (atomically).")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stdout.")
@core_errors
def scan(
    base: Path, db: str | None, config_path: str | None, caches: tuple[str, ...], fail_on: str | None,
    verify_content: bool | None, stale_upload_hours: float | None, allow_empty: bool, report_dir: Path | None,
    metrics_path: Path | None, quiet: bool,
) -> None:
    """Index every registry under BASE and update findings.

    BASE holds BASE/<name>/docker/registry/v2 for each registry, or is one registry's root directory.
    Exit status: 0 no open error finding, 1 open error findings (see --fail-on), 2 bad input or a failed or
    partial scan (nothing is resolved from a registry that could not be read).
    """
    from regindex.scan import ScanOptions, run_scan

    settings = config_mod.load(config_path)
    opts = ScanOptions(
        base=base,
        caches=frozenset(caches) | frozenset(settings.caches),
        verify_content=bool(verify_content if verify_content is not None else settings.verify_content),
        stale_upload_hours=stale_upload_hours or settings.stale_upload_hours or 168.0,
        allow_empty=allow_empty,
    )
    metrics_path = metrics_path or (Path(settings.metrics) if settings.metrics else None)
    report_dir = report_dir or (Path(settings.report_dir) if settings.report_dir else None)
    if metrics_path:
        _writable_target(metrics_path, "--metrics", is_dir=False)
    if report_dir:
        _writable_target(report_dir, "--report", is_dir=True)
    engine = dbmod.open_writer(db or settings.db)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    progress = _progress() if sys.stderr.isatty() else None
    try:
        outcome = run_scan(engine, opts, progress)
    except RegindexError:
        if report_dir:
            _report_anyway(engine, report_dir)  # the dated page says this run failed; index.html stays honest
        raise
    finally:
        if progress:
            click.echo("\r\033[K", nl=False, err=True)
    with engine.connect() as conn:
        if metrics_path:
            from regindex import metrics

            metrics.write(metrics_path, metrics.render(conn, outcome.run_id))
    if report_dir:
        from regindex import report

        written = report.write_dated(engine, report_dir)
        if not quiet:
            click.echo(f"report: {written}")
    engine.dispose()

    c = outcome.counts
    if not quiet:
        click.echo(
            f"run {outcome.run_id} {outcome.status}: {outcome.registries} registries, {outcome.repositories} "
            f"repositories, {outcome.links} links, {outcome.blobs} blobs, {outcome.manifests_parsed} manifests "
            f"parsed, {outcome.inventory_changes} inventory changes; findings: {c.new} new "
            f"({c.reopened} re-opened), {c.persisting} persisting, {c.resolved} resolved; "
            f"{outcome.open_errors} open errors ({outcome.duration_seconds:.1f}s)"
        )
    for err in outcome.failures.values():
        click.echo(f"error: {err}", err=True)
    if outcome.failures:
        sys.exit(EXIT_ERROR)
    mode = fail_on or settings.fail_on or "open"
    if mode == "open" and outcome.open_errors:
        sys.exit(EXIT_FINDINGS)
    if mode == "new" and c.new_errors:
        sys.exit(EXIT_FINDINGS)


def _report_anyway(engine: Any, report_dir: Path) -> None:
    from regindex import report
    from regindex.errors import ReportError

    try:
        report.write_dated(engine, report_dir)
    except ReportError:
        pass  # no finished scan yet: nothing to show


def _progress() -> Callable[[str], None]:
    def show(msg: str) -> None:
        click.echo(f"\r\033[K{output._printable(msg)[:100]}", nl=False, err=True)

    return show


# ---------------------------------------------------------------------------------------------
# reading


FINDING_COLUMNS = ("kind", "severity", "registry", "repository", "digest", "tag", "parent_digest", "state",
                   "first_seen_run", "last_seen_run", "resolved_run", "detail")
TABLE_COLUMNS = ("state", "severity", "kind", "registry", "repository", "digest", "tag", "parent_digest",
                 "first_seen_run", "resolved_run")


@cli.command()
@db_option
@config_option
@click.option("--state", type=click.Choice(["open", "new", "persisting", "resolved", "all"]), default="open",
              show_default=True, help="new includes re-opened findings; open is new + persisting.")
@click.option("--kind", "kinds", multiple=True, help="Only this finding kind (repeatable).")
@click.option("--registry", "registries", multiple=True, help="Only this registry (repeatable).")
@click.option("--severity", "severities", multiple=True, type=click.Choice(["error", "warning", "info"]),
              help="Only this severity (repeatable).")
@format_option
@core_errors
def findings(db: str | None, config_path: str | None, state: str, kinds: tuple[str, ...],
             registries: tuple[str, ...], severities: tuple[str, ...], fmt: str) -> None:
    """List findings (state relative to the latest finished run)."""
    from regindex.checks import KINDS
    from regindex.history import list_findings

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise Failure(f"unknown kind {bad[0]!r}; kinds: {', '.join(KINDS)}")
    with dbmod.reader(_db(db, config_path)) as conn:
        known = set(conn.exec_driver_sql("SELECT name FROM registries").scalars())
        unknown = [r for r in registries if r not in known]
        if unknown:
            raise Failure(f"unknown registry {unknown[0]!r}; registries: {', '.join(sorted(known)) or 'none yet'}")
        rows = list_findings(conn, state, kinds, registries, severities)
    cols = FINDING_COLUMNS if fmt != "table" else TABLE_COLUMNS
    click.echo(output.render(rows, cols, fmt), nl=False)


RUN_COLUMNS = ("id", "started_at", "status", "duration_seconds", "registries", "repositories", "links", "blobs",
               "manifests_parsed", "inventory_changes", "findings_open", "findings_new", "findings_resolved",
               "files_stat", "files_read", "files_skipped", "phases", "error")


@cli.command()
@db_option
@config_option
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True)
@format_option
@core_errors
def runs(db: str | None, config_path: str | None, limit: int, fmt: str) -> None:
    """List scans, newest first."""
    from sqlalchemy import text

    with dbmod.reader(_db(db, config_path)) as conn:
        rows = [dict(r) for r in conn.execute(
            text("SELECT * FROM runs ORDER BY id DESC LIMIT :n"), {"n": limit}).mappings()]
        phases: dict[int, list[str]] = {}
        if rows:
            q = text("SELECT run_id, phase, seconds, items FROM run_phases WHERE run_id >= :lo "
                     "ORDER BY run_id, position")
            for p in conn.execute(q, {"lo": rows[-1]["id"]}).mappings():
                items = f" ({p['items']})" if p["items"] is not None else ""
                phases.setdefault(p["run_id"], []).append(f"{p['phase']} {p['seconds']:.2f}s{items}")
    for r in rows:
        if r["duration_seconds"] is not None:
            r["duration_seconds"] = round(r["duration_seconds"], 2)
        r["phases"] = ", ".join(phases.get(r["id"], [])) or None
    click.echo(output.render(rows, RUN_COLUMNS, fmt), nl=False)


@cli.command()
@click.argument("query")
@db_option
@config_option
@format_option
@core_errors
def sql(query: str, db: str | None, config_path: str | None, fmt: str) -> None:
    """Run one read-only SQL statement and print its rows (writes are refused)."""
    from regindex.queries import run_readonly

    with dbmod.reader(_db(db, config_path)) as conn:
        columns, rows = run_readonly(conn, query)
    click.echo(output.render(rows, columns, fmt), nl=False)


# ---------------------------------------------------------------------------------------------
# database


@cli.group(name="db")
def db_group() -> None:
    """Schema management (alembic migrations shipped inside regindex)."""


@db_group.command()
@db_option
@config_option
@core_errors
def upgrade(db: str | None, config_path: str | None) -> None:
    """Create or upgrade the schema to this version of regindex."""
    engine = dbmod.open_writer(_db(db, config_path))
    with engine.connect() as conn:
        click.echo(f"schema at {dbmod.current_revision(conn)} (head)")
    engine.dispose()


@db_group.command()
@db_option
@config_option
@core_errors
def current(db: str | None, config_path: str | None) -> None:
    """Print the schema revision of the database and of this code."""
    url = dbmod.resolve_url(_db(db, config_path))
    engine = dbmod.make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            rev = dbmod.current_revision(conn)
    finally:
        engine.dispose()
    head = dbmod.head_revision()
    state = "up to date" if rev == head else ("empty" if rev is None else "needs `regindex db upgrade`")
    click.echo(f"database: {rev or 'none'}; code: {head} ({state})")


# ---------------------------------------------------------------------------------------------
# demo


@cli.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DIRECTORY if it already holds a demo.")
@core_errors
def demo(directory: Path | None, force: bool) -> None:
    """Build a sample storage tree, scan it, change it as a night would, scan again.

    DIRECTORY defaults to ./regindex-demo; the database and report land inside it.
    """
    from regindex.demo import run_demo

    directory = directory or Path("regindex-demo")
    result = run_demo(directory, force=force, echo=click.echo)
    click.echo(f"database: {result.db_path}")
    click.echo(f"try:      regindex findings --db {result.db_path} --state new")
    if result.report_path:
        click.echo(f"report:   {result.report_path}")


# -- gc-preview, report, history ------------------------------------------------------------------


@cli.command(name="gc-preview")
@db_option
@config_option
@click.option("--delete-untagged", is_flag=True, help="Predict `garbage-collect --delete-untagged`.")
@click.option("--registry", "registries", multiple=True, metavar="NAME", help="Only this registry (repeatable).")
@format_option
@core_errors
def gc_preview(db: str | None, config_path: str | None, delete_untagged: bool, registries: tuple[str, ...],
               fmt: str) -> None:
    """Predict, from the database alone, what registry 2.8's garbage-collect would delete and which pulls it
    would break. Exit status: 0 it completes and breaks nothing that works now, 1 it would abort, fail or break
    something, 2 bad input."""
    from regindex import gc

    with dbmod.reader(_db(db, config_path)) as conn:
        preds = gc.predict(conn, delete_untagged, registries)
    click.echo(gc.render(preds, fmt), nl=False)
    if any(p.outcome != gc.COMPLETES or p.breakage for p in preds):
        sys.exit(EXIT_FINDINGS)


@cli.command()
@db_option
@config_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default ./regindex-report.html); every finding goes to a CSV beside it.")
@click.option("--runs", type=click.IntRange(min=1), default=30, show_default=True,
              help="How many finished runs the trend covers.")
@core_errors
def report(db: str | None, config_path: str | None, out: Path | None, runs: int) -> None:
    """Write the HTML trend report of the latest finished run (self-contained: no script, no network)."""
    from regindex import report as report_mod

    with dbmod.reader(_db(db, config_path)) as conn:
        written = report_mod.write(conn, out or Path(report_mod.DEFAULT_OUT), runs)
    click.echo(f"report: {written} (findings: {written.with_suffix('.csv')})")


@cli.command(name="history")
@click.argument("digest")
@db_option
@config_option
@core_errors
def history_cmd(digest: str, db: str | None, config_path: str | None) -> None:
    """Timeline of DIGEST (full sha256:<hex> or a unique prefix of at least 8 hex digits): every finding that
    names it, each episode, what changed on disk when it appeared and was resolved, and its link and blob
    episodes."""
    from regindex import report as report_mod

    with dbmod.reader(_db(db, config_path)) as conn:
        text_ = report_mod.format_history(report_mod.history(conn, digest), output._printable)
    click.echo(text_, nl=False)
