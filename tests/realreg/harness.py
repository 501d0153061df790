"""Real-registry test harness: a docker-registry 2.8.2 process, offline image building, a probe, damage helpers.

OBSERVED on Debian 12 (docker-registry 2.8.2+ds1, skopeo 1.9.3, no storage.cache), where it adds to or
differs from /work/shared/registry-behaviour.md:

skopeo
- ``copy --preserve-digests`` exists in 1.9.3; push() uses it and checks ``--digestfile`` against the built
  digest. Every digest (index, children, configs, layers) came out unchanged -- even without the flag, since a
  registry destination accepts all four manifest types and nothing needs converting.
- The ``oci:`` source only finds index.json entries whose mediaType is an OCI manifest or OCI index (an entry
  with a Docker media type, or none, gives "no descriptor found for reference"). So Docker schema2 manifests and
  Docker manifest lists are pushed from a ``dir:`` view of the same blobs (write_dir_view); OCI ones from ``oci:``.
- A Docker manifest list with OCI children (incl. BuildKit-style attestation manifests with an
  ``application/vnd.in-toto+json`` layer) pushes fine and is served and pulled back byte-identical; so does an
  OCI index with Docker schema2 children. build_world still keeps its Docker list "classic" (Docker children,
  no attestations).
- As root, skopeo keeps its blob-info cache in /var/lib/containers/cache (no flag to move it in 1.9.3).

registry (all of the md's claims that were tried held; additions)
- GC ``--delete-untagged`` on an untouched world: exactly predict_gc_delete_untagged() -- untagged index
  children lose their revision dir, their manifest blobs stay, their own configs/layers are swept unless a
  tagged manifest names them directly (the shared base layer survives through library/base), every ``_layers``
  link to a swept blob stays; the index is still served by tag (200) -- only the pull (skopeo) fails.
- Without storage.cache the API reflects the disk immediately: removed data, ``_layers`` link or revision link
  answer 404 at once, no restart needed (restart() is still offered).
- Corrupt ``_layers`` link (garbage / empty / trailing newline): blob GET answers 500 (the md only mentions
  revision and tag links). GC ignores ``_layers`` links entirely: exit 0, with or without --delete-untagged.
- Garbage / empty / trailing-newline / too-short revision link: 500 by digest and by tag; GC exits 1 ("failed
  to mark: ... invalid checksum digest format|length"), with or without --delete-untagged.
- Same damage in a tag's current link: 500 for the tag, still listed by tags/list; plain GC exits 0,
  ``--delete-untagged`` exits 1 ("failed to retrieve tags for digest ...").
- A tag dir WITHOUT ``current/link``: listed, 404; it does NOT block ``--delete-untagged`` (exit 0) and the
  manifest it used to name is then collected as untagged.
- Repository without ``_manifests/tags``: tags/list 404 NAME_UNKNOWN; plain GC exit 0, --delete-untagged exit 1.
- Manifest data truncated to half (invalid JSON) answers 500, like 0-byte data.
- 0-byte blob data: HEAD 200 Content-Length 0, GET 200 with 0 bytes; half-truncated: 200 with the short body.
- API DELETE of a manifest: 202; removes only the revision ``link`` (dir stays) and also untags every tag whose
  current link names it (tags/list then omits them). No check of indexes naming it.
- Accept without the OCI types: 404 MANIFEST_UNKNOWN ("OCI index found, but accept header does not support OCI
  indexes" / "...manifests") for OCI manifests by tag and by digest. With NO Accept header at all, a Docker
  schema2 manifest (and a Docker list, via its linux/amd64 child) is answered 200 as a converted schema1
  ``...v1+prettyjws`` document with another digest: always send the full Accept list.
- ``GET /v2/_catalog?n=`` above 1000 answers 400 PAGINATION_NUMBER_INVALID (catalog() pages by 100).

Everything here uses the stdlib only. The registry runs WITHOUT the in-memory blob-descriptor cache, so its
answers reflect the disk (still, call Registry.restart() after damaging storage, to be safe).

Usage sketch::

    require_registry()
    with Registry(tmp_path / "reg") as reg:
        world = build_world(reg, seed=1, layout_dir=tmp_path / "layout")
        assert probe(reg, world) == []
        remove_blob_data(reg.v2, world.named["base_layer_amd64"])
        reg.restart()
        failures = probe(reg, world)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"
REQUIRE_ENV = "REGINDEX_REQUIRE_REGISTRY"

# --------------------------------------------------------------------------------------------- media types
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

REF_NAME = "org.opencontainers.image.ref.name"
ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_DIGEST = "vnd.docker.reference.digest"

HTTP_TIMEOUT = 10.0
SKOPEO_TIMEOUT = 120.0


# ============================================================================================ availability
def registry_available() -> bool:
    """True when both docker-registry and skopeo are installed."""
    return os.access(REGISTRY_BIN, os.X_OK) and os.access(SKOPEO_BIN, os.X_OK)


def require_registry() -> None:
    """Skip the calling test when the tools are missing; fail instead when REGINDEX_REQUIRE_REGISTRY=1."""
    import pytest

    if registry_available():
        return
    msg = f"real-registry tests need {REGISTRY_BIN} and {SKOPEO_BIN}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{msg} ({REQUIRE_ENV}=1)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ================================================================================================ Registry
class RegistryError(RuntimeError):
    pass


class Registry:
    """A docker-registry 2.8.2 serving filesystem storage at ``root`` on 127.0.0.1:<free port>.

    No auth, delete enabled, no blob-descriptor cache, no upload purging, log level warn, log in a temp dir.
    """

    START_TIMEOUT = 15.0

    def __init__(self, root: str | os.PathLike, *, port: int | None = None, cache: bool = False):
        self.cache = cache  # storage.cache.blobdescriptor: inmemory (the official image's default)
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="regindex-reg-"))
        self.config_path = self._tmp / "config.yml"
        self.log_path = self._tmp / "registry.log"
        self.port = port or _free_port()
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._write_config()

    # -- properties
    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def v2(self) -> Path:
        return self.root / "docker" / "registry" / "v2"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        # JSON strings are valid YAML scalars: safe quoting for any path.
        self.config_path.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: warn\n"
            "  formatter: text\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {json.dumps(str(self.root))}\n"
            "  delete:\n"
            "    enabled: true\n"
            + ("  cache:\n    blobdescriptor: inmemory\n" if self.cache else "") +
            "  maintenance:\n"
            "    uploadpurging:\n"
            "      enabled: false\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            "  secret: regindex-test-secret\n"
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    # -- lifecycle
    def start(self) -> "Registry":
        if self.running:
            return self
        for attempt in range(3):
            self._log = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            try:
                self._wait_ready()
                return self
            except RegistryError:
                died = self._proc.poll() is not None
                self._kill()
                if died and attempt < 2 and "address already in use" in self.log_tail(5):
                    self.port = _free_port()  # lost the race for the port: pick another
                    self._write_config()
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(
                    f"docker-registry exited with {self._proc.returncode}; log tail:\n{self.log_tail()}"
                )
            try:
                status, _, _ = self.request("GET", "/v2/", timeout=1.0)
                if status == 200:
                    return
                last = f"status {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise RegistryError(
            f"docker-registry on {self.url} not ready after {self.START_TIMEOUT}s ({last}); "
            f"log tail:\n{self.log_tail()}"
        )

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._kill()

    def restart(self) -> "Registry":
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temp dir (config, log). The storage root is left alone."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- maintenance
    def garbage_collect(self, delete_untagged: bool, dry_run: bool = False) -> subprocess.CompletedProcess:
        """Run ``docker-registry garbage-collect`` with the registry stopped; restart it after if it was running.

        Does not raise on a non-zero exit (GC exits 1 on blockers)."""
        was_running = self.running
        self.stop()
        cmd = [REGISTRY_BIN, "garbage-collect"]
        if delete_untagged:
            cmd.append("--delete-untagged")
        if dry_run:
            cmd.append("--dry-run")
        cmd.append(str(self.config_path))
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        finally:
            if was_running:
                self.start()

    # -- HTTP
    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; returns (status, lower-cased headers, body). A short body is returned as read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            chunks = []
            if method != "HEAD":
                while True:
                    try:
                        chunk = resp.read(1 << 16)
                    except http.client.IncompleteRead as e:
                        chunks.append(e.partial)
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
            return resp.status, hdrs, b"".join(chunks)
        finally:
            conn.close()

    def delete_manifest(self, repo: str, digest: str) -> int:
        status, _, _ = self.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        return status

    def get_manifest(self, repo: str, reference: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", f"/v2/{repo}/manifests/{reference}", {"Accept": MANIFEST_ACCEPT})

    def tags(self, repo: str) -> list[str] | None:
        """``GET /v2/<repo>/tags/list``: the tag names, or None when the answer is not 200."""
        status, _, body = self.request("GET", f"/v2/{repo}/tags/list")
        if status != 200:
            return None
        return list(json.loads(body).get("tags") or [])

    def catalog(self) -> list[str]:
        """``GET /v2/_catalog``, following pagination (2.8.2 answers 400 for n > 1000)."""
        repos: list[str] = []
        last = ""
        while True:
            q = f"?n=100&last={last}" if last else "?n=100"
            status, hdrs, body = self.request("GET", f"/v2/_catalog{q}")
            if status != 200:
                raise RegistryError(f"_catalog answered {status}: {body[:200]!r}")
            page = list(json.loads(body).get("repositories") or [])
            repos += page
            if not page or "link" not in hdrs:
                return repos
            last = page[-1]


def clone_storage(src_root: str | os.PathLike, dst_root: str | os.PathLike) -> Path:
    """Copy a registry root (stop its registry first) so a built world can be damaged without rebuilding it."""
    dst = Path(dst_root)
    shutil.copytree(src_root, dst, symlinks=True, dirs_exist_ok=False)
    return dst


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


def _skopeo(args: list[str], timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess:
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
        r = _skopeo(
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


# ================================================================================================== probe
@dataclasses.dataclass(frozen=True)
class Failure:
    repository: str
    reference: str  # "sha256:..." or a tag name
    kind: str  # "manifest_digest" | "manifest_tag" | "blob" | "copy_tag"
    detail: str


def _as_expected(world_or_expected) -> dict:
    if isinstance(world_or_expected, World):
        return world_or_expected.expected()
    return world_or_expected


def _probe_manifest(reg: Registry, repo: str, ref: str, want_digest: str | None, kind: str) -> list[Failure]:
    """HEAD + GET one manifest; at most one Failure (its detail names every problem seen)."""
    problems = []
    path = f"/v2/{repo}/manifests/{ref}"
    hdrs = {"Accept": MANIFEST_ACCEPT}
    try:
        status, _, _ = reg.request("HEAD", path, hdrs)
        if status != 200:
            problems.append(f"HEAD {status}")
        status, h, body = reg.request("GET", path, hdrs)
    except OSError as e:
        problems.append(f"request error: {e!r}")
    else:
        got = sha256_digest(body)
        if status != 200:
            problems.append(f"GET {status}: {body[:200]!r}")
        elif want_digest is not None and got != want_digest:
            problems.append(f"GET 200 but body is {got} ({len(body)} bytes), want {want_digest}")
        elif want_digest is None and h.get("docker-content-digest") not in (None, got):
            problems.append(f"GET 200, body {got} != Docker-Content-Digest {h['docker-content-digest']}")
    return [Failure(repo, ref, kind, "; ".join(problems))] if problems else []


def _probe_blob(reg: Registry, repo: str, digest: str, size: int) -> list[Failure]:
    try:
        status, _, body = reg.request("GET", f"/v2/{repo}/blobs/{digest}")
    except OSError as e:
        return [Failure(repo, digest, "blob", f"request error: {e!r}")]
    if status != 200:
        return [Failure(repo, digest, "blob", f"GET {status}: {body[:200]!r}")]
    got = sha256_digest(body)
    if len(body) != size or got != digest:
        return [Failure(repo, digest, "blob", f"GET 200 with {len(body)} bytes hashing to {got}, want {size} bytes")]
    return []


def copy_tag(reg: Registry, repo: str, tag: str) -> subprocess.CompletedProcess:
    """``skopeo copy --all --preserve-digests docker://URL/repo:tag dir:TMP`` (the pull a client would do)."""
    with tempfile.TemporaryDirectory(prefix="regindex-pull-") as tmp:
        return _skopeo(
            [
                "copy", "--all", "--preserve-digests", "--quiet", "--src-tls-verify=false",
                f"docker://{reg.url}/{repo}:{tag}", f"dir:{tmp}/img",
            ]
        )


