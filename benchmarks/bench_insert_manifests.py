"""Why new manifest parses go in through the driver with their ids read back, not Core insert().returning().

    python benchmarks/bench_insert_manifests.py [--manifests 29000] [--pg URL]

Parses the same synthetic image manifests (a config and three layers each), then stores them with their
references into a fresh regindex database both ways, in the batches the manifest walk uses (2,000 per call),
each inside a transaction that is rolled back, and prints the ratio (the Core ``insert().returning()`` that
``store.insert_manifests`` used before is the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert

from bench_scale import drop_pg, fresh_pg
from regindex import db, store
from regindex.manifests import ParsedManifest, parse_manifest
from regindex.models import Manifest, ManifestRef, Run, table

Parsed = Sequence[tuple[str, int, ParsedManifest]]


def manifests(n: int) -> list[tuple[str, int, ParsedManifest]]:
    def blob(seed: str) -> str:
        return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()

    out = []
    for i in range(n):
        doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(f"c{i}"),
                          "size": 50},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(f"{i}-{j}"),
                           "size": 100 + j} for j in range(3)]}
        raw = json.dumps(doc).encode()
        out.append(("sha256:" + hashlib.sha256(raw).hexdigest(), len(raw), parse_manifest(raw)))
    return out


def core_returning(conn: Connection, run_id: int, parsed: Parsed) -> None:
    """The baseline: what ``store.insert_manifests`` did before (one statement a row on SQLite)."""
    m = table(Manifest)
    stmt = insert(m).returning(m.c.id, sort_by_parameter_order=True)
    for part in store.chunks(parsed, 1000):
        ids = conn.execute(stmt, [{"digest": d, "size": s, "kind": pm.kind, "media_type": pm.media_type,
                                   "artifact_type": pm.artifact_type, "parse_error": pm.error,
                                   "bad_refs": pm.bad_refs, "parsed_run": run_id} for d, s, pm in part]).scalars()
        refs = [(mid, r.role, r.position, r.digest, r.media_type, r.size, r.platform, store._to_db(conn, r.foreign))
                for mid, (_d, _s, pm) in zip(ids, part) for r in pm.refs]
        store.driver_insert(conn, table(ManifestRef).name, store._REF_COLUMNS, refs)


def timed(url: str, parsed: Parsed, how: Callable[[Connection, int, Parsed], None]) -> float:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            run_id = conn.execute(insert(table(Run)).values(started_at=store.utcnow(), status="running",
                                                            base="bench")).inserted_primary_key[0]
            start = time.perf_counter()
            for part in store.chunks(parsed, 2000):
                how(conn, run_id, part)
            took = time.perf_counter() - start
            refs = conn.exec_driver_sql("SELECT COUNT(*) FROM manifest_refs").scalar_one()
            assert refs == sum(len(pm.refs) for _d, _s, pm in parsed), refs
            tx.rollback()
    finally:
        engine.dispose()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifests", type=int, default=29_000, help="default: the 200k tree's count")
    ap.add_argument("--pg", metavar="URL", help="a PostgreSQL server (a scratch database is made and dropped)")
    args = ap.parse_args()
    parsed = manifests(args.manifests)
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[str, Any]] = [("sqlite", f"sqlite:///{Path(tmp) / 'b.db'}")]
        if args.pg:
            targets.append(("postgresql", fresh_pg(args.pg, "regindex_bench_insert")))
        try:
            for name, url in targets:
                db.ensure_schema(db.make_engine(url))
                core = timed(url, parsed, core_returning)
                driver = timed(url, parsed, store.insert_manifests)
                print(f"{name}: {args.manifests} manifests: Core insert().returning() {core:.2f}s, "
                      f"driver and ids read back {driver:.2f}s ({core / driver:.1f}x faster)")
        finally:
            if args.pg:
                drop_pg(args.pg, "regindex_bench_insert")


if __name__ == "__main__":
    main()
