"""Real-registry test harness, the image builder: OCI layouts built offline (layers, images, attestations,
indexes), pushed with skopeo, and ``build_world``: a seeded set of repositories with what each must serve."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Iterable

from .registry import (
    ATTESTATION_DIGEST,
    ATTESTATION_TYPE,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IN_TOTO,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    Registry,
    SKOPEO_BIN,
    sha256_digest,
)

SKOPEO_TIMEOUT = 120.0


# ======================================================================================= image building
def _canonical(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def _write_blob(layout_dir: Path, data: bytes) -> str:
    dgst = sha256_digest(data)
    p = Path(layout_dir) / "blobs" / "sha256" / dgst.split(":", 1)[1]
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return dgst


def read_blob(layout_dir: str | os.PathLike, digest: str) -> bytes:
    alg, hexpart = digest.split(":", 1)
    return (Path(layout_dir) / "blobs" / alg / hexpart).read_bytes()


def init_layout(layout_dir: str | os.PathLike) -> Path:
    """Create an (empty) OCI image layout."""
    d = Path(layout_dir)
    (d / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (d / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    if not (d / "index.json").exists():
        (d / "index.json").write_bytes(_canonical({"schemaVersion": 2, "manifests": []}))
    return d


def make_layer(rng: random.Random, size: int) -> bytes:
    """A gzip'd tar holding one file of ``size`` random bytes; deterministic for a given rng state."""
    name = f"data/f{rng.getrandbits(64):016x}.bin"
    content = rng.randbytes(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mtime = 1_700_000_000
        info.mode = 0o644
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _platform(arch: str, os_: str, variant: str | None = None) -> dict:
    p = {"architecture": arch, "os": os_}
    if variant:
        p["variant"] = variant
    return p


def build_image(
    layout_dir: str | os.PathLike,
    rng: random.Random,
    layers: Iterable[bytes],
    arch: str = "amd64",
    os: str = "linux",
    fmt: str = "oci",
    variant: str | None = None,
) -> dict:
    """Write config + layers + an image manifest (OCI or Docker schema2) into the layout's blobs.

    Returns the manifest descriptor (mediaType, digest, size, platform). index.json is not touched."""
    if fmt not in ("oci", "docker"):
        raise ValueError(fmt)
    d = init_layout(layout_dir)
    layers = list(layers)
    diff_ids = [sha256_digest(gzip.decompress(b)) for b in layers]
    config = {
        "architecture": arch,
        "os": os,
        **({"variant": variant} if variant else {}),
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"org.regindex.test.nonce": f"{rng.getrandbits(64):016x}"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = _canonical(config)
    config_digest = _write_blob(d, config_bytes)
    layer_type = OCI_LAYER_GZIP if fmt == "oci" else DOCKER_LAYER_GZIP
    layer_descs = [{"mediaType": layer_type, "digest": _write_blob(d, b), "size": len(b)} for b in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": layer_descs,
    }
    mbytes = _canonical(manifest)
    return {
        "mediaType": manifest["mediaType"],
        "digest": _write_blob(d, mbytes),
        "size": len(mbytes),
        "platform": _platform(arch, os, variant),
    }


def build_attestation(layout_dir: str | os.PathLike, subject: dict) -> dict:
    """A BuildKit-style attestation manifest for ``subject`` (an image descriptor); returns its index entry."""
    d = init_layout(layout_dir)
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "pkg:docker/regindex-test", "digest": {"sha256": subject["digest"].split(":", 1)[1]}}],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": "regindex-test-sbom", "packages": []},
    }
    st_bytes = _canonical(statement)
    st_digest = _write_blob(d, st_bytes)
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [st_digest]},
    }
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _write_blob(d, config_bytes), "size": len(config_bytes)},
        "layers": [
            {
                "mediaType": IN_TOTO,
                "digest": st_digest,
                "size": len(st_bytes),
                "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
            }
        ],
    }
    mbytes = _canonical(manifest)
    return {
        "mediaType": OCI_MANIFEST,
        "digest": _write_blob(d, mbytes),
        "size": len(mbytes),
        "annotations": {ATTESTATION_DIGEST: subject["digest"], ATTESTATION_TYPE: "attestation-manifest"},
        "platform": {"architecture": "unknown", "os": "unknown"},
    }


