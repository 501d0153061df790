"""The crawl's only access to storage: list a directory, stat a path, read a file (bounded).

Paths are opaque strings built with ``join``; for the filesystem they are absolute paths under the registry's
v2 root. An object-store backend (S3: a listing with size, ETag and LastModified per key) implements the same
four methods, and nothing after the crawl changes. Symlinks are reported, never followed.
"""

from __future__ import annotations

import os
import stat as st_
from typing import NamedTuple, Protocol

READ_CHUNK = 1 << 20  # bytes a streaming read asks for at a time


def read_capped(fd: int, cap: int) -> bytes:
    """The whole file behind ``fd`` if it holds at most ``cap`` bytes; past the cap, stop after ``cap + 1``
    bytes (a result longer than ``cap`` says the file is, or grew, too large). Never reads more."""
    chunks: list[bytes] = []
    total = 0
    while total <= cap:
        chunk = os.read(fd, min(READ_CHUNK, cap + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# entry and file kinds
DIR, FILE, SYMLINK, OTHER = "dir", "file", "symlink", "other"


# Entry and Stat are named tuples, not frozen dataclasses: one of each per file of the tree, and a frozen
# dataclass costs a Python __init__ per instance.
class Entry(NamedTuple):
    name: str
    path: str
    kind: str  # dir | file | symlink | other (as the listing says, without following anything)


class Stat(NamedTuple):
    kind: str
    size: int
    mtime: float
    changed: float = 0.0  # when the object last changed in any way (filesystem: the later of mtime and ctime;
    # an object store: LastModified). Never set back by a client: what incremental re-scans trust.


class Read(NamedTuple):
    """What reading a file gave: ``kind`` file (``data`` holds at most the limit), symlink, other (not a
    regular file), or error (``error`` says why: the file exists but cannot be read)."""

    kind: str
    data: bytes = b""
    error: str | None = None
    changed: float | None = None  # as Stat.changed, of the file read (before reading it)


# A batch of stats (``Storage.stat_many``); named out here, where ``list`` is not yet the classes' method.
Paths = list[str]
Stats = list[Stat | OSError | None]


class Storage(Protocol):
    def join(self, path: str, name: str) -> str: ...

    def list(self, path: str) -> list[Entry] | None:
        """Entries sorted by name; ``None`` when ``path`` does not exist (vanished). Raises OSError otherwise."""
        ...

    def stat(self, path: str) -> Stat | None:
        """``None`` when ``path`` does not exist. Raises OSError when it cannot be known."""
        ...

    def stat_many(self, paths: Paths) -> Stats:
        """``stat`` of each path, in order, with the OSError in place of a result that cannot be known (the
        crawl stats a directory's worth of files at once: one call, not one per file)."""
        ...

    def read(self, path: str, limit: int) -> Read | None:
        """At most ``limit`` bytes of a file; ``None`` when it does not exist."""
        ...


def _kind(mode: int) -> str:
    if st_.S_ISDIR(mode):
        return DIR
    if st_.S_ISREG(mode):
        return FILE
    if st_.S_ISLNK(mode):
        return SYMLINK
    return OTHER


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class FileSystem:
    """Storage on a local filesystem (registry's ``filesystem`` driver)."""

    def join(self, path: str, name: str) -> str:
        return f"{path}/{name}"  # names come from listings (never absolute, never empty): os.path.join's cases

    def list(self, path: str) -> list[Entry] | None:
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return None
        # the kind from the directory entry (d_type: no stat); a directory first, the common case (each Entry
        # made by tuple.__new__: a blob prefix directory lists hundreds)
        new = tuple.__new__
        out = [new(Entry, (e.name, e.path, DIR if e.is_dir(follow_symlinks=False) else SYMLINK if e.is_symlink()
                           else FILE if e.is_file(follow_symlinks=False) else OTHER)) for e in entries]
        out.sort()  # by name (names in one directory are unique)
        return out

    def stat(self, path: str) -> Stat | None:
        got = self.stat_many([path])[0]
        if isinstance(got, OSError):
            raise got
        return got

    def stat_many(self, paths: Paths) -> Stats:
        # the crawl's innermost loop (every link and blob data file of an incremental night): one call a batch
        out: Stats = []
        # (a Stat made by tuple.__new__, not Stat(...): the named tuple's __new__ is a Python call a file)
        append, lstat, isreg, new = out.append, os.lstat, st_.S_ISREG, tuple.__new__
        for path in paths:
            try:
                s = lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                append(None)
                continue
            except OSError as exc:
                append(exc)
                continue
            mtime, ctime = s.st_mtime, s.st_ctime
            append(new(Stat, (FILE if isreg(s.st_mode) else _kind(s.st_mode), s.st_size, mtime,
                              ctime if ctime > mtime else mtime)))
        return out

    def read(self, path: str, limit: int) -> Read | None:
        """One open (never following a symlink at the last component; the caller listed every directory above
        it as a real directory), fstat, one bounded read."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == getattr(os, "ELOOP", None) or _is_symlink(path):
                return Read(SYMLINK)
            return Read("error", error=exc.strerror)
        try:
            s = os.fstat(fd)
            if not st_.S_ISREG(s.st_mode):
                return Read(OTHER)
            return Read(FILE, os.read(fd, limit), changed=max(s.st_mtime, s.st_ctime))
        except OSError as exc:
            return Read("error", error=exc.strerror)
        finally:
            os.close(fd)


def _is_symlink(path: str) -> bool:
    try:
        return st_.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False
