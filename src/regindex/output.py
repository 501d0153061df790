"""Rendering rows for the terminal: aligned table, JSON or CSV. Presentation only."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "json", "csv")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, max_width: int = 72) -> str:
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2, default=_json_default) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_safe(_cell(r.get(c))) for c in columns])
        return buf.getvalue()
    cells = [[_trim(printable(_cell(r.get(c))), max_width) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def csv_safe(v: Any) -> Any:
    """A storage name that starts like a formula must not run as one in a spreadsheet."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def printable(s: str) -> str:
    """Storage names are hostile: never send control characters to a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _trim(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _json_default(v: Any) -> Any:
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    return str(v)
