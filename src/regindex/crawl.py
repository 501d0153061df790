"""Walk one registry root and stream plain rows to a sink. No database here.

Rules: storage is reached only through ``storage.Storage`` (list, stat, bounded read), symlinks are never followed, every read is bounded, every name from storage is
treated as hostile data. What regindex cannot see must never look deleted: a directory that cannot be listed,
a path that cannot be stat'ed, or a symlink where content would be (what lies behind it is unknown) makes the
whole registry crawl fail (``StorageError``: a failed registry in a partial run, none of its findings
resolved). Oddities that hide nothing (stray files, names the registry refuses, names that are not UTF-8) are
recorded as anomalies.
"""

from __future__ import annotations

import gc
import hashlib
import marshal
import os
import pickle
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from regindex.errors import StorageError
from regindex.storage import DIR, FILE, SYMLINK, Entry, FileSystem, Read, Stat, Storage, read_capped
from regindex.layout import (
    DIGEST_HEX_LEN,
    MAX_LINK_BYTES,
    V2_SUFFIX,
    LinkKind,
    LinkState,
    blob_file,
    hex_name_test,
    parse_link,
    valid_repository_name,
    valid_tag,
)

MAX_STARTEDAT_BYTES = 256
_REPO_DIRS = frozenset({"_layers", "_manifests", "_uploads"})
DEFAULT_MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# Reads in flight at once. A cold read of a small file waits on the disk (~1 ms on the benchmark machine's
# virtual disk, for 4 KiB) while the reading thread holds no lock: several at once keep the disk busy
# (benchmarks/bench_scale.py, cold phases). 1 reads in the walking thread.
DEFAULT_READERS = 8
_READ_BATCH = 512  # link files read together (across directories and repositories)
# Repositories not found clean are judged together, their known links asked for in one query: at most this many
# repositories, or about this many links, at a time (memory stays flat).
_JUDGE_REPOSITORIES, _JUDGE_LINKS = 64, 20000
_PROBE, _SLOW = 4, 0.0002  # a batch whose first 4 reads or stats take 200 µs each is waiting on the disk
# The repositories' walk is cold when a quarter of a window of its listings each took longer than this (a
# warm listing takes 5-30 µs; one waiting on the disk 0.1-10 ms): then ReadAhead starts.
_COLD_LIST, _COLD_WINDOW, _COLD_SHARE = 0.00015, 64, 16


@dataclass(frozen=True, slots=True)
class RegistryRoot:
    name: str
    v2: Path  # <rootdirectory>/docker/registry/v2
    problem: str | None = None  # why it cannot be crawled (it is reported, never skipped silently)


@dataclass(frozen=True, slots=True)
class RepoRow:
    name: str
    has_manifests: bool  # _manifests exists
    has_tags_dir: bool  # _manifests/tags exists (GC --delete-untagged aborts without it)


# LinkRow and BlobRow are named tuples, not frozen dataclasses: one per link file and per blob, and a frozen
# dataclass costs ~1 µs of Python __init__ each (~0.3 s of a 200k first scan with Read).
class LinkRow(NamedTuple):
    repository: str
    kind: str
    tag: str | None
    path_digest: str | None
    target_digest: str | None
    state: str
    preview: str | None
    changed: float | None = None  # the file's change time when read, if settled (see crawl_into's ``settled``)


class BlobRow(NamedTuple):
    digest: str
    size: int
    mtime: float  # the data's change time: the later of its mtime and ctime (the column keeps its first name)


class BlobBucket(NamedTuple):
    """What the crawl saw of one bucket of blobs (an algorithm and four hex digits: ``bucket_of``), to keep for
    the next crawl: given when the bucket is new or changed, after its blobs' rows, or gone (a bucket the last
    scan saw that holds no blob now: 0 blobs, no checksum). A bucket found as the last scan saw it (its count,
    bytes and checksum those of ``KnownBlobs``) gives nothing: neither its rows nor itself."""

    bucket: str
    blobs: int
    bytes: int
    checksum: str  # bucket_checksum of its rows ("" when gone)


# known blobs, by bucket: (blobs, bytes, checksum) as the last scan saw them (regindex.store.blob_buckets)
KnownBlobs = dict[str, tuple[int, int, str]]
BUCKET_HEX = 4


def bucket_of(digest: str) -> str:
    """The bucket of a digest: its algorithm and the first BUCKET_HEX hex digits."""
    return digest[:digest.index(":") + 1 + BUCKET_HEX]


def bucket_checksum(rows: Sequence[BlobRow]) -> str:
    """A checksum of blob rows (digest, size, mtime), whatever their order: their columns serialized by
    ``marshal`` version 2 (exact; see ``link_checksum``). (It replaced a text line a row, with the float's
    ``repr``: 3 µs a bucket of one or two blobs, 1.4 µs now. A bucket stored with the old form is staged again
    once, as a changed one is.)"""
    return _sorted_checksum(sorted(rows))


def _sorted_checksum(rows: Sequence[BlobRow]) -> str:
    """``bucket_checksum`` of rows already sorted (the crawl's: one sort a prefix directory)."""
    return hashlib.blake2b(marshal.dumps(tuple(zip(*rows)), 2), digest_size=16).hexdigest()


class LinkSum(NamedTuple):
    """What the crawl saw of one repository's link files (every one the layout names: layer and revision links,
    each tag's current and index links), to keep for the next crawl: how many and ``link_checksum`` of their
    keys (kind, tag, path digest) and change times, in the walk's order. Given only when every one was a regular
    file whose change time was settled (older than the crawl's ``settled``)."""

    repository: str
    links: int
    checksum: str


class CleanRepository(NamedTuple):
    """A repository whose link files stat'ed as the last scan saw them (its ``LinkSum`` the same): none of them
    gives a row or a ``LinkRecheck``, and the inventory is not asked about them: their episodes go on."""

    repository: str


# known link sums, by repository: (links, checksum) as the last scan saw them (regindex.store.link_sums)
KnownSums = dict[str, tuple[int, str]]


# A link file's key in a repository: (kind, tag, path digest), the inventory's too
LinkKey = tuple[str, str | None, str | None]