def probe(registry: Registry, world_or_expected, *, copy: bool = True) -> list[Failure]:
    """Ask the registry for everything ``world_or_expected`` says it should serve; return what fails.

    ``world_or_expected`` is a World or its ``expected()`` dict. Per repository: HEAD+GET every manifest by
    digest (body must hash to the digest), HEAD+GET every known tag and every tag ``tags/list`` names (a known
    tag's body must hash to its recorded digest), GET every blob (body length and hash must match), and
    ``skopeo copy --all`` every tag (``copy=False`` skips that, the slow part). Never asserts."""
    expected = _as_expected(world_or_expected)
    failures: list[Failure] = []
    for repo, content in sorted(expected.items()):
        for digest in sorted(content.get("manifests", {})):
            failures += _probe_manifest(registry, repo, digest, digest, "manifest_digest")
        known_tags = dict(content.get("tags", {}))
        try:
            listed = registry.tags(repo) or []
        except OSError:
            listed = []
        all_tags = sorted(set(known_tags) | set(listed))
        for tag in all_tags:
            failures += _probe_manifest(registry, repo, tag, known_tags.get(tag), "manifest_tag")
        for digest, size in sorted(content.get("blobs", {}).items()):
            failures += _probe_blob(registry, repo, digest, size)
        if copy:
            for tag in all_tags:
                try:
                    r = copy_tag(registry, repo, tag)
                except subprocess.TimeoutExpired as e:
                    failures.append(Failure(repo, tag, "copy_tag", f"skopeo timed out: {e}"))
                    continue
                if r.returncode != 0:
                    failures.append(Failure(repo, tag, "copy_tag", f"exit {r.returncode}: {r.stderr.strip()}"))
    return failures


