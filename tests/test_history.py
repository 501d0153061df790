"""Runs and finding history: new, persisting, resolved, re-opened; failed runs change nothing."""

from __future__ import annotations

import os
import shutil

import pytest

from sqlalchemy import create_engine, text

from regindex.layout import BlobDataPath

from .test_checks import build_world


def rows(db_path, sql, **params):
    eng = create_engine(f"sqlite:///{db_path}")
    with eng.connect() as c:
        out = [dict(r) for r in c.execute(text(sql), params).mappings()]
    eng.dispose()
    return out


def test_lifecycle_new_persisting_resolved_reopened(base, scan, findings, db_path):
    world = build_world(base)
    layer = world.base_img.config
    saved = (world.w.v2 / "repositories/library/base/_layers/sha256" / layer[7:] / "link").read_bytes()
    scan()  # run 1: clean
    world.w.write_layer_link("library/base", layer, b"garbage")
    scan()  # run 2: new
    [f] = findings()
    assert (f["kind"], f["state"], f["first_seen_run"], f["last_seen_run"]) == ("corrupt_link", "new", 2, 2)
    scan()  # run 3: persisting
    [f] = findings()
    assert (f["state"], f["first_seen_run"], f["last_seen_run"]) == ("persisting", 2, 3)
    world.w.write_layer_link("library/base", layer, saved)
    scan()  # run 4: resolved
    assert findings() == []
    [f] = findings("--state", "resolved")
    assert (f["state"], f["first_seen_run"], f["resolved_run"]) == ("resolved", 2, 4)
    world.w.write_layer_link("library/base", layer, b"")
    scan()  # run 5: re-opened, a second episode of the same problem
    [f] = findings("--state", "new")  # new includes re-opened
    assert (f["state"], f["first_seen_run"], f["resolved_run"]) == ("reopened", 5, None)
    episodes = rows(db_path, "SELECT episode, first_run, resolved_run FROM findings ORDER BY episode")
    assert episodes == [{"episode": 1, "first_run": 2, "resolved_run": 4},
                        {"episode": 2, "first_run": 5, "resolved_run": None}]
    assert [f["state"] for f in findings("--state", "all")] == ["resolved", "reopened"]


def test_unchanged_night_writes_no_inventory_row(base, scan, db_path):
    build_world(base)
    scan()
    before = rows(db_path, "SELECT COUNT(*) AS n FROM links")[0]["n"] + rows(db_path, "SELECT COUNT(*) AS n FROM blobs")[0]["n"]
    scan()
    after = rows(db_path, "SELECT COUNT(*) AS n FROM links")[0]["n"] + rows(db_path, "SELECT COUNT(*) AS n FROM blobs")[0]["n"]
    assert before == after
    assert rows(db_path, "SELECT inventory_changes FROM runs WHERE id = 2")[0]["inventory_changes"] == 0


def test_when_did_this_link_vanish_is_one_query(base, scan, db_path):
    world = build_world(base)
    child = world.api.children[1]
    scan()
    scan()
    world.w.remove_revision("team/app/api", child.digest)
    scan()
    got = rows(db_path, "SELECT first_run, gone_run FROM links WHERE kind = 'revision' AND path_digest = :d",
               d=child.digest)
    assert got == [{"first_run": 1, "gone_run": 3}]


def test_missing_root_is_exit_2_and_changes_nothing(base, scan, findings, db_path, tmp_path, invoke):
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])
    assert scan().exit_code == 1
    before = findings()
    r = invoke("scan", tmp_path / "nope", "--db", db_path, expect=2)
    assert "does not exist" in r.output and "Traceback" not in r.output
    assert findings() == before
    assert rows(db_path, "SELECT status FROM runs ORDER BY id") == [{"status": "complete"}, {"status": "failed"}]


def test_suddenly_empty_registry_is_an_error_not_everything_resolved(base, scan, findings, db_path):
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])
    scan()
    before = findings()
    shutil.rmtree(world.w.v2 / "repositories")
    shutil.rmtree(world.w.v2 / "blobs")
    (world.w.v2 / "repositories").mkdir()
    r = scan(expect=2)
    assert "suddenly empty" in r.output
    assert findings() == before
    assert findings("--state", "resolved") == []
    r = scan("--allow-empty", expect=0)
    assert findings() == [] and len(findings("--state", "resolved")) == len(before)


def test_vanished_registry_is_an_error(base, scan, findings, tmp_path):
    build_world(base)
    other = build_world(base, "second")
    other.w.remove_tag_current("library/base", "latest")
    scan()
    assert len(findings()) == 1
    shutil.rmtree(base / "second")
    r = scan(expect=2)
    assert "gone from" in r.output
    assert len(findings()) == 1


def test_unreadable_registry_makes_a_partial_run_that_resolves_nothing_there(base, scan, findings, db_path,
                                                                            unlistable):
    a = build_world(base, "alpha")
    b = build_world(base, "beta")
    a.w.remove_tag_current("library/base", "latest")
    b.w.remove_tag_current("library/base", "latest")
    scan()
    assert {f["registry"] for f in findings()} == {"alpha", "beta"}
    # alpha is repaired, beta cannot be listed this night (as root, chmod does not stop us: fail scandir)
    a.w.remove_tag("library/base", "latest")
    b.w.remove_tag("library/base", "latest")
    unlistable(lambda path: "beta" in path and path.endswith("repositories"))
    r = scan(expect=2)
    assert "cannot list" in r.output
    assert {f["registry"] for f in findings()} == {"beta"}  # alpha resolved, beta untouched
    assert rows(db_path, "SELECT status FROM runs WHERE id = 2") == [{"status": "partial"}]
    st = rows(db_path, "SELECT g.name, r.status FROM run_registries r JOIN registries g ON g.id = r.registry_id "
                       "WHERE r.run_id = 2 ORDER BY g.name")
    assert st == [{"name": "alpha", "status": "complete"}, {"name": "beta", "status": "failed"}]


