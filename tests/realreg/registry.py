"""Real-registry test harness, the registry process: docker-registry 2.8.2 on a free port, its HTTP API, the
media types it serves. The image builder is images.py, the damage damage.py, the probe probe.py.

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

Usage sketch (the tests import the four modules as rg, im, dm, pb)::

    rg.require_registry()
    with rg.Registry(tmp_path / "reg") as reg:
        world = im.build_world(reg, seed=1, layout_dir=tmp_path / "layout")
        assert pb.probe(reg, world) == []
        dm.remove_blob_data(reg.v2, world.named["base_layer_amd64"])
        reg.restart()
        failures = pb.probe(reg, world)
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Mapping

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
