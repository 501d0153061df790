"""Files regindex writes for people and collectors (report, CSV, metrics): written whole or not at all, and only
ever as regular files.

A target that exists must be a regular file: a device node (``/dev/stdout``, ``/dev/null``), a symlink, a FIFO
or a directory is refused, never replaced (run as root, ``os.replace`` over ``/dev/null`` would destroy it).
The content goes to a temporary file beside the target (mode 0644), then is renamed over it: a reader never
sees half a file; a write that fails leaves the old file, removes its temporary file and names the target.
"""

from __future__ import annotations

import csv
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from regindex.errors import OutputError


def check_target(path: Path, what: str = "output") -> None:
    """Refuse a target that exists and is not a regular file (checked without following a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"{what}: cannot use {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{what}: {path} is a symlink; regindex writes only regular files (give the real path)")
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise OutputError(f"{what}: {path} is {kind}; regindex writes only regular files")


def atomic_write(path: Path, text: str | None = None, rows: Iterable[list[Any]] | None = None,
                 make_parents: bool = False, what: str = "output") -> None:
    """Write ``text`` (or CSV ``rows``) to ``path`` atomically. Raises ``OutputError`` naming ``path``."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    check_target(path, what)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".regindex-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            if rows is not None:
                csv.writer(fh).writerows(rows)
            else:
                fh.write(text or "")
        os.chmod(tmp, 0o644)
        check_target(path, what)  # again: it may have been replaced while we wrote
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"{what}: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
