"""The nightly job at scale, against the reference scanner, in one run on the same tree.

    python benchmarks/bench_scale.py --scale 200k [--seed 1] [--pg URL] [--no-cold] [--cache-dir DIR]

Generates (once, cached under ``--cache-dir`` by scale and seed) a tree shaped like production registries with
damage of every finding kind and its ground truth (``benchmarks/regtree.py``), works on a hard-linked copy of it,
and times, each as its own process (wall time, peak RSS of that process):

- the reference scanner (``../shared/reference/registry_integrity_scan.py --dry-run``), and
- ``regindex scan`` into SQLite (and PostgreSQL with ``--pg``),

for a first scan (empty database), an unchanged re-scan, and a re-scan after ~1% churn (pushes, new
repositories, tag moves, API deletes, a GC-like sweep, uploads, new damage); warm (every file of the tree read once
before each process: ``warm_up``), and cold (page cache dropped before each process) when it runs as root. Every regindex scan's open findings are compared with the ground truth,
and the reference's output with the truth's orphans. Prints one table; ``--markdown`` prints it for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regtree  # noqa: E402

SCALES = {"10k": 10_000, "200k": 200_000, "1m": 1_000_000}
HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent.parent / "shared" / "reference" / "registry_integrity_scan.py"


@dataclass
class Measure:
    wall: float
    rss_mb: float
    rc: int
    out: str = ""


@dataclass
class Row:
    phase: str
    ref: Measure | None = None
    sqlite: Measure | None = None
    pg: Measure | None = None
    truth_ok: list[str] = field(default_factory=list)


def run(cmd: list[str], cold: bool = False, capture: bool = False) -> Measure:
    if cold:
        drop_caches()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-scale-{os.getpid()}.out"
    rss_path = out_path.with_suffix(".rss")
    # Peak RSS through /usr/bin/time: a child forked from this process (which holds the tree's model: ~330 MB
    # at 1M) keeps this process's high-water mark in its own ru_maxrss across exec, so wait4's figure is never
    # below ours; time's child is forked from time, and time reports it.
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_path)] if os.path.exists("/usr/bin/time") else []
    with open(out_path, "w+") as out:
        t = time.perf_counter()
        p = subprocess.Popen(timer + cmd, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read() if capture or p.returncode not in (0, 1) else ""
    out_path.unlink()
    rss_kb = float(usage.ru_maxrss)
    if timer:
        lines = rss_path.read_text().split()
        rss_path.unlink()
        rss_kb = float(lines[-1])
    if p.returncode not in (0, 1):
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return Measure(wall, rss_kb / 1024, p.returncode, text)


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as fh:
        fh.write("3\n")


def warm_up(tree: Path) -> None:
    """Warm means warm for both: every directory listed and every file read (its first 1 MiB) once, so that
    a warm phase measures neither tool's disk. (Running the reference once before warms only what it reads:
    it stats link files without reading them, so regindex's first reads of them then wait on the disk.)"""
    from concurrent.futures import ThreadPoolExecutor

    def read(paths: list[str]) -> None:
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as fh:
                    fh.read(1 << 20)
            except OSError:
                pass

    # 16 readers: a cold tree of a million small files is a million random reads (20+ minutes one at a time here)
    with ThreadPoolExecutor(16) as pool:
        batch: list[str] = []
        for root, _dirs, files in os.walk(tree):
            batch.extend(os.path.join(root, name) for name in files)
            if len(batch) >= 2000:
                pool.submit(read, batch)
                batch = []
        pool.submit(read, batch)


# ---------------------------------------------------------------------------------------------
# The tree


def cached_tree(cache: Path, scale: str, seed: int) -> tuple[Path, dict[str, int]]:
    tree = cache / f"tree-{scale}-seed{seed}"
    marker = tree / "GENERATED.json"
    if marker.exists():
        return tree, json.loads(marker.read_text())
    tmp = cache / f"tree-{scale}-seed{seed}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    model = regtree.generate(str(tmp), SCALES[scale], seed)
    files = dirs = 0
    for _root, ds, fs in os.walk(tmp):
        files += len(fs)
        dirs += len(ds)
    info = {"files": files, "dirs": dirs, "seconds": round(time.perf_counter() - t, 1),
            "repositories": sum(len(r.repos) for r in model.regs.values()),
            "blobs": sum(len(r.blobs) for r in model.regs.values())}
    (tmp / "GENERATED.json").write_text(json.dumps(info))
    tmp.rename(tree)
    print(f"generated {tree}: {info}", flush=True)
    return tree, info


