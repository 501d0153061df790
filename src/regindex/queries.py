"""Ad-hoc read-only SQL (``regindex sql``): one statement, bound parameters, rows streamed, a time limit.

The statement runs on a read-only connection (``db.reader``): SQLite's ``query_only`` and authorizer, a
PostgreSQL session whose transactions are READ ONLY. Rows are fetched in small batches and handed on as they
come, so memory stays constant whatever the size of the result. Parameters are bound by the driver (``:name``
in the query, ``-p name value`` on the command line), never interpolated into the SQL text.

Time limit: on SQLite a progress handler stops the statement once the deadline has passed (and lets Ctrl-C
stop a statement that never returns a row); on PostgreSQL ``statement_timeout`` does, and psycopg cancels the
statement on the server when Ctrl-C arrives.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Connection

from regindex.errors import ReadOnlyError, RegindexError

DEFAULT_TIMEOUT = 300.0  # seconds; 0 or None = no limit
MAX_QUERY_BYTES = 1 << 20  # a query file or stdin larger than this is refused
MAX_VALUE_BYTES = 64 << 20  # SQLite: no single value (string or blob) larger than this is produced
BATCH = 500
# Columns the schema stores as JSON text: ``--json`` and ``--nl`` emit them as JSON, not as escaped strings.
JSON_COLUMNS = frozenset({"detail", "options"})

_WRITE_WORDS = ("readonly", "read-only", "read only", "query_only", "not authorized")
_PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock


class QueryError(RegindexError):
    pass


class QueryTimeout(QueryError):
    pass


class QueryInterrupted(QueryError):
    pass


@dataclass
class Result:
    columns: list[str]
    rows: Iterator[Sequence[Any]]


def read_query(query: str | None, file: str | None, stdin: IO[bytes]) -> str:
    """The statement from the argument, from ``--file PATH`` or from stdin (``-`` as either)."""
    if query is not None and file is not None:
        raise QueryError("give the query as an argument or with --file, not both")
    if query is None and file is None:
        raise QueryError("no query: give it as an argument, with --file PATH, or `-` to read stdin")
    if file is None and query != "-":
        assert query is not None
        return _checked_text(query)
    if (file or "-") == "-":
        data = stdin.read(MAX_QUERY_BYTES + 1)
        where = "stdin"
    else:
        assert file is not None
        try:
            with open(file, "rb") as fh:
                data = fh.read(MAX_QUERY_BYTES + 1)
        except OSError as exc:
            raise QueryError(f"cannot read query file {file!r}: {exc.strerror or exc}") from None
        where = repr(file)
    if len(data) > MAX_QUERY_BYTES:
        raise QueryError(f"the query in {where} is larger than {MAX_QUERY_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise QueryError(f"the query in {where} is not UTF-8") from None


def _checked_text(value: str, what: str = "the query") -> str:
    """Arguments that were not UTF-8 arrive as surrogate escapes: refuse them in one line, not a traceback."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(f"{what} is not valid UTF-8") from None
    return value


@contextmanager
def stream_readonly(
    conn: Connection, query: str, params: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT
) -> Iterator[Result]:
    """Run one read-only statement; yield its columns and an iterator over its rows (fetched in batches).

    Errors while fetching (a timeout, Ctrl-C, a write, bad SQL) surface from the iterator as ``QueryError``
    subclasses or ``ReadOnlyError``. The transaction is rolled back on exit.
    """
    q = _checked_text(query).strip()
    while q.endswith(";"):
        q = q[:-1].rstrip()
    if not q:
        raise QueryError("empty SQL statement")
    bound = {_checked_text(k, "a parameter name"): _checked_text(v, f"parameter {k!r}") for k, v in (params or {}).items()}
    limit = timeout if timeout and timeout > 0 else None
    try:
        if conn.dialect.name == "sqlite":
            with _sqlite(conn, q, bound, limit) as result:
                yield result
        elif conn.dialect.name == "postgresql":
            with _postgres(conn, q, bound, limit) as result:
                yield result
        else:  # pragma: no cover - regindex supports these two
            raise QueryError(f"regindex sql does not support {conn.dialect.name}")
    finally:
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 - the connection is disposed right after; nothing to keep
            pass


