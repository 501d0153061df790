"""``regindex scan`` as a nightly job: the policy around one run (``scan.run_scan``).

``run(request, log)`` is the one call the command line makes. It settles the options (the command line wins,
then the config file's key of the same name, then the default), refuses an output target that cannot be written
before anything is recorded, makes SIGTERM end the run like Ctrl-C (rolled back, recorded as failed), writes the
metrics after every run that opened the database (a failed one too: they never go stale) and the report after
it, tells the scan's log (progress, errors, the summary), and returns the outcome with its exit code.
Every expected failure is a ``RegindexError``; the caller prints.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from regindex import config
from regindex import db as dbmod
from regindex.errors import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    ConfigError,
    LockError,
    OutputError,
    RegindexError,
    ReportError,
)
from regindex.logs import ScanLog
from regindex.scan import ScanOptions, ScanOutcome, record_failed_run, run_scan

@dataclass(frozen=True)
class ScanRequest:
    """What ``regindex scan`` was asked: each option as given on the command line, ``None`` where it was not.

    ``settle`` fills an option that was not given from the config file's key of the same name (``config.Settings``),
    else leaves the default of the field of the same name in ``ScanOptions`` (what the scan itself reads) or in
    ``ScanPlan`` (what the job around it reads). A new option is one field here, named like its config key and
    like the field that receives it."""

    base: Path
    config_path: str | None = None
    db: str | None = None
    caches: tuple[str, ...] = ()  # added to the config file's
    fail_on: str | None = None
    verify_content: bool | None = None
    stale_upload_hours: float | None = None
    allow_empty: bool = False
    report_dir: Path | None = None
    metrics: Path | None = None
    full: bool | None = None  # read every link file (scan --full)
    full_scan_every: int | None = None  # config only: every Nth scan is a full one
    settle_seconds: float | None = None  # config only: see scan.SETTLE_SECONDS


@dataclass(frozen=True)
class ScanPlan:
    """The settled options: the scan's own, and the job's around it."""

    options: ScanOptions
    db: str | None = None
    fail_on: str = "open"  # exit 1 on: open error findings (open), new ones (new), never
    report_dir: Path | None = None
    metrics: Path | None = None


@dataclass
class JobOutcome:
    scan: ScanOutcome
    exit_code: int
    report: Path | None = None  # the dated report written after the run


_SCAN_FIELDS = frozenset(f.name for f in fields(ScanOptions))
_PLAN_FIELDS = frozenset(f.name for f in fields(ScanPlan))


def settle(request: ScanRequest, settings: config.Settings) -> ScanPlan:
    """The command line wins, then the config file, then the defaults; caches are the union of both."""
    chosen: dict[str, Any] = {}
    for f in fields(request):
        value = getattr(request, f.name)
        if value is None:
            value = getattr(settings, f.name, None)
        if value is not None:
            chosen[f.name] = value
    chosen["caches"] = frozenset(request.caches) | frozenset(settings.caches)
    chosen["severity_rules"] = tuple(settings.severity)
    options = ScanOptions(**{k: v for k, v in chosen.items() if k in _SCAN_FIELDS})
    return ScanPlan(options=options, **{k: v for k, v in chosen.items() if k in _PLAN_FIELDS - {"options"}})


def exit_code(outcome: ScanOutcome, fail_on: str) -> int:
    """2 when a registry could not be read; 1 when ``fail_on`` counts open (or new) error findings; else 0."""
    if outcome.failures:
        return EXIT_ERROR
    if fail_on == "open" and outcome.open_errors:
        return EXIT_FINDINGS
    if fail_on == "new" and outcome.counts.new_errors:
        return EXIT_FINDINGS
    return EXIT_OK


def run(request: ScanRequest, log: ScanLog) -> JobOutcome:
    _quiet_pool_logs()
    try:
        settings = config.load(request.config_path)
    except ConfigError as exc:
        _record_bad_config(request, exc)
        raise
    plan = settle(request, settings)
    if plan.metrics:
        writable_target(plan.metrics, "--metrics", is_dir=False)
    if plan.report_dir:
        writable_target(plan.report_dir, "--report", is_dir=True)
    engine = dbmod.open_writer(plan.db)
    try:
        with signals_as_interrupt():
            try:
                outcome = run_scan(engine, plan.options, log.progress)
            except RegindexError as exc:
                log.end_progress()
                if exc.run_id is not None and not isinstance(exc, LockError):
                    # a failed or interrupted run: the metrics say so (they never go stale), and so does the report
                    if plan.metrics:
                        write_metrics(engine, plan.metrics, exc.run_id)
                    if plan.report_dir:
                        _report_anyway(engine, plan.report_dir)
                log.summary(status="failed", error=str(exc))
                raise
            log.end_progress()
            if plan.metrics:
                write_metrics(engine, plan.metrics, outcome.run_id)
            report = None
            if plan.report_dir:
                from regindex import render

                report = render.write_dated(engine, plan.report_dir)
            _log_outcome(log, outcome)
    finally:
        engine.dispose()  # (a failed run too: its pooled connections are closed, not left to the collector)
    return JobOutcome(scan=outcome, exit_code=exit_code(outcome, plan.fail_on), report=report)


def _log_outcome(log: ScanLog, outcome: ScanOutcome) -> None:
    for err in outcome.failures.values():
        log.error(err)
    c = outcome.counts
    log.summary(
        status=outcome.status, registries=outcome.registries, repositories=outcome.repositories,
        links=outcome.links, blobs=outcome.blobs, blob_bytes=outcome.blob_bytes,
        manifests_parsed=outcome.manifests_parsed, uploads=outcome.uploads,
        inventory_changes=outcome.inventory_changes, findings_new=c.new, findings_reopened=c.reopened,
        findings_persisting=c.persisting, findings_resolved=c.resolved, open_errors=outcome.open_errors,
        duration_seconds=round(outcome.duration_seconds, 3), failed_registries=sorted(outcome.failures),
    )


def _quiet_pool_logs() -> None:
    """SQLAlchemy's pool logs what an interrupt leaves it (a reset cut short); with no handler configured Python
    would print that to stderr as a traceback. The run's own outcome is reported, once."""
    pool_log = logging.getLogger("sqlalchemy")
    if not any(isinstance(h, logging.NullHandler) for h in pool_log.handlers):
        pool_log.addHandler(logging.NullHandler())


