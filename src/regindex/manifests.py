"""Parse manifest bytes into a kind and its references. Pure: bytes in, facts out.

Every kind is recognised with or without ``mediaType`` (it is optional in OCI JSON), at any size: the
caller reads the whole blob (bounded by a cap far above real manifests) and never truncates before parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

from regindex import gojson
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


# Top-level members any manifest kind reads (the rest is validated, never built, on gojson's streaming path).
_KEEP = ("schemaVersion", "mediaType", "artifactType", "config", "layers", "manifests", "subject", "annotations",
         "fsLayers", "name", "tag", "architecture", "history")


def parse_manifest(raw: bytes) -> ParsedManifest:
    """Read manifest bytes as registry 2.8.2 does: Go's JSON rules (gojson), then Go's types: a value of the
    wrong type in a field the registry decodes makes it refuse the manifest (500 on GET, GC aborts)."""
    if not raw:
        return ParsedManifest(KIND_INVALID, None, error="empty (0 bytes)")
    try:
        doc = gojson.loads(raw, keep=_KEEP)
    except gojson.GoJSONError as exc:
        return ParsedManifest(KIND_INVALID, None, error=f"not valid JSON: {_short(str(exc))}")
    try:
        return _parse_doc(doc)
    except _Refused as exc:
        return ParsedManifest(KIND_INVALID, None, error=_short(str(exc)))


class _Refused(Exception):
    """What the registry's Go decoder refuses in a manifest that is valid JSON (a type it cannot decode)."""


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, gojson.BigNumber)):
        return "number"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return "array"


def _refuse(where: str, value: Any, want: str) -> _Refused:
    return _Refused(f"{where}: cannot decode {_go_type(value)} into {want} (the registry refuses the manifest)")


def _int64(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, gojson.BigNumber) or (
            isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX):
        raise _Refused(f"{where}: number {_short(repr(value))} overflows int64 (the registry refuses it)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(where, value, "int64")
    return value


def _string(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise _refuse(where, value, "string")


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, gojson.Runs))


def _strings(value: Any, where: str) -> None:
    if value is None:
        return
    if not _is_list(value):
        raise _refuse(where, value, "[]string")
    for v in value:
        _string(v, where)


def _string_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _refuse(where, value, "map[string]string")
    for v in value.values():
        _string(v, where)


def _check_platform(p: Any, where: str) -> None:
    if p is None:
        return
    if not isinstance(p, dict):
        raise _refuse(where, p, "a platform object")
    for k in ("architecture", "os", "os.version", "variant"):
        _string(p.get(k), f"{where}.{k}")
    for k in ("os.features", "features"):
        _strings(p.get(k), f"{where}.{k}")


def _check_descriptor(d: Any, where: str) -> None:
    """distribution.Descriptor (2.8.2) as Go decodes it; ``null`` is its zero value."""
    if d is None:
        return
    if not isinstance(d, dict):
        raise _refuse(where, d, "a descriptor object")
    _string(d.get("mediaType"), f"{where}.mediaType")
    _int64(d.get("size"), f"{where}.size")
    _string(d.get("digest"), f"{where}.digest")
    _strings(d.get("urls"), f"{where}.urls")
    _string_map(d.get("annotations"), f"{where}.annotations")
    _check_platform(d.get("platform"), f"{where}.platform")


def _check_descriptors(value: Any, where: str) -> None:
    if value is None:
        return
    if not _is_list(value):
        raise _refuse(where, value, "an array of descriptors")
    for d in gojson.distinct(value):
        _check_descriptor(d, where)


def _check_versioned(doc: dict[str, Any]) -> None:
    """manifest.Versioned: what the registry reads first to pick the manifest's handler."""
    _int64(doc.get("schemaVersion"), "schemaVersion")
    _string(doc.get("mediaType"), "mediaType")


def _check_index(doc: dict[str, Any]) -> None:
    _check_descriptors(doc.get("manifests"), "manifests")


def _check_image(doc: dict[str, Any]) -> None:
    _check_descriptor(doc.get("config"), "config")
    _check_descriptors(doc.get("layers"), "layers")
    _string_map(doc.get("annotations"), "annotations")


def _check_schema1(doc: dict[str, Any]) -> None:
    for k in ("name", "tag", "architecture"):
        _string(doc.get(k), k)
    for key, field_ in (("fsLayers", "blobSum"), ("history", "v1Compatibility")):
        items = doc.get(key)
        if items is None:
            continue
        if not _is_list(items):
            raise _refuse(key, items, "an array")
        for it in items:
            if it is not None and not isinstance(it, dict):
                raise _refuse(key, it, "an object")
            if it is not None:
                _string(it.get(field_), f"{key}.{field_}")


def _parse_doc(doc: Any) -> ParsedManifest:
    if not isinstance(doc, dict):
        return ParsedManifest(KIND_INVALID, None, error=f"JSON {type(doc).__name__}, not an object")

    _check_versioned(doc)
    media_type = _str(doc.get("mediaType"))
    artifact_type = _str(doc.get("artifactType"))
    schema_version = doc.get("schemaVersion")

    if schema_version == 1 or media_type in SCHEMA1_TYPES:
        _check_schema1(doc)
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
    if kind == KIND_INDEX:
        try:
            _check_index(doc)
        except _Refused:
            if media_type is not None:
                raise
            kind = KIND_IMAGE  # no mediaType: the registry reads it as an image manifest when the index read fails
    if kind == KIND_IMAGE:
        _check_image(doc)

    found: list[Reference] = []
    bad = 0
    if kind == KIND_INDEX:
        bad += _descriptors(doc.get("manifests"), ROLE_CHILD, found)
    else:
        cfg = _descriptor(doc.get("config"), ROLE_CONFIG, 0)
        if cfg is None:
            bad += 1
        else:
            found.append(cfg)
        bad += _descriptors(doc.get("layers"), ROLE_LAYER, found)
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
    if _is_list(doc.get("manifests")):
        return KIND_INDEX
    return KIND_IMAGE


def _descriptors(values: Any, role: str, found: list[Reference]) -> int:
    """Append the references of a descriptor array to ``found``; return how many could not be understood.
    A run of identical elements (gojson's runs of empty objects) is understood once."""
    bad = 0
    pos = 0
    for count, desc in gojson.counted(_list(values)):
        if count == 1:
            ref = _descriptor(desc, role, pos)
            if ref is None:
                bad += 1
            else:
                found.append(ref)
        elif _descriptor(desc, role, pos) is None:
            bad += count
        else:
            found.extend(_descriptor(desc, role, pos + i) for i in range(count))  # type: ignore[misc]
        pos += count
    return bad


def _descriptor(desc: Any, role: str, position: int) -> Reference | None:
    if not isinstance(desc, dict):
        return None
    digest = desc.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        return None
    size = desc.get("size")
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


def _list(value: Any) -> Iterable[Any]:
    return value if _is_list(value) else []


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
