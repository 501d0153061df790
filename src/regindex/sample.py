"""Write registry 2.8 storage trees by hand: what a push leaves on disk, and the damage production sees.

Used by ``regindex demo`` and by the tests' generated trees. Layout facts come from ``layout``; nothing here
talks to a registry. Content is deterministic for a given ``random.Random``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from regindex import layout
from regindex.layout import (
    BlobDataPath,
    LayerLinkPath,
    RevisionLinkPath,
    TagCurrentLinkPath,
    TagIndexLinkPath,
    path_for,
)
from regindex.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    digest: str
    size: int
    media_type: str
    config: str
    layers: list[str]
    platform: dict[str, str] | None = None

    @property
    def blobs(self) -> list[str]:
        return [self.config, *self.layers]

    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform
        return d


@dataclass
class Index:
    digest: str
    size: int
    media_type: str
    children: list[Image] = field(default_factory=list)


class StorageWriter:
    """One registry root (``<root>/docker/registry/v2``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.v2 = self.root.joinpath(*layout.V2_SUFFIX)
        (self.v2 / "blobs").mkdir(parents=True, exist_ok=True)
        (self.v2 / "repositories").mkdir(parents=True, exist_ok=True)

    # -- primitives ------------------------------------------------------------------------------
    def path(self, spec: layout.PathSpec) -> Path:
        return self.v2 / path_for(spec)

    def put_blob(self, data: bytes) -> str:
        digest = sha256(data)
        p = self.path(BlobDataPath(digest))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return digest

    def _write(self, p: Path, data: bytes) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def ensure_repo(self, repo: str) -> None:
        base = self.v2 / "repositories" / repo
        (base / "_layers").mkdir(parents=True, exist_ok=True)
        (base / "_manifests" / "revisions").mkdir(parents=True, exist_ok=True)
        (base / "_manifests" / "tags").mkdir(parents=True, exist_ok=True)

    def link_layer(self, repo: str, digest: str) -> None:
        self.ensure_repo(repo)
        self._write(self.path(LayerLinkPath(repo, digest)), digest.encode())

    def link_revision(self, repo: str, digest: str) -> None:
        self.ensure_repo(repo)
        self._write(self.path(RevisionLinkPath(repo, digest)), digest.encode())

    def tag(self, repo: str, tag: str, digest: str) -> None:
        self.ensure_repo(repo)
        self._write(self.path(TagCurrentLinkPath(repo, tag)), digest.encode())
        self._write(self.path(TagIndexLinkPath(repo, tag, digest)), digest.encode())

    # -- pushes ----------------------------------------------------------------------------------
    def push_image(
        self,
        repo: str,
        rng: random.Random,
        layers: list[bytes] | None = None,
        platform: tuple[str, str] | None = ("linux", "amd64"),
        fmt: str = "oci",
        with_media_type: bool = True,
    ) -> Image:
        layers = layers if layers is not None else [rng.randbytes(rng.randint(200, 2000))]
        config = json.dumps(
            {"architecture": platform[1] if platform else "amd64", "os": platform[0] if platform else "linux",
             "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]},
             "created": "2026-11-01T00:00:00Z", "nonce": rng.getrandbits(64)},
            sort_keys=True,
        ).encode()
        cfg_digest = self.put_blob(config)
        self.link_layer(repo, cfg_digest)
        layer_descs: list[dict[str, Any]] = []
        for data in layers:
            d = self.put_blob(data)
            self.link_layer(repo, d)
            layer_descs.append({"mediaType": OCI_LAYER if fmt == "oci" else DOCKER_LAYER, "digest": d, "size": len(data)})
        mt = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
        doc: dict[str, Any] = {"schemaVersion": 2}
        if with_media_type or fmt != "oci":
            doc["mediaType"] = mt
        doc["config"] = {"mediaType": OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, "digest": cfg_digest,
                         "size": len(config)}
        doc["layers"] = layer_descs
        raw = json.dumps(doc, indent=3).encode()
        digest = self.put_blob(raw)
        self.link_revision(repo, digest)
        plat = {"architecture": platform[1], "os": platform[0]} if platform else None
        return Image(digest, len(raw), mt, cfg_digest, [x["digest"] for x in layer_descs], plat)

    def push_attestation(self, repo: str, rng: random.Random, subject: Image) -> Image:
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": subject.digest,
                                "nonce": rng.getrandbits(64)}).encode()
        st = self.put_blob(statement)
        self.link_layer(repo, st)
        config = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [sha256(statement)]}}).encode()
        cfg = self.put_blob(config)
        self.link_layer(repo, cfg)
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": len(config)},
               "layers": [{"mediaType": IN_TOTO, "digest": st, "size": len(statement)}]}
        raw = json.dumps(doc).encode()
        digest = self.put_blob(raw)
        self.link_revision(repo, digest)
        return Image(digest, len(raw), OCI_MANIFEST, cfg, [st], {"architecture": "unknown", "os": "unknown"})

    def push_index(
        self,
        repo: str,
        rng: random.Random,
        platforms: list[tuple[str, str]] = [("linux", "amd64"), ("linux", "arm64")],  # noqa: B006
        fmt: str = "oci",
        attestations: bool = True,
        shared_layers: list[bytes] | None = None,
        with_media_type: bool = True,
        padding: int = 0,
    ) -> Index:
        children: list[Image] = []
        for plat in platforms:
            layers = list(shared_layers or []) + [rng.randbytes(rng.randint(200, 2000))]
            img = self.push_image(repo, rng, layers, plat, "oci" if fmt == "oci" else "docker")
            children.append(img)
            if attestations:
                children.append(self.push_attestation(repo, rng, img))
        entries = []
        for c in children:
            e = c.descriptor()
            if c.platform and c.platform.get("os") == "unknown":
                e["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
            entries.append(e)
        mt = OCI_INDEX if fmt == "oci" else DOCKER_LIST
        doc: dict[str, Any] = {"schemaVersion": 2}
        if with_media_type:
            doc["mediaType"] = mt
        doc["manifests"] = entries
        if padding:
            doc["annotations"] = {"org.example.padding": "x" * padding}
        raw = json.dumps(doc, indent=3).encode()
        digest = self.put_blob(raw)
        self.link_revision(repo, digest)
        return Index(digest, len(raw), mt, children)

    def upload(self, repo: str, uuid: str, started: datetime, size: int = 100) -> None:
        self.ensure_repo(repo)
        d = self.v2 / "repositories" / repo / "_uploads" / uuid
        d.mkdir(parents=True, exist_ok=True)
        (d / "data").write_bytes(b"\0" * size)
        (d / "startedat").write_text(started.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))

    # -- damage ----------------------------------------------------------------------------------
    def remove_revision(self, repo: str, digest: str) -> None:
        """What GC --delete-untagged does to an untagged manifest: the whole revision directory goes."""
        shutil.rmtree(self.path(RevisionLinkPath(repo, digest)).parent)

    def delete_revision_link(self, repo: str, digest: str) -> None:
        """What an API DELETE does: the link file goes, the directory stays."""
        self.path(RevisionLinkPath(repo, digest)).unlink()

    def remove_tag(self, repo: str, tag: str) -> None:
        shutil.rmtree(self.path(TagCurrentLinkPath(repo, tag)).parent.parent)

    def remove_tag_current(self, repo: str, tag: str) -> None:
        self.path(TagCurrentLinkPath(repo, tag)).unlink()

    def remove_blob(self, digest: str) -> None:
        shutil.rmtree(self.path(BlobDataPath(digest)).parent)

    def truncate_blob(self, digest: str, size: int = 0) -> None:
        p = self.path(BlobDataPath(digest))
        data = p.read_bytes()
        p.write_bytes(data[:size])

    def write_layer_link(self, repo: str, digest: str, content: bytes) -> None:
        self._write(self.path(LayerLinkPath(repo, digest)), content)

    def write_revision_link(self, repo: str, digest: str, content: bytes) -> None:
        self._write(self.path(RevisionLinkPath(repo, digest)), content)

    def write_tag_link(self, repo: str, tag: str, content: bytes) -> None:
        self._write(self.path(TagCurrentLinkPath(repo, tag)), content)

    def remove_layer_link(self, repo: str, digest: str) -> None:
        shutil.rmtree(self.path(LayerLinkPath(repo, digest)).parent)

    def remove_tags_dir(self, repo: str) -> None:
        shutil.rmtree(self.v2 / "repositories" / repo / "_manifests" / "tags")

    def sweep(self) -> list[str]:
        """The sweep half of garbage-collect: delete every blob no revision link marks (directly or as a
        manifest's config, layer or child). _layers links are left alone, as the registry leaves them."""
        from regindex.manifests import parse_manifest

        marked: set[str] = set()
        for link in (self.v2 / "repositories").rglob("_manifests/revisions/*/*/link"):
            digest = link.read_text()
            marked.add(digest)
            data = self.path(BlobDataPath(digest))
            if data.is_file():
                marked.update(ref.digest for ref in parse_manifest(data.read_bytes()).refs)
        swept = []
        for data in sorted((self.v2 / "blobs").glob("*/*/*/data")):
            digest = f"{data.parent.parent.parent.name}:{data.parent.name}"
            if digest not in marked:
                shutil.rmtree(data.parent)
                swept.append(digest)
        return swept

    def path_exists_blob(self, digest: str) -> bool:
        return self.path(BlobDataPath(digest)).is_file()

    def touch_mtime(self, digest: str) -> None:
        p = self.path(BlobDataPath(digest))
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
