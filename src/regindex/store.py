"""Bulk loading of one scan into the inventory, as episodes.

For each table, the crawl's rows for one registry are streamed into a staging table (the driver's executemany
in big batches, COPY on PostgreSQL: both measurably faster than Core ``insert()`` here, see benchmarks/) and
compared with the registry's open episodes by set operations in SQL: rows no longer seen get ``gone_run`` = this
run, rows not seen before get a new episode. Everything happens inside the caller's transaction; the ORM unit
of work is never used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)

from regindex.crawl import BUCKET_HEX
from regindex.manifests import ParsedManifest
from regindex.models import (
    Anomaly,
    Blob,
    BlobBucket,
    BlobVerification,
    Link,
    LinkSum,
    Manifest,
    ManifestRef,
    Registry,
    Repository,
    Run,
    RunPhase,
    RunRegistry,
    Upload,
    table,
)

CHUNK = 5000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | str | None) -> datetime | None:
    """A timestamp read back from the database, as an aware UTC datetime: SQLite gives naive datetimes (or
    strings, through textual SQL), PostgreSQL aware ones."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def chunks(rows: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


# ---------------------------------------------------------------------------------------------
# Runs and registries


def start_run(conn: Connection, base: str, options: dict[str, Any], version: str) -> int:
    res = conn.execute(
        insert(table(Run)).values(
            started_at=utcnow(), status="running", base=base, options=json.dumps(options, sort_keys=True),
            tool_version=version,
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def finish_run(
    conn: Connection, run_id: int, status: str, started: datetime, only_running: bool = False, **counts: Any
) -> bool:
    """Record the end of a run; with ``only_running`` only if it is still 'running'. True when recorded."""
    now = utcnow()
    t = table(Run)
    cond = [t.c.id == run_id] + ([t.c.status == "running"] if only_running else [])
    res = conn.execute(
        update(t).where(*cond)
        .values(status=status, finished_at=now, duration_seconds=(now - started).total_seconds(), **counts)
    )
    return bool(res.rowcount)


def registry_ids(conn: Connection) -> dict[str, int]:
    t = table(Registry)
    return {name: rid for rid, name in conn.execute(select(t.c.id, t.c.name))}


def upsert_registry(conn: Connection, name: str, root: str, role: str, run_id: int) -> int:
    t = table(Registry)
    row = conn.execute(select(t.c.id).where(t.c.name == name)).first()
    if row is None:
        res = conn.execute(insert(t).values(name=name, root=root, role=role, first_run=run_id))
        return int(res.inserted_primary_key[0])  # type: ignore[index]
    conn.execute(update(t).where(t.c.id == row.id).values(root=root, role=role))
    return int(row.id)


def checks_fingerprints(conn: Connection) -> dict[int, str | None]:
    """Registry id -> the fingerprint its open findings were last derived under (regindex.checks.fingerprint)."""
    t = table(Registry)
    return {int(r.id): r.checks_fingerprint for r in conn.execute(select(t.c.id, t.c.checks_fingerprint))}


def checked_in_previous_run(conn: Connection, run_id: int) -> set[int]:
    """The registries the finished run before ``run_id`` (complete or partial: a failed run changed nothing)
    scanned completely, and so derived or carried their findings in."""
    q = text(
        "SELECT registry_id FROM run_registries WHERE status = 'complete' AND run_id = (SELECT MAX(id) FROM runs "
        "WHERE id < :run AND status IN ('complete', 'partial'))"
    )
    return {int(r[0]) for r in conn.execute(q, {"run": run_id})}


def set_checks_fingerprint(conn: Connection, registry_ids: Sequence[int], fingerprints: dict[int, str]) -> None:
    t = table(Registry)
    for rid in registry_ids:
        conn.execute(update(t).where(t.c.id == rid).values(checks_fingerprint=fingerprints[rid]))


def record_phases(conn: Connection, run_id: int, rows: Sequence[tuple[str, int, float, int | None]]) -> None:
    """(phase, position, seconds, items) of one run."""
    if rows:
        conn.execute(insert(table(RunPhase)), [
            {"run_id": run_id, "phase": p, "position": i, "seconds": round(sec, 3), "items": n} for p, i, sec, n in rows
        ])


def full_scan_due(conn: Connection, run_id: int, every: int | None) -> bool:
    """Whether this run reads every link: the first run (nothing to reuse), or ``every`` (the config's
    ``full_scan_every``) says so: the runs since the last full one (runs before 0006 read everything) and this
    one make ``every``."""
    done = text("SELECT COUNT(*) FROM runs WHERE id < :run AND status IN ('complete', 'partial')")
    if not conn.execute(done, {"run": run_id}).scalar_one():
        return True
    if not every:
        return False
    q = text(
        "SELECT COUNT(*) FROM runs WHERE id < :run AND status IN ('complete', 'partial') AND id > COALESCE("
        "(SELECT MAX(id) FROM runs WHERE id < :run AND status IN ('complete', 'partial') "
        "AND (full_scan IS NULL OR full_scan = :yes)), 0)"
    )
    since = int(conn.execute(q, {"run": run_id, "yes": True}).scalar_one())
    return since + 1 >= every


def mark_scanned(conn: Connection, registry_id: int, run_id: int) -> None:
    t = table(Registry)
    conn.execute(update(t).where(t.c.id == registry_id).values(last_scanned_run=run_id))


def record_run_registry(conn: Connection, run_id: int, registry_id: int, status: str, **values: Any) -> None:
    conn.execute(insert(table(RunRegistry)).values(run_id=run_id, registry_id=registry_id, status=status, **values))


def current_counts(conn: Connection, registry_id: int) -> tuple[int, int]:
    """Present (repositories, blobs) of a registry in the inventory (the 'suddenly empty' test)."""
    out = []
    for model in (Repository, Blob):
        t = table(model)
        out.append(int(conn.execute(
            select(func.count()).select_from(t).where(t.c.registry_id == registry_id, t.c.gone_run.is_(None))
        ).scalar_one()))
    return out[0], out[1]


def fail_stale_runs(conn: Connection, before: int) -> int:
    """Runs still marked running under the scan lock were killed (SIGKILL, power loss): say so."""
    t = table(Run)
    res = conn.execute(
        update(t).where(t.c.status == "running", t.c.id < before)
        .values(status="failed", error="did not finish (the process was killed); nothing of it was kept")
    )
    return int(res.rowcount or 0)


# ---------------------------------------------------------------------------------------------
# Episodes: the crawl is streamed into staging tables, then diffed against the open episodes in SQL


@dataclass(frozen=True)
class EpisodeSpec:
    table: Table
    identity: tuple[str, ...]  # columns whose change makes a new episode
    mutable: tuple[str, ...] = ()  # columns updated in place (no new episode)
    # nullable identity columns (compared NULL-safely); a staging index on ``index`` serves the diff
    nullable: tuple[str, ...] = ()
    index: tuple[str, ...] = ()
    # identity columns whose values repeat widely (a shared base layer's digest is the target of thousands of
    # links): SQLite must not look inventory rows up by them (``_match``)
    skewed: tuple[str, ...] = ()


SPECS: dict[str, EpisodeSpec] = {
    "repositories": EpisodeSpec(table(Repository), ("name", "has_manifests", "has_tags_dir"), index=("name",)),
    "links": EpisodeSpec(
        table(Link), ("repository", "kind", "tag", "path_digest", "target_digest", "state", "preview"),
        mutable=("changed",), nullable=("tag", "path_digest", "target_digest", "preview"),
        index=("repository", "kind", "path_digest"), skewed=("target_digest",),
    ),
    "blobs": EpisodeSpec(table(Blob), ("digest", "size"), ("mtime",), index=("digest",)),
    "uploads": EpisodeSpec(table(Upload), ("repository", "uuid", "started_raw"), ("started_at", "size"),
                           nullable=("started_raw",), index=("repository", "uuid")),
    "anomalies": EpisodeSpec(table(Anomaly), ("path", "reason"), index=("path",)),
}
# crawl row type -> staging key (the crawl yields these dataclasses; their fields are the columns)
ROW_KINDS = {"RepoRow": "repositories", "LinkRow": "links", "BlobRow": "blobs", "UploadRow": "uploads",
             "Anomaly": "anomalies", "LinkRecheck": "link_recheck", "BlobBucket": "blob_buckets",
             "LinkSum": "link_sums", "CleanRepository": "clean_repositories"}
# staging key -> its columns: each episode table's, and the ids of known links an incremental crawl rechecks
STAGED: dict[str, tuple[str, ...]] = {
    **{key: spec.identity + spec.mutable for key, spec in SPECS.items()}, "link_recheck": ("id",),
    "blob_buckets": ("bucket", "blobs", "bytes", "checksum"), "link_sums": ("repository", "links", "checksum"), "clean_repositories": ("repository",)}
# the staged keys that are not episode tables: the table their columns' types come from
_STAGE_TABLES = {"link_recheck": table(Link), "blob_buckets": table(BlobBucket), "link_sums": table(LinkSum),
                 "clean_repositories": table(LinkSum)}
STAGE_BATCH = 20000
SQLITE_CACHE_KIB = 32 * 1024
SQLITE_DEFAULT_CACHE = -2000  # (SQLite's own default: 2,000 KiB)


@dataclass
class LoadStats:
    added: int = 0
    removed: int = 0
    updated: int = 0  # open episodes whose mutable columns changed (a blob's mtime, an upload's size)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.updated)


@dataclass
class StageCounts:
    repositories: int = 0
    links: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    uploads: int = 0
    anomalies: int = 0


def _stage_name(key: str) -> str:
    return f"stage_{key}"


class Stage:
    """One registry's crawl, streamed into temporary tables in big batches (the driver's executemany; COPY on
    PostgreSQL), then diffed against the registry's open episodes with set operations. Python never holds
    more than one batch of rows.

    ``incremental``: the crawl was given the inventory's known links and gave rows only for the links it
    read; a known link it found unchanged gives no row, one it did not find unchanged a ``LinkRecheck``, and
    the links of a repository it found clean (``CleanRepository``) none either. The links diff then compares
    the staged rows with the open links it could have read: those without a settled change time, those
    rechecked, and those of repositories it did not walk (gone)."""

    def __init__(self, conn: Connection, incremental: bool = False, changes: bool = False) -> None:
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.incremental = incremental
        self.changes = changes  # record what apply() changes in CHANGES_TABLE (start_changes)
        self.buffers: dict[str, list[tuple[Any, ...]]] = {k: [] for k in STAGED}
        self.rows: dict[str, int] = dict.fromkeys(STAGED, 0)
        self.reused = 0  # known links the crawl found unchanged (finish)
        # per row kind: the columns' values in one C call (attrgetter); the few kinds holding datetimes or
        # booleans go through _to_db on SQLite (this runs once per file of the tree: it must be cheap)
        self.getters: dict[str, Callable[[Any], tuple[Any, ...]]] = {}
        for kind, key in ROW_KINDS.items():
            cols = STAGED[key]
            get = attrgetter(*cols) if len(cols) > 1 else (lambda row, c=cols[0]: (getattr(row, c),))
            self.getters[kind] = _converted(conn, get) if key in ("repositories", "uploads") and not self.pg else get
        if not self.pg:
            # A bounded page cache for the inventory and the staging tables (SQLite's default is 2 MiB): with
            # the default, diffing ~1M staged rows thrashed the temporary file (GBs of writes); this stays the
            # same size whatever the tree's.
            conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            conn.exec_driver_sql(f"PRAGMA temp.cache_size = -{SQLITE_CACHE_KIB}")
        for key, names in STAGED.items():
            t = SPECS[key].table if key in SPECS else _STAGE_TABLES[key]
            temp_table(conn, _stage_name(key), t, names)

    def add(self, row: Any) -> None:
        kind = type(row).__name__
        key = ROW_KINDS[kind]
        buf = self.buffers[key]
        buf.append(self.getters[kind](row))
        if len(buf) >= STAGE_BATCH:
            self._flush(key)

    def add_all(self, rows: Iterable[Any]) -> None:
        for row in rows:
            self.add(row)

    def _flush(self, key: str) -> None:
        buf = self.buffers[key]
        if not buf:
            return
        driver_insert(self.conn, _stage_name(key), STAGED[key], buf)
        self.rows[key] += len(buf)
        buf.clear()

    def finish(self, reused: int = 0, registry_id: int | None = None) -> StageCounts:
        """Flush, index and analyse the staging tables; how many distinct rows the crawl gave (``reused``: the
        known links it found unchanged, which it gave no row for; an incremental crawl's blobs of the buckets it
        found the same, which it gave nothing for, are counted from ``registry_id``'s blob_buckets)."""
        self.reused = reused
        for key in STAGED:
            self._flush(key)
            name = _stage_name(key)
            index = SPECS[key].index if key in SPECS else STAGED[key]
            self.conn.exec_driver_sql(f"CREATE INDEX ix_{name} ON {name} ({', '.join(index)})")
            if self.pg and key not in SPECS:  # (an inventory table's stage: when _diff compares it)
                self.conn.exec_driver_sql(f"ANALYZE {name}")
        one = self.conn.exec_driver_sql
        blobs, blob_bytes = one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM stage_blobs").one()
        if self.incremental and registry_id is not None:
            # the blobs of the buckets found the same were not staged: the count and bytes kept stand for them
            clean = self.conn.execute(text(
                "SELECT COALESCE(SUM(blobs), 0), COALESCE(SUM(bytes), 0) FROM blob_buckets WHERE registry_id = :rid "
                "AND bucket NOT IN (SELECT bucket FROM stage_blob_buckets)"), {"rid": registry_id}).one()
            blobs, blob_bytes = blobs + clean[0], blob_bytes + clean[1]
        return StageCounts(
            repositories=int(one("SELECT COUNT(DISTINCT name) FROM stage_repositories").scalar_one()),
            links=self.rows["links"] + reused,
            blobs=int(blobs),
            blob_bytes=int(blob_bytes),
            uploads=self.rows["uploads"],
            anomalies=self.rows["anomalies"],
        )

    def apply(self, run_id: int, registry_id: int) -> LoadStats:
        """Close the open episodes the crawl no longer saw, update mutable columns, open episodes for new rows."""
        stats = LoadStats()
        if self.incremental:
            # the repositories the crawl did not walk (gone): before their own diff closes them
            drop_temp(self.conn, "gone_repositories")
            self.conn.execute(text(
                "CREATE TEMPORARY TABLE gone_repositories AS SELECT name FROM repositories WHERE registry_id = :rid "
                "AND gone_run IS NULL EXCEPT SELECT name FROM stage_repositories"), {"rid": registry_id})
        for key, spec in SPECS.items():
            capture = _CAPTURES.get(key, []) if self.changes else []
            if key == "blobs":
                if not self.incremental or self.rows["blob_buckets"]:  # (else every bucket was found the same)
                    dirty = self._dirty_blobs()
                    _diff(self.conn, spec, _stage_name(key), run_id, registry_id, stats, dirty, capture,
                          scoped_new=dirty is not None)
                self._keep_buckets(registry_id)
            elif key == "links" and self.incremental:
                # few staged rows against many unchanged links: each staged row looked up, not the registry's
                # every open link read for a set difference (0.48 s of each 1M night; 105 s the other way
                # round, when a full crawl stages every link)
                few = self.rows["links"] * PROBE_RATIO <= self.reused
                _diff(self.conn, spec, _stage_name(key), run_id, registry_id, stats, _RECHECKABLE, capture,
                      probe=few)
            else:
                _diff(self.conn, spec, _stage_name(key), run_id, registry_id, stats, None, capture)
        self._keep_link_sums(registry_id)
        drop_temp(self.conn, "gone_repositories")
        drop_temp(self.conn, "blob_ranges")
        return stats

    def _dirty_blobs(self) -> str | None:
        """The inventory's blobs an incremental crawl could have staged: those of the buckets it gave (new,
        changed or gone), as a query for ``_diff`` (``None``: a full crawl staged every blob, so all of them).
        On SQLite each run of consecutive buckets is one range of the blobs' current index."""
        if not self.incremental:
            return None
        if self.pg:
            # PostgreSQL compares strings by the database's collation, whose order of ':' ';' '~' and the hex
            # digits need not be the bytes' (en_US: punctuation is ignored at first): a bucket is matched by
            # equality instead, a hashed semi-join over the registry's blobs
            return ("SELECT {cols} FROM blobs WHERE registry_id = :rid AND gone_run IS NULL AND EXISTS "
                    "(SELECT 1 FROM stage_blob_buckets c WHERE c.bucket = "
                    f"substr(blobs.digest, 1, strpos(blobs.digest, ':') + {BUCKET_HEX}))")
        dirty = [b for (b,) in self.conn.exec_driver_sql("SELECT bucket FROM stage_blob_buckets ORDER BY bucket")]
        ranges = bucket_ranges(dirty)  # SQLite compares strings by their bytes
        drop_temp(self.conn, "blob_ranges")
        digest = _sql_type(self.conn, table(Blob), "digest")
        self.conn.exec_driver_sql(f"CREATE TEMPORARY TABLE blob_ranges (lo {digest}, hi {digest})")
        driver_insert(self.conn, "blob_ranges", ("lo", "hi"), ranges)
        return ("SELECT {cols} FROM blob_ranges g CROSS JOIN blobs WHERE blobs.registry_id = :rid "
                "AND blobs.gone_run IS NULL AND blobs.digest >= g.lo AND blobs.digest < g.hi")

    def _keep_buckets(self, registry_id: int) -> None:
        """What this crawl saw of the blobs, by bucket, for the next crawl (``regindex.crawl.KnownBlobs``): the
        buckets it gave are replaced by what it saw (or dropped: gone), the others stay; after a full crawl,
        which gave every bucket it found, only those."""
        p = {"rid": registry_id}
        if self.incremental:
            self.conn.execute(text("DELETE FROM blob_buckets WHERE registry_id = :rid "
                                   "AND bucket IN (SELECT bucket FROM stage_blob_buckets)"), p)
        else:
            self.conn.execute(text("DELETE FROM blob_buckets WHERE registry_id = :rid"), p)
        self.conn.execute(text("INSERT INTO blob_buckets (registry_id, bucket, blobs, bytes, checksum) "
                               "SELECT :rid, bucket, blobs, bytes, checksum FROM stage_blob_buckets WHERE blobs > 0"), p)

    def _keep_link_sums(self, registry_id: int) -> None:
        """What this crawl saw of each repository's link files, for the next crawl (``regindex.crawl.KnownSums``):
        the repositories it found clean keep theirs, the others get what it saw (none when a link file was
        not settled, or the repository is gone)."""
        p = {"rid": registry_id}
        self.conn.execute(text("DELETE FROM link_sums WHERE registry_id = :rid "
                               "AND repository NOT IN (SELECT repository FROM stage_clean_repositories)"), p)
        self.conn.execute(text("INSERT INTO link_sums (registry_id, repository, links, checksum) "
                               "SELECT :rid, repository, links, checksum FROM stage_link_sums"), p)

    def drop(self) -> None:
        for key in STAGED:
            drop_temp(self.conn, _stage_name(key))


def checks_page_cache(conn: Connection) -> None:
    """SQLite: the main database's page cache back to SQLite's default for the checks (the staging's larger one,
    ``Stage``, stays for temporary tables). Their lookups land all over an inventory far larger than either
    cache, and the larger one only cost more to keep: 1M files, every check: 11.8 s with 32 MiB, 9.9 s with the
    default (2 MiB; 0.5 MiB and 8 MiB within 0.2 s of it)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA cache_size = {SQLITE_DEFAULT_CACHE}")


# An incremental load looks each staged link up in the inventory (instead of a set difference with every open
# link of the registry) when the crawl staged at most one link for every PROBE_RATIO it found unchanged.
PROBE_RATIO = 4


# What a scan changed in the inventory, as Stage.apply diffs it (with ``changes``): one row per row of an
# episode table that was opened, closed or updated, as (registry_id, what, repository, digest). The checks'
# scope on a night that changed little starts from it (regindex.checks.scope_repositories). A temporary table
# of the scan's transaction: a registry whose savepoint rolls back takes its rows with it.
CHANGES_TABLE = "scan_changes"
_CHANGE_COLUMNS = {
    "repositories": "'repository', name, NULL",
    # the target of a layer or revision link: other repositories' findings name its linkers
    "links": "'link', repository, CASE WHEN kind IN ('layer', 'revision') THEN target_digest END",
    "blobs": "'blob', NULL, digest",
}
# The links whose target is where the manifest walk starts (manifest_roots), besides every revision's path.
_ROOT_KINDS = "('revision', 'tag_current', 'tag_index')"
# What a diff records in CHANGES_TABLE, per episode table: SELECTs over its diff_new and diff_old. Every row
# that differs, either side (_CHANGE_COLUMNS); for links besides, every digest a changed link names by target or
# path, as 'linked' rows (the digest scope of the registry-wide kinds: regindex.checks.scope_digests), and
# where the manifest walk starts among the links a diff opened or changed, as 'root' rows (an incremental walk
# starts from them: ``walk_seeds``). The checks' repository scope reads neither.
_CAPTURES: dict[str, list[str]] = {
    key: [f"SELECT :rid, {cols} FROM diff_new UNION ALL SELECT :rid, {cols} FROM diff_old"]
    for key, cols in _CHANGE_COLUMNS.items()
}
_CAPTURES["links"] += [
    " UNION ".join(f"SELECT :rid, 'linked', NULL, {col} FROM {side} WHERE {col} IS NOT NULL"
                   for side in ("diff_new", "diff_old") for col in ("target_digest", "path_digest")),
    "SELECT :rid, 'root', NULL, target_digest FROM diff_new WHERE state = 'ok' "
    f"AND kind IN {_ROOT_KINDS} AND target_digest IS NOT NULL "
    "UNION SELECT :rid, 'root', NULL, path_digest FROM diff_new WHERE kind = 'revision' AND path_digest IS NOT NULL",
]


def drop_changes(conn: Connection) -> None:
    drop_temp(conn, CHANGES_TABLE)


def start_changes(conn: Connection) -> None:
    """An empty CHANGES_TABLE for this scan."""
    link = table(Link)
    drop_temp(conn, CHANGES_TABLE)
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {CHANGES_TABLE} (registry_id INTEGER, what VARCHAR(16), "
        f"repository {_sql_type(conn, link, 'repository')}, digest {_sql_type(conn, link, 'target_digest')})")


# The open links an incremental crawl gave rows for, or would have (see Stage): the rest it found unchanged.
# Each part is found through an index: the unsettled ones through the partial index of 0009 (SQLite is told
# it: its planner read the registry's current index instead), the rechecked by id, those of the repositories
# the crawl did not walk (every link is walked inside its repository: a link's repository is always a
# repository of the same crawl) through the current index. Read as one condition over every open link, it
# cost 0.41 s of each 1M night.
_RECHECKABLE = (
    "SELECT {cols} FROM links{unsettled} WHERE registry_id = :rid AND gone_run IS NULL AND changed IS NULL "
    "UNION SELECT {cols} FROM links WHERE id IN (SELECT id FROM stage_link_recheck) AND registry_id = :rid "
    "AND gone_run IS NULL "
    "UNION SELECT {cols} FROM links WHERE registry_id = :rid AND gone_run IS NULL "
    "AND repository IN (SELECT name FROM gone_repositories)"
)


def _next_bucket(bucket: str) -> str:
    """The bucket right after ``bucket`` in digest order (past the last one: a string after every digest of
    its algorithm)."""
    alg, hx = bucket.split(":")
    n = int(hx, 16) + 1
    return f"{alg};" if n >= 16 ** len(hx) else f"{alg}:{n:0{len(hx)}x}"


def bucket_ranges(buckets: Sequence[str]) -> list[tuple[str, str]]:
    """The ranges [lo, hi) of digests inside the buckets ``buckets`` (sorted): a digest is in one of them
    exactly when its bucket is among ``buckets``. Consecutive buckets are merged into one range."""
    runs: list[list[str]] = []  # [start, end) of consecutive buckets
    for b in buckets:
        if runs and runs[-1][1] == b:
            runs[-1][1] = _next_bucket(b)
        else:
            runs.append([b, _next_bucket(b)])
    return [(lo, hi) for lo, hi in runs]


def blob_buckets(conn: Connection, registry_id: int) -> dict[str, tuple[int, int, str]]:
    """What the last scan saw of a registry's blobs, by bucket (``regindex.crawl.KnownBlobs``)."""
    # (Integer and BigInteger columns: both drivers give ints; one slice a row, 65k rows at 1M files)
    return {r[0]: r[1:] for r in driver_rows(
        conn, "SELECT bucket, blobs, bytes, checksum FROM blob_buckets WHERE registry_id = ?", (registry_id,))}


def link_sums(conn: Connection, registry_id: int) -> dict[str, tuple[int, str]]:
    """What the last scan saw of a registry's link files, by repository (``regindex.crawl.KnownSums``)."""
    return {r: (int(n), ck) for r, n, ck in driver_rows(
        conn, "SELECT repository, links, checksum FROM link_sums WHERE registry_id = ?", (registry_id,))}


def _converted(conn: Connection, get: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda row: tuple(_to_db(conn, v) for v in get(row))


def digest_table(conn: Connection, name: str, digests: Iterable[str]) -> int:
    """A temporary table ``name`` (column ``digest``) holding ``digests``, in order, replacing any of that name:
    one join through it instead of an IN list (PostgreSQL's planner is told its size). How many rows."""
    temp_table(conn, name, table(Blob), ("digest",))
    rows = [(d,) for d in sorted(digests)]
    driver_insert(conn, name, ("digest",), rows)
    if rows and conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {name}")
    return len(rows)


def temp_table(conn: Connection, name: str, like: Table, cols: Sequence[str]) -> None:
    """An empty temporary table ``name`` with ``like``'s columns ``cols``, typed as there, replacing any of that
    name."""
    drop_temp(conn, name)
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} ("
                         + ", ".join(f"{c} {_sql_type(conn, like, c)}" for c in cols) + ")")


def drop_temp(conn: Connection, name: str) -> None:
    """Drop one of our temporary tables, never a table of the same name in the database's own schema."""
    schema = "pg_temp" if conn.dialect.name == "postgresql" else "temp"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{name}")


def _sql_type(conn: Connection, t: Table, col: str) -> str:
    return str(t.c[col].type.compile(dialect=conn.dialect))


def _to_db(conn: Connection, v: Any) -> Any:
    """Values as the driver takes them (datetimes as SQLAlchemy stores them in SQLite)."""
    if isinstance(v, datetime) and conn.dialect.name == "sqlite":
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, bool) and conn.dialect.name == "sqlite":
        return int(v)
    return v


def plain_filter(conn: Connection, expr: str) -> str:
    """``expr`` as a term SQLite's planner will not choose an index by (a unary ``+``): it only filters the rows
    another index found. The callers say which plan it kept SQLite from. PostgreSQL gets ``expr`` as it is (its
    planner needs no hint, and it has no unary ``+`` on text)."""
    return f"+{expr}" if conn.dialect.name == "sqlite" else expr


def _match(conn: Connection, spec: EpisodeSpec, t: str, s: str) -> str:
    """Identity equality of an inventory row and a staged row, NULL-safe. SQLite: ``IS`` (indexable), and a
    unary ``+`` on ``t``'s skewed columns, which keeps SQLite from looking ``t``'s rows up by them: its
    planner took the links' target index to probe each new link, scanning every link to a shared base layer
    (2.1 s of a 1M churn night's load). PostgreSQL: COALESCE for columns that are never the empty string
    (hashable), an OR otherwise."""
    out = []
    sqlite = conn.dialect.name == "sqlite"
    for c in spec.identity:
        left = plain_filter(conn, f"{t}.{c}") if c in spec.skewed else f"{t}.{c}"
        if c not in spec.nullable:
            out.append(f"{left} = {s}.{c}")
        elif sqlite:
            out.append(f"{left} IS {s}.{c}")
        elif c in ("tag", "path_digest", "target_digest"):
            out.append(f"COALESCE({t}.{c}, '') = COALESCE({s}.{c}, '')")
        else:
            out.append(f"({t}.{c} = {s}.{c} OR ({t}.{c} IS NULL AND {s}.{c} IS NULL))")
    return " AND ".join(out)


# A bulk load builds the table's indexes afterwards when it inserts at least this many rows and at least as many
# as the table holds (SQLite: ever held, its largest id): see _drop_indexes_for_bulk.
BULK_INDEX_ROWS = 50_000

# PostgreSQL: a table's indexes that are not a constraint's (its primary key stays), with their definitions
_PG_INDEXES = ("SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
               "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = CAST(? AS regclass) AND NOT EXISTS "
               "(SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY c.relname")


def _drop_indexes_for_bulk(conn: Connection, table_name: str, stage: str, run_id: int) -> list[str]:
    """Before a bulk insert of ``stage``'s rows into ``table_name``: when the rows are many and at least as many
    as the table holds, its indexes are dropped and their definitions returned, to be created again after the
    insert (one sorted build each instead of a random B-tree insert a row: with a bounded page cache, inserting
    630k links into SQLite's indexes keyed by digests took 7.0 s, 1.2 s without them and 2.5 s to build them;
    PostgreSQL, 126k links: 2.1 s, 0.35 s without them and 0.6 s to build them). The definitions are the
    database's own (``sqlite_master``, ``pg_get_indexdef``), so what is created is what was dropped; all in the
    scan's transaction, so a failure rolls the drop back with the rest.

    Readers: of a SQLite database in WAL mode, they keep seeing the last commit. On PostgreSQL, DROP INDEX locks
    the table against readers until the scan commits, so it is done only while every row of the table is this
    run's own (a new database's first scan): a reader has nothing committed to see there, and waits for the
    scan instead of reading an empty table. (The scan's role has the tables' owner's privileges: ``not_owned``.)"""
    pg = conn.dialect.name == "postgresql"
    if pg:
        staged = int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {stage}").scalar_one())
        if staged < BULK_INDEX_ROWS:
            return []
        committed = conn.execute(text(f"SELECT 1 FROM {table_name} WHERE first_run <> :run LIMIT 1"),
                                 {"run": run_id}).first()
        if committed is not None or staged < int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table_name}")
                                                  .scalar_one()):
            return []
        indexes = driver_rows(conn, _PG_INDEXES, (table_name,))
    else:
        staged = int(conn.exec_driver_sql(f"SELECT COALESCE(MAX(rowid), 0) FROM {stage}").scalar_one())
        held = int(conn.exec_driver_sql(f"SELECT COALESCE(MAX(rowid), 0) FROM {table_name}").scalar_one())
        if staged < BULK_INDEX_ROWS or staged < held:
            return []
        indexes = driver_rows(conn, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                                    "AND sql IS NOT NULL ORDER BY name", (table_name,))
    for name, _sql in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return [sql for _name, sql in indexes]