def test_interrupted_scan_changes_nothing(base, scan, findings, db_path, monkeypatch):
    world = build_world(base)
    world.w.remove_tag_current("library/base", "latest")
    scan()
    before = findings()
    world.w.remove_tag("library/base", "latest")
    from regindex import history

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(history, "apply", boom)
    r = scan(expect=2)
    assert "interrupted" in r.output
    monkeypatch.undo()
    assert findings() == before
    assert rows(db_path, "SELECT status, error FROM runs WHERE id = 2") == [{"status": "failed", "error": "interrupted"}]
    # nothing of the failed run's inventory was kept: the tag link is still current
    assert rows(db_path, "SELECT COUNT(*) AS n FROM links WHERE gone_run IS NOT NULL") == [{"n": 0}]


def test_fail_on(base, scan):
    world = build_world(base)
    world.w.remove_tag_current("library/base", "latest")
    assert scan("--fail-on", "never").exit_code == 0
    assert scan("--fail-on", "new").exit_code == 0  # persisting now, nothing new
    assert scan().exit_code == 1  # open (default)


@pytest.mark.parametrize("part", ["repositories", "blobs"])
def test_a_vanished_top_directory_is_an_error_not_resolutions(part, base, scan, findings, tmp_path):
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])
    scan()
    before = findings()
    shutil.move(world.w.v2 / part, tmp_path / "away")
    r = scan(expect=2)
    assert f"{part}/ is suddenly empty" in r.output
    assert findings() == before and findings("--state", "resolved") == []


def test_unreadable_blob_data_fails_its_registry_and_resolves_nothing(base, scan, findings, db_path, monkeypatch):
    a = build_world(base, "alpha")
    b = build_world(base, "beta")
    for w in (a, b):
        w.w.remove_revision("team/app/api", w.api.children[1].digest)
    scan()
    assert len(findings("--kind", "orphan_index_child")) == 2
    # a layer of beta becomes unreadable (EACCES; as root, chmod would not stop us) when it is first hashed
    real_open = os.open
    target = str(b.w.path(BlobDataPath(b.base_img.layers[0])))

    def guarded(path, flags, *args, **kw):
        if str(path) == target:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", guarded)
    r = scan("--verify-content", expect=2)
    assert "cannot read" in r.output and "Permission denied" in r.output
    monkeypatch.undo()
    assert len(findings("--kind", "orphan_index_child")) == 2  # beta's finding is kept, not resolved
    assert rows(db_path, "SELECT status FROM runs WHERE id = 2") == [{"status": "partial"}]
    # nothing of beta's inventory from the failed registry was kept (its savepoint was rolled back)
    assert rows(db_path, "SELECT COUNT(*) AS n FROM blob_verifications v JOIN registries g ON g.id = v.registry_id "
                         "WHERE g.name = 'beta' AND v.verified_run = 2") == [{"n": 0}]


def test_a_killed_run_is_marked_failed_by_the_next_scan(base, scan, db_path):
    build_world(base)
    scan()
    e = create_engine(f"sqlite:///{db_path}")
    with e.begin() as c:  # what SIGKILL leaves behind
        c.execute(text("INSERT INTO runs (started_at, status, base) VALUES ('2026-01-01 00:00:00', 'running', 'x')"))
    e.dispose()
    scan()
    assert [r["status"] for r in rows(db_path, "SELECT status FROM runs ORDER BY id")] == [
        "complete", "failed", "complete"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_real_signal_mid_scan_rolls_back_and_marks_the_run_failed(sig, tmp_path):
    """A CronJob deadline (SIGTERM) or Ctrl-C (SIGINT) during a scan of a real process: exit 2, the run is
    recorded as failed (never left 'running'), nothing of it is kept."""
    import json
    import random
    import signal
    import subprocess
    import sys

    from regindex.sample import StorageWriter

    base = tmp_path / "big"
    w = StorageWriter(base / "private")
    rng = random.Random(1)
    for i in range(400):
        idx = w.push_index(f"team/app{i}", rng, attestations=False)
        w.tag(f"team/app{i}", "v1", idx.digest)
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "regindex", "scan", str(base), "--db", str(db), "-q", "--verify-content"]
    subprocess.run(cmd, check=True, capture_output=True)  # run 1: the baseline
    w.remove_tag_current("team/app0", "v1")  # run 2 would add a finding
    # the signal goes as soon as the scan says its run started (a JSON log line on stderr): mid-scan, always
    proc = subprocess.Popen(cmd + ["--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if json.loads(line).get("message") == "run 2 started":
            proc.send_signal(getattr(signal, sig))
            break
    out, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 2, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert rows(db, "SELECT id, status FROM runs ORDER BY id") == [{"id": 1, "status": "complete"},
                                                                   {"id": 2, "status": "failed"}]
    assert rows(db, "SELECT COUNT(*) AS n FROM findings") == [{"n": 0}]
    assert rows(db, "SELECT COUNT(*) AS n FROM links WHERE first_run = 2 OR gone_run = 2") == [{"n": 0}]
