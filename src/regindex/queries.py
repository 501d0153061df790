"""Ad-hoc read-only SQL (``regindex sql``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, StatementError

from regindex.errors import ReadOnlyError, RegindexError


class QueryError(RegindexError):
    pass


_WRITE_WORDS = ("readonly", "read-only", "read only", "query_only", "not authorized")


def run_readonly(conn: Connection, query: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Execute one statement on a read-only connection; writes fail with ``ReadOnlyError``."""
    q = query.strip().rstrip(";").strip()
    if not q:
        raise QueryError("empty SQL statement")
    try:
        result = conn.exec_driver_sql(q.replace("%", "%%") if conn.dialect.name == "postgresql" else q)
        if not result.returns_rows:
            raise ReadOnlyError("regindex sql runs read-only queries that return rows; this statement returned none")
        columns = list(result.keys())
        rows = [dict(zip(columns, r)) for r in result]
    except (DBAPIError, StatementError) as exc:
        msg = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(getattr(exc, "orig", exc)).strip() else "error"
        if any(w in msg.lower() for w in _WRITE_WORDS):
            raise ReadOnlyError(f"regindex sql is read-only: {msg}") from None
        raise QueryError(f"SQL error: {msg}") from None
    finally:
        conn.rollback()
    return columns, rows