def _diff(conn: Connection, spec: EpisodeSpec, stage: str, run_id: int, registry_id: int, stats: LoadStats,
          only: str | None = None, capture: Sequence[str] = (), probe: bool = False,
          scoped_new: bool = False) -> None:
    """Two set differences (EXCEPT: sorted or hashed passes over both sides, NULLs equal, no probe per row)
    find the few rows that differ on a night: staged rows the inventory does not hold as they are, and
    inventory rows the crawl did not see as they are. An identity in both differs in a mutable column (updated
    in place); only in the inventory's, it is gone; only in the crawl's, it is new. (Probing an index for each
    of ~600k staged links cost 105 s of an unchanged night at 1M files.) ``only``: a query (``{cols}`` for the
    columns) of the inventory's rows the crawl could have staged: those it did not stage because they are
    unchanged are left out. ``probe``: the staged rows are few; each is looked up in the inventory instead.
    ``scoped_new``: an inventory row equal to a staged row is always one of ``only``'s (the blobs of the
    buckets the crawl staged), so the staged rows are compared with those alone."""
    t = spec.table.name
    p = {"run": run_id, "rid": registry_id}
    cols = spec.identity + spec.mutable
    allc = ", ".join(cols)
    open_rows = f"registry_id = :rid AND gone_run IS NULL"
    if not capture and only is None and conn.execute(text(f"SELECT 1 FROM {t} WHERE {open_rows} LIMIT 1"),
                                                     p).first() is None:
        # nothing open (a first scan of the registry), nothing to record: every staged row opens an episode
        # (200k first scan: the diff tables, their index and a probe per new row, ~0.3 s of the load)
        rebuilt = _drop_indexes_for_bulk(conn, t, stage, run_id)
        added = conn.execute(text(f"INSERT INTO {t} (registry_id, first_run, {allc}) "
                                  f"SELECT DISTINCT :rid, :run, {allc} FROM {stage}"), p)
        for sql in rebuilt:
            conn.exec_driver_sql(sql)
        stats.added += int(added.rowcount or 0)
        return
    if conn.dialect.name == "postgresql":
        # the planner's view of the staged rows, for the set operations and probes below (a first load above
        # needs none: 0.2 s of a 200k first scan)
        conn.exec_driver_sql(f"ANALYZE {stage}")
    unsettled = " INDEXED BY ix_links_unsettled" if conn.dialect.name == "sqlite" else ""
    theirs = only.format(cols=allc, unsettled=unsettled) if only else f"SELECT {allc} FROM {t} WHERE {open_rows}"
    if probe:
        sqlite = conn.dialect.name == "sqlite"
        same = " AND ".join(f"x.{c} IS s.{c}" if sqlite else f"x.{c} IS NOT DISTINCT FROM s.{c}"
                            for c in spec.mutable)
        held = f"x.registry_id = :rid AND x.gone_run IS NULL AND {_match(conn, spec, 'x', 's')}"
        new_rows = (f"SELECT DISTINCT {', '.join('s.' + c for c in cols)} FROM {stage} s WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {t} x WHERE {held}{' AND ' + same if same else ''})")
    elif scoped_new:
        new_rows = f"SELECT {allc} FROM {stage} EXCEPT {theirs}"
    else:
        new_rows = f"SELECT {allc} FROM {stage} EXCEPT SELECT {allc} FROM {t} WHERE {open_rows}"
    for name, query in (
        ("diff_new", new_rows),
        ("diff_old", f"{theirs} EXCEPT SELECT {allc} FROM {stage}"),
    ):
        temp_table(conn, name, spec.table, cols)
        conn.execute(text(f"INSERT INTO {name} ({allc}) {query}"), p)
    # the updates below look each changed row up in diff_new: without an index that is |diff_new| squared (a
    # night after 32k link files were touched: 55 s of loading instead of 0.5 s)
    conn.exec_driver_sql(f"CREATE INDEX ix_diff_new ON diff_new ({', '.join(spec.index)})")
    for query in capture:  # what the checks' scope and the manifest walk start from (_CAPTURES)
        conn.execute(text(f"INSERT INTO {CHANGES_TABLE} (registry_id, what, repository, digest) {query}"), p)
    match_old = _match(conn, spec, "x", "o")
    gone = conn.execute(text(
        f"UPDATE {t} SET gone_run = :run WHERE id IN (SELECT x.id FROM diff_old o JOIN {t} x "
        f"ON x.registry_id = :rid AND x.gone_run IS NULL AND {match_old} "
        f"WHERE NOT EXISTS (SELECT 1 FROM diff_new n WHERE {_match(conn, spec, 'n', 'o')}))"
    ), p)
    stats.removed += int(gone.rowcount or 0)
    if spec.mutable:
        sets = ", ".join(f"{c} = (SELECT n.{c} FROM diff_new n WHERE {_match(conn, spec, t, 'n')})"
                         for c in spec.mutable)
        updated = conn.execute(text(
            f"UPDATE {t} SET {sets} WHERE id IN (SELECT x.id FROM diff_new n JOIN {t} x "
            f"ON x.registry_id = :rid AND x.gone_run IS NULL AND {_match(conn, spec, 'x', 'n')})"
        ), p)
        stats.updated += int(updated.rowcount or 0)
    added = conn.execute(text(
        f"INSERT INTO {t} (registry_id, first_run, {allc}) "
        f"SELECT :rid, :run, {', '.join('n.' + c for c in cols)} FROM diff_new n WHERE NOT EXISTS "
        f"(SELECT 1 FROM {t} x WHERE x.registry_id = :rid AND x.gone_run IS NULL AND {_match(conn, spec, 'x', 'n')})"
    ), p)
    stats.added += int(added.rowcount or 0)
    for name in ("diff_new", "diff_old"):
        drop_temp(conn, name)


