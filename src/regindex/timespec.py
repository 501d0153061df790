"""Times given on the command line: ``--since 2026-11-30``, ``--since 7d``, ``--until 2026-12-01T03:30Z``.

A date is midnight UTC; a time without an offset is UTC; a duration (``90m``, ``24h``, ``7d``, ``2w``) counts back
from now.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from regindex.errors import ConfigError

_DURATION = re.compile(r"^(\d{1,6})\s*(m|min|h|d|w)$")
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, option: str = "--since", now: datetime | None = None) -> datetime:
    """An aware UTC datetime, or ``ConfigError`` in one line."""
    text_ = value.strip()
    m = _DURATION.match(text_.lower())
    if m:
        now = now or datetime.now(timezone.utc)
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text_[:-1] + "+00:00" if text_[-1:] in ("Z", "z") else text_)
    except ValueError:
        shown = text_ if len(text_) <= 40 and text_.isprintable() else repr(text_[:40])
        raise ConfigError(f"{option} {shown}: expected a date (2026-11-30), a UTC time (2026-11-30T03:30Z) "
                          "or a duration (90m, 24h, 7d, 2w)") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def for_column(when: datetime, dialect: str) -> datetime:
    """SQLite keeps naive UTC timestamps; PostgreSQL compares aware ones."""
    return when.astimezone(timezone.utc).replace(tzinfo=None) if dialect == "sqlite" else when


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, to the second."""
    if value is None:
        return None
    value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value.replace(microsecond=0).isoformat().replace("+00:00", "Z")