def build_index(
    layout_dir: str | os.PathLike,
    children: Iterable[dict],
    fmt: str = "oci",
    attestation: bool = True,
) -> dict:
    """Write an OCI index (fmt='oci') or Docker manifest list (fmt='docker') over ``children`` (descriptors
    with ``platform``). With ``attestation``, append one attestation manifest per platform child (BuildKit
    order: platform children first). Returns the index descriptor (mediaType, digest, size)."""
    if fmt not in ("oci", "docker"):
        raise ValueError(fmt)
    d = init_layout(layout_dir)
    entries = [dict(c) for c in children]
    if attestation:
        entries += [
            build_attestation(d, c)
            for c in list(entries)
            if c.get("platform", {}).get("architecture") not in (None, "unknown")
        ]
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_LIST
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    ibytes = _canonical(index)
    return {"mediaType": media_type, "digest": _write_blob(d, ibytes), "size": len(ibytes)}


def set_layout_ref(layout_dir: str | os.PathLike, desc: dict, ref: str) -> None:
    """Make the layout's index.json name exactly ONE top-level manifest, ``desc``, as ``ref``."""
    d = init_layout(layout_dir)
    entry = {k: v for k, v in desc.items() if k in ("mediaType", "digest", "size", "platform")}
    entry["annotations"] = {REF_NAME: ref}
    (d / "index.json").write_bytes(_canonical({"schemaVersion": 2, "manifests": [entry]}))


def skopeo(args: list[str], timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SKOPEO_BIN, "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class PushError(RuntimeError):
    pass


def _layout_entry(layout_dir: Path, ref: str) -> dict:
    index = json.loads((layout_dir / "index.json").read_bytes())
    for entry in index.get("manifests", []):
        if (entry.get("annotations") or {}).get(REF_NAME) == ref:
            return entry
    raise PushError(f"{layout_dir}/index.json names no manifest {ref!r}")


def write_dir_view(layout_dir: str | os.PathLike, desc: dict, dest: str | os.PathLike) -> Path:
    """Write a skopeo ``dir:`` copy of ``desc`` and everything below it (hard links where possible).

    skopeo 1.9.3's ``oci:`` source only finds index.json entries whose mediaType is an OCI manifest or index,
    so Docker schema2 manifests and Docker manifest lists are pushed from this view instead."""
    layout, dest = Path(layout_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "version").write_text("Directory Transport Version: 1.1\n")

    def put(digest: str, name: str) -> None:
        src = Path(layout) / "blobs" / digest.replace(":", "/", 1)
        target = dest / name
        if target.exists():
            return
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)

    def walk(d: dict, top: bool) -> None:
        hexpart = d["digest"].split(":", 1)[1]
        put(d["digest"], "manifest.json" if top else f"{hexpart}.manifest.json")
        m = json.loads(read_blob(layout, d["digest"]))
        if "manifests" in m:
            for child in m["manifests"]:
                walk(child, False)
        else:
            for blob in [m["config"], *m["layers"]]:
                put(blob["digest"], blob["digest"].split(":", 1)[1])

    walk(desc, True)
    return dest


def push(
    registry: Registry,
    layout_dir: str | os.PathLike,
    ref: str,
    repo: str,
    tag: str,
    desc: dict | None = None,
) -> str:
    """Push the manifest the layout's index.json names ``ref`` to ``repo:tag``; returns the pushed digest.

    ``skopeo copy --all --preserve-digests oci:LAYOUT:REF docker://URL/repo:tag`` for OCI top-level
    manifests; for a Docker schema2 manifest or manifest list the same content goes through a ``dir:`` view
    (see write_dir_view). With ``desc``, index.json is first rewritten to name only ``desc`` as ``ref``. The
    pushed digest is always checked against the built one (PushError if skopeo changed it)."""
    layout = Path(layout_dir).resolve()
    if desc is not None:
        set_layout_ref(layout, desc, ref)
    entry = _layout_entry(layout, ref)
    with tempfile.TemporaryDirectory(prefix="regindex-push-") as tmp:
        if entry.get("mediaType") in (DOCKER_LIST, DOCKER_MANIFEST):
            source = f"dir:{write_dir_view(layout, entry, Path(tmp) / 'dir')}"
        else:
            source = f"oci:{layout}:{ref}"
        digestfile = Path(tmp) / "digest"
        r = skopeo(
            [
                "copy", "--all", "--preserve-digests", "--quiet",
                "--dest-tls-verify=false",
                "--digestfile", str(digestfile),
                source,
                f"docker://{registry.url}/{repo}:{tag}",
            ]
        )
        if r.returncode != 0:
            raise PushError(f"skopeo push of {ref} to {repo}:{tag} failed ({r.returncode}): {r.stderr.strip()}")
        pushed = digestfile.read_text().strip()
    if pushed != entry["digest"]:
        raise PushError(f"skopeo pushed {pushed} for {repo}:{tag}, built {entry['digest']}")
    return pushed