_KNOWN_LINKS_SQL = ("SELECT repository, kind, tag, path_digest, changed, id FROM links WHERE registry_id = ? "
                    "AND gone_run IS NULL AND changed IS NOT NULL AND repository IN ({})")


class KnownLinks:
    """A registry's current links whose file was read when its change time was settled (an incremental crawl
    stats those instead of reading them), for the repositories asked for, by repository, then by (kind, tag,
    path digest). The crawl asks only about the repositories it did not find clean (``regindex.crawl.Known``),
    a batch of them per query (one query per repository cost a round trip each: PostgreSQL, 200k tree: 1.5 s
    for 2,700 queries a night)."""

    def __init__(self, conn: Connection, registry_id: int) -> None:
        self.conn, self.registry_id = conn, registry_id
        self.queries = 0

    def __call__(self, names: list[str]) -> dict[str, dict[tuple[str, str | None, str | None], Any]]:
        from regindex.crawl import KnownLink

        self.queries += 1
        out: dict[str, dict[tuple[str, str | None, str | None], Any]] = {name: {} for name in names}
        sql = _KNOWN_LINKS_SQL.format(", ".join("?" * len(names)))
        for name, kind, tag, path_digest, changed, id_ in driver_rows(self.conn, sql, (self.registry_id, *names)):
            out[name][(kind, tag, path_digest)] = KnownLink(changed, id_)  # a Float column and an id: no cast
        return out


