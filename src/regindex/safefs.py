"""Files inside a registry's storage, handled without ever following a symlink.

Every directory on a path is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, and
every read, rename, write and removal is done relative to those descriptors: a component that is a symlink or not
a directory raises ``Unsafe`` and nothing is touched. Reads are bounded. Used by ``repair`` (moves into a
quarantine, undo) and nothing else writes to storage.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from regindex.storage import READ_CHUNK, read_capped

MAX_LINK_FILE = 64 * 1024  # a layer directory holds one small link file; anything bigger is not moved blindly

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
DIR_FLAGS = _DIR_FLAGS



class Unsafe(Exception):
    """A path component is a symlink or not what it should be: the action is refused, nothing is touched."""


def parts_of(rel: str | PurePosixPath) -> list[str]:
    parts = list(PurePosixPath(rel).parts)
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise Unsafe(f"not a path inside the storage root: {rel!r}")
    return parts


def open_dir(root: Path, parts: Sequence[str]) -> int:
    """A descriptor of ``root/parts...``; each component is opened without following a symlink.

    FileNotFoundError when a component is missing, Unsafe when one is a symlink or not a directory."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        done: list[str] = []
        for p in parts:
            try:
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise Unsafe(f"{'/'.join([*done, p])} is a symlink or not a directory (never followed)") from None
                raise
            os.close(fd)
            fd = nfd
            done.append(p)
        return fd
    except BaseException:
        os.close(fd)
        raise


# A registry's directory and docker/registry/v2 below it: the scan never follows a symlink there
# (``crawl.discover`` refuses the registry), so neither does an action on its storage.
_WALKED_ABOVE_V2 = 4


def below(v2: Path, parts: Sequence[str]) -> tuple[Path, list[str]]:
    """``(anchor, components)`` naming ``v2/parts...`` for :func:`open_dir` and :func:`lstat_at`, where ``v2`` is a
    registry's ``<registry>/docker/registry/v2`` as its scan recorded it: only the path above the registry's
    directory is resolved; the registry's directory, ``docker/registry/v2`` and ``parts`` are opened without
    following a symlink. A registry whose storage became a symlink since its scan is refused, not acted on
    behind the link."""
    n = min(_WALKED_ABOVE_V2, len(v2.parts) - 1)
    return v2.parents[n - 1], [*v2.parts[len(v2.parts) - n:], *parts]


@contextmanager
def in_storage(v2: Path, parts: Sequence[str]) -> Iterator[int]:
    """A descriptor of ``v2/parts...`` (see :func:`below`), closed on exit."""
    with opened_dir(*below(v2, parts)) as fd:
        yield fd


def lstat_in_storage(v2: Path, rel: str | PurePosixPath) -> os.stat_result | None:
    """:func:`lstat_at` of ``v2/rel`` (see :func:`below`)."""
    anchor, parts = below(v2, parts_of(rel))
    return lstat_at(anchor, PurePosixPath(*parts))


@contextmanager
def opened_dir(root: Path, parts: Sequence[str]) -> Iterator[int]:
    fd = open_dir(root, parts)
    try:
        yield fd
    finally:
        os.close(fd)


def lstat_at(root: Path, rel: str | PurePosixPath) -> os.stat_result | None:
    """lstat of ``root/rel`` without following any symlink on the way; None when it (or a parent) is missing.
    Unsafe when a parent is a symlink: whether it exists cannot be told without following it."""
    parts = parts_of(rel)
    try:
        with opened_dir(root, parts[:-1]) as fd:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def read_at(dir_fd: int, name: str, limit: int) -> bytes:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"{name} is not a regular file")
        if st.st_size > limit:
            raise Unsafe(f"{name} is {st.st_size} bytes, more than the {limit} this action reads")
        data = read_capped(fd, limit)
        if len(data) > limit:
            raise Unsafe(f"{name} grew past {limit} bytes while being read")
        return data
    finally:
        os.close(fd)


def hash_at(dir_fd: int, name: str, alg: str) -> tuple[str, int]:
    """(digest, size) of a regular file, streamed."""
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unsafe(f"{name} is not a regular file")
        h, size = hashlib.new(alg), 0
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
        return f"{alg}:{h.hexdigest()}", size
    finally:
        os.close(fd)


def fsync_dir(path: Path | int) -> None:
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        if not isinstance(path, int):
            os.close(fd)


def rename(src: str, dst: str, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
    os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def flat_files(dir_fd: int) -> list[tuple[str, os.stat_result]]:
    """The entries of a directory repair may move: regular files only (a layer directory holds its link)."""
    out = []
    for name in sorted(os.listdir(dir_fd)):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise Unsafe(f"{name} in it is {what}: not moved")
        out.append((name, st))
    return out


def describe_files(dir_fd: int) -> list[dict[str, Any]]:
    files = []
    for name, st in flat_files(dir_fd):
        data = read_at(dir_fd, name, MAX_LINK_FILE)
        files.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "mode": oct(stat.S_IMODE(st.st_mode))})
    return files


def move_dir(src_parent_fd: int, name: str, dst_parent_fd: int, dst_name: str) -> str:
    """Move directory ``name`` (flat, regular files only) to ``dst_name``: one rename on the same filesystem;
    across filesystems copy, fsync, verify, then remove the source. Returns "rename" or "copy"."""
    try:
        os.stat(dst_name, dir_fd=dst_parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        raise Unsafe(f"{dst_name} already exists at the destination: not overwritten")
    try:
        rename(name, dst_name, src_dir_fd=src_parent_fd, dst_dir_fd=dst_parent_fd)
        os.fsync(src_parent_fd)
        os.fsync(dst_parent_fd)
        return "rename"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    src_fd = os.open(name, _DIR_FLAGS, dir_fd=src_parent_fd)
    try:
        files = flat_files(src_fd)
        os.mkdir(dst_name, stat.S_IMODE(os.fstat(src_fd).st_mode), dir_fd=dst_parent_fd)
        dst_fd = os.open(dst_name, _DIR_FLAGS, dir_fd=dst_parent_fd)
        try:
            for fname, st in files:
                data = read_at(src_fd, fname, MAX_LINK_FILE)
                out = os.open(fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                              stat.S_IMODE(st.st_mode), dir_fd=dst_fd)
                try:
                    os.write(out, data)
                    os.fchmod(out, stat.S_IMODE(st.st_mode))
                    os.fsync(out)
                finally:
                    os.close(out)
                os.utime(fname, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd)
                if read_at(dst_fd, fname, MAX_LINK_FILE) != data:
                    raise OSError(errno.EIO, f"copy of {fname} does not read back the same")
            os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
        os.fsync(dst_parent_fd)
        for fname, _st in files:
            os.unlink(fname, dir_fd=src_fd)
    finally:
        os.close(src_fd)
    os.rmdir(name, dir_fd=src_parent_fd)
    os.fsync(src_parent_fd)
    return "copy"


def makedirs(root: Path, parts: Sequence[str], mode: int) -> None:
    """mkdir -p inside a quarantine directory regindex owns."""
    path = root.joinpath(*parts)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
