"""How long the HTML report takes for a large registry: 50,000 open findings over 90 runs.

    python benchmarks/bench_report.py [--findings 50000] [--baseline 1000] [--runs 90] [--keep DIR]

Builds two SQLite databases directly through SQLAlchemy Core inserts (no scan): 90 nightly runs (a few
partial, one failed), four registries, N open findings plus a share of resolved episodes, and for each
finding the inventory episodes a post-mortem looks up (the link that vanished in the run the finding
appeared, and its blob data). Times ``render.render`` (collect + template) over all 90 runs on both, prints
both times and the ratio large/baseline, then the CSV write. Rendering is about linear in the findings; the
per-finding sections are capped, so the page size is not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert

from regindex import db as dbmod
from regindex import render
from regindex.checks import KINDS
from regindex.models import Blob, Finding, Link, Registry, Run, RunRegistry, table

# kind, severity, weight: what a large, long-lived registry accumulates
MIX = [
    ("unreferenced_blob", "info", 40), ("orphan_layer_link", "error", 20), ("orphan_index_child", "error", 12),
    ("dangling_revision", "error", 6), ("dangling_tag", "error", 6), ("unlinked_blob_ref", "error", 5),
    ("stale_upload", "warning", 5), ("gc_blocker", "warning", 3), ("corrupt_link", "error", 2),
    ("storage_anomaly", "warning", 1),
]
REGISTRIES = ["private", "dockerhub", "ghcr", "mirror"]


def digest(rng: random.Random) -> str:
    return "sha256:" + hashlib.sha256(rng.randbytes(16)).hexdigest()


def build(path: Path, open_findings: int, runs: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    engine = dbmod.open_writer(str(path))
    start = datetime(2026, 8, 1, 2, 0, tzinfo=timezone.utc)
    failed_run = runs // 2
    partial = {r for r in range(17, runs + 1, 17)}
    finished = [r for r in range(1, runs + 1) if r != failed_run]
    repos = [f"team{t}/service-{s}" for t in range(40) for s in range(50)]
    with engine.begin() as conn:
        conn.execute(insert(table(Run)), [
            {"id": r, "started_at": start + timedelta(days=r - 1), "status": "failed" if r == failed_run else
             "partial" if r in partial else "complete",
             "finished_at": start + timedelta(days=r - 1, minutes=7), "base": "/srv/registry", "options": "{}",
             "tool_version": "bench", "registries": 4, "repositories": len(repos), "links": 400_000,
             "blobs": 250_000, "blob_bytes": 9 * 2**40, "manifests_parsed": rng.randint(0, 3000),
             "uploads": 40, "inventory_changes": rng.randint(100, 5000), "findings_open": open_findings,
             "findings_new": rng.randint(0, 900), "findings_resolved": rng.randint(0, 700),
             "duration_seconds": 380 + rng.random() * 120,
             "error": "interrupted" if r == failed_run else None}
            for r in range(1, runs + 1)
        ])
        conn.execute(insert(table(Registry)), [
            {"id": i + 1, "name": n, "root": f"/srv/registry/{n}", "role": "cache" if n == "dockerhub" else
             "authoritative", "first_run": 1, "last_scanned_run": runs} for i, n in enumerate(REGISTRIES)])
        conn.execute(insert(table(RunRegistry)), [
            {"run_id": r, "registry_id": g, "status": "failed" if (r in partial and g == 4) else "complete",
             "error": "mirror: cannot list repositories: Input/output error" if (r in partial and g == 4) else None}
            for r in finished for g in range(1, 5)])

        kinds, weights = [k for k, _s, _w in MIX], [w for _k, _s, w in MIX]
        severity = {k: s for k, s, _w in MIX}
        findings, links, blobs = [], [], []
        resolved_share = open_findings // 5

        def add(first: int, resolved: int | None) -> None:
            kind = rng.choices(kinds, weights)[0]
            reg = rng.randint(1, 4)
            repo = None if kind in ("unreferenced_blob", "storage_anomaly") else rng.choice(repos)
            d = digest(rng)
            parent = digest(rng) if kind in ("orphan_index_child", "unlinked_blob_ref") else None
            detail = {"link": f"repositories/{repo}/_layers/sha256/{d[7:]}/link", "link_state": "ok",
                      "blob_data": f"blobs/sha256/{d[7:9]}/{d[7:]}/data", "blob_data_present": False,
                      "blob_data_gone_in_run": first, "other_repositories_linking_it": rng.randint(0, 4)}
            key = hashlib.sha256(f"{kind}{reg}{repo}{d}{parent}".encode()).hexdigest()
            findings.append({
                "key": key, "episode": 1, "kind": kind, "severity": severity[kind],
                "registry": REGISTRIES[reg - 1], "repository": repo, "digest": d, "tag": None,
                "parent_digest": parent, "detail": json.dumps(detail, sort_keys=True),
                "hint": f"{KINDS[kind]}: remove the link or push the image again.", "first_run": first,
                "last_seen_run": resolved - 1 if resolved else runs, "resolved_run": resolved})
            if first > 1:  # what vanished on disk when it appeared
                links.append({"registry_id": reg, "repository": repo or rng.choice(repos), "kind": "revision",
                              "tag": None, "path_digest": d, "target_digest": d, "state": "ok", "preview": None,
                              "first_run": 1, "gone_run": first})
                blobs.append({"registry_id": reg, "digest": d, "size": rng.randint(500, 50_000), "mtime": None,
                              "first_run": 1, "gone_run": None})

        for _ in range(open_findings):
            add(rng.choice(finished), None)
        for _ in range(resolved_share):
            first = rng.choice(finished[:-1])
            later = [r for r in finished if r > first]
            add(first, rng.choice(later))
        for target, rows in ((table(Finding), findings), (table(Link), links), (table(Blob), blobs)):
            for i in range(0, len(rows), 5000):
                conn.execute(insert(target), rows[i:i + 5000])
    engine.dispose()


def timed_render(path: Path, runs: int, repeat: int = 3) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        with dbmod.reader(str(path)) as conn:
            t0 = time.perf_counter()
            html = render.render(conn, runs=runs)
            best = min(best, time.perf_counter() - t0)
            size = len(html.encode())
    return best, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=50_000)
    ap.add_argument("--baseline", type=int, default=1_000)
    ap.add_argument("--runs", type=int, default=90)
    ap.add_argument("--keep", type=Path, default=None, help="Build the databases here and keep them.")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        small, large = where / "bench-small.db", where / "bench-large.db"
        for p, n in ((small, args.baseline), (large, args.findings)):
            for suffix in ("", "-wal", "-shm"):
                Path(str(p) + suffix).unlink(missing_ok=True)
            t0 = time.perf_counter()
            build(p, n, args.runs)
            print(f"built {p.name}: {n:,} open findings (+{n // 5:,} resolved), {args.runs} runs "
                  f"in {time.perf_counter() - t0:.1f}s")

        base_t, base_size = timed_render(small, args.runs)
        big_t, big_size = timed_render(large, args.runs)
        for n, t, size in ((args.baseline, base_t, base_size), (args.findings, big_t, big_size)):
            print(f"render {n:>7,} open findings, {args.runs} runs: {t:6.2f}s  ({size / 1e6:.1f} MB HTML)")
        print(f"{args.findings // 1000}k/{args.baseline // 1000}k ratio: {big_t / base_t:.1f}x "
              f"(findings ratio {args.findings / args.baseline:.0f}x)")

        with dbmod.reader(str(large)) as conn:
            t0 = time.perf_counter()
            out = report.write(conn, where / "bench-report.html", runs=args.runs)
            total = time.perf_counter() - t0
        print(f"write html + csv ({args.findings:,} findings): {total:.2f}s; "
              f"csv {out.with_suffix('.csv').stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