def failure_keys(failures: Iterable[Failure]) -> set[tuple[str, str, str]]:
    """{(repository, reference, kind)}: handy for comparing against predictions."""
    return {(f.repository, f.reference, f.kind) for f in failures}


def predict_gc_delete_untagged(world: World) -> set[tuple[str, str, str]]:
    """failure_keys() that registry-behaviour.md predicts for ``garbage-collect --delete-untagged`` on an
    untouched ``world``: every manifest that is not a tag's target in its repo loses its revision; every
    config/layer that no tagged manifest (in any repo) names directly is swept, in every repo linking it;
    ``skopeo copy`` of a tag fails when anything below it is gone. A tag itself keeps answering."""
    marked: set[str] = set()
    for rc in world.repos.values():
        for dgst in set(rc.tags.values()):
            m = rc.manifests[dgst]
            marked.add(dgst)
            marked.update(m.children)
            marked.update(m.blobs)
    out: set[tuple[str, str, str]] = set()
    for rc in world.repos.values():
        tagged = set(rc.tags.values())
        for dgst in rc.manifests:
            if dgst not in tagged:
                out.add((rc.name, dgst, "manifest_digest"))
        for dgst in rc.blobs:
            if dgst not in marked:
                out.add((rc.name, dgst, "blob"))

        def broken(dgst: str, top: bool) -> bool:
            m = rc.manifests[dgst]
            if not top and dgst not in tagged:
                return True
            return any(b not in marked for b in m.blobs) or any(broken(c, False) for c in m.children)

        for tag, dgst in rc.tags.items():
            if broken(dgst, True):
                out.add((rc.name, tag, "copy_tag"))
    return out


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