# The inventory tables the checks and the manifest walk join: their planner statistics must describe them.
ANALYZED_TABLES = ("links", "blobs", "repositories", "manifests", "manifest_refs", "uploads", "blob_verifications",
                   "manifest_reach")


def not_owned(conn: Connection) -> list[str]:
    """PostgreSQL: the inventory tables whose owner's privileges this session's role lacks (it is neither the
    owner nor a member of the owner's role). Only those may ANALYZE a table (``refresh_statistics``; a role
    without them gets a warning and no statistics, and the checks then plan as for empty tables: a 200k first
    scan ran for more than 7 minutes) or drop and build its indexes (``_drop_indexes_for_bulk``)."""
    if conn.dialect.name != "postgresql":
        return []
    return [name for (name,) in driver_rows(
        conn, "SELECT c.relname FROM pg_class c WHERE c.oid IN (SELECT to_regclass(t) FROM unnest(?::text[]) t) "
              "AND NOT pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY c.relname", (list(ANALYZED_TABLES),))]


def refresh_statistics(conn: Connection) -> list[str]:
    """Planner statistics for the inventory tables the scan changed; which tables it analysed.

    Without them SQLite picks nested scans for the checks' joins (seconds become minutes on large trees), and
    PostgreSQL's autovacuum cannot see the scan's open transaction. SQLite's sampled ANALYZE costs milliseconds
    and always runs. On PostgreSQL, ANALYZE reads a sample of every table (0.4 s a call at 200k, four calls on a
    night that changes three registries): a table is analysed only when the rows changed since its statistics
    were taken exceed autovacuum's own threshold (50 + 10% of its rows), counting this transaction's changes,
    or when it was never analysed."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA analysis_limit=2000")
        conn.exec_driver_sql("ANALYZE")
        return list(ANALYZED_TABLES)
    if conn.dialect.name != "postgresql":
        return []
    seen = _analyzed_in_transaction(conn)
    mods = _modifications(conn, seen)
    stale = _stale(mods)
    if stale:
        conn.exec_driver_sql(f"ANALYZE {', '.join(stale)}")
        for name in stale:
            seen[name] = seen.get(name, 0) + mods[name][0]
    return stale


def stale_statistics(conn: Connection) -> list[str]:
    """PostgreSQL: the inventory tables ``refresh_statistics`` would analyse now."""
    return _stale(_modifications(conn, _analyzed_in_transaction(conn)))


def _stale(mods: dict[str, tuple[int, float]]) -> list[str]:
    def stale(changed: int, rows: float) -> bool:  # rows < 0: never analysed (PostgreSQL 14+)
        return changed > 0 if rows < 0 else changed > 50 + 0.1 * rows

    return [name for name in ANALYZED_TABLES if name in mods and stale(*mods[name])]


def _analyzed_in_transaction(conn: Connection) -> dict[str, int]:
    """Per table analysed in this transaction, how many of its changes the analysis saw (kept on the
    connection under the transaction's id, so a later transaction starts empty)."""
    xid = int(conn.exec_driver_sql("SELECT txid_current()").scalar_one())
    held = conn.info.get("regindex_analyzed")
    if held is None or held[0] != xid:
        held = conn.info["regindex_analyzed"] = (xid, {})
    return held[1]


def _modifications(conn: Connection, seen: dict[str, int]) -> dict[str, tuple[int, float]]:
    """Per inventory table: rows inserted, updated or deleted that its statistics have not seen (those counted
    since its last committed ANALYZE plus this transaction's, which pg_stat_xact_user_tables shows before the
    commit, less those an ANALYZE earlier in this transaction saw), and its row count as of that ANALYZE
    (pg_class.reltuples: -1 or 0 when never analysed). ``seen``: ``_analyzed_in_transaction``."""
    got = driver_rows(
        conn,
        "SELECT c.relname, COALESCE(s.n_mod_since_analyze, 0) "
        "+ COALESCE(x.n_tup_ins + x.n_tup_upd + x.n_tup_del, 0), c.reltuples FROM pg_class c "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "LEFT JOIN pg_stat_xact_user_tables x ON x.relid = c.oid "
        "WHERE c.oid IN (SELECT to_regclass(t) FROM unnest(?::text[]) t)",
        (list(ANALYZED_TABLES),),
    )
    return {r[0]: (int(r[1]) - seen.get(r[0], 0), float(r[2])) for r in got}


def close_registry(conn: Connection, run_id: int, registry_id: int, changes: bool = False) -> LoadStats:
    """A registry that is gone from the base on purpose (``--allow-empty``): close all its episodes; its tree
    names no manifest."""
    stage = Stage(conn, changes=changes)
    stage.finish()
    stats = stage.apply(run_id, registry_id)
    stage.drop()
    record_reach(conn, run_id, registry_id, set(), whole=True)
    return stats


# ---------------------------------------------------------------------------------------------
# Manifests (immutable, once per digest and size)


def manifest_roots(conn: Connection, registry_id: int) -> set[str]:
    """Digests where manifest parsing starts: targets of revision and tag links that parse, and every revision
    path digest (the reference scanner reads revisions by their path)."""
    # SQLite took "target_digest IS NOT NULL" as a range of the target index, and read every link of the
    # registry in target order, a random table row each (1M files: 1.46 s for the three registries); as a
    # plain filter (a unary +) it reads them through the current index, in the table's order: 0.87 s.
    target = plain_filter(conn, "target_digest")
    q = text(
        "SELECT target_digest FROM links WHERE registry_id = :rid AND gone_run IS NULL AND state = 'ok' "
        f"AND kind IN {_ROOT_KINDS} AND {target} IS NOT NULL "
        "UNION SELECT path_digest FROM links WHERE registry_id = :rid AND gone_run IS NULL AND kind = 'revision' "
        "AND path_digest IS NOT NULL"
    )
    return {d for (d,) in conn.execute(q, {"rid": registry_id})}


def layer_aliases(conn: Connection, registry_id: int) -> dict[str, set[str]]:
    """Path digest -> target digests of the _layers links (that parse) naming another digest than their path:
    few (aliases and misdirected links), read from the partial index that holds them alone (0009; SQLite's
    planner preferred the registry's whole current index: 0.7 s at 1M files, 0.1 ms through this one)."""
    hint = " INDEXED BY ix_links_aliases" if conn.dialect.name == "sqlite" else ""
    q = text(
        f"SELECT path_digest, target_digest FROM links{hint} WHERE registry_id = :rid AND gone_run IS NULL "
        "AND kind = 'layer' AND state = 'ok' AND path_digest <> target_digest"
    )
    out: dict[str, set[str]] = {}
    for path, target in conn.execute(q, {"rid": registry_id}):
        out.setdefault(path, set()).add(target)
    return out


def walk_seeds(conn: Connection, registry_id: int) -> tuple[set[str], set[str]]:
    """What this scan's diffs opened or changed in a registry (CHANGES_TABLE): the manifest walk's roots among
    its links (``manifest_roots``), and the present blobs whose data appeared or changed (size, mtime)."""
    q = text(
        f"SELECT c.what, c.digest FROM {CHANGES_TABLE} c WHERE c.registry_id = :rid AND c.digest IS NOT NULL "
        "AND (c.what = 'root' OR (c.what = 'blob' AND EXISTS (SELECT 1 FROM blobs b WHERE b.registry_id = "
        "c.registry_id AND b.gone_run IS NULL AND b.digest = c.digest)))"
    )
    roots: set[str] = set()
    blobs: set[str] = set()
    for what, digest in conn.execute(q, {"rid": registry_id}):
        (roots if what == "root" else blobs).add(digest)
    return roots, blobs


# A digest that is a root of the walk (manifest_roots, for one digest at a time of the walk_up table).
_IS_ROOT = (
    "SELECT u.digest FROM walk_up u WHERE EXISTS (SELECT 1 FROM links l WHERE l.registry_id = :rid "
    "AND l.target_digest = u.digest AND l.gone_run IS NULL AND l.state = 'ok' "
    f"AND l.kind IN {_ROOT_KINDS}) OR EXISTS (SELECT 1 FROM links l "
    "WHERE l.path_digest = u.digest AND l.registry_id = :rid AND l.gone_run IS NULL AND l.kind = 'revision')"
)
# (child, parent): a present blob whose stored parse stands for its bytes (Candidate.parsed_as: hashed at its
# size and mtime to its own digest, and the parse of its own digest and size) names the child.
_STANDING_PARENTS = (
    "SELECT DISTINCT r.digest, b.digest FROM walk_up u CROSS JOIN manifest_refs r "
    "JOIN manifests m ON m.id = r.manifest_id "
    "JOIN blobs b ON b.registry_id = :rid AND b.gone_run IS NULL AND b.digest = m.digest AND b.size = m.size "
    "JOIN blob_verifications v ON v.registry_id = :rid AND v.digest = b.digest AND v.size = b.size "
    "AND ABS(v.mtime - b.mtime) < 1e-6 AND (v.computed_digest IS NULL OR v.computed_digest = v.digest) "
    "WHERE r.digest = u.digest AND r.role IN ('child', 'subject')"
)
# The same for bytes that are not their digest's content: the parse stored under the digest they hash to stands
# for them. Few: loaded once.
_ODD_PARENTS = (
    "SELECT r.digest, b.digest FROM blob_verifications v CROSS JOIN blobs b "
    "JOIN manifests m ON m.digest = v.computed_digest AND m.size = b.size "
    "JOIN manifest_refs r ON r.manifest_id = m.id AND r.role IN ('child', 'subject') "
    "WHERE v.registry_id = :rid AND v.computed_digest IS NOT NULL AND v.computed_digest <> v.digest "
    "AND b.registry_id = v.registry_id AND b.gone_run IS NULL AND b.digest = v.digest AND b.size = v.size "
    "AND ABS(v.mtime - b.mtime) < 1e-6"
)


def reached_from_roots(conn: Connection, registry_id: int, digests: set[str],
                       aliases: dict[str, set[str]]) -> set[str]:
    """Those of ``digests`` that the manifest walk over the registry's inventory as it stands reaches: a root
    (``manifest_roots``), the target of a _layers alias whose path digest is reached (``layer_aliases``), or
    a child or subject named by the stored parse that stands for a reached present blob. Found upwards from
    the digests, a level of parents at a time (a few queries per level: index depth, not registry size)."""
    down: dict[str, set[str]] = {}  # parent -> the children it names, of those asked about
    extra: dict[str, set[str]] = {}  # child -> parents by an alias or by bytes that are not their digest's
    for path, targets in aliases.items():
        for t in targets:
            extra.setdefault(t, set()).add(path)
    for child, parent in conn.execute(text(_ODD_PARENTS), {"rid": registry_id}):
        extra.setdefault(child, set()).add(parent)
    frontier, seen, hits = set(digests), set(digests), set()
    while frontier:
        digest_table(conn, "walk_up", frontier)
        level_hits = {d for (d,) in conn.execute(text(_IS_ROOT), {"rid": registry_id})}
        hits |= level_hits
        edges = [(c, p) for c, p in conn.execute(text(_STANDING_PARENTS), {"rid": registry_id})]
        edges += [(c, p) for c in frontier for p in extra.get(c, ())]
        frontier = set()
        for child, parent in edges:
            if child in level_hits:
                continue  # reached already: its parents tell nothing more
            down.setdefault(parent, set()).add(child)
            if parent not in seen:
                seen.add(parent)
                frontier.add(parent)
    drop_temp(conn, "walk_up")
    reached, stack = set(hits), list(hits)
    while stack:
        for child in down.get(stack.pop(), ()):
            if child not in reached:
                reached.add(child)
                stack.append(child)
    return digests & reached


# ---------------------------------------------------------------------------------------------
# The manifest reach: the digests a registry's current tree names as manifests (ManifestReach, 0012)


def reach_recorded(conn: Connection, registry_id: int) -> bool:
    """The registry's reach was recorded by a walk (``registries.reached_run``): otherwise (a database upgraded
    from 0011, a new registry) the next walk starts from every root."""
    q = text("SELECT reached_run FROM registries WHERE id = :rid")
    return conn.execute(q, {"rid": registry_id}).scalar() is not None


def _reach_change(conn: Connection, registry_id: int, select_digests: str, p: dict[str, Any]) -> None:
    conn.execute(text(f"INSERT INTO {CHANGES_TABLE} (registry_id, what, repository, digest) "
                      f"SELECT :rid, 'reach', NULL, q.digest FROM ({select_digests}) q"), {"rid": registry_id, **p})


_NEW_IN_REACH = ("SELECT d.digest FROM reach_walked d WHERE NOT EXISTS (SELECT 1 FROM manifest_reach x "
                 "WHERE x.registry_id = :rid AND x.digest = d.digest)")


def record_reach(conn: Connection, run_id: int, registry_id: int, walked: set[str], whole: bool) -> int:
    """After a manifest walk: the digests it reached (``walked``) are in the registry's reach; ``whole`` (it
    walked from every root): nothing else is. Each digest that enters or leaves is recorded in
    CHANGES_TABLE as a 'reach' row (a parse now counts, or no longer counts, there: the checks' scope). How many
    entered or left."""
    digest_table(conn, "reach_walked", walked)
    p = {"rid": registry_id, "run": run_id}
    changed = 0
    if whole:
        gone = ("SELECT x.digest FROM manifest_reach x WHERE x.registry_id = :rid AND NOT EXISTS "
                "(SELECT 1 FROM reach_walked d WHERE d.digest = x.digest)")
        _reach_change(conn, registry_id, gone, p)
        changed += conn.execute(text(f"DELETE FROM manifest_reach WHERE registry_id = :rid AND digest IN ({gone})"),
                                p).rowcount
    _reach_change(conn, registry_id, _NEW_IN_REACH, p)
    changed += conn.execute(text(f"INSERT INTO manifest_reach (registry_id, digest, first_run) "
                                 f"SELECT :rid, q.digest, :run FROM ({_NEW_IN_REACH}) q"), p).rowcount
    conn.execute(text("UPDATE registries SET reached_run = :run WHERE id = :rid"), p)
    drop_temp(conn, "reach_walked")
    return changed


def _in_reach(conn: Connection, registry_id: int, digests: set[str]) -> set[str]:
    if not digest_table(conn, "reach_asked", digests):
        return set()
    q = text("SELECT d.digest FROM reach_asked d JOIN manifest_reach x ON x.registry_id = :rid "
             "AND x.digest = d.digest")
    out = {d for (d,) in conn.execute(q, {"rid": registry_id})}
    drop_temp(conn, "reach_asked")
    return out


# What a manifest stored under one of the reach_asked digests names (any size: a superset of what the parse
# that stood for its data named), and what the bytes hashed to another digest name (their parse's references).
_NAMED_BY = (
    "SELECT r.digest FROM reach_asked d JOIN manifests m ON m.digest = d.digest "
    "JOIN manifest_refs r ON r.manifest_id = m.id AND r.role IN ('child', 'subject') "
    "UNION SELECT r.digest FROM reach_asked d JOIN blob_verifications v ON v.registry_id = :rid "
    "AND v.digest = d.digest AND v.computed_digest <> v.digest "
    "JOIN manifests m ON m.digest = v.computed_digest AND m.size = v.size "
    "JOIN manifest_refs r ON r.manifest_id = m.id AND r.role IN ('child', 'subject')"
)


def _named_by(conn: Connection, registry_id: int, digests: set[str]) -> set[str]:
    if not digest_table(conn, "reach_asked", digests):
        return set()
    out = {d for (d,) in conn.execute(text(_NAMED_BY), {"rid": registry_id})}
    drop_temp(conn, "reach_asked")
    return out


def reach_at_risk(conn: Connection, registry_id: int) -> set[str]:
    """Before an incremental walk (which rewrites the hashes of the data it reads): the digests of the
    registry's reach that this scan's changes may have cut off. A digest leaves the reach only when a path from
    a root to it broke: a link that named it (a root, an alias) changed or went (CHANGES_TABLE 'linked' rows),
    or the data of a manifest that named it changed or went (what any parse of that digest names, or the parse
    of what its bytes last hashed to), or its parent left the reach (``prune_reach`` follows that down)."""
    q = text(
        f"SELECT c.digest FROM {CHANGES_TABLE} c WHERE c.registry_id = :rid AND c.what IN ('linked', 'blob') "
        "AND c.digest IS NOT NULL")
    changed = {d for (d,) in conn.execute(q, {"rid": registry_id})}
    blobs = {d for (d,) in conn.execute(text(
        f"SELECT c.digest FROM {CHANGES_TABLE} c WHERE c.registry_id = :rid AND c.what = 'blob'"),
        {"rid": registry_id})}
    return _in_reach(conn, registry_id, changed | _named_by(conn, registry_id, blobs))


def prune_reach(conn: Connection, run_id: int, registry_id: int, at_risk: set[str], walked: set[str],
                aliases: dict[str, set[str]]) -> int:
    """After an incremental walk (its ``walked`` digests are reached): take out of the registry's reach those of
    ``at_risk`` the current inventory no longer reaches (``reached_from_roots``), and, level by level, what
    only they named. Each one leaving is recorded in CHANGES_TABLE ('reach'). How many left."""
    asked: set[str] = set()
    todo = at_risk - walked
    lost: set[str] = set()
    while todo:
        asked |= todo
        gone = todo - reached_from_roots(conn, registry_id, todo, aliases)
        lost |= gone
        below = _named_by(conn, registry_id, gone) | {t for d in gone for t in aliases.get(d, ())}
        todo = _in_reach(conn, registry_id, below - walked - asked) if gone else set()
    if not lost:
        return 0
    digest_table(conn, "reach_lost", lost)
    p = {"rid": registry_id}
    _reach_change(conn, registry_id, "SELECT digest FROM reach_lost", p)
    n = conn.execute(text("DELETE FROM manifest_reach WHERE registry_id = :rid "
                          "AND digest IN (SELECT digest FROM reach_lost)"), p).rowcount
    drop_temp(conn, "reach_lost")
    return n


class Candidate(NamedTuple):
    """A manifest blob this registry holds, with what the inventory knows of it."""

    digest: str
    size: int
    mtime: float
    known: bool  # a parse of (digest, size) is stored
    v_size: int | None  # size, mtime and hash of the data when this registry last hashed it
    v_mtime: float | None
    v_computed: str | None
    # the stored parse of (digest, size) names children or a subject (False: following its references, as a
    # known manifest's are followed, finds nothing; most manifests are images without a subject)
    refers: bool = True
    # a parse of (v_computed, size) is stored, and the hash recorded its parse error if it has one (a hash made
    # by --verify-content records none: such bytes are read once when the walk reaches them)
    computed_known: bool = False

    def parsed_as(self) -> tuple[str, int] | None:
        """The (digest, size) whose stored parse stands for the bytes on disk, when they were hashed at this
        size and mtime (so need not be read again): for bytes that are not the digest's content, the parse
        stored under the digest they hash to (never the genuine content's, which another registry or an
        earlier night may have stored: the walk follows what the bytes name, as reading them again would);
        otherwise the digest's own. None: read and hash them."""
        if self.v_size != self.size or self.v_mtime is None or abs(self.v_mtime - self.mtime) >= 1e-6:
            return None
        if self.v_computed is not None and self.v_computed != self.digest:
            return (self.v_computed, self.size) if self.computed_known else None
        if self.known:
            return (self.digest, self.size)
        return None


def manifest_candidates(conn: Connection, registry_id: int, digests: Iterable[str]) -> list[Candidate]:
    """For the digests whose data this registry holds, what the inventory knows of them (``Candidate``). One
    join through a temporary table, not IN lists."""
    if not digest_table(conn, "parse_level", digests):
        return []
    q = text(
        "SELECT b.digest, b.size, b.mtime, m.id IS NOT NULL AS known, v.size AS v_size, v.mtime AS v_mtime, "
        "v.computed_digest, EXISTS (SELECT 1 FROM manifest_refs r WHERE r.manifest_id = m.id "
        "AND r.role IN ('child', 'subject')) AS refers, "
        "EXISTS (SELECT 1 FROM manifests c WHERE c.digest = v.computed_digest AND c.size = b.size "
        "AND (c.parse_error IS NULL OR v.parse_error IS NOT NULL)) AS computed_known "
        "FROM parse_level p "
        "JOIN blobs b ON b.digest = p.digest AND b.registry_id = :rid AND b.gone_run IS NULL "
        "LEFT JOIN manifests m ON m.digest = b.digest AND m.size = b.size "
        "LEFT JOIN blob_verifications v ON v.registry_id = b.registry_id AND v.digest = b.digest "
        "ORDER BY b.digest"
    )
    out = [Candidate(r[0], int(r[1]), float(r[2]), bool(r[3]), None if r[4] is None else int(r[4]),
                     None if r[5] is None else float(r[5]), r[6], bool(r[7]), bool(r[8]))
           for r in conn.execute(q, {"rid": registry_id})]
    drop_temp(conn, "parse_level")
    return out


def blobs_to_verify(conn: Connection, registry_id: int, page: int = 500) -> Iterable[tuple[str, int, float]]:
    """Present blobs whose size or mtime differ from when this registry last hashed them, in pages (the
    caller writes verifications between pages)."""
    q = text(
        "SELECT b.digest, b.size, b.mtime FROM blobs b LEFT JOIN blob_verifications v "
        "ON v.registry_id = b.registry_id AND v.digest = b.digest "
        "WHERE b.registry_id = :rid AND b.gone_run IS NULL AND b.digest > :after "
        "AND NOT (v.size IS NOT NULL AND v.size = b.size AND v.mtime IS NOT NULL AND ABS(v.mtime - b.mtime) < 1e-6) "
        "ORDER BY b.digest LIMIT :n"
    )
    after = ""
    while True:
        rows = [(r[0], int(r[1]), float(r[2])) for r in conn.execute(q, {"rid": registry_id, "after": after, "n": page})]
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1][0]