def _record_bad_config(request: ScanRequest, exc: ConfigError) -> None:
    """A bad config file must not leave yesterday's metrics saying all is well: when the command line names the
    metrics file and a database, the failure is recorded as a run and the metrics say so."""
    if not (request.metrics and (request.db or os.environ.get("REGINDEX_DB"))):
        return
    writable_target(request.metrics, "--metrics", is_dir=False)
    engine = dbmod.open_writer(request.db)
    run_id = record_failed_run(engine, request.base, str(exc))
    if run_id is not None:
        write_metrics(engine, request.metrics, run_id)
    engine.dispose()


def writable_target(path: Path, what: str, is_dir: bool) -> None:
    """Fail before scanning, not after the run is committed, when an output cannot be written."""
    if path.exists() and path.is_dir() != is_dir:
        raise OutputError(f"{what}: {path} is {'not ' if is_dir else ''}a directory")
    where = path if is_dir and path.exists() else path.parent
    if not where.is_dir():
        raise OutputError(f"{what}: directory {where} does not exist")
    if not os.access(where, os.W_OK):
        raise OutputError(f"{what}: {where} is not writable")


def _terminate_as_interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM (a CronJob's deadline, systemd stop) ends a scan like Ctrl-C: rolled back, run marked failed."""
    raise KeyboardInterrupt


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    signal.signal(signal.SIGINT, _terminate_as_interrupt)
    try:
        yield
    finally:
        # The run is over (recorded, rolled back or failed): a signal from now on ends the process the default
        # way, without a traceback from wherever the interpreter happens to be.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_metrics(engine: Engine, path: Path, run_id: int) -> None:
    from regindex import metrics

    with engine.connect() as conn:
        body = metrics.render(conn, run_id)
    metrics.write(path, body)


def _report_anyway(engine: Engine, report_dir: Path) -> None:
    from regindex import render

    try:
        render.write_dated(engine, report_dir)
    except ReportError:
        pass  # no finished scan yet: nothing to show
