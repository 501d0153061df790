"""Command line of "from finding to fix": repair, repairs (and, below, ack, unack, incidents).

Registered on the ``regindex`` group by ``cli.py``; thin like it: parse, call the core, print.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection

from regindex import config, output
from regindex import db as dbmod
from regindex.cli import Failure, cli, config_option, core_errors, db_option, format_option
from regindex.errors import EXIT_FINDINGS


def _incident_findings() -> Callable[[Connection, str], list[int]]:
    from regindex import incidents

    return incidents.finding_ids


@cli.command()
@db_option
@config_option
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["orphan_layer_link", "orphan_index_child"]),
              help="What to repair (repeatable; default orphan_layer_link, or every repairable kind with "
                   "--finding/--incident).")
@click.option("--registry", "registries", multiple=True, metavar="NAME", help="Only this registry (repeatable).")
@click.option("--repository", "repositories", multiple=True, metavar="GLOB",
              help="Only repositories matching this glob, e.g. 'team/*' (repeatable).")
@click.option("--finding", "keys", multiple=True, metavar="KEY",
              help="Only this finding (its key or 8+ leading hex digits; repeatable).")
@click.option("--incident", "incidents", multiple=True, metavar="ID", help="Only this incident's findings.")
@click.option("--apply", "do_apply", is_flag=True, help="Do it (without --apply: print what would be done).")
@click.option("--quarantine", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where moved files go (default: regindex-quarantine beside the database).")
@click.option("--undo", "undo_ref", metavar="ACTION|BATCH", default=None,
              help="Put back what an action (id) or a batch did, refusing to overwrite anything new.")
@core_errors
def repair(db: str | None, config_path: str | None, kinds: tuple[str, ...], registries: tuple[str, ...],
           repositories: tuple[str, ...], keys: tuple[str, ...], incidents: tuple[str, ...], do_apply: bool,
           quarantine: Path | None, undo_ref: str | None) -> None:
    """Repair what the findings prove safe to repair. A dry run unless --apply.

    orphan_layer_link (default): move the orphan _layers/<alg>/<hex>/ directory into the quarantine (what the
    reference scanner deletes). orphan_index_child (--kind orphan_index_child): write the child's revision link
    again when its manifest and every blob it needs are present and valid; otherwise say which tags to push
    again. Every step is checked on disk right before it is done; nothing is deleted; nothing under blobs/,
    no manifest and no tag is touched. Exit status: 0, or 1 when an applied step failed.
    """
    from regindex import repair as rp

    url = dbmod.resolve_url(config.database(db, config_path))
    if undo_ref is not None:
        if do_apply or kinds or registries or repositories or keys or incidents:
            raise click.UsageError("--undo takes no other selection")
        engine = dbmod.open_writer(url)
        try:
            rows = rp.undo(engine, url, undo_ref.strip(), quarantine, echo=_echo_undo)
        finally:
            engine.dispose()
        done = sum(1 for r in rows if r["outcome"] == rp.DONE)
        click.echo(f"undo {undo_ref}: {done} put back, {len(rows) - done} not")
        if any(r["outcome"] == rp.FAILED for r in rows):
            sys.exit(EXIT_FINDINGS)
        return
    sel = rp.Selection(kinds, registries, repositories, keys, incidents)
    if not do_apply:
        try:
            qdir: Path | None = quarantine or rp.default_quarantine(url)
        except rp.RepairError:
            qdir = None  # PostgreSQL without --quarantine: --apply will ask for one
        with dbmod.reader(url) as conn:
            steps = rp.plan(conn, sel, _incident_findings(), qdir)
        click.echo("dry run: nothing is changed (add --apply to do it)")
        for s in steps:
            _echo_lines(rp.describe(s, applied=False))
        n = {o: sum(1 for s in steps if s.outcome == o) for o in (rp.WOULD, rp.SKIPPED, rp.REFUSED)}
        click.echo(f"{n[rp.WOULD]} to do, {n[rp.SKIPPED]} skipped, {n[rp.REFUSED]} refused")
        return
    engine = dbmod.open_writer(url)
    try:
        batch = rp.apply(engine, url, sel, quarantine,
                         echo=lambda s: _echo_lines(rp.describe(s, applied=True)),
                         incident_findings=_incident_findings())
    finally:
        engine.dispose()
    click.echo(f"batch {batch.id}: {batch.count(rp.DONE)} done, {batch.count(rp.SKIPPED)} skipped, "
               f"{batch.count(rp.REFUSED)} refused, {batch.count(rp.FAILED)} failed")
    if batch.count(rp.DONE):
        if batch.quarantine:
            click.echo(f"quarantine: {batch.quarantine / str(batch.id)} (manifest.json lists what moved from where)")
        click.echo(f"undo with: regindex repair --undo {batch.id}; the next scan resolves what was repaired")
        if any(s.outcome == rp.DONE and s.action == rp.QUARANTINE for s in batch.steps):
            click.echo("a registry with the in-memory blob-descriptor cache keeps serving moved links until it "
                       "restarts: restart it before pushing again")
    if batch.count(rp.FAILED):
        sys.exit(EXIT_FINDINGS)


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(output.printable(line))


def _echo_undo(r: dict[str, Any]) -> None:
    text = f"{r['outcome']} undo of action {r['undoes']} ({r['action']}): {r['v2']}/{r['path']}"
    if r["reason"]:
        text += f": {r['reason']}"
    click.echo(output.printable(text))


@cli.command()
@db_option
@config_option
@click.option("--batch", default=None, help="Only this batch.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@format_option
@core_errors
def repairs(db: str | None, config_path: str | None, batch: str | None, limit: int, fmt: str) -> None:
    """List what `regindex repair --apply` and `--undo` did, newest first (who, when, which finding, path,
    outcome)."""
    from regindex import repair as rp
    from regindex.timespec import iso

    with dbmod.reader(config.database(db, config_path)) as conn:
        rows = rp.list_actions(conn, limit, batch)
    if fmt == "table":  # the finding's short key (as `findings -v` and `repair --finding` take it), UTC to the second
        rows = [{**r, "at": iso(r["at"]), "finding": (r["finding_key"] or "")[:12]} for r in rows]
    cols = rp.ACTION_COLUMNS if fmt != "table" else ("id", "batch", "at", "os_user", "finding", "action", "outcome",
                                                    "registry", "repository", "path", "reason")
    click.echo(output.render(rows, cols, fmt), nl=False)


def _ack_selection(key: str | None, incident: str | None, kind: str | None, registry: str | None,
                   repositories: tuple[str, ...]) -> Any:
    from regindex.ack import AckSelection

    return AckSelection(key, incident, kind, registry, repositories)


@cli.command()
@click.argument("key", required=False)
@db_option
@config_option
@click.option("--incident", default=None, metavar="ID", help="Every open finding of this incident.")
@click.option("--kind", default=None, help="Every open finding of this kind (with --registry).")
@click.option("--registry", default=None, metavar="NAME", help="With --kind: in this registry.")
@click.option("--repository", "repositories", multiple=True, metavar="GLOB",
              help="With --kind/--registry: only repositories matching this glob (repeatable).")
@click.option("--reason", required=True, help="Why it is accepted (shown in the report and in findings).")
@click.option("--until", default=None, metavar="DATE",
              help="Ends at the start of this day, UTC (YYYY-MM-DD) or at an ISO timestamp; default: until the "
                   "finding resolves or `regindex unack`.")
@core_errors
def ack(key: str | None, db: str | None, config_path: str | None, incident: str | None, kind: str | None,
        registry: str | None, repositories: tuple[str, ...], reason: str, until: str | None) -> None:
    """Acknowledge open findings as known: KEY (or 8+ leading hex digits), --incident ID, or --kind K --registry R
    [--repository GLOB]. They stay listed, marked, but no longer count for --fail-on, the open-error metrics or
    the summary. It ends when it expires, when the finding resolves, or with `regindex unack`; a re-opened
    finding is not acknowledged."""
    from regindex import ack as ackmod
    from regindex.repair import os_user

    when = ackmod.parse_until(until)
    engine = dbmod.open_writer(config.database(db, config_path))
    try:
        with engine.begin() as conn:
            rows = ackmod.select_findings(conn, _ack_selection(key, incident, kind, registry, repositories),
                                          _incident_findings())
            n = ackmod.acknowledge(conn, rows, reason, when, os_user())
    finally:
        engine.dispose()
    click.echo(f"acknowledged {n} open finding{'s' if n != 1 else ''}"
               + (f" until {when.isoformat(timespec='minutes')}" if when else " until it resolves"))


@cli.command()
@click.argument("key", required=False)
@db_option
@config_option
@click.option("--incident", default=None, metavar="ID")
@click.option("--kind", default=None)
@click.option("--registry", default=None, metavar="NAME")
@click.option("--repository", "repositories", multiple=True, metavar="GLOB")
@core_errors
def unack(key: str | None, db: str | None, config_path: str | None, incident: str | None, kind: str | None,
          registry: str | None, repositories: tuple[str, ...]) -> None:
    """End the acknowledgement of open findings, named as for `regindex ack`."""
    from regindex import ack as ackmod
    from regindex.repair import os_user

    engine = dbmod.open_writer(config.database(db, config_path))
    try:
        with engine.begin() as conn:
            rows = ackmod.select_findings(conn, _ack_selection(key, incident, kind, registry, repositories),
                                          _incident_findings())
            n = ackmod.unacknowledge(conn, rows, os_user())
    finally:
        engine.dispose()
    click.echo(f"ended {n} acknowledgement{'s' if n != 1 else ''}")


@cli.command()
@db_option
@config_option
@click.option("--registry", "registries", multiple=True, metavar="NAME", help="Only this registry (repeatable).")
@format_option
@core_errors
def incidents(db: str | None, config_path: str | None, registries: tuple[str, ...], fmt: str) -> None:
    """Open findings grouped by cause (same registry, same run, same inventory change), most errors first, each
    with its counts, the tags a pull of which fails, and the one command that repairs it."""
    from regindex import incidents as inc

    with dbmod.reader(config.database(db, config_path)) as conn:
        known = set(conn.exec_driver_sql("SELECT name FROM registries").scalars())
        unknown = [r for r in registries if r not in known]
        if unknown:
            raise Failure(
                f"unknown registry {unknown[0]!r}; registries: {', '.join(sorted(known)) or 'none yet'}")
        rows = [i.as_row() for i in inc.group(conn, registries=registries)]
    click.echo(output.render(rows, inc.INCIDENT_COLUMNS if fmt != "table" else inc.TABLE_COLUMNS, fmt,
                             max_width=110), nl=False)