def aliases_to_verify(conn: Connection, registry_id: int) -> list[tuple[str, str, int, float]]:
    """(path digest, target digest, target size, target mtime) of _layers links under another algorithm than
    their present target, not hashed since the target's data last changed."""
    q = text(
        "SELECT DISTINCT l.path_digest, l.target_digest, b.size, b.mtime, v.size AS v_size, v.mtime AS v_mtime "
        "FROM links l JOIN blobs b ON b.registry_id = l.registry_id AND b.gone_run IS NULL "
        "AND b.digest = l.target_digest "
        "LEFT JOIN blob_verifications v ON v.registry_id = l.registry_id AND v.digest = l.path_digest "
        "WHERE l.registry_id = :rid AND l.gone_run IS NULL AND l.kind = 'layer' AND l.state = 'ok' "
        "AND l.path_digest <> l.target_digest"
    )
    out = []
    for r in conn.execute(q, {"rid": registry_id}):
        if r[0].split(":")[0] == r[1].split(":")[0]:
            continue
        same = r[4] is not None and r[4] == r[2] and r[5] is not None and abs(r[5] - r[3]) < 1e-6
        if not same:
            out.append((r[0], r[1], int(r[2]), float(r[3])))
    return out


def manifest_exists(conn: Connection, digest: str, size: int) -> bool:
    m = table(Manifest)
    return conn.execute(select(m.c.id).where(m.c.digest == digest, m.c.size == size)).first() is not None