# ================================================================================================== World
@dataclasses.dataclass
class ManifestInfo:
    digest: str
    media_type: str
    size: int
    kind: str  # "index" | "image"
    children: list[str] = dataclasses.field(default_factory=list)  # index: child manifest digests
    config: str | None = None  # image: config digest
    layers: list[str] = dataclasses.field(default_factory=list)  # image: layer digests
    platform: dict | None = None  # as named by the parent index (None for a top-level manifest)
    attestation_for: str | None = None  # attestation manifest: the subject digest

    @property
    def blobs(self) -> list[str]:
        return ([self.config] if self.config else []) + list(self.layers)


@dataclasses.dataclass
class RepoContent:
    name: str
    tags: dict[str, str] = dataclasses.field(default_factory=dict)  # tag -> manifest digest
    manifests: dict[str, ManifestInfo] = dataclasses.field(default_factory=dict)
    blobs: dict[str, int] = dataclasses.field(default_factory=dict)  # config/layer digest -> size

    # convenience views
    def indexes(self) -> list[ManifestInfo]:
        return [m for m in self.manifests.values() if m.kind == "index"]

    def children(self) -> list[ManifestInfo]:
        """Manifests some index in this repo names."""
        kids = {c for m in self.indexes() for c in m.children}
        return [self.manifests[c] for c in self.manifests if c in kids]

    def untagged_children(self) -> list[ManifestInfo]:
        tagged = set(self.tags.values())
        return [m for m in self.children() if m.digest not in tagged]

    def layers(self) -> list[str]:
        return sorted({l for m in self.manifests.values() for l in m.layers})

    def configs(self) -> list[str]:
        return sorted({m.config for m in self.manifests.values() if m.config})


@dataclasses.dataclass
class World:
    """What a registry should serve: per repository, its tags, manifests and blobs (configs, layers)."""

    repos: dict[str, RepoContent] = dataclasses.field(default_factory=dict)
    layout: Path | None = None
    named: dict[str, str] = dataclasses.field(default_factory=dict)  # handle -> digest (see build_world)

    def repo(self, name: str) -> RepoContent:
        return self.repos[name]

    def record(self, layout_dir: str | os.PathLike, repo: str, tag: str, desc: dict) -> None:
        """Record that ``desc`` (built in ``layout_dir``) was pushed as ``repo:tag``, with everything below it."""
        rc = self.repos.setdefault(repo, RepoContent(repo))
        rc.tags[tag] = desc["digest"]
        _walk(Path(layout_dir), desc, rc, platform=None)

    def repos_with_blob(self, digest: str) -> list[str]:
        return sorted(r.name for r in self.repos.values() if digest in r.blobs)

    def expected(self) -> dict:
        """Plain-dict form accepted by probe(): {repo: {"tags": {tag: digest},
        "manifests": {digest: size}, "blobs": {digest: size}}}."""
        return {
            r.name: {
                "tags": dict(r.tags),
                "manifests": {d: m.size for d, m in r.manifests.items()},
                "blobs": dict(r.blobs),
            }
            for r in self.repos.values()
        }


def _walk(layout: Path, desc: dict, rc: RepoContent, platform: dict | None, attestation_for: str | None = None):
    data = read_blob(layout, desc["digest"])
    m = json.loads(data)
    mt = m.get("mediaType") or desc.get("mediaType")
    if "manifests" in m:
        info = ManifestInfo(desc["digest"], mt, len(data), "index", platform=platform)
        rc.manifests.setdefault(desc["digest"], info)
        for child in m["manifests"]:
            info.children.append(child["digest"])
            _walk(layout, child, rc, child.get("platform"),
                  (child.get("annotations") or {}).get(ATTESTATION_DIGEST))
    else:
        info = ManifestInfo(
            desc["digest"], mt, len(data), "image",
            config=m["config"]["digest"], layers=[l["digest"] for l in m["layers"]],
            platform=platform, attestation_for=attestation_for,
        )
        existing = rc.manifests.get(desc["digest"])
        if existing is None or (existing.platform is None and platform is not None):
            rc.manifests[desc["digest"]] = info
        rc.blobs[m["config"]["digest"]] = m["config"]["size"]
        for l in m["layers"]:
            if not l.get("urls"):
                rc.blobs[l["digest"]] = l["size"]


