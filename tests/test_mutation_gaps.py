"""Gaps found by breaking the code on purpose (issue 9): each of these mutations used to pass the whole suite.

- the orphan view forgetting ``gone_run`` for an alias whose target's data vanished in an earlier run;
- readers losing their ``query_only`` pragma;
- the summary's re-opened count;
- a persisting finding's severity, detail and hint changing in place;
- an upload's size and start time across runs.
(Committing findings before the run is marked finished is caught by tests/test_interrupts.py, mode stmt;
``_Walker.subdirs`` following symlinks by tests/test_hostile.py's symlink places.)
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from datetime import datetime, timezone

from regindex import db as dbmod
from regindex.layout import BlobDataPath

from .conftest import ident


def test_sha512_alias_whose_target_vanished_in_an_earlier_run_stays_an_open_orphan(private, rng, scan, findings):
    img = private.push_image("a", rng, layers=[b"layer content"])
    alias = "sha512:" + hashlib.sha512(b"layer content").hexdigest()
    private.write_layer_link("a", alias, img.layers[0].encode())
    scan(expect=0)
    assert findings() == []
    private.remove_blob(img.layers[0])  # the alias's target data vanishes: run 2 sets the blob row's gone_run
    scan(expect=1)
    orphans = {f["digest"] for f in findings("--kind", "orphan_layer_link")}
    assert alias in orphans and img.layers[0] in orphans
    scan(expect=1)  # still open a run later, when the target's blob row is an old, closed episode
    assert alias in {f["digest"] for f in findings("--kind", "orphan_layer_link", "--state", "persisting")}


def test_readers_are_query_only(private, rng, scan, db_path, tmp_path):
    private.push_image("a", rng)
    scan(expect=0)
    with dbmod.reader(str(db_path)) as conn:
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
    # the immutable read path (a directory the reader may not write) too
    engine = dbmod.make_engine(dbmod.resolve_url(str(db_path)), readonly=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
    engine.dispose()


def test_summary_counts_reopened_findings(private, rng, invoke, base, db_path):
    img = private.push_image("a", rng)
    private.tag("a", "v1", img.digest)
    layer = private.path(BlobDataPath(img.layers[0]))
    data = layer.read_bytes()
    invoke("scan", base, "--db", db_path, expect=0)
    private.remove_blob(img.layers[0])
    out = invoke("scan", base, "--db", db_path, expect=1).output
    m = re.search(r"findings: (\d+) new \(0 re-opened\), 0 persisting, 0 resolved", out)
    assert m and int(m.group(1)) >= 1, out
    n = int(m.group(1))
    layer.parent.mkdir(parents=True)
    layer.write_bytes(data)
    out = invoke("scan", base, "--db", db_path, expect=0).output
    assert f"findings: 0 new (0 re-opened), 0 persisting, {n} resolved" in out
    private.remove_blob(img.layers[0])
    out = invoke("scan", base, "--db", db_path, expect=1).output
    assert f"findings: {n} new ({n} re-opened), 0 persisting, 0 resolved" in out


def test_persisting_finding_changes_severity_detail_and_hint_in_place(private, rng, scan, findings):
    index = private.push_index("a", rng, attestations=False)
    private.tag("a", "v1", index.digest)
    child = index.children[0]
    private.remove_revision("a", child.digest)
    scan(expect=1)
    [before] = findings("--kind", "orphan_index_child")
    assert before["severity"] == "error" and before["detail"]["index_status"] == "ok"
    private.delete_revision_link("a", index.digest)  # the index becomes unservable
    private.remove_tag("a", "v1")
    scan()
    [after] = findings("--kind", "orphan_index_child", "--state", "all")
    assert ident(after)[2:] == ident(before)[2:]  # the same finding (registry, repository, digests)
    assert after["first_seen_run"] == before["first_seen_run"] == 1 and after["resolved_run"] is None
    assert after["severity"] == "warning" and after["detail"]["index_status"] != "ok"
    assert "not servable" in after["detail"].get("hint", "") or "not servable" in json.dumps(after)


def test_upload_size_and_start_time_follow_the_disk(private, rng, scan, db_path):
    t1 = datetime(2020, 1, 1, tzinfo=timezone.utc)
    private.upload("a", "u1", t1, size=100)
    scan(expect=0)
    up = private.v2 / "repositories/a/_uploads/u1"
    (up / "data").write_bytes(b"\0" * 700)  # the client kept pushing
    scan(expect=0)
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT size, started_at, first_run, gone_run FROM uploads ORDER BY id").fetchall()
    assert rows == [(700, rows[0][1], 1, None)], rows  # the same episode, its size updated in place
    (up / "startedat").write_text("2021-06-01T00:00:00Z")  # restarted
    con.close()
    scan(expect=0)
    con = sqlite3.connect(db_path)
    rows = con.execute("SELECT size, started_at, first_run, gone_run FROM uploads ORDER BY id").fetchall()
    con.close()
    assert [(r[0], r[2], r[3]) for r in rows] == [(700, 1, 3), (700, 3, None)], rows
    assert rows[1][1].startswith("2021-06-01")