# -- revisions
def remove_revision(v2, repo: str, digest: str) -> None:
    """rm -rf the revision directory (what GC --delete-untagged does to an untagged manifest)."""
    shutil.rmtree(_must_exist(revision_dir(v2, repo, digest)))


def remove_revision_link(v2, repo: str, digest: str) -> None:
    """Remove only the revision ``link`` file (the normal trace an API DELETE leaves)."""
    _must_exist(revision_link_path(v2, repo, digest)).unlink()


def write_revision_link(v2, repo: str, digest: str, content: bytes | str) -> Path:
    return write_link(revision_link_path(v2, repo, digest), content)


def corrupt_revision_link(v2, repo: str, digest: str, content: bytes = GARBAGE) -> Path:
    _must_exist(revision_link_path(v2, repo, digest))
    return write_revision_link(v2, repo, digest, content)


def point_revision_link(v2, repo: str, digest: str, other: str) -> Path:
    """The revision link for ``digest`` names ``other`` (parses, wrong target)."""
    _must_exist(revision_link_path(v2, repo, digest))
    return write_revision_link(v2, repo, digest, other)


# -- layer links
def remove_layer_link_dir(v2, repo: str, digest: str) -> None:
    shutil.rmtree(_must_exist(layer_link_dir(v2, repo, digest)))


