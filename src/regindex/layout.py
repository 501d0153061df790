"""Paths and digests of registry 2.x filesystem storage. Pure functions, no I/O.

One small type per on-disk path kind and one function mapping it to a path, as in distribution's
``registry/storage/paths.go``. Everything read from storage is hostile: names are validated here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath
from typing import Callable

V2_SUFFIX = ("docker", "registry", "v2")

# Patterns are used with fullmatch(): "$" would accept a trailing newline.
# Hex lengths per algorithm, as distribution's digest package accepts them.
DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)")
_HEX_RE = re.compile(r"[0-9a-f]+")

# Repository name component, as distribution's reference grammar has it.
REPO_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
# reference.WithName also accepts a domain (with an optional port) as the first of several components.
_DOMAIN_RE = re.compile(
    r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?"
)
# The storage driver's path grammar (driver.PathRegexp): every path component is [A-Za-z0-9._-]+.
_DRIVER_COMPONENT_RE = re.compile(r"[A-Za-z0-9._-]+")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
MAX_REPO_NAME = 255

EMPTY_SHA256 = "sha256:" + hashlib.sha256(b"").hexdigest()
# The digest of zero bytes under each algorithm: 0-byte data is correct for these alone.
EMPTY_DIGESTS = tuple(f"{alg}:{hashlib.new(alg, b'').hexdigest()}" for alg in ("sha256", "sha384", "sha512"))


class LinkKind(str, Enum):
    LAYER = "layer"
    REVISION = "revision"
    TAG_CURRENT = "tag_current"
    TAG_INDEX = "tag_index"


class LinkState(str, Enum):
    OK = "ok"  # exactly <alg>:<hex>, no newline
    EMPTY = "empty"  # 0 bytes
    WHITESPACE = "whitespace"  # a digest with surrounding whitespace (the registry refuses it: 500)
    GARBAGE = "garbage"  # anything else
    UNREADABLE = "unreadable"  # the file exists but cannot be read (permissions, not a regular file, too big)
    ABSENT = "absent"  # the directory exists, the link file does not (the normal trace of an API DELETE)


def is_digest(value: str) -> bool:
    m = _DIGEST_RE.fullmatch(value)
    return m is not None and len(m.group(2)) == DIGEST_HEX_LEN[m.group(1)]


def is_hex_for(alg: str, hex_: str) -> bool:
    return alg in DIGEST_HEX_LEN and len(hex_) == DIGEST_HEX_LEN[alg] and bool(_HEX_RE.fullmatch(hex_))


_HEX_NAME: dict[str, Callable[[str], object]] = {
    alg: re.compile(f"[0-9a-f]{{{n}}}").fullmatch for alg, n in DIGEST_HEX_LEN.items()}


def hex_name_test(alg: str) -> Callable[[str], object]:
    """``is_hex_for(alg, ·)`` as one call, truthy or not (the crawl tests every digest directory's name with
    it); ``alg`` must be a known algorithm."""
    return _HEX_NAME[alg]


def split_digest(digest: str) -> tuple[str, str]:
    if not is_digest(digest):
        raise ValueError(f"not a digest: {digest!r}")
    alg, hex_ = digest.split(":", 1)
    return alg, hex_


def is_empty_digest(digest: str) -> bool:
    """The digest of zero bytes (any algorithm): 0-byte data is correct for it."""
    return digest in EMPTY_DIGESTS


def names_other_content(path_digest: str, target: str) -> bool:
    """A link at ``path_digest`` whose file names ``target`` leads to other content: another digest of the same
    algorithm. Across algorithms it is an alias (``_layers/sha512/<hex>`` naming the sha256 digest of the same
    bytes), which registry 2.8 serves; only hashing can tell a false alias (``--verify-content``).
    SQL spells the same rule ``substr(target, 1, 7) = substr(path, 1, 7)`` ("sha256:" is 7 characters)."""
    return target != path_digest and target.split(":", 1)[0] == path_digest.split(":", 1)[0]


MAX_LINK_BYTES = 1024  # a valid link is at most 7 + 128 bytes; anything longer is garbage


@dataclass(frozen=True, slots=True)
class ParsedLink:
    state: LinkState
    target: str | None  # the digest in the file when it parses (state ok), or inside whitespace
    preview: str | None  # for evidence: a short, printable rendering of bad bytes


def parse_link(raw: bytes) -> ParsedLink:
    """Classify the bytes of a link file the way the registry would read them."""
    if not raw:
        return ParsedLink(LinkState.EMPTY, None, "")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return ParsedLink(LinkState.GARBAGE, None, _preview(raw))
    if is_digest(text):
        return ParsedLink(LinkState.OK, text, None)
    stripped = text.strip()
    if stripped != text and is_digest(stripped):
        return ParsedLink(LinkState.WHITESPACE, stripped, _preview(raw))
    return ParsedLink(LinkState.GARBAGE, None, _preview(raw))


def _preview(raw: bytes, limit: int = 64) -> str:
    shown = repr(raw[:limit])[2:-1]
    return shown + ("…" if len(raw) > limit else "")


def valid_repo_component(name: str) -> bool:
    return bool(REPO_COMPONENT_RE.fullmatch(name))


def valid_repository_name(name: str) -> bool:
    """Whether registry 2.8.2 can use ``name`` (the path of a directory holding ``_layers`` under
    ``repositories/``): ``reference.WithName`` accepts it (path components of the grammar, the first of several
    may be a domain with a port, 255 characters at most) and the storage driver accepts it as a path (no colon).

    Observed (tests/realreg/test_rules.py): ``Team/app`` is served and collected; ``team/App``, ``team/-app``,
    ``-team/app``, ``team/app:1`` answer 404 and make garbage-collect abort; ``localhost:5000/app`` answers 500
    ("filesystem: invalid path") and makes garbage-collect abort. Components starting with ``_`` are never
    repositories at all (the walk skips them)."""
    if not name or len(name) > MAX_REPO_NAME:
        return False
    parts = name.split("/")
    if not all(_DRIVER_COMPONENT_RE.fullmatch(p) for p in parts):
        return False
    if len(parts) > 1 and not valid_repo_component(parts[0]) and _DOMAIN_RE.fullmatch(parts[0]):
        parts = parts[1:]
    return all(valid_repo_component(p) for p in parts)


def valid_tag(name: str) -> bool:
    return bool(TAG_RE.fullmatch(name))


# ---------------------------------------------------------------------------------------------
# Path kinds: each maps to exactly one path under the v2 root.


@dataclass(frozen=True, slots=True)
class BlobDataPath:
    digest: str


@dataclass(frozen=True, slots=True)
class LayerLinkPath:
    repository: str
    digest: str


@dataclass(frozen=True, slots=True)
class RevisionLinkPath:
    repository: str
    digest: str


@dataclass(frozen=True, slots=True)
class TagCurrentLinkPath:
    repository: str
    tag: str


@dataclass(frozen=True, slots=True)
class TagIndexLinkPath:
    repository: str
    tag: str
    digest: str


@dataclass(frozen=True, slots=True)
class UploadDataPath:
    repository: str
    uuid: str


@dataclass(frozen=True, slots=True)
class UploadStartedAtPath:
    repository: str
    uuid: str


PathSpec = (
    BlobDataPath
    | LayerLinkPath
    | RevisionLinkPath
    | TagCurrentLinkPath
    | TagIndexLinkPath
    | UploadDataPath
    | UploadStartedAtPath
)


def _dig(digest: str) -> tuple[str, str]:
    return split_digest(digest)


def path_for(spec: PathSpec) -> PurePosixPath:
    """The path of ``spec`` relative to the v2 root (``<rootdirectory>/docker/registry/v2``)."""
    match spec:
        case BlobDataPath(digest=d):
            alg, hex_ = _dig(d)
            return PurePosixPath("blobs", alg, hex_[:2], hex_, "data")
        case LayerLinkPath(repository=r, digest=d):
            alg, hex_ = _dig(d)
            return PurePosixPath("repositories", r, "_layers", alg, hex_, "link")
        case RevisionLinkPath(repository=r, digest=d):
            alg, hex_ = _dig(d)
            return PurePosixPath("repositories", r, "_manifests", "revisions", alg, hex_, "link")
        case TagCurrentLinkPath(repository=r, tag=t):
            return PurePosixPath("repositories", r, "_manifests", "tags", t, "current", "link")
        case TagIndexLinkPath(repository=r, tag=t, digest=d):
            alg, hex_ = _dig(d)
            return PurePosixPath("repositories", r, "_manifests", "tags", t, "index", alg, hex_, "link")
        case UploadDataPath(repository=r, uuid=u):
            return PurePosixPath("repositories", r, "_uploads", u, "data")
        case UploadStartedAtPath(repository=r, uuid=u):
            return PurePosixPath("repositories", r, "_uploads", u, "startedat")
    raise TypeError(f"unknown path spec {spec!r}")


def link_path(kind: LinkKind, repository: str, digest: str | None, tag: str | None) -> PurePosixPath:
    """The path of a link file of ``kind``: the one place that maps link rows back to files."""
    if kind is LinkKind.LAYER:
        return path_for(LayerLinkPath(repository, digest or ""))
    if kind is LinkKind.REVISION:
        return path_for(RevisionLinkPath(repository, digest or ""))
    if kind is LinkKind.TAG_CURRENT:
        return path_for(TagCurrentLinkPath(repository, tag or ""))
    return path_for(TagIndexLinkPath(repository, tag or "", digest or ""))


def link_file(kind: LinkKind | str, repository: str, digest: str | None = None, tag: str | None = None) -> str:
    """``link_path`` as text (evidence and hints name files relative to the v2 root)."""
    return str(link_path(LinkKind(kind), repository, digest, tag))


def blob_file(digest: str) -> str:
    """The data file of a blob, relative to the v2 root."""
    return str(path_for(BlobDataPath(digest)))
