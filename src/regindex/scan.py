"""One scan, end to end: discover → crawl → load (episodes) → parse manifests → checks → history.

All database work of a run happens in one transaction: a run that fails or is interrupted leaves every
inventory row and every finding as it was, and is recorded as ``failed`` in a transaction of its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from regindex import __version__, checks, history, store
from regindex.crawl import (
    DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_READERS,
    ReadPool,
    BlobTooLarge,
    RegistryRoot,
    crawl_into,
    discover,
    digest_of,
    hash_blob,
    read_blob,
    safe_text,
)
from regindex.errors import ConfigError, LockError, RegindexError, ScanAborted, StorageError, one_line
from regindex.db import DEFAULT_DB
from regindex.manifests import KIND_UNKNOWN, ParsedManifest, parse_manifest
from regindex.rules import UPLOAD_PURGE_HOURS

Progress = Callable[[str], None]

# A link file whose change time is this close to (or after) the start of the run that read it is read again by
# the next run: a write within the same tick of the filesystem's clock (or of a skewed NFS server's) would not
# change the time a later stat shows.
SETTLE_SECONDS = 10.0


@dataclass
class ScanOptions:
    base: Path
    caches: frozenset[str] = frozenset()
    verify_content: bool = False
    stale_upload_hours: float = UPLOAD_PURGE_HOURS
    allow_empty: bool = False
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES
    now: datetime | None = None  # for tests: the clock of stale_upload
    severity_rules: tuple[Any, ...] = ()  # regindex.policy.Rule, from the config file's [[severity]] tables
    full: bool = False  # read every file (no link row reused from the inventory)
    full_scan_every: int | None = None  # make every Nth run a full one (config); None: only with ``full``
    settle_seconds: float = SETTLE_SECONDS  # a link changed this close to a run's start is read again next run

    def for_record(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"] = str(self.base)
        d["caches"] = sorted(self.caches)
        d.pop("now")
        if not d["severity_rules"]:
            d.pop("severity_rules")
        return d


@dataclass
class ScanOutcome:
    run_id: int
    status: str  # complete | partial | failed
    failures: dict[str, str] = field(default_factory=dict)
    counts: history.HistoryCounts = field(default_factory=history.HistoryCounts)
    open_errors: int = 0  # not acknowledged (what --fail-on counts)
    acknowledged_errors: int = 0
    registries: int = 0
    repositories: int = 0
    links: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    manifests_parsed: int = 0
    uploads: int = 0
    inventory_changes: int = 0
    duration_seconds: float = 0.0
    files_stat: int = 0
    files_read: int = 0
    files_skipped: int = 0
    full_scan: bool = True  # every file read (no row reused from the inventory)
    # registry -> how many repositories its per-repository checks derived, for each registry derived in scope
    # (regindex.checks.scope_repositories); the other registries were derived whole or carried
    checks_scope: dict[str, int] = field(default_factory=dict)


class PhaseClock:
    """Wall time and work items per phase of a run, summed over registries (recorded in ``run_phases``)."""

    # "scope" is part of "checks": the query that finds what a night's changes reach (scan._scoped)
    ORDER = ("discover", "crawl", "load", "manifests", "verify", "scope", "checks", "history")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t

    def count(self, phase: str, n: int) -> None:
        self.items[phase] = self.items.get(phase, 0) + n

    def rows(self) -> list[tuple[str, int, float, int | None]]:
        return [(p, i, self.seconds[p], self.items.get(p)) for i, p in enumerate(self.ORDER) if p in self.seconds]


# ---------------------------------------------------------------------------------------------
# Locking: one scan per database at a time (cron overlap, a slow night).


@contextmanager
def scan_lock(engine: Engine) -> Iterator[None]:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        # the real path: two spellings of one database (a symlink) must take one lock
        path = Path(os.path.realpath(url.database or DEFAULT_DB))
        lock_path = path.with_name(path.name + ".lock")
        fh = open(lock_path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockError(f"another regindex scan holds {lock_path}") from None
            yield
        finally:
            fh.close()
        return
    key = int.from_bytes(hashlib.sha256(b"regindex-scan").digest()[:8], "big", signed=True)
    with engine.connect() as conn:
        # its own session, out of the pool: a failed run disposes the pool (_mark_failed) while this connection
        # still holds the lock, and a connection checked in to a disposed pool stayed open until collected
        conn.detach()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        if not got:
            raise LockError("another regindex scan holds the database's advisory lock")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


# ---------------------------------------------------------------------------------------------


def run_scan(engine: Engine, opts: ScanOptions, progress: Progress | None = None) -> ScanOutcome:
    with scan_lock(engine):
        return _run(engine, opts, progress)


def record_failed_run(engine: Engine, base: Path, message: str) -> int | None:
    """A scan that could not start (a bad config file) recorded as a failed run, for the metrics to show it.
    None when another scan holds the lock (its own run speaks for the database)."""
    try:
        with scan_lock(engine):
            with engine.begin() as conn:
                run_id = store.start_run(conn, safe_text(str(base)), {}, __version__)
                store.finish_run(conn, run_id, "failed", store.utcnow(), error=safe_text(message)[:2000])
            return run_id
    except LockError:
        return None


def _run(engine: Engine, opts: ScanOptions, progress: Progress | None) -> ScanOutcome:
    with engine.begin() as conn:
        run_id = store.start_run(conn, safe_text(str(opts.base)), opts.for_record(), __version__)
        store.fail_stale_runs(conn, before=run_id)  # we hold the lock: an older 'running' run was killed
    started = store.utcnow()
    held: list[Connection] = []
    try:
        _say(progress, f"run {run_id} started")
        return _scan(engine, run_id, started, opts, progress, held)
    except BaseException as exc:
        if isinstance(exc, RegindexError):
            exc.run_id = run_id
        # First let go of the run's own connection: an interrupt can land anywhere, even between the end of
        # the work and the COMMIT, and a connection left checked out keeps SQLite's write lock (the run's
        # failure could then not be recorded: a SIGTERM used to block ~150 s and leave the run 'running').
        for conn in held:
            _abandon(conn)
        if _interrupted(exc):
            exc = KeyboardInterrupt()  # also when the interrupt surfaced as another error (an assertion of the
            # database library's commit, cut short by it)
            message = "interrupted"
        elif isinstance(exc, RegindexError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {one_line(exc)}"
        still_running = _mark_failed(engine, run_id, started, message)
        if isinstance(exc, KeyboardInterrupt) and still_running is False:
            raise _aborted(run_id, f"run {run_id} was interrupted after it was recorded as finished; its results "
                           "are kept") from None
        if isinstance(exc, RegindexError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise _aborted(run_id, f"run {run_id} interrupted, nothing changed") from None
        if isinstance(exc, SQLAlchemyError):
            raise _aborted(run_id, f"run {run_id} failed, nothing changed: database error: {one_line(exc)}") from exc
        if os.environ.get("REGINDEX_DEBUG"):
            raise
        raise _aborted(
            run_id,
            f"run {run_id} failed, nothing changed: internal error {message} (REGINDEX_DEBUG=1 shows the traceback)"
        ) from exc


def _aborted(run_id: int, message: str) -> ScanAborted:
    exc = ScanAborted(message)
    exc.run_id = run_id
    return exc


def _interrupted(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__context__ or exc.__cause__, seen + 1
    return False


def _abandon(conn: Connection) -> None:
    """Close the driver connection under ``conn`` now: its open transaction is discarded and its locks go."""
    try:
        conn.invalidate()
    except BaseException:  # already closed, or a second interrupt: nothing more to do here
        pass


class _WriteTransaction:
    """``engine.begin()`` for the run's one transaction, with the connection registered in ``held`` until it
    is closed, so that whoever catches an interrupt can abandon it. (``engine.begin()`` is a generator: an
    interrupt inside its ``__exit__`` leaves the connection checked out, in its transaction, holding locks.)"""

    def __init__(self, engine: Engine, held: list[Connection]) -> None:
        self.engine = engine
        self.held = held

    def __enter__(self) -> Connection:
        self.conn = self.engine.connect()
        self.held.append(self.conn)
        self.conn.begin()
        return self.conn

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if typ is None:
            self.conn.commit()
        else:
            _abandon(self.conn)
        self.conn.close()
        self.held.remove(self.conn)


def _mark_failed(engine: Engine, run_id: int, started: datetime, message: str) -> bool | None:
    """Record the failure in a transaction of its own, only while the run is still 'running' (an interrupt
    after the COMMIT must not relabel a finished run). True: recorded; False: the run had finished; None:
    could not record it (the next scan marks the run failed: fail_stale_runs)."""
    for attempt in range(5):
        engine.dispose()
        try:
            with engine.begin() as conn:
                return store.finish_run(conn, run_id, "failed", started, error=safe_text(message)[:2000],
                                        only_running=True)
        except SQLAlchemyError:
            time.sleep(0.2 * (attempt + 1))
        except KeyboardInterrupt:
            return None  # a second interrupt: give up
    return None


def _say(progress: Progress | None, msg: str) -> None:
    if progress:
        progress(msg)


def _scan(
    engine: Engine, run_id: int, started: datetime, opts: ScanOptions, progress: Progress | None,
    held: list[Connection],
) -> ScanOutcome:
    clock = PhaseClock()
    with clock("discover"):
        roots = discover(opts.base)
    unknown_caches = opts.caches - {r.name for r in roots}
    if unknown_caches:
        raise ConfigError(f"--cache names no registry under {opts.base}: {', '.join(sorted(unknown_caches))}")

    failures: dict[str, str] = {}
    outcome = ScanOutcome(run_id, "complete")
    with _WriteTransaction(engine, held) as conn:
        foreign = store.not_owned(conn)
        if foreign:
            user = conn.exec_driver_sql("SELECT current_user").scalar_one()
            raise ConfigError(
                f"the database role {user} does not own {', '.join(foreign)}: a scan analyses the tables it "
                "loads, which PostgreSQL allows only the tables' owner (without statistics its queries can run "
                "for hours); connect as the owner, or GRANT the owner's role to this one")
        known = store.registry_ids(conn)
        store.start_changes(conn)  # what this scan changes: the checks' scope (regindex.checks.scope_repositories)
        outcome.full_scan = opts.full or store.full_scan_due(conn, run_id, opts.full_scan_every)
        settled = started.timestamp() - opts.settle_seconds
        scanned: dict[str, int] = {}
        unchanged: set[int] = set()  # registries whose inventory this run did not change
        roles: dict[int, str] = {}
        for root in roots:
            if root.problem:
                failures[root.name] = root.problem
                continue
            name = root.name
            role = "cache" if name in opts.caches else "authoritative"
            # absolute: repair acts on this root later, maybe from another directory
            rid = store.upsert_registry(conn, name, safe_text(str(root.v2.absolute())), role, run_id)
            roles[rid] = role
            # One savepoint per registry: storage that cannot be read fails this registry, not the others.
            savepoint = conn.begin_nested()
            try:
                loaded = _load_registry(conn, run_id, rid, root, opts, progress, clock, outcome.full_scan, settled)
            except _STORAGE_OR_ODD as exc:
                savepoint.rollback()
                failures[name] = str(exc) if isinstance(exc, StorageError) else _odd(name, "cannot index", exc)
                continue
            if isinstance(loaded, str):
                savepoint.rollback()
                failures[name] = loaded
                continue
            savepoint.commit()
            counts, stats, parsed, work, files_seen = (loaded.counts, loaded.stats, loaded.parsed, loaded.work,
                                                       loaded.files_seen)
            if loaded.unchanged:
                unchanged.add(rid)
            outcome.files_stat += work.stat
            outcome.files_read += work.read
            outcome.files_skipped += work.skipped
            store.record_run_registry(
                conn, run_id, rid, "complete",
                repositories=counts.repositories, links=counts.links, blobs=counts.blobs,
                blob_bytes=counts.blob_bytes, uploads=counts.uploads,
                files_seen=files_seen, inventory_added=stats.added, inventory_removed=stats.removed,
            )
            store.mark_scanned(conn, rid, run_id)
            scanned[name] = rid
            outcome.repositories += counts.repositories
            outcome.links += counts.links
            outcome.blobs += counts.blobs
            outcome.blob_bytes += counts.blob_bytes
            outcome.uploads += counts.uploads
            outcome.manifests_parsed += parsed
            outcome.inventory_changes += stats.added + stats.removed

        discovered = {r.name for r in roots}
        for name, rid in known.items():
            if name in discovered:
                continue
            if store.current_counts(conn, rid) == (0, 0):
                continue
            if opts.allow_empty:
                stats = store.close_registry(conn, run_id, rid, changes=True)
                store.record_run_registry(conn, run_id, rid, "complete", inventory_removed=stats.removed)
                scanned[name] = rid
            else:
                failures[name] = (
                    f"{name}: registry is gone from {opts.base} (the last scan saw it); pass --allow-empty if it "
                    "was removed on purpose"
                )
        for name, err in failures.items():
            rid = known.get(name) or store.upsert_registry(
                conn, name, safe_text(str(opts.base / name)), "cache" if name in opts.caches else "authoritative", run_id
            )
            store.record_run_registry(conn, run_id, rid, "failed", error=safe_text(err)[:2000])

        if not scanned:
            raise StorageError("; ".join(failures.values()) or f"nothing to scan under {opts.base}")

        _say(progress, "checking")
        with clock("checks"):
            check_opts = checks.CheckOptions(stale_upload_hours=opts.stale_upload_hours, now=opts.now)
            carried, derive = _carried(conn, scanned, unchanged, roles, outcome, check_opts, opts)
            scope = _scoped(conn, run_id, derive, roles, outcome, check_opts, opts, clock)
            outcome.checks_scope = {name: len(scope[rid]) for name, rid in scanned.items() if rid in scope}
            full = [rid for rid in derive if rid not in scope]
            store.checks_page_cache(conn)
            if derive:
                store.refresh_statistics(conn)
            found = checks.run_checks(conn, full, check_opts)
            digests = {rid: checks.scope_digests(conn, run_id, rid) for rid in scope}
            for rid in sorted(scope):  # one registry at a time: the scope's repositories are names in it
                found += checks.run_checks(conn, [rid], check_opts, scope=scope[rid], digests=digests[rid])
            found += checks.run_checks(conn, carried, check_opts, kinds=checks.CLOCK_KINDS)
            from regindex.policy import grade

            grade(found, opts.severity_rules)
        clock.count("checks", len(found))
        _say(progress, "recording history")
        with clock("history"):
            by_id = {rid: name for name, rid in scanned.items()}
            outcome.counts = history.apply(
                conn, run_id, found, set(scanned), carried={by_id[rid] for rid in carried},
                derived=checks.CLOCK_KINDS, scoped={by_id[rid]: repos for rid, repos in scope.items()},
                scoped_kinds=checks.PER_REPOSITORY_KINDS,
                digest_scoped={by_id[rid]: ds for rid, ds in digests.items()}, digest_kinds=checks.DIGEST_KINDS)
            store.set_checks_fingerprint(conn, derive, {
                rid: checks.fingerprint(roles.get(rid, "authoritative"), check_opts, opts.severity_rules)
                for rid in derive})
            store.drop_changes(conn)
        store.record_phases(conn, run_id, clock.rows())
        outcome.open_errors = history.open_error_count(conn)
        outcome.acknowledged_errors = history.open_error_count(conn, acknowledged=True)
        outcome.status = "partial" if failures else "complete"
        outcome.failures = failures
        outcome.registries = len(scanned)
        store.finish_run(
            conn, run_id, outcome.status, started,
            registries=outcome.registries, repositories=outcome.repositories, links=outcome.links,
            blobs=outcome.blobs, blob_bytes=outcome.blob_bytes, manifests_parsed=outcome.manifests_parsed,
            uploads=outcome.uploads, inventory_changes=outcome.inventory_changes,
            findings_open=_open_count(conn), open_errors=outcome.open_errors, findings_new=outcome.counts.new,
            findings_resolved=outcome.counts.resolved,
            error=safe_text("; ".join(failures.values()))[:2000] if failures else None,
            files_stat=outcome.files_stat, files_read=outcome.files_read, files_skipped=outcome.files_skipped,
            full_scan=outcome.full_scan,
        )
    outcome.duration_seconds = (store.utcnow() - started).total_seconds()
    return outcome


# What one odd object in a registry can raise that no check foresaw (a value the database refuses, a name it
# cannot encode): it fails that registry, never the night's scan of every registry. A database that stops
# answering (OperationalError) still fails the run.
_ODD_CONTENT: tuple[type[BaseException], ...] = (
    UnicodeError, ValueError, OverflowError, RecursionError, OSError, DataError, IntegrityError,
)
_STORAGE_OR_ODD: tuple[type[BaseException], ...] = (StorageError, *_ODD_CONTENT)


def _odd(name: str, what: str, exc: BaseException) -> str:
    if os.environ.get("REGINDEX_DEBUG"):
        raise exc
    return (f"{name}: {what} this registry: {type(exc).__name__}: {one_line(exc)} "
            "(REGINDEX_DEBUG=1 shows the traceback)")


@dataclass
class StorageWork:
    stat: int = 0  # files and directories stat'ed or listed
    read: int = 0  # files read
    skipped: int = 0  # files not read because nothing says they changed


def _load_registry(
    conn: Connection, run_id: int, rid: int, root: RegistryRoot, opts: ScanOptions, progress: Progress | None,
    clock: PhaseClock, full: bool, settled: float,
) -> Loaded | str:
    """Crawl one registry into the staging tables and apply it to the inventory; parse its new manifests.
    A string says why the registry must not be applied (it became suddenly empty). Unless ``full``, link files
    unchanged since the inventory read them settled are stat'ed, not read (``crawl_into``)."""
    name = root.name
    t0 = time.perf_counter()
    _say(progress, f"crawling {name}")

    def tick(n: int) -> None:
        rate = n / max(time.perf_counter() - t0, 1e-3)
        _say(progress, f"crawling {name}: {n:,} files, {rate:,.0f} files/s")

    with clock("crawl"):
        known = None if full else store.KnownLinks(conn, rid)
        # what the load changes is recorded for the incremental manifest walk and the checks' scope; a full scan
        # uses neither (it walks from every root and derives every check)
        stage = store.Stage(conn, incremental=known is not None, changes=not full)
        known_blobs = None if full else store.blob_buckets(conn, rid)
        known_sums = None if full else store.link_sums(conn, rid)
        crawled = crawl_into(root, stage.add, tick, known=known, settled=settled,  # rows stream into staging
                             known_blobs=known_blobs, known_sums=known_sums)
    work = StorageWork(stat=crawled.stat, read=crawled.read, skipped=crawled.skipped)
    clock.count("crawl", crawled.files_seen)
    _say(progress, f"loading {name}")
    with clock("load"):
        counts = stage.finish(reused=crawled.skipped, registry_id=rid)
        emptied = _suddenly_empty(conn, rid, counts)
        if emptied and not opts.allow_empty:
            return (
                f"{name}: {emptied} suddenly empty (the last scan saw content); refusing to resolve "
                "everything (pass --allow-empty if it really was emptied)"
            )
        stats = stage.apply(run_id, rid)
        stage.drop()
    clock.count("load", stats.added + stats.removed)
    _say(progress, f"parsing manifests of {name}")
    with clock("manifests"):
        parsed = hashed = reach_changed = 0
        # Nothing of the registry's links and blobs changed: the parses and hashes its last scan made stand
        # (parsing is idempotent over the same inventory), and so does its reach. A full scan walks the
        # manifests again all the same; so does a scan of a registry whose reach was never recorded.
        recorded = store.reach_recorded(conn, rid)
        if full or stats.changed or not recorded:
            store.refresh_statistics(conn)  # the planner must know the inventory it just loaded
            incremental = not full and counts.blobs > 0 and recorded
            # what the changes may cut off the reach, asked before the walk rewrites the hashes it reads
            at_risk = store.reach_at_risk(conn, rid) if incremental else set()
            walk = _parse_manifests(conn, run_id, rid, root.v2, opts.max_manifest_bytes, incremental=incremental)
            parsed, hashed = walk.parsed, walk.hashed
            reach_changed = store.record_reach(conn, run_id, rid, walk.reached, whole=walk.whole)
            if not walk.whole:
                reach_changed += store.prune_reach(conn, run_id, rid, at_risk, walk.reached, walk.aliases)
    clock.count("manifests", parsed)
    if opts.verify_content:
        _say(progress, f"verifying blob content of {name}")
        with clock("verify"):
            _verify_content(conn, run_id, rid, root.v2)
    unchanged = not (stats.changed or parsed or hashed or reach_changed or opts.verify_content)
    return Loaded(counts, stats, parsed, work, crawled.files_seen, unchanged)


