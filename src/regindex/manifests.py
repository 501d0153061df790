"""Parse manifest bytes into a kind and its references. Pure: bytes in, facts out.

Every kind is recognised with or without ``mediaType`` (it is optional in OCI JSON), at any size: the
caller reads the whole blob (bounded by a cap far above real manifests) and never truncates before parsing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from regindex.layout import is_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

KIND_IMAGE = "image"
KIND_INDEX = "index"
KIND_SCHEMA1 = "schema1"
KIND_UNKNOWN = "unknown"  # valid JSON the registry does not recognise as a manifest
KIND_INVALID = "invalid"  # not JSON, or empty

ROLE_CHILD = "child"
ROLE_CONFIG = "config"
ROLE_LAYER = "layer"
ROLE_SUBJECT = "subject"


@dataclass(frozen=True, slots=True)
class Reference:
    role: str
    digest: str
    media_type: str | None = None
    size: int | None = None
    platform: str | None = None
    foreign: bool = False
    position: int = 0


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    kind: str
    media_type: str | None
    artifact_type: str | None = None
    error: str | None = None
    refs: tuple[Reference, ...] = field(default_factory=tuple)
    # descriptors that could not be understood (bad digest, wrong type): kept as evidence, never dropped silently
    bad_refs: int = 0


def parse_manifest(raw: bytes) -> ParsedManifest:
    if not raw:
        return ParsedManifest(KIND_INVALID, None, error="empty (0 bytes)")
    try:
        doc = json.loads(raw, parse_int=_go_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ParsedManifest(KIND_INVALID, None, error=f"not valid JSON: {_short(exc)}")
    except RecursionError:
        return ParsedManifest(KIND_INVALID, None, error="not valid JSON: nested too deeply")
    try:
        return _parse_doc(doc)
    except _Refused as exc:
        return ParsedManifest(KIND_INVALID, None, error=str(exc))


class _Refused(Exception):
    """What the registry's Go decoder refuses in a manifest that is valid JSON (a type it cannot decode)."""


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class _BigNumber:
    """An integer literal too long for any Go integer (kept as text: Python refuses to convert >4300 digits)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return _short(self.text)


def _go_int(text: str) -> int | _BigNumber:
    return int(text) if len(text) <= 20 else _BigNumber(text)


def _int64(value: Any, where: str) -> int:
    if isinstance(value, _BigNumber) or (isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX):
        raise _Refused(f"{where}: number {_short(repr(value))} overflows int64 (the registry refuses it)")
    return value


def _parse_doc(doc: Any) -> ParsedManifest:
    if not isinstance(doc, dict):
        return ParsedManifest(KIND_INVALID, None, error=f"JSON {type(doc).__name__}, not an object")

    media_type = _str(doc.get("mediaType"))
    artifact_type = _str(doc.get("artifactType"))
    schema_version = doc.get("schemaVersion")

    if schema_version == 1 or media_type in SCHEMA1_TYPES:
        refs, bad = _schema1_refs(doc)
        return ParsedManifest(KIND_SCHEMA1, media_type or DOCKER_SCHEMA1, artifact_type, None, refs, bad)

    # registry 2.8 refuses every other schemaVersion (0 when absent): GET fails, garbage-collect aborts
    if schema_version != 2 or isinstance(schema_version, bool):
        return ParsedManifest(
            KIND_UNKNOWN, media_type, artifact_type, f"unrecognised manifest schemaVersion {_shown(schema_version)}")
    kind = _kind_of(doc, media_type)
    if kind == KIND_UNKNOWN:
        return ParsedManifest(
            KIND_UNKNOWN, media_type, artifact_type, f"unrecognised manifest: mediaType {media_type!r} is not a manifest type")

    found: list[Reference] = []
    bad = 0
    if kind == KIND_INDEX:
        for pos, desc in enumerate(_list(doc.get("manifests"))):
            ref = _descriptor(desc, ROLE_CHILD, pos)
            if ref is None:
                bad += 1
            else:
                found.append(ref)
    else:
        cfg = _descriptor(doc.get("config"), ROLE_CONFIG, 0)
        if cfg is None:
            bad += 1
        else:
            found.append(cfg)
        for pos, desc in enumerate(_list(doc.get("layers"))):
            ref = _descriptor(desc, ROLE_LAYER, pos)
            if ref is None:
                bad += 1
            else:
                found.append(ref)
    if "subject" in doc:
        subj = _descriptor(doc.get("subject"), ROLE_SUBJECT, 0)
        if subj is None:
            bad += 1
        else:
            found.append(subj)
    return ParsedManifest(kind, media_type, artifact_type, None, tuple(found), bad)


def _kind_of(doc: dict[str, Any], media_type: str | None) -> str:
    if media_type in INDEX_TYPES:
        return KIND_INDEX
    if media_type in IMAGE_TYPES:
        return KIND_IMAGE
    if media_type:
        return KIND_UNKNOWN
    # No mediaType (allowed by OCI): decide from the structure, as registry 2.8 does: an index when it has
    # manifests, otherwise it reads the document as an OCI image manifest.
    if isinstance(doc.get("manifests"), list):
        return KIND_INDEX
    return KIND_IMAGE


def _descriptor(desc: Any, role: str, position: int) -> Reference | None:
    if not isinstance(desc, dict):
        return None
    digest = desc.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return None
    size = desc.get("size")
    if isinstance(size, (int, _BigNumber)) and not isinstance(size, bool):
        size = _int64(size, f"{role} size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    media_type = _str(desc.get("mediaType"))
    urls = desc.get("urls")
    foreign = bool(isinstance(urls, list) and urls) or media_type in FOREIGN_LAYER_TYPES
    return Reference(
        role=role,
        digest=digest,
        media_type=media_type,
        size=size,
        platform=_platform(desc.get("platform")),
        foreign=foreign if role == ROLE_LAYER else False,
        position=position,
    )


def _platform(p: Any) -> str | None:
    if not isinstance(p, dict):
        return None
    parts = [_str(p.get("os")) or "?", _str(p.get("architecture")) or "?"]
    variant = _str(p.get("variant"))
    if variant:
        parts.append(variant)
    return "/".join(parts)


def _schema1_refs(doc: dict[str, Any]) -> tuple[tuple[Reference, ...], int]:
    refs: list[Reference] = []
    bad = 0
    seen: set[str] = set()
    for pos, layer in enumerate(_list(doc.get("fsLayers"))):
        digest = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(digest, str) or not is_digest(digest):
            bad += 1
            continue
        if digest in seen:  # schema1 repeats the empty layer; one reference is enough
            continue
        seen.add(digest)
        refs.append(Reference(ROLE_LAYER, digest, position=pos))
    return tuple(refs), bad


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return text_of(value) if isinstance(value, str) and value else None


_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")


def text_of(value: str) -> str:
    """A JSON string as the registry's Go decoder reads it and any database can store it: a lone surrogate
    escape (``"\\ud800"``) becomes U+FFFD, as Go's ``encoding/json`` makes it; so does NUL (PostgreSQL text
    cannot hold it)."""
    return _UNSTORABLE.sub("\ufffd", value)


def _shown(value: Any) -> str:
    """A JSON value for an error message: short, and never a walk of a deep structure."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return _short(repr(text_of(value) if isinstance(value, str) else value))
    return f"<{type(value).__name__}>"


def _short(exc: Exception | str) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
