"""Scan speed against a baseline measured in the same run.

Baseline: the least work any scanner must do on the tree (walk it and read every link file). The scan is
reported as a ratio to that, for a first scan (everything new) and an unchanged second scan (no inventory
row written). Usage: python benchmarks/bench_scan.py [--images N]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from regindex import db
from regindex.sample import StorageWriter
from regindex.scan import ScanOptions, run_scan


def build(base: Path, images: int) -> None:
    rng = random.Random(1)
    w = StorageWriter(base / "private")
    shared = [rng.randbytes(64) for _ in range(20)]
    for i in range(images // 4):
        repo = f"team{i % 20}/app{i}"
        idx = w.push_index(repo, rng, shared_layers=[rng.choice(shared)])
        w.tag(repo, "v1", idx.digest)
        if i % 10 == 0:  # some damage so the checks have work
            w.remove_revision(repo, idx.children[2].digest)


def baseline(base: Path) -> float:
    t = time.perf_counter()
    for root, _dirs, files in os.walk(base):
        for f in files:
            if f == "link":
                with open(os.path.join(root, f), "rb") as fh:
                    fh.read(1024)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4000, help="image manifests (an index per 4)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "storage"
        t = time.perf_counter()
        build(base, args.images)
        print(f"built tree: {args.images} manifests in {time.perf_counter() - t:.1f}s")
        engine = db.open_writer(str(Path(tmp) / "bench.db"))
        base_s = min(baseline(base) for _ in range(3))
        t = time.perf_counter()
        first = run_scan(engine, ScanOptions(base=base))
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = run_scan(engine, ScanOptions(base=base))
        second_s = time.perf_counter() - t
        engine.dispose()
        print(f"links {first.links}, blobs {first.blobs}, manifests parsed {first.manifests_parsed}, "
              f"findings {first.counts.new}")
        print(f"baseline (walk + read links): {base_s:.3f}s")
        print(f"first scan:     {first_s:.3f}s  ratio {first_s / base_s:.1f}x")
        print(f"unchanged scan: {second_s:.3f}s  ratio {second_s / base_s:.1f}x  "
              f"(inventory changes: {second.inventory_changes})")


if __name__ == "__main__":
    main()