def work_copy(tree: Path, work: Path) -> Path:
    """A writable view of the cached tree for the scans and the churn; the cache stays as generated. As root:
    an overlay mount (instant, copy-on-write); otherwise a hard-linked copy (minutes at 1M files)."""
    release(work)
    if os.geteuid() == 0:
        for d in ("upper", "work", "merged"):
            (work / d).mkdir(parents=True)
        opts = f"lowerdir={tree},upperdir={work / 'upper'},workdir={work / 'work'}"
        if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(work / "merged")],
                          capture_output=True).returncode == 0:
            (work / "merged" / "GENERATED.json").unlink()
            return work / "merged"
        shutil.rmtree(work)
    subprocess.run(["cp", "-al", str(tree), str(work)], check=True)
    (work / "GENERATED.json").unlink()
    return work


def release(work: Path) -> None:
    """Unmount (if it is an overlay) and remove a working copy."""
    merged = work / "merged"
    if merged.is_dir() and os.path.ismount(merged):
        subprocess.run(["umount", str(merged)], check=True)
    shutil.rmtree(work, ignore_errors=True)


def unshare(paths: list[str]) -> None:
    """Give files the churn writes in place an inode of their own (before any scan)."""
    for p in sorted(set(paths)):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if st.st_nlink > 1:
            data = Path(p).read_bytes()
            tmp = p + ".unshare"
            Path(tmp).write_bytes(data)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, p)


# ---------------------------------------------------------------------------------------------
# Checking findings


Key = tuple[str, str, str | None, str | None, str | None, str | None]
FINDINGS_SQL = ("SELECT kind, registry, repository, digest, tag, parent_digest FROM findings "
                "WHERE resolved_run IS NULL")


def sqlite_findings(path: Path) -> set[Key]:
    with sqlite3.connect(path) as c:
        return {tuple(r) for r in c.execute(FINDINGS_SQL)}  # type: ignore[misc]


def pg_findings(url: str) -> set[Key]:
    import psycopg

    with psycopg.connect(_libpq(url)) as c:
        return {tuple(r) for r in c.execute(FINDINGS_SQL)}  # type: ignore[misc]


def compare(got: set[Key], truth: set[Key], what: str) -> str:
    missing, extra = truth - got, got - truth
    if not missing and not extra:
        return f"{what}: {len(got)} = truth"
    sample = [f"missing {k}" for k in sorted(missing, key=str)[:3]] + [f"extra {k}" for k in sorted(extra, key=str)[:3]]
    return f"{what}: {len(missing)} missing, {len(extra)} extra of {len(truth)} ({'; '.join(sample)})"


_REF_LAYER = re.compile(r"\[([^/\]]+)/([^\]]+)\] removing orphaned layer link: ([0-9a-f]{12})")
_REF_CHILD = re.compile(r"\[([^/\]]+)/([^\]]+)\] ORPHAN INDEX: ([0-9a-f]{12}) references missing child ([0-9a-f]{12})")