def remove_layer_link(v2, repo: str, digest: str) -> None:
    _must_exist(layer_link_path(v2, repo, digest)).unlink()


def write_layer_link(v2, repo: str, digest: str, content: bytes | str) -> Path:
    return write_link(layer_link_path(v2, repo, digest), content)


def corrupt_layer_link(v2, repo: str, digest: str, content: bytes = GARBAGE) -> Path:
    _must_exist(layer_link_path(v2, repo, digest))
    return write_layer_link(v2, repo, digest, content)


def point_layer_link(v2, repo: str, digest: str, other: str) -> Path:
    _must_exist(layer_link_path(v2, repo, digest))
    return write_layer_link(v2, repo, digest, other)


# -- tags
def remove_tag(v2, repo: str, tag: str) -> None:
    """rm -rf the tag directory (a "tag cleanup")."""
    shutil.rmtree(_must_exist(tag_dir(v2, repo, tag)))


def remove_tag_current_link(v2, repo: str, tag: str) -> None:
    """Remove ``tags/<tag>/current/link``: the tag stays listed but answers 404."""
    _must_exist(tag_current_link_path(v2, repo, tag)).unlink()


def remove_tags_dir(v2, repo: str) -> None:
    """Remove ``_manifests/tags`` entirely (a GC --delete-untagged blocker)."""
    shutil.rmtree(_must_exist(repo_dir(v2, repo) / "_manifests" / "tags"))


def write_tag_link(v2, repo: str, tag: str, content: bytes | str) -> Path:
    return write_link(tag_current_link_path(v2, repo, tag), content)


def corrupt_tag_link(v2, repo: str, tag: str, content: bytes = GARBAGE) -> Path:
    _must_exist(tag_current_link_path(v2, repo, tag))
    return write_tag_link(v2, repo, tag, content)


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


@contextlib.contextmanager
def stopped(registry: Registry) -> Iterator[Registry]:
    """``with stopped(reg): damage(...)`` -- stop the registry while editing disk, start it again after."""
    was_running = registry.running
    registry.stop()
    try:
        yield registry
    finally:
        if was_running:
            registry.start()
