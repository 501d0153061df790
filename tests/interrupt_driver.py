"""Interrupt a scan at many points of its database phase and report what each left behind (JSON on stdout).

Run by tests/test_interrupts.py in a subprocess (with a time limit: an interrupt that makes the scan wait on its
own lock must fail the test, not hang it). Usage: python -m tests.interrupt_driver BASE DB0 WORKDIR MODE STEP
MODE ``stmt``: SIGTERM just before the k-th SQL statement once the checks start (k = 0, STEP, 2*STEP, ...).
MODE ``line``: SIGTERM at the n-th traced Python line once the run's final status is written (its last
statement), through its COMMIT and the release of its connection (n = 0..11, then every STEP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine, event

from regindex import checks, scan, store
from regindex.cli import cli

STATE_SQL = {
    "findings": "SELECT key, episode, kind, severity, resolved_run, last_seen_run, detail FROM findings "
                "ORDER BY key, episode",
    "links": "SELECT registry_id, repository, kind, tag, path_digest, state, first_run, gone_run FROM links "
             "ORDER BY id",
    "blobs": "SELECT registry_id, digest, first_run, gone_run FROM blobs ORDER BY id",
    "runs": "SELECT id, status FROM runs ORDER BY id",
}


class Injector:
    def __init__(self) -> None:
        self.mode = ""
        self.at = -1
        self.count = 0
        self.armed = False
        self.fired = False

    def fire(self) -> None:
        self.armed = False
        self.fired = True
        sys.settrace(None)
        os.kill(os.getpid(), signal.SIGTERM)

    def tick(self) -> None:
        if self.armed:
            if self.count == self.at:
                self.fire()
            self.count += 1

    def tracer(self, frame: Any, event_: str, arg: Any) -> Any:
        if event_ == "line":
            self.tick()
        return self.tracer if self.armed else None


INJ = Injector()


def _before_execute(*_a: Any) -> None:
    if INJ.mode == "stmt":
        INJ.tick()


_real_checks = checks.run_checks
_real_finish = store.finish_run
_real_run_scan = scan.run_scan


def _run_checks(*a: Any, **k: Any) -> Any:
    if INJ.mode == "stmt" and not INJ.fired:
        INJ.armed = True
    return _real_checks(*a, **k)


def _finish_run(conn: Any, run_id: int, status: str, *a: Any, **k: Any) -> Any:
    done = _real_finish(conn, run_id, status, *a, **k)
    if INJ.mode == "line" and status != "failed" and not INJ.fired:
        # from the last statement of the run's transaction on: its COMMIT and the release of its connection
        INJ.armed = True
        sys.settrace(INJ.tracer)
        caller = sys._getframe().f_back
        while caller is not None:
            caller.f_trace = INJ.tracer
            caller = caller.f_back
    return done


def _run_scan(*a: Any, **k: Any) -> Any:
    try:
        return _real_run_scan(*a, **k)
    finally:  # never fire outside the run (the CLI restores the default SIGTERM action afterwards)
        INJ.armed = False
        sys.settrace(None)


def state(db: Path) -> dict[str, Any]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {k: [list(r) for r in con.execute(q)] for k, q in STATE_SQL.items()}
    finally:
        con.close()


def main() -> None:
    base, db0, work, mode, step = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    event.listen(Engine, "before_cursor_execute", _before_execute)
    checks.run_checks = _run_checks  # type: ignore[assignment]
    store.finish_run = _finish_run  # type: ignore[assignment]
    scan.run_scan = _run_scan  # type: ignore[assignment]
    runner = CliRunner()

    def fresh(name: str) -> Path:
        db = work / name
        for p in work.glob(name + "*"):
            p.unlink()
        shutil.copy(db0, db)
        return db

    before = state(db0)
    ref_db = fresh("ref.db")
    ref = runner.invoke(cli, ["scan", str(base), "--db", str(ref_db), "-q"])
    after = state(ref_db)
    results = []
    at = 0
    while True:
        db = fresh("x.db")
        INJ.mode, INJ.at, INJ.count, INJ.armed, INJ.fired = mode, at, 0, False, False
        r = runner.invoke(cli, ["scan", str(base), "--db", str(db), "-q"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not INJ.fired:
            break
        st = state(db)
        status = st["runs"][-1][1]
        expected = before if status == "failed" else after
        results.append({
            "at": at, "exit": r.exit_code, "status": status, "output": r.output[-300:],
            "same": {k: st[k] == expected[k] for k in ("findings", "links", "blobs")},
            "traceback": "Traceback" in r.output,
        })
        at += 1 if at < 12 else step  # every point right after the last statement, then sampled
    print(json.dumps({"reference_exit": ref.exit_code, "points": results}))


if __name__ == "__main__":
    main()
