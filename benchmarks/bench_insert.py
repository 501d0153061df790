"""Why the staging tables are filled with the driver's executemany (COPY on PostgreSQL), not Core insert().

    python benchmarks/bench_insert.py [--rows 200000] [--pg URL]

Inserts the same link rows into a temporary table both ways, in the batches ``store.Stage`` uses, and prints
the ratio (Core insert() is the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from sqlalchemy import Column, MetaData, String, Table, Text, create_engine, insert

from regindex.store import STAGE_BATCH

COLS = ("repository", "kind", "tag", "path_digest", "target_digest", "state", "preview")


def rows(n: int) -> list[tuple[str | None, ...]]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        d = "sha256:" + rng.randbytes(32).hex()
        out.append((f"team{i % 40}/app{i // 200}", "layer", None, d, d, "ok", None))
    return out


def run(url: str, data: list[tuple[str | None, ...]]) -> tuple[float, float]:
    engine = create_engine(url)
    md = MetaData()
    t = Table("bench_stage", md, *[Column(c, String(140) if "digest" in c else Text) for c in COLS],
              prefixes=["TEMPORARY"])
    times = []
    with engine.begin() as conn:
        for how in ("core", "driver"):
            t.drop(conn, checkfirst=True)
            t.create(conn)
            start = time.perf_counter()
            for i in range(0, len(data), STAGE_BATCH):
                part = data[i:i + STAGE_BATCH]
                if how == "core":
                    conn.execute(insert(t), [dict(zip(COLS, r)) for r in part])
                elif conn.dialect.name == "postgresql":
                    dbapi = conn.connection.driver_connection
                    with dbapi.cursor() as cur, cur.copy(f"COPY bench_stage ({', '.join(COLS)}) FROM STDIN") as cp:
                        for r in part:
                            cp.write_row(r)
                else:
                    conn.exec_driver_sql(f"INSERT INTO bench_stage VALUES ({', '.join('?' for _ in COLS)})", part)
            times.append(time.perf_counter() - start)
        t.drop(conn)
    engine.dispose()
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--pg", metavar="URL")
    args = ap.parse_args()
    data = rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        targets = [("sqlite", f"sqlite:///{Path(tmp) / 'b.db'}")] + ([("postgresql", args.pg)] if args.pg else [])
        for name, url in targets:
            core, driver = run(url, data)
            how = "COPY" if name == "postgresql" else "executemany"
            print(f"{name}: {args.rows} rows: Core insert() {core:.2f}s, driver {how} {driver:.2f}s "
                  f"({core / driver:.1f}x faster)")


if __name__ == "__main__":
    main()
