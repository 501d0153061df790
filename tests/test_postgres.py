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


def test_postgres_statistics_are_refreshed_when_the_scan_changed_enough(pg_url, base, invoke, monkeypatch):
    """A first scan analyses what it loaded (PostgreSQL's autovacuum cannot see the open transaction); a
    night that changes a few rows keeps the statistics (each ANALYZE samples every table: 0.4 s at 200k)."""
    from sqlalchemy import text

    from regindex import db as rdb, store

    calls: list[list[str]] = []
    real = store.refresh_statistics
    monkeypatch.setattr(store, "refresh_statistics", lambda conn: calls.append(real(conn)) or calls[-1])
    world = build_world(base)
    invoke("scan", base, "--db", pg_url, "-q", expect=0)
    # before the manifest walk: what the crawl loaded; before the checks: what the walk parsed and reached
    assert calls[0] == ["links", "blobs", "repositories"]
    assert calls[1] == ["manifests", "manifest_refs", "blob_verifications", "manifest_reach"]
    calls.clear()
    world.w.remove_tag("library/base", "latest")
    invoke("scan", base, "--db", pg_url, "-q", expect=0)
    assert calls and all(c == [] for c in calls)  # two link rows changed: far below 50 + 10%
    # The threshold counts this transaction's changes, less those an ANALYZE in it already saw.
    engine = rdb.make_engine(pg_url)
    try:
        with engine.connect() as conn, conn.begin() as tx:
            touch_all = text("UPDATE links SET changed = changed")
            # committed changes count until an ANALYZE commits after them (autovacuum's, as a rule): here the
            # two scans' own inserts and updates
            changed, rows = store._modifications(conn, store._analyzed_in_transaction(conn))["links"]
            assert changed > 0 and rows > 0 and store.stale_statistics(conn) == []
            n = int(conn.execute(text("SELECT COUNT(*) FROM links")).scalar_one())
            while changed + n <= 50 + 0.1 * rows:
                changed += conn.execute(touch_all).rowcount
                assert store.stale_statistics(conn) == []
            conn.execute(touch_all)
            assert store.stale_statistics(conn) == ["links"]
            assert store.refresh_statistics(conn) == ["links"]
            assert store.stale_statistics(conn) == []  # the ANALYZE saw those changes
            conn.execute(text("UPDATE links SET changed = changed WHERE id IN (SELECT id FROM links LIMIT 1)"))
            assert store.stale_statistics(conn) == []
            for _ in range(2 + 50 // n):
                conn.execute(touch_all)
            assert store.stale_statistics(conn) == ["links"]
            tx.rollback()
        with engine.connect() as conn, conn.begin():
            assert store._analyzed_in_transaction(conn) == {}  # what an earlier transaction analysed is not
    finally:
        engine.dispose()


@pytest.mark.parametrize("readonly", [False, True], ids=["scan", "read"])
def test_postgres_sessions_do_not_jit_compile_the_checks(pg_url, readonly):
    """regindex's queries run for a fraction of a second, yet their estimates pass jit_above_cost: compiling
    them cost ~0.35 s each, so regindex's sessions turn JIT off (the server's default is left alone)."""
    from sqlalchemy import create_engine, text

    from regindex import db as rdb

    engine = rdb.make_engine(pg_url, readonly=readonly)
    plain = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW jit")).scalar_one() == "off"
            assert conn.execute(text("SHOW transaction_read_only")).scalar_one() == ("on" if readonly else "off")
        with plain.connect() as conn:
            assert conn.execute(text("SHOW jit")).scalar_one() == "on"  # PostgreSQL's default, untouched
    finally:
        engine.dispose()
        plain.dispose()


def test_a_role_that_does_not_own_the_tables_is_refused_with_the_reason_and_the_run_recorded(
        pg_url, base, invoke, tmp_path):
    """A scan analyses what it loads, and PostgreSQL lets only a table's owner (or a member of its role) do that:
    a role granted reads and writes alone got a warning per table and no statistics, and a 200k first scan's
    checks ran for more than 7 minutes. Such a role is refused at the start, in one line, and the run is recorded
    as failed; once granted the owner's role it scans, and agrees with the owner's scan."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    world = build_world(base)
    world.w.remove_tag_current("library/base", "latest")
    invoke("db", "upgrade", "--db", pg_url)
    role = "ri_job_" + uuid.uuid4().hex[:8]
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    owner = make_url(pg_url).username
    job_url = make_url(pg_url).set(username=role, password="job").render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'job'"))
        c.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
        c.execute(text(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    try:
        out = invoke("scan", base, "--db", job_url, "-q", expect=2).output
        assert f"the database role {role} does not own" in out and "links" in out
        assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
        runs = json.loads(invoke("runs", "--db", job_url, "--format", "json").output)
        assert [(r["status"], "does not own" in (r["error"] or "")) for r in runs] == [("failed", True)]
        with admin.connect() as c:
            c.execute(text(f'GRANT "{owner}" TO {role}'))
        invoke("scan", base, "--db", job_url, "-q", expect=1)
        mine = tmp_path / "owner.db"
        invoke("scan", base, "--db", mine, "-q", expect=1)
        pg = json.loads(invoke("findings", "--db", job_url, "--format", "json").output)
        lite = json.loads(invoke("findings", "--db", mine, "--format", "json").output)
        assert sorted(map(ident, pg)) == sorted(map(ident, lite)) and any(f["kind"] == "dangling_tag" for f in pg)
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP OWNED BY {role}"))
        admin.dispose()
        server = create_engine(make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with server.connect() as c:
            c.execute(text(f"DROP ROLE {role}"))
        server.dispose()
