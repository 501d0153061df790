"""Exceptions raised by the core. ``cli.py`` turns each into one line on stderr and an exit code."""

from __future__ import annotations

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2  # no open error finding; open error findings; bad input or a failed run


class RegindexError(Exception):
    """Base class: every expected failure of the core is one of these."""

    exit_code = EXIT_ERROR
    run_id: int | None = None  # the scan run this failure was recorded in (metrics are written for it)


class StorageError(RegindexError):
    """The storage tree is missing, unreadable, empty or not a registry."""


class ConfigError(RegindexError):
    """Bad options or configuration file."""


class SchemaError(RegindexError):
    """The database schema is older or newer than this code, or the database cannot be opened."""


class ReadOnlyError(RegindexError):
    """A statement tried to write through a read-only path (``regindex sql``)."""


class LockError(RegindexError):
    """Another scan holds the lock on this database."""


class ScanAborted(RegindexError):
    """A scan stopped before it finished (interrupt or unexpected failure); nothing was resolved."""


class ReportError(RegindexError):
    """There is nothing to report (no finished scan)."""


class UnknownDigest(ReportError):
    """``regindex history``: the digest (or prefix) names nothing in the database, or more than one digest."""


class OutputError(RegindexError):
    """An output file (metrics, report) cannot be written, or its target is not a regular file."""


class RepairError(RegindexError):
    """``regindex repair`` / ``ack``: bad selection, no quarantine directory, nothing to undo, a refused undo."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (a driver error's own message, not SQLAlchemy's wrapping)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
