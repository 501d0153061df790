"""Real-registry test harness, the damage: storage paths of a registry root and helpers that remove, corrupt,
re-point or truncate links, tags, blobs and uploads (stop the registry, or restart it, around them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ========================================================================================== storage paths
def _split(digest: str) -> tuple[str, str]:
    alg, hexpart = digest.split(":", 1)
    return alg, hexpart


def repo_dir(v2: str | os.PathLike, repo: str) -> Path:
    return Path(v2) / "repositories" / repo


def blob_dir(v2: str | os.PathLike, digest: str) -> Path:
    alg, h = _split(digest)
    return Path(v2) / "blobs" / alg / h[:2] / h


def blob_data_path(v2: str | os.PathLike, digest: str) -> Path:
    return blob_dir(v2, digest) / "data"


def layer_link_dir(v2: str | os.PathLike, repo: str, digest: str) -> Path:
    alg, h = _split(digest)
    return repo_dir(v2, repo) / "_layers" / alg / h


def layer_link_path(v2: str | os.PathLike, repo: str, digest: str) -> Path:
    return layer_link_dir(v2, repo, digest) / "link"


def revision_dir(v2: str | os.PathLike, repo: str, digest: str) -> Path:
    alg, h = _split(digest)
    return repo_dir(v2, repo) / "_manifests" / "revisions" / alg / h


def revision_link_path(v2: str | os.PathLike, repo: str, digest: str) -> Path:
    return revision_dir(v2, repo, digest) / "link"


def tag_dir(v2: str | os.PathLike, repo: str, tag: str) -> Path:
    return repo_dir(v2, repo) / "_manifests" / "tags" / tag


def tag_current_link_path(v2: str | os.PathLike, repo: str, tag: str) -> Path:
    return tag_dir(v2, repo, tag) / "current" / "link"


def tag_index_link_path(v2: str | os.PathLike, repo: str, tag: str, digest: str) -> Path:
    alg, h = _split(digest)
    return tag_dir(v2, repo, tag) / "index" / alg / h / "link"


def upload_dir(v2: str | os.PathLike, repo: str, uuid: str) -> Path:
    return repo_dir(v2, repo) / "_uploads" / uuid


# ========================================================================================= damage helpers
GARBAGE = b"this is not a digest"
EMPTY = b""


def _must_exist(p: Path) -> Path:
    if not p.exists():
        raise FileNotFoundError(p)
    return p


def write_link(path: str | os.PathLike, content: bytes | str) -> Path:
    """Write raw bytes into a link file (creating directories): the primitive behind every link damage."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def newline_link(digest: str) -> bytes:
    """A link's bytes with a trailing newline (the registry answers 500 for it)."""
    return (digest + "\n").encode()


# -- revisions, layer links, tags: each kind of link has the same four damages
Damage = Callable[..., Any]


def _link_damages(link_of: Callable[..., Path], dir_of: Callable[..., Path]) -> tuple[Damage, Damage, Damage, Damage]:
    """For the link ``link_of(v2, repo, name)`` in the directory ``dir_of(v2, repo, name)``: rm -rf the directory,
    remove the link file, write the link (creating directories), overwrite a link that exists (corrupt it with
    ``GARBAGE`` or given bytes, or point it at another digest)."""

    def remove_dir(v2: Any, repo: str, name: str) -> None:
        shutil.rmtree(_must_exist(dir_of(v2, repo, name)))

    def remove(v2: Any, repo: str, name: str) -> None:
        _must_exist(link_of(v2, repo, name)).unlink()

    def write(v2: Any, repo: str, name: str, content: bytes | str) -> Path:
        return write_link(link_of(v2, repo, name), content)

    def overwrite(v2: Any, repo: str, name: str, content: bytes | str = GARBAGE) -> Path:
        return write_link(_must_exist(link_of(v2, repo, name)), content)

    return remove_dir, remove, write, overwrite


# remove_revision: what GC --delete-untagged does to an untagged manifest; remove_revision_link: the normal trace
# an API DELETE leaves; point_revision_link(v2, repo, digest, other): the link parses but names ``other``.
remove_revision, remove_revision_link, write_revision_link, corrupt_revision_link = _link_damages(
    revision_link_path, revision_dir)
point_revision_link = corrupt_revision_link
remove_layer_link_dir, remove_layer_link, write_layer_link, corrupt_layer_link = _link_damages(
    layer_link_path, layer_link_dir)
point_layer_link = corrupt_layer_link
# remove_tag: a "tag cleanup"; remove_tag_current_link: the tag stays listed but answers 404
remove_tag, remove_tag_current_link, write_tag_link, corrupt_tag_link = _link_damages(tag_current_link_path, tag_dir)


def remove_tags_dir(v2, repo: str) -> None:
    """Remove ``_manifests/tags`` entirely (a GC --delete-untagged blocker)."""
    shutil.rmtree(_must_exist(repo_dir(v2, repo) / "_manifests" / "tags"))


def point_tag(v2, repo: str, tag: str, other: str, *, add_index: bool = True) -> Path:
    """Retarget a tag by hand: current link names ``other`` (and, like the registry, a tag index entry)."""
    if add_index:
        write_link(tag_index_link_path(v2, repo, tag, other), other)
    return write_tag_link(v2, repo, tag, other)


# -- blobs
def remove_blob_data(v2, digest: str) -> None:
    """Remove ``blobs/.../<hex>/data`` (the directory stays)."""
    _must_exist(blob_data_path(v2, digest)).unlink()


def remove_blob_dir(v2, digest: str) -> None:
    """Remove the whole ``blobs/.../<hex>`` directory (what GC's sweep does)."""
    shutil.rmtree(_must_exist(blob_dir(v2, digest)))


def truncate_blob(v2, digest: str, size: int = 0) -> None:
    """Truncate blob data to ``size`` bytes (0 = empty data)."""
    with open(_must_exist(blob_data_path(v2, digest)), "r+b") as f:
        f.truncate(size)


def truncate_blob_half(v2, digest: str) -> int:
    p = _must_exist(blob_data_path(v2, digest))
    half = p.stat().st_size // 2
    truncate_blob(v2, digest, half)
    return half


def overwrite_blob(v2, digest: str, content: bytes) -> None:
    """Replace blob data with other bytes (a digest mismatch; same size if you pass same-size bytes)."""
    _must_exist(blob_data_path(v2, digest)).write_bytes(content)


def flip_blob_byte(v2, digest: str, offset: int = 0) -> None:
    """Flip one byte in place: same size, wrong hash."""
    p = _must_exist(blob_data_path(v2, digest))
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


# -- uploads
def add_upload(v2, repo: str, uuid: str, started_at: str, data: bytes = b"") -> Path:
    """An upload in progress: ``_uploads/<uuid>/{data,startedat}``; ``started_at`` is RFC 3339."""
    d = upload_dir(v2, repo, uuid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "data").write_bytes(data)
    (d / "startedat").write_text(started_at)
    return d