def reference_agrees(out: str, truth: set[Key], roles: dict[str, str]) -> str:
    """The reference reports orphan layer links everywhere and orphan index children in 'private' only."""
    ref = {("orphan_layer_link", m[1], m[2], m[3]) for m in _REF_LAYER.finditer(out)}
    ref |= {("orphan_index_child", m[1], m[2], m[4]) for m in _REF_CHILD.finditer(out)}
    want = {(k[0], k[1], k[2], (k[3] or "")[7:19]) for k in truth
            if k[0] == "orphan_layer_link" or (k[0] == "orphan_index_child" and k[1] == "private")}
    if ref == want:
        return f"reference: {len(ref)} orphans = truth"
    return f"reference: {len(want - ref)} truth orphans not reported, {len(ref - want)} reported beyond truth"


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _libpq(url: str) -> str:
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def fresh_pg(url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def drop_pg(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=SCALES, default="10k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("REGINDEX_BENCH_CACHE", "/var/tmp/regindex-bench")))
    ap.add_argument("--pg", metavar="URL", help="also scan into PostgreSQL (a database regindex_bench is (re)created)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold phases even as root")
    ap.add_argument("--keep", action="store_true", help="keep the working copy and databases")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--regindex-args", default="", help="extra arguments for every regindex scan")
    args = ap.parse_args()

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    tree, info = cached_tree(args.cache_dir, args.scale, args.seed)
    work_dir = args.cache_dir / f"work-{args.scale}-seed{args.seed}"
    t = time.perf_counter()
    work = work_copy(tree, work_dir)
    # The model of the working copy, and the two churn plans with the truth after each.
    model = regtree.generate(str(work), SCALES[args.scale], args.seed, write=False)
    truth0 = set(model.truth)
    plan1 = regtree.plan_churn(model, args.seed, 1)
    truth1 = set(model.truth)
    cold = can_drop_caches() and not args.no_cold
    plan2 = regtree.plan_churn(model, args.seed, 2) if cold else []
    truth2 = set(model.truth)
    unshare(regtree.written_paths(plan1 + plan2))
    print(f"tree {tree.name}: {info['files']} files, {info['repositories']} repositories; working copy and "
          f"churn plans ready in {time.perf_counter() - t:.1f}s; cold phases: "
          f"{'yes' if cold else 'no (--no-cold)' if args.no_cold else 'no (not root)'}",
          flush=True)

    db_dir = args.cache_dir / f"db-{args.scale}-seed{args.seed}"
    shutil.rmtree(db_dir, ignore_errors=True)
    db_dir.mkdir()
    sq = db_dir / "warm.db"
    sq_cold = db_dir / "cold.db"
    py = sys.executable
    ref_cmd = [py, str(REFERENCE), str(work), "--dry-run"]

    def regindex(db: str, *extra: str) -> list[str]:
        return [py, "-m", "regindex", "scan", str(work), "--db", db, "--cache", "dockerhub", "--fail-on", "never",
                "-q", *extra, *args.regindex_args.split()]

    pg_url = fresh_pg(args.pg, "regindex_bench") if args.pg else None
    roles = {name: reg.role for name, reg in model.regs.items()}
    rows: list[Row] = []

    def phase(name: str, truth: set[Key], cold_: bool, db: Path, pg: bool) -> Row:
        row = Row(name)
        print(f"-- {name}", flush=True)
        if not cold_:
            warm_up(work)  # every file both tools may read, in the page cache
        row.ref = run(ref_cmd, cold=cold_, capture=True)
        row.truth_ok.append(reference_agrees(row.ref.out, truth, roles))
        row.sqlite = run(regindex(str(db)), cold=cold_)
        row.truth_ok.append(compare(sqlite_findings(db), truth, "sqlite"))
        if pg and pg_url:
            row.pg = run(regindex(pg_url), cold=cold_)
            row.truth_ok.append(compare(pg_findings(pg_url), truth, "pg"))
        rows.append(row)
        _print_row(row, info["files"])
        return row

    phase("first scan, warm", truth0, False, sq, True)
    phase("unchanged re-scan, warm", truth0, False, sq, True)
    if cold:
        phase("first scan, cold", truth0, True, sq_cold, False)
        phase("unchanged re-scan, cold", truth0, True, sq, False)
    regtree.apply_churn(model, plan1)
    phase("after 1% churn, warm", truth1, False, sq, True)
    if cold:
        regtree.apply_churn(model, plan2)
        phase("after 1% churn, cold", truth2, True, sq, False)

    print()
    print(_table(rows, info, args, markdown=args.markdown))
    if not args.keep:
        release(work_dir)
        shutil.rmtree(db_dir, ignore_errors=True)
        if args.pg:
            drop_pg(args.pg, "regindex_bench")
    bad = [t for r in rows for t in r.truth_ok if "=" not in t]
    if bad:
        sys.exit("findings differ from the ground truth:\n" + "\n".join(bad))


def _ratio(a: Measure | None, b: Measure | None) -> str:
    return f"{a.wall / b.wall:.2f}x" if a and b and b.wall else "-"


def _print_row(r: Row, files: int) -> None:
    assert r.ref and r.sqlite
    pg = f"  pg {r.pg.wall:.1f}s ({_ratio(r.pg, r.sqlite)} of sqlite, {r.pg.rss_mb:.0f} MB)" if r.pg else ""
    print(f"   reference {r.ref.wall:.1f}s ({r.ref.rss_mb:.0f} MB)  regindex {r.sqlite.wall:.1f}s = "
          f"{_ratio(r.sqlite, r.ref)} ({files / r.sqlite.wall:,.0f} files/s, {r.sqlite.rss_mb:.0f} MB){pg}", flush=True)
    for t in r.truth_ok:
        print(f"   {t}", flush=True)


def _table(rows: list[Row], info: dict[str, int], args: argparse.Namespace, markdown: bool) -> str:
    head = ["phase", "reference s", "regindex s", "ratio", "files/s", "peak RSS MB", "pg s", "pg/sqlite",
            "findings = truth"]
    lines = []
    for r in rows:
        assert r.ref and r.sqlite
        ok = "yes" if all("=" in t for t in r.truth_ok) else "NO"
        lines.append([r.phase, f"{r.ref.wall:.1f}", f"{r.sqlite.wall:.1f}", _ratio(r.sqlite, r.ref),
                      f"{info['files'] / r.sqlite.wall:,.0f}", f"{r.sqlite.rss_mb:.0f}",
                      f"{r.pg.wall:.1f}" if r.pg else "-", _ratio(r.pg, r.sqlite), ok])
    title = (f"scale {args.scale} (seed {args.seed}): {info['files']:,} files, {info['repositories']:,} repositories, "
             f"{info['blobs']:,} blobs; python {platform.python_version()}, {os.cpu_count()} cpus")
    if markdown:
        out = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x) + " |" for x in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)) for x in lines]
    return "\n".join(out)


if __name__ == "__main__":
    main()
