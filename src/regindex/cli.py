"""Command line. Thin: parse options, call the core, map core exceptions to one line and an exit code."""

from __future__ import annotations

import functools
import math
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from regindex import __version__, output, queries
from regindex import config as config_mod
from regindex import db as dbmod
from regindex.config import FAIL_ON, MAX_HOURS, REPORT_FILE, REPORT_RUNS
from regindex.errors import EXIT_ERROR, EXIT_FINDINGS, RegindexError, one_line
from regindex.logs import LOG_FORMATS, ScanLog
from regindex.rules import UPLOAD_PURGE_HOURS

if TYPE_CHECKING:
    from regindex.job import ScanRequest

F = TypeVar("F", bound=Callable[..., Any])



class Failure(click.ClickException):
    exit_code = EXIT_ERROR


def core_errors(fn: F) -> F:
    """Every expected failure becomes one line on stderr and exit 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RegindexError as exc:
            raise Failure(output.printable(str(exc))) from None
        except BrokenPipeError:
            # `regindex … | head`: the reader left; stop quietly (and keep Python from complaining at exit)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except SQLAlchemyError as exc:
            raise Failure(output.printable(f"database error: {one_line(exc)}")) from None
        except OSError as exc:
            raise Failure(output.printable(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))) from None
        except KeyboardInterrupt:
            raise Failure("interrupted") from None
        except UnicodeError as exc:  # an argument (a path, a query) that is not valid UTF-8
            raise Failure(f"an argument is not valid UTF-8 ({getattr(exc, 'reason', exc)}); use another name") from None
        except MemoryError:
            raise Failure("out of memory") from None

    return wrapper  # type: ignore[return-value]


def _finite_hours(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_HOURS):
        raise click.BadParameter(f"must be a number of hours between 0 and {MAX_HOURS}")
    return value


db_option = click.option(
    "--db",
    envvar="REGINDEX_DB",
    default=None,
    metavar="PATH|URL",
    help=f"Database: a SQLite file path or a SQLAlchemy URL (env REGINDEX_DB; default ./{dbmod.DEFAULT_DB}).",
)
config_option = click.option(
    "--config", "config_path", envvar="REGINDEX_CONFIG", type=click.Path(dir_okay=False), default=None,
    help="TOML settings file (env REGINDEX_CONFIG); options on the command line win.",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(output.FORMATS), default="table", show_default=True, help="Output format."
)


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
@click.option("--fail-on", type=click.Choice(FAIL_ON), default=None,
              help="Exit 1 when there are open error findings (open, the default), only new ones (new), or never.")
@click.option("--verify-content", is_flag=True, default=None,
              help="Re-hash blob data (once per change of its size or change time) to find digest mismatches.")
@click.option("--stale-upload-hours", type=float, default=None, callback=_finite_hours,
              help=f"Age after which an upload is stale (default {UPLOAD_PURGE_HOURS:g}, the registry's purge age).")
@click.option("--allow-empty", is_flag=True,
              help="Accept a registry that became empty or vanished (otherwise that is an error, exit 2).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the HTML report into this directory after the run.")
@click.option("--metrics", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write Prometheus textfile metrics here (atomically).")
@click.option("-q", "--quiet", is_flag=True, help="No summary on stdout.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="stderr: text for people, or json (one object a line: progress, errors, the run's summary).")
@click.option("--full", is_flag=True, default=None,
              help="Read every link file (otherwise one unchanged since a scan read it is only stat'ed; the "
                   "config's full_scan_every makes every Nth scan a full one).")
def scan(quiet: bool, log_format: str, **options: Any) -> None:
    """Index every registry under BASE and update findings.

    BASE holds BASE/<name>/docker/registry/v2 for each registry, or is one registry's root directory.
    Exit status: 0 no open error finding, 1 open error findings (see --fail-on), 2 bad input or a failed or
    partial scan (nothing is resolved from a registry that could not be read).
    """
    from regindex.job import ScanRequest

    log = ScanLog(log_format)
    request = ScanRequest(**options)  # each option's destination is the request's field of that name
    try:
        code = _scan(request, log, quiet)
    except Failure as exc:
        if log_format != "json":
            raise
        log.error(exc.message)
        code = EXIT_ERROR
    sys.exit(code)


@core_errors
def _scan(request: ScanRequest, log: ScanLog, quiet: bool) -> int:
    from regindex import job

    done = job.run(request, log)
    if not quiet:
        if done.report:
            click.echo(f"report: {done.report}")
        click.echo(output.scan_summary(done.scan))
    return done.exit_code


# ---------------------------------------------------------------------------------------------
# reading


FINDING_COLUMNS = ("key", "kind", "severity", "registry", "repository", "digest", "tag", "parent_digest", "state",
                   "first_seen_run", "last_seen_run", "resolved_run", "detail", "ack", "policy")
TABLE_COLUMNS = ("severity", "state", "kind", "registry", "repository", "tag", "digest", "parent_digest",
                 "first_seen_run", "acked")
TABLE_HEADERS = {"parent_digest": "parent", "first_seen_run": "first", "resolved_run": "resolved"}
TABLE_WIDTH = 120


@cli.command()
@db_option
@config_option
@click.option("--state", type=click.Choice(["open", "new", "persisting", "resolved", "resolved-ever", "all"]),
              default="open", show_default=True,
              help="Relative to the selected run: new includes re-opened findings; open is new + persisting; "
                   "resolved means resolved in that run, resolved-ever in it or before.")
@click.option("--kind", "kinds", multiple=True, help="Only this finding kind (repeatable).")
@click.option("--registry", "registries", multiple=True, help="Only this registry (repeatable).")
@click.option("--severity", "severities", multiple=True, type=click.Choice(["error", "warning", "info"]),
              help="Only this severity (repeatable).")
@click.option("--repository", "repositories", multiple=True, metavar="GLOB",
              help="Only repositories matching GLOB (* and ?; repeatable), e.g. 'team/*'.")
@click.option("--digest", metavar="PREFIX", help="Only findings whose digest or parent starts with PREFIX.")
@click.option("--tag", "tags", multiple=True,
              help="Only findings on this tag or that break its pull, e.g. an index's missing child (repeatable).")
@click.option("--run", "run", type=click.IntRange(min=1, max=2**62), default=None,
              help="States relative to this finished run (default the latest).")
@click.option("--since", metavar="DATE|DURATION",
              help="Only findings first seen in a run started since then: 2026-11-30, 2026-11-30T03:00Z, 7d, 24h.")
@click.option("--limit", type=click.IntRange(min=1, max=2**62), default=None, help="At most this many findings.")
@format_option
@click.option("-v", "--verbose", is_flag=True, help="Table: each finding's key, full digests and repair hint.")
@core_errors
def findings(db: str | None, config_path: str | None, state: str, kinds: tuple[str, ...],
             registries: tuple[str, ...], severities: tuple[str, ...], repositories: tuple[str, ...],
             digest: str | None, tags: tuple[str, ...], run: int | None, since: str | None, limit: int | None,
             fmt: str, verbose: bool) -> None:
    """List findings, most severe first (states relative to the latest finished run, or --run N)."""
    from regindex.checks import KINDS
    from regindex.history import FindingQuery, list_findings
    from regindex.timespec import parse_when

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise Failure(f"unknown kind {bad[0]!r}; kinds: {', '.join(KINDS)}")
    query = FindingQuery(state=state, kinds=kinds, registries=registries, severities=severities,
                         repositories=repositories, digest=digest, tags=tags, run=run,
                         since=parse_when(since, "--since") if since else None, limit=limit)
    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        known = set(conn.exec_driver_sql("SELECT name FROM registries").scalars())
        unknown = [r for r in registries if r not in known]
        if unknown:
            raise Failure(f"unknown registry {unknown[0]!r}; registries: {', '.join(sorted(known)) or 'none yet'}")
        rows = list_findings(conn, query)
    if fmt != "table":
        click.echo(output.render(rows, FINDING_COLUMNS, fmt), nl=False)
        return
    cols = TABLE_COLUMNS + (("resolved_run",) if state in ("resolved", "resolved-ever", "all") else ())
    shown = [dict(r, digest=output.short_digest(r["digest"]), parent_digest=output.short_digest(r["parent_digest"]),
                  acked=(f"until {r['ack']['until'][:10]}" if r["ack"]["until"] else "yes") if r["ack"] else "")
             for r in rows]
    lines = output.fit_table(shown, cols, TABLE_WIDTH, ("repository", "tag", "registry"), TABLE_HEADERS)
    click.echo("\n".join(lines[:2]))
    for line, r in zip(lines[2:], rows):
        click.echo(line)
        if verbose:
            for label, value in (("key", r["key"]), ("digest", r["digest"]), ("parent", r["parent_digest"]),
                                 ("hint", r["hint"])):
                if value:
                    text_ = output.printable(f"{label}: {value}")
                    click.echo(textwrap.fill(text_, TABLE_WIDTH, initial_indent="    ", subsequent_indent="      ",
                                             break_long_words=False, break_on_hyphens=False))


RUN_COLUMNS = ("id", "started_at", "status", "duration_seconds", "registries", "repositories", "links", "blobs",
               "manifests_parsed", "inventory_changes", "open_errors", "findings_open", "findings_new",
               "findings_resolved", "files_stat", "files_read", "files_skipped", "full_scan", "phases", "error")


@cli.command()
@db_option
@config_option
@click.option("--limit", type=click.IntRange(min=1, max=2**62), default=30, show_default=True)
@format_option
@core_errors
def runs(db: str | None, config_path: str | None, limit: int, fmt: str) -> None:
    """List scans, newest first: start time in UTC (ISO 8601), open errors and open findings (every severity)
    as of each run."""
    from sqlalchemy import text

    from regindex.history import list_runs

    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        rows = list_runs(conn, limit)
        phases: dict[int, list[str]] = {}
        if rows:
            q = text("SELECT run_id, phase, seconds, items FROM run_phases WHERE run_id >= :lo "
                     "ORDER BY run_id, position")
            for p in conn.execute(q, {"lo": rows[-1]["id"]}).mappings():
                items = f" ({p['items']})" if p["items"] is not None else ""
                phases.setdefault(p["run_id"], []).append(f"{p['phase']} {p['seconds']:.2f}s{items}")
    for r in rows:
        r["phases"] = ", ".join(phases.get(r["id"], [])) or None
    cols = RUN_COLUMNS + (("finished_at", "base", "options") if fmt != "table" else ())
    click.echo(output.render(rows, cols, fmt), nl=False)


@cli.command()
@click.argument("query", required=False)
@click.option("-f", "--file", "query_file", metavar="PATH",
              help="Read the query from PATH (`-` reads stdin; so does QUERY `-`).")
@click.option("-p", "--param", "params", nargs=2, multiple=True, metavar="NAME VALUE",
              help="Bind :NAME in the query to VALUE (repeatable); values are bound, never pasted into the SQL.")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(output.STREAM_FORMATS), default=None,
              help="Output format (default table).")
@click.option("--table", "-t", "fmt_flags", flag_value="table", multiple=True, help="Aligned table (the default).")
@click.option("--json", "fmt_flags", flag_value="json", multiple=True, help="A JSON array of objects.")
@click.option("--nl", "fmt_flags", flag_value="nl", multiple=True, help="Newline-delimited JSON objects.")
@click.option("--csv", "fmt_flags", flag_value="csv", multiple=True, help="CSV.")
@click.option("--tsv", "fmt_flags", flag_value="tsv", multiple=True, help="Tab-separated values.")
@click.option("--no-headers", is_flag=True, help="No header line (table, csv, tsv).")
@click.option("--json-cols", is_flag=True,
              help="In JSON output, also emit any text value that parses as a JSON object or array as JSON "
                   "(detail and options always are).")
@click.option("--timeout", type=click.FloatRange(min=0, max=MAX_HOURS * 3600), default=queries.DEFAULT_TIMEOUT,
              show_default=True, help="Stop the query after this many seconds (0: no limit).")
@core_errors
def sql(query: str | None, query_file: str | None, params: tuple[tuple[str, str], ...], db: str | None,
        config_path: str | None, fmt: str | None, fmt_flags: tuple[str, ...], no_headers: bool, json_cols: bool,
        timeout: float) -> None:
    """Run one read-only SQL statement and stream its rows (writes, ATTACH and pragma changes are refused).

    QUERY is the statement, or `-` to read it from stdin. Parameters are named (`:name`) and bound with
    -p/--param NAME VALUE. Ctrl-C or --timeout stops the query: one line on stderr, exit status 2.
    """
    chosen = set(fmt_flags) | ({fmt} if fmt else set())
    if len(chosen) > 1:
        raise Failure(f"choose one output format, not {' and '.join(sorted(chosen))}")
    fmt = chosen.pop() if chosen else "table"
    text_ = queries.read_query(query, query_file, click.get_binary_stream("stdin"))
    out = click.get_text_stream("stdout")
    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        with queries.stream_readonly(conn, text_, dict(params), timeout) as result:
            output.write_stream(out, result.columns, result.rows, fmt, headers=not no_headers,
                                json_columns=queries.JSON_COLUMNS, detect_json=json_cols)
            out.flush()


@cli.command()
@db_option
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8001, show_default=True,
              help="Port to listen on (0: any free port).")
@core_errors
def serve(db: str | None, config_path: str | None, host: str, port: int) -> None:
    """Browse the database in Datasette (pip install '.[web]'), read-only, with every table, view and column
    described, facets, and the post-mortem questions as canned queries. SQLite databases only."""
    from regindex import serve as serve_mod

    url = dbmod.resolve_url(config_mod.database(db, config_path))
    if not dbmod.is_sqlite(url):
        raise Failure("regindex serve opens SQLite databases (Datasette); for PostgreSQL use `regindex sql`")
    with dbmod.reader(url):
        pass  # the database exists and its schema is this code's
    from sqlalchemy.engine import make_url

    path = Path(make_url(url).database or "")
    app = serve_mod.app(path)
    click.echo(f"serving {path} read-only on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    serve_mod.run(app, host, port)


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
    engine = dbmod.open_writer(config_mod.database(db, config_path))
    with engine.connect() as conn:
        click.echo(f"schema at {dbmod.current_revision(conn)} (head)")
    engine.dispose()


@db_group.command()
@db_option
@config_option
@core_errors
def current(db: str | None, config_path: str | None) -> None:
    """Print the schema revision of the database and of this code."""
    url = dbmod.resolve_url(config_mod.database(db, config_path))
    engine = dbmod.make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            rev = dbmod.current_revision(conn)
    finally:
        engine.dispose()
    head = dbmod.head_revision()
    if rev == head:
        state = "up to date"
    elif rev is None:
        state = "empty"
    elif dbmod.known_revision(rev):
        state = "needs `regindex db upgrade`"
    else:
        state = "newer than this regindex: upgrade regindex"
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
    click.echo(f"          regindex incidents --db {result.db_path}")
    click.echo(f"          regindex repair --db {result.db_path}    (a dry run: prints what --apply would do)")
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

    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        preds = gc.predict(conn, delete_untagged, registries)
    click.echo(gc.render(preds, fmt), nl=False)
    if any(p.outcome != gc.COMPLETES or p.breakage for p in preds):
        sys.exit(EXIT_FINDINGS)


@cli.command()
@db_option
@config_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"HTML file to write (default ./{REPORT_FILE}); every finding goes to a CSV beside it.")
@click.option("--runs", type=click.IntRange(min=1, max=2**62), default=REPORT_RUNS, show_default=True,
              help="How many finished runs the trend covers.")
@click.option("--since", metavar="DATE|DURATION",
              help="The trend covers every finished run started since then (instead of --runs): 2026-11-30, "
                   "2026-11-30T03:00Z, 7d.")
@click.option("--until", metavar="DATE|DURATION",
              help="Report on the last finished run started by then, as it was (an incident's window).")
@core_errors
def report(db: str | None, config_path: str | None, out: Path | None, runs: int, since: str | None,
           until: str | None) -> None:
    """Write the HTML trend report of the latest finished run (self-contained: no script, no network)."""
    from regindex import render
    from regindex.timespec import parse_when

    start = parse_when(since, "--since") if since else None
    end = parse_when(until, "--until") if until else None
    if start and end and start > end:
        raise Failure("--since is after --until")
    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        written = render.write(conn, out or Path(REPORT_FILE), runs, since=start, until=end)
    click.echo(f"report: {written} (findings: {written.with_suffix('.csv')})")


@cli.command(name="history")
@click.argument("digest")
@db_option
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
@core_errors
def history_cmd(digest: str, db: str | None, config_path: str | None, fmt: str) -> None:
    """Timeline of DIGEST (full sha256:<hex> or a unique prefix of at least 8 hex digits) or of REPO:TAG: every
    finding that names it, each episode, what changed on disk when it appeared and was resolved, and its link
    and blob episodes (for a tag: the digests it named, and the history of the one it names now)."""
    import json

    from regindex import timeline

    with dbmod.reader(config_mod.database(db, config_path)) as conn:
        t = timeline.lookup(conn, digest)
    if fmt == "json":
        click.echo(json.dumps(timeline.as_json(t), indent=2, default=output.json_default))
    else:
        click.echo(output.format_timeline(t, output.printable), nl=False)


# "From finding to fix" commands (repair, repairs, ack, unack, incidents) live in their own module.
from regindex import cli_fix  # noqa: E402,F401