def link_checksum(keys: list[LinkKey], changes: list[float | None]) -> str:
    """A checksum of a repository's link files: their keys and change times, in the walk's order (listings are
    sorted by name, so the same files walk in the same order). Serialized by ``marshal`` version 2: exact
    (floats in binary, names from storage whatever they hold) and, unlike later versions, the same bytes
    however the strings are shared. (It replaced a sorted join of each file's ``repr``, ~0.4 µs a file: 6% of
    an unchanged night's crawl. A stored sum of another form only makes its repository judged once against the
    inventory, as a changed one is. Lists, as both callers hold them: a tuple would marshal to other bytes.)"""
    return hashlib.blake2b(marshal.dumps((keys, changes), 2), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class UploadRow:
    repository: str
    uuid: str
    started_at: datetime | None
    started_raw: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class Anomaly:
    path: str  # relative to the v2 root
    reason: str


@dataclass(slots=True)
class CrawlResult:
    registry: RegistryRoot
    repositories: list[RepoRow] = field(default_factory=list)
    links: list[LinkRow] = field(default_factory=list)
    blobs: list[BlobRow] = field(default_factory=list)
    uploads: list[UploadRow] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    files_seen: int = 0


# ---------------------------------------------------------------------------------------------
# Discovery


def safe_text(value: str) -> str:
    """A name from storage as text any database accepts: bytes that are not UTF-8 (surrogate escapes from
    ``os.scandir``) become ``\\xNN``, NUL becomes ``\\x00``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = os.fsencode(value).decode("utf-8", "backslashreplace")
    return value.replace("\x00", "\\x00")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _symlink_on_path(start: Path, parts: tuple[str, ...]) -> Path | None:
    """The first component of ``start/parts...`` that is a symlink (None when there is none)."""
    cur = start
    for part in parts:
        cur = cur / part
        try:
            if stat.S_ISLNK(os.lstat(cur).st_mode):
                return cur
        except OSError:
            return None
    return None


def _not_followed(name: str, link: Path | str) -> str:
    return (f"{name}: {safe_text(str(link))} is a symlink and regindex never follows symlinks inside the storage root; "
            "scan its target directly")


def discover(base: Path) -> list[RegistryRoot]:
    """Registries under ``base``: ``base/<name>/docker/registry/v2`` each, or ``base`` itself as one root.

    ``base`` may be a registry's rootdirectory (holding ``docker/registry/v2``) or the v2 directory itself.
    """
    try:
        st = os.stat(base)
    except FileNotFoundError:
        raise StorageError(f"storage root {base} does not exist") from None
    except OSError as exc:
        raise StorageError(f"storage root {base} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"storage root {base} is not a directory")
    if not os.access(base, os.R_OK | os.X_OK):
        raise StorageError(f"storage root {base} cannot be read: permission denied")

    v2 = base.joinpath(*V2_SUFFIX)
    if _is_real_dir(v2):
        link = _symlink_on_path(base, V2_SUFFIX)
        name = _name_for_root(base)
        return [RegistryRoot(name, v2, _not_followed(name, link) if link else None)]
    if base.name == "v2" and (_is_real_dir(base / "repositories") or _is_real_dir(base / "blobs")):
        return [RegistryRoot(_name_for_root(base.parent.parent.parent), base)]

    roots: list[RegistryRoot] = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        raise StorageError(f"storage root {base} cannot be listed: {exc.strerror}") from None
    taken = {entry.name for entry in entries if _is_utf8(entry.name)}
    for entry in entries:
        cand = Path(entry.path).joinpath(*V2_SUFFIX)
        if not cand.is_dir():
            continue
        name = safe_text(entry.name)
        if name != entry.name:
            # shown escaped, a name that is not UTF-8 may read as another directory's (b"r\xff" as the directory
            # named "r\\xff"): a registry's name is its identity in the database, so this one is made unique
            while name in taken:
                name += "~"
            taken.add(name)
        link = Path(entry.path) if entry.is_symlink() else _symlink_on_path(Path(entry.path), V2_SUFFIX)
        problem = _not_followed(name, link) if link else None
        if problem is None and name != entry.name:
            problem = f"{name}: the registry directory's name is not UTF-8; rename it"
        roots.append(RegistryRoot(name, cand, problem))
    if not any(r.problem is None for r in roots):
        raise StorageError(
            f"no registry storage under {base}: expected {base}/<name>/docker/registry/v2 or {base}/docker/registry/v2"
            + "".join(f" ({r.problem})" for r in roots)
        )
    return roots


def _name_for_root(root: Path) -> str:
    return safe_text(root.resolve().name) or "registry"


# ---------------------------------------------------------------------------------------------
# Crawl

@dataclass(frozen=True, slots=True)
class LinkRecheck:
    """An incremental crawl's word about a link the inventory knew (``KnownLink``) but did not find unchanged
    (rewritten, or gone): its open episode ``id`` is compared with what the crawl gave. The known links it
    found unchanged give no row at all: their episodes go on as they are."""

    id: int


Row = RepoRow | LinkRow | BlobRow | UploadRow | Anomaly | LinkRecheck | BlobBucket | LinkSum | CleanRepository


class KnownLink(NamedTuple):
    """A link file a previous scan read when its change time was settled: that time, and its open episode's
    ``id``. Nothing of what was read: a link found unchanged gives no row, its episode goes on as it is."""

    changed: float
    id: int


# The links of some repositories as the inventory knows them: every name asked for is in the answer, its links by
# (kind, tag, path digest) ({} for none). For an incremental crawl, asked for the repositories it did not find
# clean, a batch at a time.
Known = Callable[[list[str]], dict[str, dict[LinkKey, KnownLink]]]
# A link file the layout names in a repository: (path, key)
Found = tuple[str, LinkKey]
# A link file as stat'ed for judging: (path, key, change time: None when it is not a regular file or is gone)
Seen = tuple[str, LinkKey, float | None]


class DirtyRepository(NamedTuple):
    """A repository the helper process did not find clean (it holds no database connection, so it cannot know
    the inventory's links): its link files as stat'ed, which the walk's process judges (``_Walker.defer``) and
    reads when they are not known unchanged. Never reaches a sink."""

    repository: str
    links: list[Seen]


def _trusted(changed: float | None, settled: float | None) -> float | None:
    """A file's change time as a crawl may keep it: None when unknown (not a regular file, gone) or not older
    than ``settled`` (changed too recently to trust: a write in the same clock tick would not show)."""
    return changed if changed is not None and settled is not None and changed < settled else None


class _Sum:
    """A repository's link files as a crawl without known links reads them (their reads come in batches,
    across repositories), toward its ``LinkSum``: given when the last of them is read, if every one was a
    regular file with a settled change time."""

    __slots__ = ("repository", "keys", "changes", "settled")

    def __init__(self, repository: str, keys: list[LinkKey]) -> None:
        self.repository = repository
        self.keys = keys
        self.changes: list[float | None] = []  # each file's, as its read comes (the reads keep the walk's order)
        self.settled = True


@dataclass(slots=True)
class CrawlStats:
    """Storage work of one crawl: listings and stats, files read, files seen (links, blob data, uploads)."""

    stat: int = 0
    read: int = 0
    skipped: int = 0
    files_seen: int = 0


class _Walker:
    """Streams rows to ``sink`` as it walks (memory does not grow with the tree). Every access to storage goes
    through ``fs`` (list, stat, bounded read): the walk knows the registry's layout, not the storage's."""

    def __init__(self, root: RegistryRoot, sink: Callable[[Row], None],
                 progress: Callable[[int], None] | None, fs: Storage | None = None,
                 readers: int = DEFAULT_READERS, known: Known | None = None, settled: float | None = None,
                 helper: bool = False, known_blobs: KnownBlobs | None = None,
                 known_sums: KnownSums | None = None) -> None:
        self.root = root
        self.known_blobs = known_blobs
        self.known_sums = known_sums
        self.helper = helper
        self.parent: int | None = None  # in a helper process: the walk's process, whose exit ends the helper
        # the local filesystem: the repositories' listings are watched, and a cold walk gets a ReadAhead
        self.watch = fs is None and readers > 1
        self.listings = self.slow_listings = 0
        self.readahead: ReadAhead | None = None
        self.watching: list[str] | None = None  # the subtrees being walked while the listings are watched
        self.known = known
        self.observing = False  # in the helper of an incremental crawl: dirty repositories go to the parent
        self.settled = settled
        # repositories not found clean, waiting to be judged against the inventory's links a batch at a time
        self.dirty: list[tuple[str, list[Seen]]] = []
        self.dirty_links = 0
        self.sink = sink
        self.progress = progress
        self.fs: Storage = fs or FileSystem()
        self.stats = CrawlStats()
        self.pool = ReadPool(readers)
        # links found but not yet read: (link path, repository, key, the _Sum it counts toward or None), read in
        # batches
        self.pending: list[tuple[str, str, LinkKey, _Sum | None]] = []

    # -- helpers -------------------------------------------------------------------------------
    def rel(self, path: str) -> str:
        """``path`` relative to the v2 root, as safe text (for anomalies and error messages)."""
        return safe_text(os.path.relpath(path, self.root.v2))

    def not_followed(self, path: str) -> StorageError:
        """A symlink where content would be: what lies behind it is unknown, so this registry cannot be read."""
        return StorageError(
            f"{self.root.name}: {self.rel(path)} is a symlink and regindex never follows symlinks inside the "
            "storage root: what lies behind it is unknown, so nothing of this registry is updated or resolved "
            "(replace the symlink by what it points to)")

    def lstat(self, path: str) -> Stat | None:
        """``None`` when the path does not exist (or vanished); any other error means we cannot know."""
        self.stats.stat += 1
        try:
            return self.fs.stat(path)
        except OSError as exc:
            raise self.stat_error(path, exc) from None

    def stat_many(self, paths: list[str]) -> list[Stat | OSError | None]:
        """``fs.stat_many`` through the pool (cold, each stat waits on the disk for its inode), counted. An
        error comes back in its place: the caller raises :meth:`stat_error` for it, in the walk."""
        self.stats.stat += len(paths)
        return self.pool.map_many(self.fs.stat_many, paths)

    def stat_error(self, path: str, exc: OSError) -> StorageError:
        return StorageError(f"{self.root.name}: cannot stat {self.rel(path)}: {exc.strerror}")

    def scandir(self, path: str) -> list[Entry]:
        self.stats.stat += 1
        t = time.perf_counter()
        try:
            entries = self.fs.list(path)
        except OSError as exc:
            raise StorageError(f"{self.root.name}: cannot list {self.rel(path)}: {exc.strerror}") from None
        if self.watching is not None:
            self.watch_listing(time.perf_counter() - t)
        return entries or []  # None: vanished while we walked (the registry deletes concurrently): gone

    def watch_listing(self, took: float) -> None:
        self.listings += 1
        self.slow_listings += took > _COLD_LIST
        if self.listings < _COLD_WINDOW:
            return
        if self.slow_listings >= _COLD_SHARE and self.watching is not None:
            self.readahead = ReadAhead(self.watching, self.pool.n)
            self.watching = None
        self.listings = self.slow_listings = 0

    def named(self, entry: Entry) -> bool:
        """False (and an anomaly) for a name that is not UTF-8: no registry API can name it."""
        if _is_utf8(entry.name):
            return True
        self.anomaly(entry.path, "name is not UTF-8 (the registry cannot serve it)")
        return False

    def subdirs(self, path: str) -> Iterator[Entry]:
        for entry in self.scandir(path):
            if self.real_subdir(entry):
                yield entry

    def real_subdir(self, entry: Entry) -> bool:
        """A directory with a UTF-8 name; a symlink fails the crawl, a file is an anomaly (as is a name that
        is not UTF-8)."""
        if entry.kind == SYMLINK:
            raise self.not_followed(entry.path)
        if not self.named(entry):
            return False
        if entry.kind != DIR:
            self.anomaly(entry.path, "unexpected file")
            return False
        return True

    def anomaly(self, path: str, reason: str) -> None:
        self.sink(Anomaly(self.rel(path), reason))

    def tick(self, n: int = 1) -> None:
        """``n`` more files seen; the progress display hears of every 2,000th."""
        before = self.stats.files_seen
        self.stats.files_seen = before + n
        if self.progress and (before + n) // 2000 != before // 2000:
            self.progress(before + n)

    def digest_dirs(self, path: str, alg: str, what: str) -> list[Entry]:
        """The directories under ``path`` named by a hex digest of ``alg`` (the many entries of a ``_layers``,
        ``revisions`` or blob prefix directory, tested in one call each); anything else there is judged by
        :meth:`real_subdir`, and a directory with another name is an anomaly (``what``)."""
        hexlen, is_hex = DIGEST_HEX_LEN[alg], hex_name_test(alg)
        out: list[Entry] = []
        for entry in self.scandir(path):
            name = entry.name
            if entry.kind == DIR and len(name) == hexlen and is_hex(name):
                out.append(entry)  # hex is ASCII: no UTF-8 test needed
            elif self.real_subdir(entry):
                self.anomaly(entry.path, what)
        return out

    def real_dir(self, path: str) -> bool:
        """A directory that may be absent; a symlink or an unstat-able path there fails the crawl."""
        st = self.lstat(path)
        if st is None:
            return False
        if st.kind == SYMLINK:
            raise self.not_followed(path)
        return st.kind == DIR

    def queue_read(self, path: str, repo: str, key: LinkKey, acc: _Sum | None = None) -> None:
        self.pending.append((path, repo, key, acc))
        if len(self.pending) >= _READ_BATCH:
            self.flush_links()

    def judge_links(self, repo: str, found: list[Found]) -> None:
        """A repository's link files (path, key), every one the layout names there, in the walk's order.

        Without known links (a full crawl) each is read, and the repository's ``LinkSum`` comes from what the
        reads see (``_Sum``). Otherwise each is stat'ed (by the pool, together: cold, each waits on the disk).
        When they stat as the repository's known ``LinkSum`` says (the same files, each with the change time it
        had), the repository is clean: no row, nothing asked of the inventory. Otherwise the repository is
        judged against the inventory's known links (:meth:`defer`; in the helper, by the walk's process: a
        ``DirtyRepository``)."""
        if self.known is None and not self.observing:
            acc = _Sum(repo, [key for _path, key in found])
            for path, key in found:
                self.queue_read(path, repo, key, acc)
            if not found:
                self.summed(acc)
            return
        got = self.stat_many([path for path, _key in found])
        settled = self.settled
        changes: list[float | None] = []
        all_settled = settled is not None
        for (path, _key), st in zip(found, got):
            if st is None:
                changed = None
            elif isinstance(st, OSError):
                raise self.stat_error(path, st)
            else:
                changed = st.changed if st.kind == FILE else None
            if all_settled and _trusted(changed, settled) is None:
                all_settled = False
            changes.append(changed)
        checksum = link_checksum([key for _path, key in found], changes) if all_settled else None
        if checksum is not None:
            if self.known_sums is not None and self.known_sums.get(repo) == (len(found), checksum):
                self.sink(CleanRepository(repo))
                self.stats.skipped += len(found)
                self.tick(len(found))
                return
            self.sink(LinkSum(repo, len(found), checksum))
        seen: list[Seen] = [(path, key, changed) for (path, key), changed in zip(found, changes)]
        if self.observing:
            self.sink(DirtyRepository(repo, seen))  # type: ignore[arg-type]
        else:
            self.defer(repo, seen)

    def summed(self, acc: _Sum) -> None:
        if acc.settled:
            self.sink(LinkSum(acc.repository, len(acc.keys), link_checksum(acc.keys, acc.changes)))

    def defer(self, repo: str, seen: list[Seen]) -> None:
        """A repository not found clean, judged with the next ones (:meth:`judge_dirty`): their known links
        come in one query."""
        self.dirty.append((repo, seen))
        self.dirty_links += len(seen)
        if len(self.dirty) >= _JUDGE_REPOSITORIES or self.dirty_links >= _JUDGE_LINKS:
            self.judge_dirty()

    def judge_dirty(self) -> None:
        """Each waiting repository's link files against the inventory's known links of it: one whose change
        time is still the one it was read at is unchanged (a write, a truncation, a chmod, a rename over it or
        a re-creation all change the later of mtime and ctime; a file removed from its directory is not found
        by the stat) and gives no row, its episode goes on; the others are read again. Known links not found
        unchanged (rewritten, or gone) are rechecked against what the crawl gave (``LinkRecheck``)."""
        batch, self.dirty, self.dirty_links = self.dirty, [], 0
        if not batch:
            return
        known = self.known([repo for repo, _seen in batch]) if self.known is not None else {}
        skipped = 0
        for repo, seen in batch:
            prev = known.get(repo) or {}
            for path, key, changed in seen:
                was = prev.get(key)
                if was is not None and changed is not None and changed == was.changed:
                    del prev[key]  # its episode goes on
                    skipped += 1
                else:
                    self.queue_read(path, repo, key)
            for left in prev.values():
                self.sink(LinkRecheck(left.id))
        self.stats.skipped += skipped
        self.tick(skipped)

    def flush_links(self) -> None:
        batch, self.pending = self.pending, []
        fs = self.fs
        got = self.pool.map(lambda path: fs.read(path, MAX_LINK_BYTES + 1), [b[0] for b in batch])
        settled = self.settled
        for (path, repo, (kind, tag, path_digest), acc), read in zip(batch, got):
            state, target, preview = self.link_state(path, read)
            changed = _trusted(read.changed if read is not None and read.kind == FILE else None, settled)
            self.sink(LinkRow(repo, kind, tag, path_digest, target, state.value, preview, changed))
            if acc is not None:
                acc.changes.append(changed)
                acc.settled = acc.settled and changed is not None
                if len(acc.changes) == len(acc.keys):
                    self.summed(acc)

    def link_state(self, path: str, got: Read | None) -> tuple[LinkState, str | None, str | None]:
        """One open, fstat and bounded read of a link file, judged."""
        self.stats.read += 1
        if got is None:
            return LinkState.ABSENT, None, None
        if got.kind == "error":
            self.lstat(path)  # a path that cannot even be stat'ed fails the crawl; a file that cannot be read:
        self.tick()
        if got.kind == SYMLINK:
            raise self.not_followed(path)
        if got.kind == "error":
            return LinkState.UNREADABLE, None, got.error  # ... is an unreadable link
        if got.kind != FILE:
            return LinkState.UNREADABLE, None, "not a regular file"
        parsed = parse_link(got.data)
        return parsed.state, parsed.target, parsed.preview

    # -- walk ----------------------------------------------------------------------------------
    def run(self) -> CrawlStats:
        v2 = str(self.root.v2)
        blobs = self.structural_dir(os.path.join(v2, "blobs"))
        repos = self.structural_dir(os.path.join(v2, "repositories"))
        subtrees = self.top_subtrees(repos) if repos else []
        helper: Helper | None = None
        try:
            if not blobs:
                self.gone_buckets(set())  # (no blobs directory: every bucket the last scan saw is gone)
            if self.helper and (blobs or subtrees):
                helper = Helper.start(self, blobs, subtrees)
            if helper is None:
                if blobs:
                    self.walk_blobs(blobs)
                if subtrees:
                    self.walk_subtrees(subtrees)
            else:
                for run in helper.runs:
                    self.walk_subtrees(run)
            self.judge_dirty()
            self.flush_links()
            if helper:
                helper.collect(self)
                self.judge_dirty()
                self.flush_links()
        finally:
            if helper:
                helper.stop()
            if self.readahead:
                self.readahead.stop()
            self.pool.close()
        return self.stats

    def structural_dir(self, path: str) -> str | None:
        """A directory whose content would look deleted if it were skipped: a symlink there fails the crawl."""
        st = self.lstat(path)
        if st is None:
            return None
        if st.kind == SYMLINK:
            raise self.not_followed(path)
        if st.kind != DIR:
            raise StorageError(f"{self.root.name}: {self.rel(path)} is not a directory")
        return path

    def stop_if_orphaned(self) -> None:
        """In the helper: the walk's process is gone (killed), so nothing will collect these rows: stop."""
        if self.parent is not None and os.getppid() != self.parent:
            raise StorageError(f"{self.root.name}: the scan ended before its helper's walk")

    def walk_blobs(self, blobs: str) -> None:
        join, new = self.fs.join, tuple.__new__
        found: set[str] = set()  # the buckets seen (at most 16^BUCKET_HEX an algorithm)
        for alg_dir in self.subdirs(blobs):
            if alg_dir.name not in DIGEST_HEX_LEN:
                self.anomaly(alg_dir.path, "unknown digest algorithm")
                continue
            alg = alg_dir.name
            head = f"{alg}:"
            for prefix in self.subdirs(alg_dir.path):
                self.stop_if_orphaned()
                rows: list[BlobRow] = []
                hexes: list[str] = []
                datas: list[str] = []
                for hex_dir in self.digest_dirs(prefix.path, alg, "not a blob directory name"):
                    if hex_dir.name[:2] != prefix.name:
                        self.anomaly(hex_dir.path, "not a blob directory name")
                        continue
                    hexes.append(hex_dir.name)
                    datas.append(join(hex_dir.path, "data"))
                # a prefix's data files are stat'ed together: cold, each waits on the disk for its inode
                seen = 0
                for hex_, data, st in zip(hexes, datas, self.stat_many(datas)):
                    if st is None:
                        continue  # a blob directory without data: nothing is stored
                    if isinstance(st, OSError):
                        raise self.stat_error(data, st)
                    seen += 1
                    kind, size, _mtime, changed = st
                    if kind != FILE:
                        if kind == SYMLINK:
                            raise self.not_followed(data)
                        self.anomaly(data, "blob data is not a regular file (not read)")
                        continue
                    # a blob's time is when its data last changed in any way (the later of mtime and ctime): its
                    # hash and parse are kept for that time, and a rewrite whose mtime was set back (touch -d,
                    # cp -p, rsync -a, a restore) changes the ctime all the same
                    rows.append(new(BlobRow, (head + hex_, size, changed)))  # (no named tuple __new__ a blob)
                self.buckets(rows, found)
                self.tick(seen)
        self.gone_buckets(found)

    def gone_buckets(self, found: set[str]) -> None:
        """The buckets the last scan saw (``known_blobs``) that the crawl did not find (``found``): each given as
        gone."""
        if self.known_blobs is not None:
            for key in sorted(self.known_blobs.keys() - found):
                self.sink(BlobBucket(key, 0, 0, ""))

    def buckets(self, rows: list[BlobRow], found: set[str]) -> None:
        """One prefix directory's blob rows to the sink, a bucket at a time (each added to ``found``): a bucket
        the last scan saw the same (``known_blobs``) gives nothing, any other its rows and then its
        ``BlobBucket``."""
        if not rows:
            return
        rows.sort()
        sink, known = self.sink, self.known_blobs
        cut = len(bucket_of(rows[0].digest))  # (one algorithm: the same length for every row)
        i, end = 0, len(rows)
        while i < end:
            key = rows[i].digest[:cut]
            j = i + 1
            while j < end and rows[j].digest.startswith(key):
                j += 1
            part = rows[i:j]
            i = j
            checksum = _sorted_checksum(part)
            n, size = len(part), sum([r[1] for r in part])
            found.add(key)
            if known is not None and known.get(key) == (n, size, checksum):
                continue
            for row in part:
                sink(row)
            sink(BlobBucket(key, n, size, checksum))

    def top_subtrees(self, top: str) -> list[tuple[str, str]]:
        """The repositories' top directory, listed and judged once: its subtrees (path, name), in walk order
        (the walk's process and its helper each walk some of them)."""
        return self.visit_dir(top, "")

    def walk_subtrees(self, subtrees: list[tuple[str, str]]) -> None:
        """Depth-first, in name order, without recursion (nesting depth is the tree's, not ours). Once the walk
        is found cold, each run of subtrees gets its own read-ahead."""
        self.stop_if_orphaned()
        if self.watch:
            paths = [path for path, _name in subtrees]
            if self.readahead is not None:
                self.readahead.stop()
                self.readahead = ReadAhead(paths, self.pool.n)
            else:
                self.watching = paths  # only these listings are watched (a blob prefix's is long, not cold)
        stack = list(reversed(subtrees))
        try:
            while stack:
                path, prefix = stack.pop()
                stack.extend(reversed(self.visit_dir(path, prefix)))
        finally:
            self.watching = None

    def visit_dir(self, path: str, prefix: str) -> list[tuple[str, str]]:
        """List a directory of the repositories tree (a repository is visited); its subdirectories, in order."""
        entries = self.scandir(path)
        names = {e.name for e in entries}
        is_repo = bool(prefix) and "_layers" in names  # the catalog's own rule
        if is_repo:
            if not valid_repository_name(prefix):  # judged once, on the repository's whole name
                self.anomaly(path, "name the registry would refuse")
            self.visit_repository(path, prefix, names)
        children: list[tuple[str, str]] = []
        for entry in entries:
            if entry.name.startswith("_"):
                if not (is_repo and entry.name in _REPO_DIRS):
                    self.anomaly(entry.path, "underscore entry outside a repository (no _layers beside it)")
                continue
            if entry.kind == SYMLINK:
                raise self.not_followed(entry.path)  # it may be a repository or a namespace
            if entry.kind != DIR:
                continue  # stray files between repositories are ignored by the registry too
            if not self.named(entry):
                continue
            children.append((entry.path, f"{prefix}/{entry.name}" if prefix else entry.name))
        return children

    def visit_repository(self, path: str, repo: str, names: set[str]) -> None:
        join = self.fs.join
        layers = self.structural_dir(join(path, "_layers"))
        manifests = join(path, "_manifests")
        has_manifests = "_manifests" in names and self.structural_dir(manifests) is not None
        tags_dir = join(manifests, "tags")
        has_tags = has_manifests and self.structural_dir(tags_dir) is not None
        revisions = self.structural_dir(join(manifests, "revisions")) if has_manifests else None
        self.sink(RepoRow(repo, has_manifests, has_tags))
        found: list[Found] = []  # the link files, judged together
        if layers:
            self.walk_digest_links(layers, LinkKind.LAYER, None, found, known_dir=True)
        if revisions:
            self.walk_digest_links(revisions, LinkKind.REVISION, None, found, known_dir=True)
        if has_tags:
            for tag_dir in self.subdirs(tags_dir):
                tag = tag_dir.name
                if not valid_tag(tag):
                    self.anomaly(tag_dir.path, "tag name the registry would refuse")
                cur = join(tag_dir.path, "current")
                cur_st = self.lstat(cur)
                if cur_st is None:
                    self.add_link(repo, LinkKind.TAG_CURRENT, tag, None, LinkState.ABSENT, None, None)
                elif cur_st.kind == SYMLINK:
                    raise self.not_followed(cur)
                elif cur_st.kind != DIR:
                    self.add_link(repo, LinkKind.TAG_CURRENT, tag, None, LinkState.UNREADABLE, None,
                                  "current is not a directory")
                else:
                    found.append((join(cur, "link"), (LinkKind.TAG_CURRENT.value, tag, None)))
                self.walk_digest_links(join(tag_dir.path, "index"), LinkKind.TAG_INDEX, tag, found)
        self.judge_links(repo, found)
        uploads = join(path, "_uploads")
        if "_uploads" in names and self.real_dir(uploads):
            for up in self.subdirs(uploads):
                self.visit_upload(up.path, repo, up.name)

    def walk_digest_links(self, path: str, kind: LinkKind, tag: str | None,
                          found: list[Found], known_dir: bool = False) -> None:
        """``<alg>/<hex>/link`` under ``path`` to ``found`` (``kind``'s): list the algorithm directories and their digest
        directories, never a one-entry digest directory (its ``link`` is stat'ed or opened directly).
        ``known_dir``: ``path`` was already stat'ed as a real directory by ``structural_dir``."""
        if not known_dir and not self.real_dir(path):
            return
        join, kind_ = self.fs.join, kind.value
        for alg_dir in self.subdirs(path):
            alg = alg_dir.name
            if alg not in DIGEST_HEX_LEN:
                self.anomaly(alg_dir.path, "unknown digest algorithm")
                continue
            head = f"{alg}:"
            found.extend((join(hex_dir.path, "link"), (kind_, tag, head + hex_dir.name))
                         for hex_dir in self.digest_dirs(alg_dir.path, alg, "not a digest directory name"))

    def add_link(
        self,
        repo: str,
        kind: LinkKind,
        tag: str | None,
        path_digest: str | None,
        state: LinkState,
        target: str | None,
        preview: str | None,
    ) -> None:
        self.sink(LinkRow(repo, kind.value, tag, path_digest, target, state.value, preview))

    def visit_upload(self, path: str, repo: str, uuid: str) -> None:
        """An upload whose files cannot be seen fails the crawl: its age decides a finding."""
        started_raw: str | None = None
        started: datetime | None = None
        sa = self.fs.join(path, "startedat")
        self.stats.read += 1
        got = self.fs.read(sa, MAX_STARTEDAT_BYTES)
        if got is not None and got.kind == SYMLINK:
            raise self.not_followed(sa)
        if got is not None and got.kind == "error":
            self.lstat(sa)  # a path that cannot even be stat'ed says so
            raise StorageError(f"{self.root.name}: cannot read {self.rel(sa)}: {got.error}")
        if got is not None and got.kind == FILE:
            started_raw = safe_text(got.data.decode("utf-8", "replace").strip())
            started = parse_rfc3339(started_raw)
        size: int | None = None
        data = self.fs.join(path, "data")
        st = self.lstat(data)
        if st is not None and st.kind == SYMLINK:
            raise self.not_followed(data)
        if st is not None and st.kind == FILE:
            size = st.size
        self.tick()
        self.sink(UploadRow(repo, uuid, started, started_raw, size))


