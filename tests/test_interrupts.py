"""Item 5 of issue 9: SIGTERM (a CronJob deadline) or Ctrl-C anywhere in the database phase ends the scan
within seconds, never leaves the run 'running', and never keeps half of it: a run recorded failed changed no
finding and no inventory row; a run recorded complete kept all of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_hostile import damaged

ROOT = Path(__file__).resolve().parents[1]


def _drive(base: Path, db0: Path, work: Path, mode: str, step: int, timeout: float) -> dict:
    try:
        r = subprocess.run(
            [sys.executable, "-m", "tests.interrupt_driver", str(base), str(db0), str(work), mode, str(step)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"an interrupt in mode {mode} made the scan hang (waiting on its own database lock?)")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def night(base, rng, invoke, tmp_path):
    """A database after one scan, and a tree that changed since: the next scan resolves and opens findings."""
    t = damaged(base, rng)
    db0 = tmp_path / "night.db"
    invoke("scan", base, "--db", db0, "-q", expect=1)
    t["w"].remove_tag("team/app", "v2")  # resolves dangling_tag
    t["w"].remove_blob(t["img"].layers[0])  # opens orphan_layer_link and unlinked_blob_ref
    work = tmp_path / "work"
    work.mkdir()
    return base, db0, work


@pytest.mark.parametrize("mode, step", [("stmt", 1), ("line", 5)])
def test_interrupt_anywhere_late_in_the_database_phase(mode, step, night):
    base, db0, work = night
    out = _drive(base, db0, work, mode, step, timeout=240)
    points = out["points"]
    assert out["reference_exit"] == 1 and len(points) >= 10, out
    statuses = {p["status"] for p in points}
    assert statuses <= {"failed", "complete"}, points  # never left 'running'
    assert "failed" in statuses  # the sweep starts before the COMMIT
    for p in points:
        assert all(p["same"].values()), p  # failed: nothing changed; complete: everything kept
        assert not p["traceback"], p
        if p["status"] == "failed":
            assert p["exit"] == 2 and "interrupted, nothing changed" in p["output"], p