def manifest_refs_of(conn: Connection, keys: Iterable[tuple[str, int]]) -> list[tuple[str, str]]:
    """(role, digest) of the child and subject references of already parsed manifests."""
    m, r = table(Manifest), table(ManifestRef)
    wanted = set(keys)
    if not wanted:
        return []
    out: list[tuple[str, str]] = []
    digests = sorted({d for d, _ in wanted})
    for part in chunks(digests, 500):
        q = (
            select(m.c.digest, m.c.size, r.c.role, r.c.digest)
            .join(r, r.c.manifest_id == m.c.id)
            .where(m.c.digest.in_(list(part)), r.c.role.in_(["child", "subject"]))
        )
        for md, ms, role, rd in conn.execute(q):
            if (md, ms) in wanted:
                out.append((role, rd))
    return out


_MANIFEST_COLUMNS = ("digest", "size", "kind", "media_type", "artifact_type", "parse_error", "bad_refs", "parsed_run")


def insert_manifests(conn: Connection, run_id: int, parsed: Sequence[tuple[str, int, ParsedManifest]]) -> None:
    """New parses and their references, through the driver. Core's ``insert().returning()`` ran one statement
    a row on SQLite (1.7 s of a 200k first scan); the ids come back instead in one read of the rows after the
    highest id this transaction saw, restricted to this run's parses (a concurrent writer's rows carry another
    run), by (digest, size), which is unique."""
    floor = int(conn.exec_driver_sql("SELECT COALESCE(MAX(id), 0) FROM manifests").scalar_one())
    for part in chunks(parsed, 1000):
        driver_insert(conn, table(Manifest).name, _MANIFEST_COLUMNS, [
            (digest, size, pm.kind, pm.media_type, pm.artifact_type, pm.error, pm.bad_refs, run_id)
            for digest, size, pm in part
        ])
        ids: dict[tuple[str, int], int] = {}
        for mid, digest, size in driver_rows(conn, "SELECT id, digest, size FROM manifests WHERE id > ? "
                                                   "AND parsed_run = ?", (floor, run_id)):
            ids[(digest, int(size))] = int(mid)
            floor = max(floor, int(mid))
        ref_rows = [
            (ids[(digest, size)], ref.role, ref.position, ref.digest, ref.media_type, ref.size, ref.platform,
             _to_db(conn, ref.foreign))
            for digest, size, pm in part
            for ref in pm.refs
        ]
        driver_insert(conn, table(ManifestRef).name, _REF_COLUMNS, ref_rows)


