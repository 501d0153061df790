"""Migrations: upgrade from empty, no drift between models and migrations, versions guarded."""

from __future__ import annotations

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