def build_world(registry: Registry, seed: int, layout_dir: str | os.PathLike | None = None) -> World:
    """Build and push a realistic small registry.

    - ``library/base``: single-platform OCI image, tags ``latest`` and ``3.19``; its layer ``base_amd64`` is
      shared with the amd64 children in ``team/app/api`` and ``team/app/web`` (same bytes pushed in 3 repos).
    - ``team/app/api``: OCI index over linux/amd64 + linux/arm64 + two attestation manifests, tags ``v1`` and
      ``latest`` (same index); the amd64 child also has its own tag ``v1-amd64``.
    - ``team/app/web``: Docker manifest list over linux/amd64 + linux/arm64 Docker schema2 children (no
      attestations), tag ``v2``; plus a single-platform Docker schema2 image, tag ``legacy``.

    ``world.named`` holds handles: base, api_index, api_amd64, api_arm64, api_att_amd64, api_att_arm64,
    web_list, web_amd64, web_arm64, web_legacy, base_layer_amd64, base_layer_arm64.

    The same seed gives the same digests, so a stored copy of the storage (clone_storage) can be reused with a
    rebuilt World. Without ``layout_dir`` the OCI layout goes to a new temp dir (``world.layout``) that the
    caller removes.
    """
    rng = random.Random(seed)
    layout = Path(layout_dir) if layout_dir else Path(tempfile.mkdtemp(prefix="regindex-layout-"))
    init_layout(layout)
    world = World(layout=layout)
    n = world.named

    base_amd64 = make_layer(rng, 3000)
    base_arm64 = make_layer(rng, 2500)
    n["base_layer_amd64"] = sha256_digest(base_amd64)
    n["base_layer_arm64"] = sha256_digest(base_arm64)

    def pushed(handle: str, desc: dict, repo: str, tags: list[str]) -> dict:
        n[handle] = desc["digest"]
        for tag in tags:
            push(registry, layout, handle, repo, tag, desc=desc)
            world.record(layout, repo, tag, desc)
        return desc

    # library/base
    base = build_image(layout, rng, [base_amd64], "amd64", "linux", "oci")
    pushed("base", base, "library/base", ["latest", "3.19"])

    # team/app/api: OCI index + attestations
    api_amd64 = build_image(layout, rng, [base_amd64, make_layer(rng, 1200)], "amd64", "linux", "oci")
    api_arm64 = build_image(layout, rng, [base_arm64, make_layer(rng, 1100)], "arm64", "linux", "oci", "v8")
    api_index = build_index(layout, [api_amd64, api_arm64], fmt="oci", attestation=True)
    n["api_amd64"], n["api_arm64"] = api_amd64["digest"], api_arm64["digest"]
    pushed("api_index", api_index, "team/app/api", ["v1", "latest"])
    pushed("api_amd64", api_amd64, "team/app/api", ["v1-amd64"])
    idx = json.loads(read_blob(layout, api_index["digest"]))
    for child in idx["manifests"]:
        subject = (child.get("annotations") or {}).get(ATTESTATION_DIGEST)
        if subject == api_amd64["digest"]:
            n["api_att_amd64"] = child["digest"]
        elif subject == api_arm64["digest"]:
            n["api_att_arm64"] = child["digest"]

    # team/app/web: Docker manifest list + a single Docker image
    web_amd64 = build_image(layout, rng, [base_amd64, make_layer(rng, 900)], "amd64", "linux", "docker")
    web_arm64 = build_image(layout, rng, [base_arm64, make_layer(rng, 800)], "arm64", "linux", "docker", "v8")
    web_list = build_index(layout, [web_amd64, web_arm64], fmt="docker", attestation=False)
    n["web_amd64"], n["web_arm64"] = web_amd64["digest"], web_arm64["digest"]
    pushed("web_list", web_list, "team/app/web", ["v2"])
    legacy = build_image(layout, rng, [make_layer(rng, 700)], "amd64", "linux", "docker")
    pushed("web_legacy", legacy, "team/app/web", ["legacy"])
    return world
