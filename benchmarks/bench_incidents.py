"""How readable the report stays after garbage-collect --delete-untagged: page size and height, with and without
incidents ("Do this first", cards folded under their incident), on generated GC-damaged trees.

    python benchmarks/bench_incidents.py [--repos 4 40 200] [--keep DIR]

For each size: N multi-arch images (OCI index, two platforms with attestations, a shared base layer), a clean
first scan, then what GC --delete-untagged leaves (every child's revision directory removed, the sweep), a second
scan. The report is rendered twice from the same database: folded (the default) and unfolded (as before
incidents). Prints findings, HTML bytes, and the rendered page height in Chromium (1280 px wide; a copy of the
page with a one-line script that reads scrollHeight, the report itself has none), and the ratios unfolded/folded.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from regindex import db as dbmod
from regindex import report
from regindex.sample import StorageWriter
from regindex.scan import ScanOptions, run_scan


def build(base: Path, db: Path, repos: int) -> int:
    rng = random.Random(5)
    w = StorageWriter(base / "private")
    shared = rng.randbytes(4096)
    indexes = []
    for i in range(repos):
        idx = w.push_index(f"team{i % 10}/app-{i}", rng, shared_layers=[shared])
        w.tag(f"team{i % 10}/app-{i}", "v1", idx.digest)
        indexes.append((f"team{i % 10}/app-{i}", idx))
    engine = dbmod.open_writer(str(db))
    run_scan(engine, ScanOptions(base=base))
    for repo, idx in indexes:
        for child in idx.children:
            w.remove_revision(repo, child.digest)
    w.sweep()
    run_scan(engine, ScanOptions(base=base))
    with engine.connect() as c:
        n = c.exec_driver_sql("SELECT COUNT(*) FROM findings WHERE resolved_run IS NULL").scalar_one()
    engine.dispose()
    return int(n)


def height(html: Path, work: Path) -> int | None:
    chromium = shutil.which("chromium")
    if not chromium:
        return None
    probe = work / (html.stem + "-probe.html")
    probe.write_text(html.read_text(encoding="utf-8").replace(
        "</body>", "<script>document.title = 'H' + document.documentElement.scrollHeight</script></body>"),
        encoding="utf-8")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={work / 'profile'}", "--window-size=1280,900", "--dump-dom",
                        probe.as_uri()], capture_output=True, text=True, timeout=180)
    m = re.search(r"<title>H(\d+)</title>", r.stdout)
    return int(m.group(1)) if m else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repos", type=int, nargs="+", default=[4, 40, 200])
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="regindex-bench-incidents-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'repos':>5} {'findings':>8} {'incidents':>9} | {'bytes before':>12} {'after':>9} {'ratio':>6} | "
          f"{'height before':>13} {'after':>7} {'ratio':>6}")
    for n in args.repos:
        d = work / f"r{n}"
        shutil.rmtree(d, ignore_errors=True)
        (d / "storage").mkdir(parents=True)
        findings = build(d / "storage", d / "regindex.db", n)
        sizes, heights = [], []
        with dbmod.reader(str(d / "regindex.db")) as conn:
            for fold in (False, True):
                rep = report.collect(conn, fold=fold)
                out = d / f"report-{'after' if fold else 'before'}.html"
                out.write_text(report.render_report(rep), encoding="utf-8")
                sizes.append(out.stat().st_size)
                heights.append(height(out, d))
            from regindex.incidents import group

            incidents = len(group(conn))
        hb, ha = heights
        hr = f"{hb / ha:6.1f}" if hb and ha else "     -"
        print(f"{n:>5} {findings:>8} {incidents:>9} | {sizes[0]:>12,} {sizes[1]:>9,} {sizes[0] / sizes[1]:6.1f} | "
              f"{hb or '-':>13} {ha or '-':>7} {hr}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