@dataclass
class Loaded:
    """One registry's crawl, applied. ``unchanged``: nothing of its inventory, manifests or hashes changed."""

    counts: store.StageCounts
    stats: store.LoadStats
    parsed: int
    work: StorageWork
    files_seen: int
    unchanged: bool


def _carried(
    conn: Connection, scanned: dict[str, int], unchanged: set[int], roles: dict[int, str], outcome: ScanOutcome,
    check_opts: checks.CheckOptions, opts: ScanOptions,
) -> tuple[list[int], list[int]]:
    """(carried, derived): which scanned registries keep their open findings as they are (only the clock's
    kinds are derived again) and which get every check. A registry is carried when this run changed nothing
    of its inventory, no manifest was parsed in any registry (parses are shared by digest, so one registry's
    new manifest can change another's findings), it is not a full scan (``--full`` derives everything) and
    its findings were derived before (``_derived_before``)."""
    ids = sorted(scanned.values())
    if outcome.full_scan or outcome.manifests_parsed:
        return [], ids
    carried = [rid for rid in _derived_before(conn, outcome.run_id, ids, roles, check_opts, opts) if rid in unchanged]
    return carried, [rid for rid in ids if rid not in carried]


def _derived_before(
    conn: Connection, run_id: int, ids: list[int], roles: dict[int, str], check_opts: checks.CheckOptions,
    opts: ScanOptions,
) -> list[int]:
    """Those of ``ids`` whose open findings are what every check gave at the end of the finished run before
    this one: that run scanned them (had one failed there, another registry may have parsed manifests in that
    run after its findings were derived), and their findings were last derived under the same fingerprint
    (code, schema, role, options, severity rules) as now. The condition for carrying or scoping them."""
    known = store.checks_fingerprints(conn)
    previous = store.checked_in_previous_run(conn, run_id)
    return [rid for rid in ids if rid in roles and rid in previous and known.get(rid) is not None
            and known[rid] == checks.fingerprint(roles[rid], check_opts, opts.severity_rules)]