def _describe(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def _mapped(exc: Exception, timeout: float | None, timed_out: bool = False) -> RegindexError:
    msg = _describe(exc)
    low = msg.lower()
    if timed_out or "statement timeout" in low:
        return QueryTimeout(f"the query ran longer than --timeout {timeout:g}s and was stopped")
    if low == "interrupted" or "canceling statement due to user request" in low:
        return QueryInterrupted("interrupted")
    if any(w in low for w in _WRITE_WORDS):
        return ReadOnlyError(f"regindex sql is read-only: {msg}")
    if "string or blob too big" in low:
        return QueryError(f"SQL error: a value is larger than {MAX_VALUE_BYTES} bytes (string or blob too big)")
    return QueryError(f"SQL error: {msg}")


# ---------------------------------------------------------------------------------------------
# SQLite: the driver's own named parameters (:name, @name, $name), a progress handler for the deadline


@contextmanager
def _sqlite(conn: Connection, q: str, params: dict[str, str], timeout: float | None) -> Iterator[Result]:
    import sqlite3

    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    deadline = time.monotonic() + timeout if timeout else None
    state = {"timed_out": False}

    def progress() -> int:
        # Python runs a pending SIGINT handler when this callback starts: the KeyboardInterrupt aborts the
        # statement ("interrupted"), which is how Ctrl-C stops a statement that never returns a row.
        if deadline is not None and time.monotonic() > deadline:
            state["timed_out"] = True
            return 1
        return 0

    old_limit = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    raw.set_progress_handler(progress, _PROGRESS_STEPS)
    cur = raw.cursor()
    try:
        try:
            cur.execute(q, params)
        except (sqlite3.Error, ValueError, OverflowError) as exc:
            raise _mapped(exc, timeout, state["timed_out"]) from None
        except MemoryError:
            raise QueryError("SQL error: out of memory") from None
        if cur.description is None:
            raise ReadOnlyError("regindex sql runs read-only queries that return rows; this statement returned none")
        columns = [d[0] for d in cur.description]

        def rows() -> Iterator[Sequence[Any]]:
            while True:
                try:
                    batch = cur.fetchmany(BATCH)
                except (sqlite3.Error, ValueError, OverflowError) as exc:
                    raise _mapped(exc, timeout, state["timed_out"]) from None
                except MemoryError:
                    raise QueryError("SQL error: out of memory") from None
                if not batch:
                    return
                yield from batch

        yield Result(columns, rows())
    finally:
        cur.close()
        raw.set_progress_handler(None, 0)
        raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_limit)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: :name becomes psycopg's %(name)s (outside literals and comments), statement_timeout, and a
# server-side cursor for queries (DECLARE accepts SELECT, WITH, VALUES, TABLE).

_CURSOR_STATEMENTS = ("select", "with", "values", "table")


@contextmanager
def _postgres(conn: Connection, q: str, params: dict[str, str], timeout: float | None) -> Iterator[Result]:
    import psycopg

    raw = conn.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    deadline = time.monotonic() + timeout if timeout else None
    pg_query = pg_placeholders(q)
    try:
        with raw.cursor() as setup:
            setup.execute("SELECT set_config('statement_timeout', %s, true)",
                          (str(max(1, round(timeout * 1000))) if timeout else "0",))
    except psycopg.Error as exc:
        raise _mapped(exc, timeout) from None
    streamed = _first_word(q) in _CURSOR_STATEMENTS
    cur: Any = raw.cursor(name="regindex_sql") if streamed else raw.cursor()
    if streamed:
        cur.itersize = BATCH
    try:
        try:
            cur.execute(pg_query, params)
        except (psycopg.Error, KeyError, ValueError) as exc:
            raise _mapped(exc, timeout) from None
        if cur.description is None:
            raise ReadOnlyError("regindex sql runs read-only queries that return rows; this statement returned none")
        columns = [d.name for d in cur.description]

        def rows() -> Iterator[Sequence[Any]]:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    raise QueryTimeout(f"the query ran longer than --timeout {timeout:g}s and was stopped")
                try:
                    batch = cur.fetchmany(BATCH)
                except (psycopg.Error, ValueError) as exc:
                    raise _mapped(exc, timeout) from None
                if not batch:
                    return
                yield from batch

        yield Result(columns, rows())
    finally:
        try:
            cur.close()
        except psycopg.Error:
            pass  # an aborted transaction: the rollback that follows ends it


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _first_word(q: str) -> str:
    """The statement's first keyword, after comments and opening parentheses."""
    i, n = 0, len(q)
    while i < n:
        if q[i].isspace() or q[i] == "(":
            i += 1
        elif q.startswith("--", i):
            j = q.find("\n", i)
            i = n if j < 0 else j + 1
        elif q.startswith("/*", i):
            j = q.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            m = _WORD.match(q, i)
            return m.group(0).lower() if m else ""
    return ""


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def pg_placeholders(q: str) -> str:
    """``:name`` → ``%(name)s`` outside string literals, quoted identifiers, comments and dollar quotes; every
    other ``%`` doubled (psycopg reads ``%`` as its own escape once parameters are passed). ``::`` casts stay."""
    out: list[str] = []
    i, n = 0, len(q)
    while i < n:
        ch = q[i]
        if ch == "'" or ch == '"':
            escaped = ch == "'" and i > 0 and q[i - 1] in "eE" and (i < 2 or not (q[i - 2].isalnum() or q[i - 2] == "_"))
            j = i + 1
            while j < n:
                if escaped and q[j] == "\\":
                    j += 2
                    continue
                if q[j] == ch:
                    if j + 1 < n and q[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            out.append(q[i:j + 1].replace("%", "%%"))
            i = j + 1
        elif q.startswith("--", i):
            j = q.find("\n", i)
            j = n if j < 0 else j
            out.append(q[i:j].replace("%", "%%"))
            i = j
        elif q.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if q.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif q.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(q[i:j].replace("%", "%%"))
            i = j
        elif ch == "$" and (m := _DOLLAR_TAG.match(q, i)) and not (i > 0 and (q[i - 1].isalnum() or q[i - 1] == "_")):
            tag = m.group(0)
            j = q.find(tag, m.end())
            j = n if j < 0 else j + len(tag)
            out.append(q[i:j].replace("%", "%%"))
            i = j
        elif ch == ":" and q.startswith("::", i):
            out.append("::")
            i += 2
        elif ch == ":" and (m := _WORD.match(q, i + 1)):
            out.append(f"%({m.group(0)})s")
            i = m.end()
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)
