"""Engine, connections and migrations.

``--db`` is a file path (SQLite, the embedded default) or a SQLAlchemy URL (PostgreSQL works the same way).
Migrations ship inside the package and run programmatically; no ``alembic.ini`` is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from regindex.errors import SchemaError, one_line

DEFAULT_DB = "regindex.db"
IN_LIST = 500  # values bound in one IN (...) of a read (SQLite takes 32766 bound parameters, psycopg 65535)


def resolve_url(db: str | None) -> str:
    """A path becomes a SQLite URL; a URL is taken as it is."""
    value = db or os.environ.get("REGINDEX_DB") or DEFAULT_DB
    if "://" in value:
        try:
            make_url(value)
        except ArgumentError:
            raise SchemaError(f"not a valid database URL: {value!r}") from None
        return value
    path = Path(value).expanduser()
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError("--db: the database path is not valid UTF-8; use another path") from None
    if path.parent and not path.parent.exists():
        raise SchemaError(f"database directory {path.parent} does not exist")
    if path.is_dir():
        raise SchemaError(f"--db {path} is a directory, not a database file")
    # URL.create escapes '?', '#' and '%' in the path (a formatted string would make them a query or fragment:
    # another file)
    return URL.create("sqlite", database=str(path.absolute())).render_as_string(hide_password=False)


def _in_memory(url: str) -> bool:
    u = make_url(url)
    return u.get_backend_name() == "sqlite" and (
        not u.database or u.database == ":memory:" or u.query.get("mode") == "memory"
        or "mode=memory" in (u.database or ""))


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, readonly: bool = False) -> Engine:
    kwargs: dict[str, object] = {}
    if is_sqlite(url) and _in_memory(url):
        raise SchemaError("an in-memory SQLite database keeps nothing: give --db a file path")
    target: str | URL = url
    if is_sqlite(url):
        if readonly:
            path = make_url(url).database
            if not path or not Path(path).exists():
                raise SchemaError(f"no database at {path}: run `regindex scan` first")
            target = _readonly_url(Path(path).absolute())
        kwargs["connect_args"] = {"timeout": 30}
    try:
        engine = create_engine(target, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise SchemaError(f"cannot use database {make_url(url).render_as_string(hide_password=True)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        _sqlite_events(engine, readonly)
    elif engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _pg_session(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            # The checks' and reports' queries run for a fraction of a second, but their cost estimates pass
            # jit_above_cost: compiling them took ~0.35 s each (orphan_layer_links 0.55 -> 0.17 s without it,
            # all checks of a 200k churn night ~0.5-1 s less)
            cur.execute("SET jit = off")
            if readonly:
                cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()

    return engine


def _readonly_url(path: Path) -> URL:
    """A read-only SQLite URI for ``path`` (percent-encoded: '#', '?' and '%' are part of the name).

    A reader that may not create files beside the database (another user reading the nightly database) cannot
    create the WAL index (``-shm``) SQLite needs: when no scan is writing (no ``-wal`` file), the file is opened
    ``immutable``, which needs no index and no lock."""
    query = {"mode": "ro", "uri": "true"}
    if not os.access(path.parent, os.W_OK) and not Path(f"{path}-wal").exists():
        query["immutable"] = "1"
    return URL.create("sqlite", database="file:" + quote(str(path)), query=query)


# Pragmas whose argument names what to read (a table, an index), not a value to set.
_PRAGMAS_WITH_ARGUMENT = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                                    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check"})


def _readonly_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None) -> int:
    """Read paths may read; they may not attach files, change pragmas or load anything."""
    import sqlite3

    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() not in _PRAGMAS_WITH_ARGUMENT:
        return sqlite3.SQLITE_DENY  # PRAGMA x = value
    return sqlite3.SQLITE_OK


def _sqlite_events(engine: Engine, readonly: bool) -> None:
    # The pysqlite driver does not emit BEGIN itself (so DDL would autocommit); take over transaction control
    # so a failed migration or load leaves nothing half-done (SQLAlchemy's "serializable isolation" recipe).
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if readonly:
            cur.execute("PRAGMA query_only=1")
        else:
            cur.execute("PRAGMA journal_mode=WAL")  # outside any transaction, as WAL requires
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        if readonly:
            dbapi_conn.set_authorizer(_readonly_authorizer)

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")


# ---------------------------------------------------------------------------------------------
# Migrations


def alembic_config(conn: Connection):
    """alembic's Config for the packaged migrations, sharing ``conn`` (no alembic.ini, no fileConfig())."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("regindex.migrations")))
    cfg.attributes["connection"] = conn
    return cfg


# The newest migration this code ships, as alembic's script directory says (``script_head``; a test holds the
# two equal, so a new migration cannot forget it). Every command compares it with the database's revision:
# read from here and from the version table directly, a run imports alembic (~0.15 s) only to migrate.
HEAD_REVISION = "0012_manifest_reach"


def head_revision() -> str:
    return HEAD_REVISION


def _scripts() -> Any:
    """alembic's view of the packaged migrations (slow: it imports alembic and every migration)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(None))  # type: ignore[arg-type]


def script_head() -> str:
    """The head of the packaged migrations, from alembic."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision alembic recorded in the database (its version table), or None (no regindex schema)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    revisions = [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    if len(revisions) > 1:
        raise SchemaError(f"the database records {len(revisions)} schema revisions at once: "
                          f"{', '.join(sorted(revisions))}; it was not migrated by regindex")
    return revisions[0] if revisions else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), revision)
    except OperationalError as exc:
        raise SchemaError(f"cannot migrate the database: {one_line(exc)}") from None


def ensure_schema(engine: Engine) -> None:
    """Create or upgrade the schema on first use; refuse a schema newer than this code."""
    with engine.connect() as conn:
        try:
            current = current_revision(conn)
            if current == head_revision():
                return
            has_tables = bool(inspect(conn).get_table_names())
        except OperationalError as exc:
            raise SchemaError(f"cannot open the database: {one_line(exc)}") from None
    head = head_revision()
    if current is None and has_tables:
        raise SchemaError("the database holds tables that regindex did not create; use another --db")
    if current is not None and not known_revision(current):
        raise SchemaError(
            f"the database schema ({current}) is newer than this regindex ({head}): upgrade regindex"
        )
    upgrade(engine)


def check_schema(conn: Connection) -> None:
    """For read paths: the schema must be exactly the code's."""
    try:
        current = current_revision(conn)
    except OperationalError as exc:
        raise SchemaError(f"cannot read the database: {one_line(exc)}") from None
    head = head_revision()
    if current is None:
        raise SchemaError("the database has no regindex schema: run `regindex scan` or `regindex db upgrade`")
    if current != head:
        if known_revision(current):
            raise SchemaError(f"the database schema ({current}) is older than this regindex: run `regindex db upgrade`")
        raise SchemaError(f"the database schema ({current}) is newer than this regindex ({head}): upgrade regindex")


def known_revision(rev: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return _scripts().get_revision(rev) is not None
    except CommandError:
        return False


@contextmanager
def reader(db: str | None) -> Iterator[Connection]:
    """A read-only connection to an existing, current database."""
    url = resolve_url(db)
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            check_schema(conn)
            yield conn
    except SQLAlchemyError as exc:
        raise SchemaError(f"database error: {one_line(exc)}") from None
    finally:
        engine.dispose()


def open_writer(db: str | None) -> Engine:
    """An engine for writing; the schema is created or upgraded first."""
    url = resolve_url(db)
    engine = make_engine(url)
    ensure_schema(engine)
    return engine