# A scoped derivation pays for its scope query and per-repository lookups; past this share of a registry's
# repositories, or this many (the scope is bound as a list of values: SQLite binds at most 32766), the whole
# registry is derived instead.
SCOPE_SHARE = 0.5
SCOPE_MAX = 5000


def _scoped(
    conn: Connection, run_id: int, derive: list[int], roles: dict[int, str], outcome: ScanOutcome,
    check_opts: checks.CheckOptions, opts: ScanOptions, clock: PhaseClock,
) -> dict[int, set[str]]:
    """Among the registries to derive, those whose per-repository findings can be derived for the repositories
    this run's changes reach only (registry id -> those repositories): not a full scan, its findings derived
    before (``_derived_before``: so they are those of the inventory before this run's changes), and the
    changes reach at most SCOPE_SHARE of its repositories and no more than SCOPE_MAX."""
    if outcome.full_scan or not derive:
        return {}
    eligible = _derived_before(conn, run_id, derive, roles, check_opts, opts)
    if not eligible:
        return {}
    with clock("scope"):
        scope = checks.scope_repositories(conn, run_id, eligible)
        used = {rid: repos for rid, repos in scope.items()
                if len(repos) <= min(SCOPE_MAX, SCOPE_SHARE * store.current_counts(conn, rid)[0])}
    clock.count("scope", sum(len(repos) for repos in used.values()))
    return used