class ReadAhead:
    """A cold walk's read-ahead (the local filesystem only): ``n`` threads list the directories of the subtrees
    ``tops`` (the run of the repositories' subtrees being walked) ahead of the walk, depth first in its order,
    and stat what it will stat (the ``link`` file of each digest directory, every other file), throwing the
    results away: the kernel keeps the directory blocks and inodes, and the walk's own listings and stats, one
    at a time, find them in memory instead of waiting on the disk for each. Nothing it sees is used, so nothing
    it misses or races with can change a row. It never follows a symlink: a directory is opened with O_NOFOLLOW
    and listed through its descriptor."""

    def __init__(self, tops: list[str], n: int) -> None:
        self.stack = list(reversed(tops))
        self.cond = threading.Condition()
        self.busy = 0
        self.stopped = False
        self.listed = 0
        self.threads = [threading.Thread(target=self.work, name=f"regindex-readahead-{i}", daemon=True)
                        for i in range(max(1, n))]
        for t in self.threads:
            t.start()

    def work(self) -> None:
        while True:
            with self.cond:
                while not self.stack and self.busy and not self.stopped:
                    self.cond.wait()
                if self.stopped or not self.stack:
                    self.cond.notify_all()
                    return
                path = self.stack.pop()
                self.busy += 1
            children = self.visit(path)
            with self.cond:
                self.stack.extend(reversed(children))
                self.busy -= 1
                self.listed += 1
                self.cond.notify_all()

    def visit(self, path: str) -> list[str]:
        children: list[str] = []
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return children
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
            digest_dirs = os.path.basename(path) in DIGEST_HEX_LEN  # <alg>/<hex>/link: stat the link
            for e in entries:
                if self.stopped:
                    break
                try:
                    if e.is_dir(follow_symlinks=False):
                        if digest_dirs:
                            os.stat(f"{e.name}/link", dir_fd=fd, follow_symlinks=False)
                        else:
                            children.append(f"{path}/{e.name}")
                    elif e.is_file(follow_symlinks=False):
                        os.stat(e.name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            os.close(fd)
        return children

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for t in self.threads:
            t.join()


def usable_cpus() -> float:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    n = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return n


_HELPER_BATCH = 4096  # rows the helper pickles at a time
# The repositories' top-level subtrees are shared out in at most this many runs (in order), claimed one at a
# time by whichever process is free: balanced within a run's share of the walk, and the known links of each
# process still come in batches in its walk's order (one query more for each run it claims).
_RUNS = 64


class _Runs:
    """Runs of consecutive subtrees, each claimed once, by the walk's process or its helper: their indexes
    wait in a pipe both processes read a byte at a time (the helper inherits it when it is forked)."""

    def __init__(self, subtrees: list[tuple[str, str]]) -> None:
        n = min(_RUNS, len(subtrees))
        self.runs = [subtrees[i * len(subtrees) // n:(i + 1) * len(subtrees) // n] for i in range(n)]
        self.fd, w = os.pipe()
        try:
            os.write(w, bytes(range(n)))  # fewer than PIPE_BUF bytes: written at once
        finally:
            os.close(w)

    def __iter__(self) -> Iterator[list[tuple[str, str]]]:
        while claimed := os.read(self.fd, 1):
            yield self.runs[claimed[0]]

    def close(self) -> None:
        os.close(self.fd)


class Helper:
    """Half of the walk in a forked process, on a second CPU: the blob walk (a third of a tree's files: every
    ``data`` file stat'ed), then runs of the repositories' subtrees (``_Runs``), claimed as the walk's process
    claims its own. 200k tree in RAM: an unchanged night's crawl of its largest registry 1.39 s inline, 1.62 s
    with the blobs alone in the helper, 1.17-1.22 s shared; the first scan's crawl 3.5 s -> 2.8 s. Its rows go
    to an unlinked temporary file, pickled a batch at a time (memory stays flat), and reach the sink when both
    walks are done; its storage error fails the crawl as the walk's own would. The helper touches nothing of
    this process but the walker: no database connection (it never runs a finalizer: the collector is off and
    it leaves through ``os._exit``). So an incremental crawl's helper cannot know the inventory's links: it
    stats the links of its repositories and finds them clean by their known ``LinkSum`` (inherited), and sends
    every other repository's stats as a ``DirtyRepository``, which this process judges (``_Walker.defer``) and
    reads where not known unchanged."""

    def __init__(self, walker: _Walker, blobs: str | None, subtrees: list[tuple[str, str]]) -> None:
        self.runs = _Runs(subtrees)
        try:
            self.file = tempfile.TemporaryFile()
        except OSError:
            self.runs.close()
            raise
        parent = os.getpid()
        try:
            self.pid = os.fork()
        except OSError:
            self.file.close()
            self.runs.close()
            raise
        if self.pid == 0:  # the helper
            gc.disable()
            code = 1
            try:
                self.walk(walker, blobs, parent)
                code = 0
            finally:
                os._exit(code)

    @classmethod
    def start(cls, walker: _Walker, blobs: str | None, subtrees: list[tuple[str, str]]) -> Helper | None:
        """None when no helper can start (no temporary file: a read-only /tmp; fork refused): walk inline."""
        try:
            return cls(walker, blobs, subtrees)
        except OSError:
            return None

    def walk(self, walker: _Walker, blobs: str | None, parent: int) -> None:
        out, batch = self.file, []

        def sink(row: Row | DirtyRepository) -> None:
            batch.append(row)
            if len(batch) >= _HELPER_BATCH:
                pickle.dump(batch, out, pickle.HIGHEST_PROTOCOL)
                batch.clear()

        walker.sink, walker.progress, walker.parent = sink, None, parent
        walker.stats, walker.pool = CrawlStats(), ReadPool(walker.pool.n)
        walker.observing, walker.known = walker.known is not None, None  # the inventory is the parent's
        try:
            if blobs:
                walker.walk_blobs(blobs)
            for run in self.runs:
                walker.walk_subtrees(run)
            walker.judge_dirty()  # (none: the helper's dirty repositories go to the walk's process)
            walker.flush_links()
            tail: tuple[str, Any] = ("ok", walker.stats)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the walk's process
            tail = ("error", str(exc) if isinstance(exc, StorageError)
                    else f"{walker.root.name}: the helper's walk failed: {type(exc).__name__}: {exc}")
        finally:
            if walker.readahead:
                walker.readahead.stop()
            walker.pool.close()
        pickle.dump(batch, out, pickle.HIGHEST_PROTOCOL)
        pickle.dump(tail, out, pickle.HIGHEST_PROTOCOL)
        out.flush()

    def collect(self, walker: _Walker) -> None:
        """Wait for the helper; its rows to the sink (its ``DirtyRepository`` judged), its counts to the walker's;
        its error raised here."""
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = 0
        self.file.seek(0)
        sink = walker.sink
        try:
            while isinstance(item := pickle.load(self.file), list):
                for row in item:
                    if type(row) is DirtyRepository:
                        walker.defer(row.repository, row.links)
                    else:
                        sink(row)
        except (EOFError, pickle.UnpicklingError):
            raise StorageError(f"{walker.root.name}: the walk's helper process ended without its result "
                               f"(exit status {os.waitstatus_to_exitcode(status)})") from None
        what, value = item
        if what == "error":
            raise StorageError(value)
        walker.stats.stat += value.stat
        walker.stats.read += value.read
        walker.stats.skipped += value.skipped  # the links of the repositories it found clean
        walker.tick(value.files_seen)

    def stop(self) -> None:
        """The walk ended (or ended early: an error, an interrupt): the helper is stopped and reaped."""
        if self.pid:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
        self.file.close()
        self.runs.close()


class ReadPool:
    """``map`` over a thread pool of ``n`` readers (the crawl's, and manifest parsing's), in ``n`` slices (one task per slice: a task per file would
    cost more than a warm read); in the calling thread when ``n`` is 1 or there is little to do."""

    def __init__(self, n: int) -> None:
        self.n = max(1, n)
        self.executor = ThreadPoolExecutor(self.n, thread_name_prefix="regindex-read") if self.n > 1 else None

    def map(self, fn: Callable[[str], Any], items: list[str]) -> list[Any]:
        return self.map_many(lambda part: [fn(x) for x in part], items)

    def map_many(self, fn: Callable[[list[str]], list[Any]], items: list[str]) -> list[Any]:
        """``fn`` maps a list (one call per slice). Warm (the first few items of a batch take less than
        ``_SLOW`` each) the rest runs in this thread: threads would only contend for the interpreter lock
        (measured at 200k warm: 3.7 s alone, 4.9-5.7 s with 8 threads). Cold, the rest goes to the pool."""
        if self.executor is None or len(items) < 2 * self.n:
            return fn(items)
        t = time.perf_counter()
        head = fn(items[:_PROBE])
        rest = items[_PROBE:]
        if time.perf_counter() - t < _SLOW * _PROBE:
            return head + fn(rest)
        step = -(-len(rest) // self.n)
        parts = self.executor.map(fn, [rest[i : i + step] for i in range(0, len(rest), step)])
        return head + [r for part in parts for r in part]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def crawl_into(root: RegistryRoot, sink: Callable[[Row], None],
               progress: Callable[[int], None] | None = None, fs: Storage | None = None,
               readers: int = DEFAULT_READERS, known: Known | None = None,
               settled: float | None = None, helper: bool | None = None,
               known_blobs: KnownBlobs | None = None, known_sums: KnownSums | None = None) -> CrawlStats:
    """Walk one registry root, handing each row to ``sink`` as it is found. Raises ``StorageError`` when any
    part of the tree cannot be listed (rows already handed over must then be discarded).

    ``settled``: a link file whose change time is before it (the run's start minus a few seconds) keeps that
    time in its row: a later crawl given ``known`` (the inventory's links of a repository) stats such a file
    and reuses its row when the time is the same. Every directory is still listed and every other file
    stat'ed or read, so nothing added, removed or rewritten is missed.

    ``known_blobs``: what the last scan saw of the blobs, by bucket (``KnownBlobs``). Every data file is still
    stat'ed; a bucket found the same gives nothing (``BlobBucket``), neither its rows nor itself.

    ``known_sums``: what the last scan saw of each repository's link files (``KnownSums``). Given ``known``
    too, a repository whose link files stat the same gives no link row and is not asked about (a
    ``CleanRepository`` stands for them). Either way each repository's ``LinkSum`` is given when its link files
    all had settled change times.

    ``helper``: walk the blobs and part of the repositories in a forked process (``Helper``); by default when
    the storage is the local filesystem (a forked object-store client is not safe to use) and two CPUs are
    usable."""
    if fs is None and not os.access(root.v2, os.R_OK | os.X_OK):
        raise StorageError(f"{root.name}: cannot read {root.v2}")
    if helper is None:
        helper = fs is None and hasattr(os, "fork") and usable_cpus() >= 2
    return _Walker(root, sink, progress, fs, readers, known, settled, helper, known_blobs, known_sums).run()


def crawl(root: RegistryRoot, progress: Callable[[int], None] | None = None) -> CrawlResult:
    """Walk one registry root into lists (tests, small trees); the scan streams with ``crawl_into``."""
    result = CrawlResult(root)
    lists: dict[type, list[Any]] = {RepoRow: result.repositories, LinkRow: result.links, BlobRow: result.blobs,
                                    UploadRow: result.uploads, Anomaly: result.anomalies}
    stats = crawl_into(root, lambda row: lists[type(row)].append(row) if type(row) in lists else None, progress)
    result.files_seen = stats.files_seen
    return result


def parse_rfc3339(text: str) -> datetime | None:
    """Registry ``startedat`` files hold RFC 3339 (Go's time.Time text, possibly with nanoseconds)."""
    t = text.strip()
    if not t:
        return None
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    # Go may write up to 9 fractional digits; Python accepts at most 6.
    if "." in t:
        head, _, rest = t.partition(".")
        frac = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            frac += rest[i]
            i += 1
        t = f"{head}.{frac[:6].ljust(6, '0')}{rest[i:]}" if frac else head + rest[i:]
    try:
        dt = datetime.fromisoformat(t)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # not a time, or one that leaves datetime's range in UTC
        return None


def _read_bounded(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _open_data(path: str) -> int | None:
    """Open blob data for reading: None when it is gone; data that exists but cannot be read is a storage
    error (a blob that cannot be read must not look like a blob that is missing)."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None


class BlobTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def read_blob(v2: Path, digest: str, cap: int = DEFAULT_MAX_MANIFEST_BYTES) -> bytes | None:
    """Whole blob data, never truncated: ``None`` when missing, ``BlobTooLarge`` above ``cap``."""
    fd = _open_data(os.path.join(v2, blob_file(digest)))
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > cap:
            raise BlobTooLarge(st.st_size)
        data = read_capped(fd, cap)
        if len(data) > cap:
            raise BlobTooLarge(len(data))
        return data
    finally:
        os.close(fd)


def digest_of(digest: str, data: bytes) -> str:
    """The digest of ``data`` with ``digest``'s algorithm."""
    alg = digest.split(":", 1)[0]
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def hash_blob(v2: Path, digest: str, alg: str | None = None) -> str | None:
    """Hash blob data, streaming, with the digest's algorithm (or ``alg``: how a sha512 ``_layers`` alias of
    sha256 content is checked). ``None`` when missing."""
    alg = alg or digest.split(":", 1)[0]
    fd = _open_data(os.path.join(v2, blob_file(digest)))
    if fd is None:
        return None
    h = hashlib.new(alg)
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
    finally:
        os.close(fd)
    return f"{alg}:{h.hexdigest()}"
