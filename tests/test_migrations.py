"""Migrations: upgrade from empty, no drift between models and migrations, versions guarded."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from regindex import db
from regindex.errors import SchemaError
from regindex.models import Base

VIEWS = {"current_repositories", "current_links", "current_blobs", "current_uploads", "manifest_children",
         "manifest_serving", "tag_serving", "orphan_layer_links", "orphan_index_children", "open_findings",
         "finding_trend"}


def test_upgrade_from_empty_creates_tables_and_views(db_path):
    engine = db.open_writer(str(db_path))
    insp = inspect(engine)
    assert set(Base.metadata.tables) <= set(insp.get_table_names())
    assert VIEWS <= set(insp.get_view_names())
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        for v in VIEWS:
            c.execute(text(f"SELECT * FROM {v}")).all()  # every view compiles
    engine.dispose()


def test_models_and_migrations_do_not_drift(db_path):
    engine = db.open_writer(str(db_path))
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_back(db_path):
    from alembic import command

    engine = db.open_writer(str(db_path))
    with engine.begin() as c:
        command.downgrade(db.alembic_config(c), "base")
    assert inspect(engine).get_view_names() == []
    db.upgrade(engine)
    assert VIEWS <= set(inspect(engine).get_view_names())
    engine.dispose()


def test_newer_schema_is_refused_with_advice(db_path):
    engine = db.open_writer(str(db_path))
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="newer than this regindex"):
        db.ensure_schema(engine)
    with pytest.raises(SchemaError, match="newer"):
        with db.reader(str(db_path)):
            pass
    engine.dispose()


def test_older_schema_asks_for_upgrade(db_path):
    engine = db.open_writer(str(db_path))
    from alembic import command

    with engine.begin() as c:
        command.downgrade(db.alembic_config(c), "0001")
    with pytest.raises(SchemaError, match="regindex db upgrade"):
        with db.reader(str(db_path)):
            pass
    engine.dispose()


def test_foreign_database_is_refused(db_path):
    e = create_engine(f"sqlite:///{db_path}")
    with e.begin() as c:
        c.execute(text("CREATE TABLE something (x INTEGER)"))
    e.dispose()
    with pytest.raises(SchemaError, match="did not create"):
        db.open_writer(str(db_path))


def test_0003_upgrades_a_database_full_of_history(db_path):
    """A database built by the 0002 schema, with runs and findings, upgrades to repairs + acks without loss."""
    from sqlalchemy import create_engine as ce

    url = f"sqlite:///{db_path}"
    engine = db.make_engine(url)
    db.upgrade(engine, "0002")
    with engine.begin() as c:
        _two_runs_three_findings(c)
    db.upgrade(engine)
    with engine.begin() as c:
        rows = c.execute(text("SELECT key, resolved_run, policy FROM findings ORDER BY key")).all()
        assert [(r[1], r[2]) for r in rows] == [(None, None), (None, None), (2, None)]
        c.execute(text("INSERT INTO repair_actions (batch, at, os_user, registry, action, path, outcome, finding_id) "
                       "VALUES ('b', '2026-11-03 10:00:00', 'ops', 'private', 'quarantine', 'x', 'done', 1)"))
        c.execute(text("INSERT INTO acknowledgements (finding_id, finding_key, reason, os_user, created_at) "
                       "VALUES (1, :k, 'known', 'ops', '2026-11-03 10:00:00')"), {"k": rows[0][0]})
        assert db.current_revision(c) == db.head_revision()
    engine.dispose()
    e = ce(url)
    with e.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM open_findings")).scalar() == 2
    e.dispose()


def test_0004_keeps_every_run_and_recounts_the_open_errors_of_old_runs(db_path, invoke):
    """A database built by the 0003 schema upgrades with its runs; `runs` recounts their open errors (NULL)."""
    import json

    url = f"sqlite:///{db_path}"
    engine = db.make_engine(url)
    db.upgrade(engine, "0003_repair_ack")
    with engine.begin() as c:
        _two_runs_three_findings(c, findings_open=2)
    db.upgrade(engine)
    with engine.begin() as c:
        assert db.current_revision(c) == db.head_revision()
        assert c.execute(text("SELECT COUNT(*), COUNT(open_errors) FROM runs")).one() == (2, 0)
    engine.dispose()
    runs = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    assert [(r["id"], r["open_errors"]) for r in runs] == [(2, 2), (1, 3)]


def _two_runs_three_findings(c: Any, findings_open: int | None = None) -> None:
    """History as an older schema holds it: runs 1 and 2, three findings first seen in run 1, one resolved in 2."""
    for i in (1, 2):
        c.execute(text("INSERT INTO runs (id, started_at, status, base, findings_open) VALUES "
                       "(:i, :at, 'complete', '/srv', :open)"),
                  {"i": i, "at": f"2026-11-0{i} 03:30:00", "open": findings_open})
    for i in range(1, 4):
        c.execute(text("INSERT INTO findings (key, episode, kind, severity, registry, repository, digest, "
                       "detail, first_run, last_seen_run, resolved_run) VALUES (:k, 1, 'orphan_layer_link', "
                       "'error', 'private', 'team/app', 'sha256:' || :k, '{}', 1, 2, :res)"),
                  {"k": f"{i:064x}", "res": 2 if i == 3 else None})


def test_the_head_every_command_compares_is_the_packaged_migrations_head(db_path):
    """``HEAD_REVISION`` spares every command importing alembic: it must name the newest migration shipped, and
    the version table read directly must say what alembic says (a new migration that forgets it fails here)."""
    assert db.head_revision() == db.script_head()
    engine = db.open_writer(str(db_path))
    with engine.connect() as c:
        assert db.current_revision(c) == MigrationContext.configure(c).get_current_revision() == db.script_head()
    engine.dispose()


def test_a_version_table_with_two_revisions_is_refused_in_one_line(db_path):
    engine = db.open_writer(str(db_path))
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('0001_initial_schema')")
    with pytest.raises(SchemaError, match="2 schema revisions at once"):
        db.ensure_schema(engine)
    engine.dispose()