_REF_COLUMNS = ("manifest_id", "role", "position", "digest", "media_type", "size", "platform", "is_foreign")


def driver_rows(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The rows of one read, straight from the driver, in the connection's transaction: SQLAlchemy's row
    processing cost 3x the query itself for the crawl's read of each repository's known links (200k tree:
    0.47 s against 0.14 s a night). ``sql`` is constant text with ``?`` for each value, which the driver binds."""
    dbapi: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        with dbapi.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall())
    return list(dbapi.execute(sql, params).fetchall())


def driver_insert(conn: Connection, name: str, cols: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows (values as the driver takes them) through the driver: executemany on SQLite, COPY on PostgreSQL,
    both several times faster than Core insert() for big batches (benchmarks/bench_insert.py)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        dbapi: Any = conn.connection.driver_connection
        with dbapi.cursor() as cur, cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in cols)
        conn.exec_driver_sql(f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({marks})", list(rows))


# ---------------------------------------------------------------------------------------------
# Content hashes (blob_verifications): one row per registry and digest, replaced when re-hashed


_VERIFIED = ("digest", "size", "mtime", "computed_digest", "parse_error")


def save_verifications(
    conn: Connection, registry_id: int, run_id: int, rows: Sequence[tuple[str, int, float, str | None, str | None]]
) -> None:
    """(digest, size, mtime, computed digest or None when unreadable, parse error of non-genuine manifest data):
    one row per registry and digest, replaced (the last given for a digest wins). The rows go through the
    driver into a temporary table (COPY on PostgreSQL) and into blob_verifications in one upsert: Core's
    executemany of the upsert ran one statement a row on PostgreSQL (19k rows of a 200k first scan: ~1 s)."""
    if not rows:
        return
    last = {row[0]: row for row in rows}
    v = table(BlobVerification)
    name = "stage_verifications"
    temp_table(conn, name, v, _VERIFIED)
    driver_insert(conn, name, _VERIFIED, list(last.values()))
    cols = ", ".join(_VERIFIED)
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*_VERIFIED[1:], "verified_run"))
    # (WHERE true: SQLite's parser would take ON CONFLICT for a join's ON without it)
    conn.execute(text(
        f"INSERT INTO {v.name} (registry_id, verified_run, {cols}) SELECT :rid, :run, {cols} FROM {name} WHERE true "
        f"ON CONFLICT (registry_id, digest) DO UPDATE SET {updates}"), {"rid": registry_id, "run": run_id})
    drop_temp(conn, name)
