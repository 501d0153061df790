"""Bulk loading of one scan into the inventory, as episodes.

For each table, the crawl's rows for one registry are compared in memory with the registry's open episodes:
rows no longer seen get ``gone_run`` = this run, rows not seen before get a new episode. Writes go through
Core ``insert()``/``update()`` in chunks inside the caller's transaction; the ORM unit of work is never used.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from regindex.crawl import CrawlResult
from regindex.manifests import ParsedManifest
from regindex.models import (
    Anomaly,
    Blob,
    BlobVerification,
    Link,
    Manifest,
    ManifestRef,
    Registry,
    Repository,
    Run,
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


def bulk_insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    for part in chunks(rows):
        conn.execute(insert(table), list(part))


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
# Episodes


@dataclass(frozen=True)
class EpisodeSpec:
    table: Table
    identity: tuple[str, ...]  # columns whose change makes a new episode
    mutable: tuple[str, ...] = ()  # columns updated in place (no new episode)


SPECS: dict[str, EpisodeSpec] = {
    "repositories": EpisodeSpec(table(Repository), ("name", "has_manifests", "has_tags_dir")),
    "links": EpisodeSpec(
        table(Link), ("repository", "kind", "tag", "path_digest", "target_digest", "state", "preview")
    ),
    "blobs": EpisodeSpec(table(Blob), ("digest", "size"), ("mtime",)),
    "uploads": EpisodeSpec(table(Upload), ("repository", "uuid", "started_raw"), ("started_at", "size")),
    "anomalies": EpisodeSpec(table(Anomaly), ("path", "reason")),
}


@dataclass
class LoadStats:
    added: int = 0
    removed: int = 0


def _row_dict(row: Any) -> dict[str, Any]:
    return asdict(row)


def apply_episodes(
    conn: Connection, run_id: int, registry_id: int, key: str, rows: Sequence[Any], stats: LoadStats
) -> None:
    spec = SPECS[key]
    t = spec.table
    cols = [t.c[c] for c in spec.identity + spec.mutable]
    existing: dict[tuple[Any, ...], tuple[int, tuple[Any, ...]]] = {}
    n_id = len(spec.identity)
    for r in conn.execute(select(t.c.id, *cols).where(t.c.registry_id == registry_id, t.c.gone_run.is_(None))):
        ident = tuple(r[1 : 1 + n_id])
        existing[ident] = (r[0], tuple(r[1 + n_id :]))

    to_add: list[dict[str, Any]] = []
    to_touch: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        d = _row_dict(row)
        ident = tuple(d[c] for c in spec.identity)
        if ident in seen:
            continue
        seen.add(ident)
        hit = existing.get(ident)
        if hit is None:
            d.update(registry_id=registry_id, first_run=run_id, gone_run=None)
            to_add.append({c: d.get(c) for c in ("registry_id", "first_run", "gone_run", *spec.identity, *spec.mutable)})
        elif spec.mutable:
            new_mut = tuple(d[c] for c in spec.mutable)
            if _changed(hit[1], new_mut):
                to_touch.append({"_id": hit[0], **{c: d[c] for c in spec.mutable}})
    gone = [{"_id": rid, "_run": run_id} for ident, (rid, _m) in existing.items() if ident not in seen]

    if gone:
        stmt = update(t).where(t.c.id == bindparam("_id")).values(gone_run=bindparam("_run"))
        for part in chunks(gone):
            conn.execute(stmt, list(part))
    if to_touch:
        stmt = update(t).where(t.c.id == bindparam("_id")).values({c: bindparam(c) for c in spec.mutable})
        for part in chunks(to_touch):
            conn.execute(stmt, list(part))
    bulk_insert(conn, t, to_add)
    stats.added += len(to_add)
    stats.removed += len(gone)


def _changed(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    return not all(_same(a, b) for a, b in zip(old, new))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6
    return _naive(a) == _naive(b)


def _naive(v: Any) -> Any:
    """SQLite returns naive UTC datetimes, PostgreSQL aware ones: compare them as naive UTC."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(timezone.utc).replace(tzinfo=None)
    return v


def load_crawl(conn: Connection, run_id: int, registry_id: int, result: CrawlResult) -> LoadStats:
    stats = LoadStats()
    apply_episodes(conn, run_id, registry_id, "repositories", result.repositories, stats)
    apply_episodes(conn, run_id, registry_id, "links", result.links, stats)
    apply_episodes(conn, run_id, registry_id, "blobs", result.blobs, stats)
    apply_episodes(conn, run_id, registry_id, "uploads", result.uploads, stats)
    apply_episodes(conn, run_id, registry_id, "anomalies", result.anomalies, stats)
    return stats


def close_registry(conn: Connection, run_id: int, registry_id: int) -> LoadStats:
    """A registry that is gone from the base on purpose (``--allow-empty``): close all its episodes."""
    stats = LoadStats()
    for key in SPECS:
        apply_episodes(conn, run_id, registry_id, key, [], stats)
    return stats


# ---------------------------------------------------------------------------------------------
# Manifests (immutable, once per digest and size)


def known_manifests(conn: Connection) -> set[tuple[str, int]]:
    t = table(Manifest)
    return {(d, s) for d, s in conn.execute(select(t.c.digest, t.c.size))}


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


def insert_manifests(conn: Connection, run_id: int, parsed: Sequence[tuple[str, int, ParsedManifest]]) -> None:
    m, r = table(Manifest), table(ManifestRef)
    stmt = insert(m).returning(m.c.id, sort_by_parameter_order=True)
    for part in chunks(parsed, 1000):
        rows = [
            {
                "digest": digest, "size": size, "kind": pm.kind, "media_type": pm.media_type,
                "artifact_type": pm.artifact_type, "parse_error": pm.error, "bad_refs": pm.bad_refs,
                "parsed_run": run_id,
            }
            for digest, size, pm in part
        ]
        ids = conn.execute(stmt, rows).scalars().all()
        ref_rows = [
            {
                "manifest_id": mid, "role": ref.role, "position": ref.position, "digest": ref.digest,
                "media_type": ref.media_type, "size": ref.size, "platform": ref.platform, "is_foreign": ref.foreign,
            }
            for mid, (_d, _s, pm) in zip(ids, part)
            for ref in pm.refs
        ]
        bulk_insert(conn, r, ref_rows)


# ---------------------------------------------------------------------------------------------
# Content hashes (blob_verifications): one row per registry and digest, replaced when re-hashed


def load_verifications(conn: Connection, registry_id: int) -> dict[str, tuple[int, float | None]]:
    v = table(BlobVerification)
    q = select(v.c.digest, v.c.size, v.c.mtime).where(v.c.registry_id == registry_id)
    return {d: (size, mtime) for d, size, mtime in conn.execute(q)}


def save_verifications(
    conn: Connection, registry_id: int, run_id: int, rows: Sequence[tuple[str, int, float, str | None, str | None]]
) -> None:
    """(digest, size, mtime, computed digest or None when unreadable, parse error of non-genuine manifest data)."""
    v = table(BlobVerification)
    for part in chunks(rows, 500):
        conn.execute(delete(v).where(v.c.registry_id == registry_id, v.c.digest.in_([r[0] for r in part])))
        conn.execute(insert(v), [
            {"registry_id": registry_id, "digest": d, "size": size, "mtime": mtime, "computed_digest": computed,
             "parse_error": parse_error, "verified_run": run_id}
            for d, size, mtime, computed, parse_error in part
        ])