def _suddenly_empty(conn: Connection, registry_id: int, counts: store.StageCounts) -> str | None:
    """Which part of a registry vanished since the last scan saw content in it (repositories or blobs)."""
    repos, blobs = store.current_counts(conn, registry_id)
    gone = [what for what, had, has in (("repositories/", repos, counts.repositories), ("blobs/", blobs, counts.blobs))
            if had and not has]
    return " and ".join(gone) + (" are" if len(gone) > 1 else " is") if gone else None


def _open_count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT COUNT(*) FROM findings WHERE resolved_run IS NULL")).scalar_one())


# An incremental walk asks, upwards, whether each changed blob is reached; past this share of the registry's
# blobs changed (a first scan: all of them), walking from every root is cheaper.
WALK_SHARE = 0.2


@dataclass
class Walk:
    """What a manifest walk did: ``parsed`` manifests, ``hashed`` blobs' bytes (and recorded them), the digests
    it ``reached`` (from every root when ``whole``, else from what the scan's changes opened), and the registry's
    _layers ``aliases`` it followed (``store.layer_aliases``)."""

    parsed: int
    hashed: int
    reached: set[str]
    whole: bool
    aliases: dict[str, set[str]]


def _parse_manifests(conn: Connection, run_id: int, registry_id: int, v2: Path, cap: int,
                     incremental: bool = False) -> Walk:
    """Parse manifests from link targets to their children, to a fixpoint, driven by the inventory in SQL.

    ``incremental``: the walk before this scan's changes covered the registry (every committed inventory was
    walked in the same savepoint that loaded it), so only what the changes reach can need reading: the walk
    starts from the roots this scan's links diff opened, and from the changed blobs (data appeared, size or
    mtime changed) that the walk from every root reaches (``store.reached_from_roots``); from there it
    follows children as the whole walk does. Everything else it would find hashed at its size and mtime,
    its stored parse standing. Unless too much changed (WALK_SHARE): then it walks from every root.

    A manifest's parse is stored once per (digest, size), ever. Its bytes are read again only when the blob's
    size or mtime changed since they were last hashed in this registry: every read is hashed, so a same-size
    rewrite of a known manifest is a digest mismatch, and bytes that are not the digest's content never
    replace the parse of the genuine content (another registry may hold it): their parse is stored under their
    own hash.
    """
    aliases = store.layer_aliases(conn, registry_id)
    queue: set[str] | None = None
    if incremental:
        roots, changed = store.walk_seeds(conn, registry_id)
        blobs = store.current_counts(conn, registry_id)[1]
        if len(roots) + len(changed) <= WALK_SHARE * blobs:
            # an alias whose path the walk reaches: its target too (the alias may be new)
            changed |= {t for targets in aliases.values() for t in targets}
            queue = roots | store.reached_from_roots(conn, registry_id, changed - roots, aliases)
    whole = queue is None
    if queue is None:
        queue = store.manifest_roots(conn, registry_id)
    # (digest, size) of the parses this walk stores (genuine content, and bytes stored under the digest they hash
    # to): bytes that hash to content another blob of the registry holds genuinely, met in the same batch,
    # must not be stored twice
    added: set[tuple[str, int]] = set()
    done: set[str] = set()
    parsed_total = hashed_total = 0
    while queue:
        level = queue - done
        done |= level
        queue = {t for d in level & aliases.keys() for t in aliases[d]}
        new: list[tuple[str, int, ParsedManifest]] = []
        hashes: list[tuple[str, int, float, str | None, str | None]] = []
        already: list[tuple[str, int]] = []

        def flush(at_least: int) -> int:
            """Write parses, hashes and follow known manifests' children in batches: memory stays flat."""
            nonlocal hashed_total
            written = 0
            if len(new) >= at_least:
                store.insert_manifests(conn, run_id, new)
                written = len(new)
                new.clear()
            if len(hashes) >= at_least:
                hashed_total += len(hashes)
                store.save_verifications(conn, registry_id, run_id, hashes)
                hashes.clear()
            if len(already) >= at_least:
                queue.update(d for _role, d in store.manifest_refs_of(conn, already))
                already.clear()
            return written

        for cand, got in _prefetched(v2, cap, store.manifest_candidates(conn, registry_id, level)):
            digest, size, mtime, is_known = cand.digest, cand.size, cand.mtime, cand.known
            key = (digest, size)
            same = cand.parsed_as()  # hashed at this size and mtime: its stored parse stands for it
            if same is not None:
                if same != key or cand.refers:  # its own parse, without children or subject: nothing to follow
                    already.append(same)
            else:
                try:
                    if isinstance(got, BaseException):
                        raise got
                    raw = got
                except BlobTooLarge as big:
                    raw, pm = None, ParsedManifest(
                        KIND_UNKNOWN, None, error=f"{big.size} bytes, above the {cap}-byte manifest cap: not parsed")
                else:
                    if raw is None:
                        continue
                    pm = parse_manifest(raw)
                computed = digest_of(digest, raw) if raw is not None else None
                genuine = computed is None or computed == digest
                hashes.append((digest, size, mtime, computed, None if genuine else pm.error))
                if not genuine:
                    # The evidence lives in blob_verifications and the (digest, size) row stays the genuine
                    # content's. These bytes are what the registry serves and garbage-collect reads and marks,
                    # so their parse is kept under the digest they do hash to (regindex.rules looks it up there).
                    assert computed is not None
                    if (computed, size) in added:
                        pass  # stored by this walk: its children are queued
                    elif not store.manifest_exists(conn, computed, size):
                        added.add((computed, size))
                        new.append((computed, size, pm))
                        queue.update(ref.digest for ref in pm.refs if ref.role in ("child", "subject"))
                    else:
                        already.append((computed, size))  # parsed before: follow its children, as a later night does
                    continue
                if is_known:
                    if cand.refers:
                        already.append(key)
                elif key not in added:  # (else stored by this walk for other bytes that hash to it)
                    added.add(key)
                    new.append((digest, size, pm))
                    queue.update(ref.digest for ref in pm.refs if ref.role in ("child", "subject"))
            parsed_total += flush(2000)
        parsed_total += flush(0)
    return Walk(parsed_total, hashed_total, done, whole, aliases)


