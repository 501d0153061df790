"""Files regindex writes for people and collectors (report, CSV, metrics): written whole or not at all."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, text: str | None = None, rows: Iterable[list[Any]] | None = None,
                 make_parents: bool = False) -> None:
    """Write ``text`` (or CSV ``rows``) to a temporary file beside ``path``, then rename it into place (mode
    0644): a reader never sees half a file, a failure leaves the old one."""
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".regindex-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            if rows is not None:
                csv.writer(fh).writerows(rows)
            else:
                fh.write(text or "")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
