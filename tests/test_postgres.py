"""The same code on PostgreSQL, through a SQLAlchemy URL (REGINDEX_TEST_PG_URL; .ci/run starts a server)."""

from __future__ import annotations

import json

import pytest

from .test_checks import CASES, build_world
from .conftest import ident

pytestmark = pytest.mark.postgres


def test_postgres_scan_history_and_sql_match_sqlite(pg_url, base, invoke, tmp_path):
    world = build_world(base)
    expected = CASES["gc_delete_untagged"](world)
    expected |= CASES["tag_without_current_link"](world)
    expected |= CASES["stale_upload"](world)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    sqlite_db = tmp_path / "same.db"
    invoke("scan", base, "--db", sqlite_db, "-q", expect=1)
    pg = json.loads(invoke("findings", "--db", pg_url, "--format", "json").output)
    lite = json.loads(invoke("findings", "--db", sqlite_db, "--format", "json").output)
    assert {ident(f) for f in pg if f["kind"] != "unreferenced_blob"} == expected
    assert sorted(map(ident, pg)) == sorted(map(ident, lite))
    # history on PostgreSQL: repair the tag, scan again
    world.w.remove_tag("library/base", "latest")
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    resolved = json.loads(invoke("findings", "--db", pg_url, "--format", "json", "--state", "resolved").output)
    assert [(f["kind"], f["resolved_run"]) for f in resolved] == [("dangling_tag", 2)]
    r = invoke("sql", "DELETE FROM findings", "--db", pg_url, expect=2)
    assert "read-only" in r.output
    out = json.loads(invoke("sql", "SELECT COUNT(*) AS n FROM orphan_index_children", "--db", pg_url,
                            "--format", "json").output)
    assert out[0]["n"] == 6


def test_postgres_report_history_and_gc_preview(pg_url, base, invoke, tmp_path):
    world = build_world(base)
    invoke("scan", base, "--db", pg_url, "-q", expect=0)
    child = world.api.children[1]
    world.w.remove_revision("team/app/api", child.digest)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    out = tmp_path / "r.html"
    invoke("report", "--db", pg_url, "--out", out)
    html = out.read_text()
    assert child.digest in html and "<script" not in html
    hist = invoke("history", child.digest, "--db", pg_url).output
    assert "orphan_index_child" in hist and "run 2" in hist
    prev = json.loads(invoke("gc-preview", "--db", pg_url, "--format", "json", "--delete-untagged",
                             expect=1).output)
    assert prev[0]["outcome"] == "completes"