# Manifest data read ahead by a pool (cold reads wait on the disk): at most this many files, and bytes (by the
# sizes the crawl saw), at a time.
_PREFETCH_FILES = 256
_PREFETCH_BYTES = 16 * 1024 * 1024


def _prefetched(
    v2: Path, cap: int, candidates: list[store.Candidate],
) -> Iterator[tuple[store.Candidate, bytes | None | BaseException]]:
    """The candidates with the bytes of those that must be read (``read_blob``'s result, or what it raised),
    read a bounded batch at a time by the crawl's pool (threads only when the reads wait on the disk); None for
    the others."""
    def needs_read(c: store.Candidate) -> bool:
        return c.parsed_as() is None

    def read(digest: str) -> bytes | None | BaseException:
        try:
            return read_blob(v2, digest, cap)
        except (BlobTooLarge, StorageError) as exc:
            return exc

    pool = ReadPool(DEFAULT_READERS)
    try:
        i = 0
        while i < len(candidates):
            j, total = i, 0
            while j < len(candidates) and j - i < _PREFETCH_FILES and (j == i or total < _PREFETCH_BYTES):
                total += candidates[j].size if needs_read(candidates[j]) else 0
                j += 1
            batch = candidates[i:j]
            wanted = [c.digest for c in batch if needs_read(c)]
            got = dict(zip(wanted, pool.map(read, wanted)))
            for c in batch:
                yield c, got.get(c.digest)
            i = j
    finally:
        pool.close()


def _verify_content(conn: Connection, run_id: int, registry_id: int, v2: Path) -> None:
    """Re-hash blob data whose size or mtime changed since it was last hashed (or never hashed)."""
    batch: list[tuple[str, int, float, str | None, str | None]] = []
    for digest, size, mtime in store.blobs_to_verify(conn, registry_id):
        batch.append((digest, size, mtime, hash_blob(v2, digest), None))
        if len(batch) >= 500:
            store.save_verifications(conn, registry_id, run_id, batch)
            batch = []
    store.save_verifications(conn, registry_id, run_id, batch)
    # A _layers link under another algorithm than its target (sha512 path, sha256 content) is a legitimate
    # alias only if the target's data hashes to the path's digest: its row is keyed by the alias digest.
    aliases = [(path_digest, size, mtime, hash_blob(v2, target, path_digest.split(":")[0]), None)
               for path_digest, target, size, mtime in store.aliases_to_verify(conn, registry_id)]
    store.save_verifications(conn, registry_id, run_id, sorted(set(aliases)))
