"""Deterministic registry storage trees for the scale benchmark, with injected damage and its ground truth.

A tree is several registries under one base (``<base>/<name>/docker/registry/v2``), shaped like production:
nested repositories, single-arch images and multi-arch indexes (OCI and Docker, some with attestations), layers
shared across repositories, tag history (``latest`` moves on every push, its index keeps every target), untagged
old revisions, in-progress uploads, and a pull-through cache whose indexes miss the platforms nobody pulled.

Damage of every finding kind is injected into dedicated repositories, and the generator records the findings
it must cause (``Tree.truth``: kind, registry, repository, digest, tag, parent digest). ``churn()`` applies ~1%
of change (pushes, new repositories, tag moves rewriting ``current/link`` in place, API deletes, a GC-like sweep,
uploads finishing and starting, one new piece of damage) and updates the truth.

Everything derives from ``random.Random`` seeded by (seed, registry, repository): the same scale and seed give
the same bytes, so ``Tree(base, write=False)`` rebuilds the model (and the truth) of a cached tree in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"

FRESH_UPLOAD = "2099-01-01T00:00:00.000000Z"  # never stale, whenever the cached tree is scanned
STALE_UPLOAD = "2020-01-01T00:00:00.000000Z"

REGISTRIES = (("private", "authoritative", 0.60), ("team", "authoritative", 0.25), ("dockerhub", "cache", 0.15))
DAMAGE_KINDS = (
    "orphan_layer_link", "orphan_index_child", "dangling_revision", "dangling_tag", "unlinked_blob_ref",
    "corrupt_link", "misdirected_link", "empty_blob", "truncated_manifest", "size_mismatch", "digest_mismatch",
    "gc_blocker", "stale_upload", "unreferenced_blob", "storage_anomaly",
)

Key = tuple[str, str, str | None, str | None, str | None, str | None]  # kind, registry, repo, digest, tag, parent


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Img:
    digest: str
    size: int
    kind: str  # image | index
    blobs: list[str]  # config + layers (image), children manifests (index)
    unique_layer: str | None = None
    config: str | None = None
    platform: dict[str, str] | None = None
    media_type: str = OCI_MANIFEST
    children: list[Img] = field(default_factory=list)
    raw: bytes = b""


@dataclass
class Repo:
    name: str
    images: list[Img] = field(default_factory=list)  # pushed revisions, oldest first
    tags: dict[str, str] = field(default_factory=dict)  # tag -> current digest
    tag_history: dict[str, set[str]] = field(default_factory=dict)  # tag -> digests with an index link
    uploads: list[str] = field(default_factory=list)
    clean: bool = True  # churn only touches clean repositories
    deleted: set[str] = field(default_factory=set)  # API-deleted revisions
    index_children: set[str] = field(default_factory=set)


@dataclass
class Reg:
    name: str
    role: str
    v2: str
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size of present data
    repos: dict[str, Repo] = field(default_factory=dict)
    base_layers: list[bytes] = field(default_factory=list)


class Tree:
    def __init__(self, base: str, write: bool = True) -> None:
        self.base = base
        self.write = write
        self.files = 0
        self.truth: dict[Key, str] = {}
        self.regs: dict[str, Reg] = {}
        for name, role, _w in REGISTRIES:
            v2 = os.path.join(base, name, "docker", "registry", "v2")
            self.regs[name] = Reg(name, role, v2)
            if write:
                os.makedirs(os.path.join(v2, "blobs", "sha256"), exist_ok=True)
                os.makedirs(os.path.join(v2, "repositories"), exist_ok=True)

    # -- file primitives --------------------------------------------------------------------------
    def _put(self, path: str, data: bytes) -> None:
        self.files += 1
        if not self.write:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _rewrite_in_place(self, path: str, data: bytes) -> None:
        """What the registry does to a tag's current/link: same inode, same directory entry."""
        if self.write:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _rmtree(self, path: str) -> None:
        if self.write:
            shutil.rmtree(path)

    def _unlink(self, path: str) -> None:
        if self.write:
            os.unlink(path)

    @staticmethod
    def blob_path(reg: Reg, digest: str) -> str:
        hex_ = digest.split(":", 1)[1]
        return os.path.join(reg.v2, "blobs", "sha256", hex_[:2], hex_, "data")

    @staticmethod
    def repo_dir(reg: Reg, repo: str) -> str:
        return os.path.join(reg.v2, "repositories", repo)

    def layer_link(self, reg: Reg, repo: str, digest: str) -> str:
        return os.path.join(self.repo_dir(reg, repo), "_layers", "sha256", digest[7:], "link")

    def revision_link(self, reg: Reg, repo: str, digest: str) -> str:
        return os.path.join(self.repo_dir(reg, repo), "_manifests", "revisions", "sha256", digest[7:], "link")

    def tag_current(self, reg: Reg, repo: str, tag: str) -> str:
        return os.path.join(self.repo_dir(reg, repo), "_manifests", "tags", tag, "current", "link")

    def tag_index(self, reg: Reg, repo: str, tag: str, digest: str) -> str:
        return os.path.join(self.repo_dir(reg, repo), "_manifests", "tags", tag, "index", "sha256", digest[7:], "link")

    def put_blob(self, reg: Reg, data: bytes, write: bool = True) -> str:
        d = sha256(data)
        if write and d not in reg.blobs:
            self._put(self.blob_path(reg, d), data)
            reg.blobs[d] = len(data)
        return d

    def link_layer(self, reg: Reg, repo: str, digest: str) -> None:
        self._put(self.layer_link(reg, repo, digest), digest.encode())

    def link_revision(self, reg: Reg, repo: str, digest: str) -> None:
        self._put(self.revision_link(reg, repo, digest), digest.encode())

    def new_repo(self, reg: Reg, name: str) -> Repo:
        r = Repo(name)
        reg.repos[name] = r
        if self.write:
            d = self.repo_dir(reg, name)
            os.makedirs(os.path.join(d, "_layers", "sha256"), exist_ok=True)
            os.makedirs(os.path.join(d, "_manifests", "revisions", "sha256"), exist_ok=True)
            os.makedirs(os.path.join(d, "_manifests", "tags"), exist_ok=True)
        return r

    # -- pushes -----------------------------------------------------------------------------------
    def push_image(self, reg: Reg, repo: Repo, rng: random.Random, platform: tuple[str, str] = ("linux", "amd64"),
                   fmt: str = "oci", write: bool = True, revision: bool = True) -> Img:
        """Config, one shared base layer, one unique layer, the manifest. ``write=False``: only the digests
        (a cache's index child that nobody pulled)."""
        base = rng.choice(reg.base_layers)
        unique = rng.randbytes(rng.randint(300, 1500))
        config = json.dumps({"architecture": platform[1], "os": platform[0], "nonce": rng.getrandbits(64),
                             "rootfs": {"type": "layers", "diff_ids": [sha256(base), sha256(unique)]}},
                            sort_keys=True).encode()
        cfg = self.put_blob(reg, config, write)
        lb = self.put_blob(reg, base, write)
        lu = self.put_blob(reg, unique, write)
        if write:
            for d in (cfg, lb, lu):
                self.link_layer(reg, repo.name, d)
        mt = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
        lt = OCI_LAYER if fmt == "oci" else DOCKER_LAYER
        doc: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, "digest": cfg,
                       "size": len(config)},
            "layers": [{"mediaType": lt, "digest": lb, "size": len(base)},
                       {"mediaType": lt, "digest": lu, "size": len(unique)}],
            "annotations": {"org.example.build": f"{rng.getrandbits(64):016x}"},
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        digest = self.put_blob(reg, raw, write)
        if write and revision:
            self.link_revision(reg, repo.name, digest)
        img = Img(digest, len(raw), "image", [cfg, lb, lu], lu, cfg,
                  {"architecture": platform[1], "os": platform[0]}, mt, raw=raw)
        return img

    def push_attestation(self, reg: Reg, repo: Repo, rng: random.Random, subject: str, write: bool = True) -> Img:
        statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": subject,
                                "nonce": rng.getrandbits(64)}).encode()
        st = self.put_blob(reg, statement, write)
        config = json.dumps({"architecture": "unknown", "os": "unknown",
                             "rootfs": {"type": "layers", "diff_ids": [st]}}).encode()
        cfg = self.put_blob(reg, config, write)
        if write:
            self.link_layer(reg, repo.name, st)
            self.link_layer(reg, repo.name, cfg)
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": len(config)},
               "layers": [{"mediaType": IN_TOTO, "digest": st, "size": len(statement)}]}
        raw = json.dumps(doc, separators=(",", ":")).encode()
        digest = self.put_blob(reg, raw, write)
        if write:
            self.link_revision(reg, repo.name, digest)
        return Img(digest, len(raw), "image", [cfg, st], st, cfg, {"architecture": "unknown", "os": "unknown"},
                   OCI_MANIFEST, raw=raw)

    def push_index(self, reg: Reg, repo: Repo, rng: random.Random, fmt: str, attestations: bool) -> Img:
        children: list[Img] = []
        entries: list[dict[str, Any]] = []
        partial = reg.role == "cache"
        for i, plat in enumerate((("linux", "amd64"), ("linux", "arm64"))):
            pulled = not partial or i == 0  # a cache holds only what was pulled: amd64
            img = self.push_image(reg, repo, rng, plat, fmt, write=pulled)
            children.append(img)
            entries.append({"mediaType": img.media_type, "digest": img.digest, "size": img.size,
                            "platform": img.platform})
            if attestations and fmt == "oci":
                att = self.push_attestation(reg, repo, rng, img.digest, write=pulled)
                children.append(att)
                entries.append({"mediaType": OCI_MANIFEST, "digest": att.digest, "size": att.size,
                                "platform": att.platform,
                                "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
        mt = OCI_INDEX if fmt == "oci" else DOCKER_LIST
        raw = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": entries}, separators=(",", ":")).encode()
        digest = self.put_blob(reg, raw)
        self.link_revision(reg, repo.name, digest)
        idx = Img(digest, len(raw), "index", [c.digest for c in children], media_type=mt, children=children, raw=raw)
        for c in children:
            repo.index_children.add(c.digest)
            if c.digest not in reg.blobs:  # never pulled into the cache
                self.expect("orphan_index_child", reg, repo.name, c.digest, parent=digest)
        return idx

    def tag(self, reg: Reg, repo: Repo, tag: str, digest: str) -> None:
        cur = self.tag_current(reg, repo.name, tag)
        if tag in repo.tags:
            self._rewrite_in_place(cur, digest.encode())
            self.files += 0
        else:
            self._put(cur, digest.encode())
        repo.tags[tag] = digest
        hist = repo.tag_history.setdefault(tag, set())
        if digest not in hist:
            hist.add(digest)
            self._put(self.tag_index(reg, repo.name, tag, digest), digest.encode())

    def push(self, reg: Reg, repo: Repo, rng: random.Random, k: int) -> Img:
        """The k-th push into a repository: an index (40%) or an image; ``latest`` always moves to it, every
        other push also gets a version tag (the others become untagged when ``latest`` moves on)."""
        if rng.random() < 0.4:
            fmt = "oci" if rng.random() < 0.7 else "docker"
            img = self.push_index(reg, repo, rng, fmt, attestations=rng.random() < 0.5)
        else:
            img = self.push_image(reg, repo, rng, ("linux", "amd64"), "oci" if rng.random() < 0.7 else "docker")
        repo.images.append(img)
        if k % 2 == 0:
            self.tag(reg, repo, f"v{k}", img.digest)
        self.tag(reg, repo, "latest", img.digest)
        return img

    def upload(self, reg: Reg, repo: Repo, uuid: str, started: str) -> None:
        d = os.path.join(self.repo_dir(reg, repo.name), "_uploads", uuid)
        self._put(os.path.join(d, "data"), b"\0" * 64)
        self._put(os.path.join(d, "startedat"), started.encode())
        repo.uploads.append(uuid)

    # -- truth ------------------------------------------------------------------------------------
    def expect(self, kind: str, reg: Reg, repo: str | None, digest: str | None, tag: str | None = None,
               parent: str | None = None, why: str = "") -> None:
        self.truth[(kind, reg.name, repo, digest, tag, parent)] = why or kind

    def unexpect(self, kind: str, reg: Reg, repo: str | None, digest: str | None, tag: str | None = None,
                 parent: str | None = None) -> None:
        self.truth.pop((kind, reg.name, repo, digest, tag, parent), None)

    # -- damage: one dedicated repository per injection; each records every finding it causes --------
    def damage(self, kind: str, reg: Reg, n: int, rng: random.Random) -> None:
        if kind == "unreferenced_blob":
            d = self.put_blob(reg, b"orphaned upload " + rng.randbytes(200))
            self.expect("unreferenced_blob", reg, None, d)
            return
        name = f"damaged/{kind.replace('_', '-')}-{n}"
        if kind == "storage_anomaly":
            path = os.path.join(reg.v2, "repositories", "damaged", f"_junk-{n}")
            if self.write:
                os.makedirs(path, exist_ok=True)
            self.expect("storage_anomaly", reg, None, None, why=f"repositories/damaged/_junk-{n}")
            return
        repo = self.new_repo(reg, name)
        repo.clean = False
        if kind == "orphan_index_child":
            idx = self.push_index(reg, repo, rng, "oci", attestations=True)
            repo.images.append(idx)
            self.tag(reg, repo, "v1", idx.digest)
            child = idx.children[0]
            self._rmtree(os.path.dirname(self.revision_link(reg, name, child.digest)))  # GC --delete-untagged
            self.expect("orphan_index_child", reg, name, child.digest, parent=idx.digest)
            self.expect("unreferenced_blob", reg, None, child.digest)  # no link names the child's data now
            return
        tagged = kind not in ("dangling_revision", "truncated_manifest", "digest_mismatch")
        img = self.push_image(reg, repo, rng)
        repo.images.append(img)
        if tagged:
            self.tag(reg, repo, "v1", img.digest)
        self.apply_image_damage(kind, reg, repo, img, rng)

    def apply_image_damage(self, kind: str, reg: Reg, repo: Repo, img: Img, rng: random.Random) -> None:
        name = repo.name
        lu = img.unique_layer
        assert lu is not None and img.config is not None
        if kind == "orphan_layer_link":
            self._rmtree(os.path.dirname(self.blob_path(reg, lu)))
            reg.blobs.pop(lu, None)
            self.expect("orphan_layer_link", reg, name, lu)
        elif kind == "dangling_revision":
            self._rmtree(os.path.dirname(self.blob_path(reg, img.digest)))
            reg.blobs.pop(img.digest, None)
            self.expect("dangling_revision", reg, name, img.digest)
        elif kind == "dangling_tag":
            self._unlink(self.tag_current(reg, name, "v1"))
            self.expect("dangling_tag", reg, name, None, tag="v1")
        elif kind == "unlinked_blob_ref":
            self._rmtree(os.path.dirname(self.layer_link(reg, name, lu)))
            self.expect("unlinked_blob_ref", reg, name, lu, parent=img.digest)
            self.expect("unreferenced_blob", reg, None, lu)
        elif kind == "corrupt_link":
            path = self.layer_link(reg, name, lu)
            self._unlink(path)
            self._put(path, lu.encode() + b"\n")
            self.files -= 1
            self.expect("corrupt_link", reg, name, lu)  # the layer's own finding; no unlinked_blob_ref too
        elif kind == "misdirected_link":
            path = self.layer_link(reg, name, lu)
            self._unlink(path)
            self._put(path, img.config.encode())
            self.files -= 1
            self.expect("misdirected_link", reg, name, lu)
        elif kind in ("empty_blob", "size_mismatch"):
            path = self.blob_path(reg, lu)
            size = 0 if kind == "empty_blob" else reg.blobs[lu] // 2
            if self.write:
                with open(path, "r+b") as fh:
                    fh.truncate(size)
            reg.blobs[lu] = size
            self.expect(kind, reg, name, lu)  # per linking repository; empty data is not also a size mismatch
        elif kind == "truncated_manifest":
            path = self.blob_path(reg, img.digest)
            if self.write:
                with open(path, "r+b") as fh:
                    fh.truncate(img.size // 2)
            reg.blobs[img.digest] = img.size // 2
            self.expect("truncated_manifest", reg, name, img.digest)
            self.expect("gc_blocker", reg, name, img.digest)
        elif kind == "digest_mismatch":
            # same size, one character of the build annotation changed: valid JSON, wrong bytes
            raw = bytearray(img.raw)
            pos = raw.rindex(b'"}}') - 1
            raw[pos] = ord("0") if raw[pos] != ord("0") else ord("1")
            if self.write:
                with open(self.blob_path(reg, img.digest), "r+b") as fh:
                    fh.write(bytes(raw))
            self.expect("digest_mismatch", reg, name, img.digest)
        elif kind == "gc_blocker":
            self._rmtree(os.path.join(self.repo_dir(reg, name), "_manifests", "tags"))
            repo.tags.clear()
            self.expect("gc_blocker", reg, name, None)
        elif kind == "stale_upload":
            self.upload(reg, repo, f"{rng.getrandbits(128):032x}", STALE_UPLOAD)
            self.expect("stale_upload", reg, name, None)
        else:
            raise ValueError(kind)


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random(f"{seed}/" + "/".join(map(str, parts)))


def generate(base: str, target_files: int, seed: int = 1, write: bool = True) -> Tree:
    """About ``target_files`` files; damage of every kind, ``max(2, repos // 400)`` injections per kind."""
    t = Tree(base, write)
    for reg in t.regs.values():
        r = _rng(seed, reg.name, "base")
        reg.base_layers = [r.randbytes(r.randint(500, 3000)) for _ in range(40)]
    order = _rng(seed, "order")
    weights = [w for _n, _r, w in REGISTRIES]
    names = [n for n, _r, _w in REGISTRIES]
    i = 0
    while t.files < target_files:
        reg = t.regs[order.choices(names, weights)[0]]
        rng = _rng(seed, reg.name, i)
        team = f"team{i % 40}"
        parent = [n for n in reg.repos if n.startswith(team + "/") and "/" not in n[len(team) + 1:]]
        if i % 12 == 5 and parent:
            name = parent[-1] + "/sub"  # nested inside another repository's directory
            if name in reg.repos:
                name = f"{team}/app{i}"
        else:
            name = f"{team}/app{i}"
        repo = t.new_repo(reg, name)
        for k in range(rng.randint(3, 8)):
            t.push(reg, repo, rng, k)
        if i % 25 == 3:
            t.upload(reg, repo, f"{rng.getrandbits(128):032x}", FRESH_UPLOAD)
        i += 1
    n_repos = i
    per_kind = max(2, n_repos // 400)
    for kind in DAMAGE_KINDS:
        for n in range(per_kind):
            reg = t.regs["private" if n % 3 != 2 else "team"]
            t.damage(kind, reg, n, _rng(seed, "damage", kind, n))
    return t


# ---------------------------------------------------------------------------------------------
# Churn: about 1% of the files change, as a night of a busy registry would


@dataclass
class Op:
    what: str
    args: tuple[Any, ...]


def plan_churn(t: Tree, seed: int, round_: int) -> list[Op]:
    """Decide the changes (model only, nothing written): ``apply_churn`` then performs them. The plan is made
    before any scan so that files rewritten in place can have their hard links broken first."""
    rng = _rng(seed, "churn", round_)
    budget = max(20, t.files // 100)
    ops: list[Op] = []
    clean = [(reg, repo) for reg in t.regs.values() if reg.role != "cache" for repo in reg.repos.values()
             if repo.clean]
    clean.sort(key=lambda x: (x[0].name, x[1].name))
    spent = 0
    while spent < budget:
        n_before = len(ops)
        r = rng.random()
        reg, repo = clean[rng.randrange(len(clean))]
        if r < 0.35:  # a push into an existing repository
            ops.append(Op("push", (reg.name, repo.name, rng.getrandbits(32))))
            spent += 12
        elif r < 0.40:  # a new repository
            ops.append(Op("new_repo", (reg.name, f"new{round_}/app{len(ops)}", rng.getrandbits(32))))
            spent += 40
        elif r < 0.65:  # latest moves back to an older revision (current/link rewritten in place)
            live = [img for img in repo.images if img.digest not in repo.deleted]
            if len(live) > 1 and "latest" in repo.tags:
                target = live[rng.randrange(len(live) - 1)]
                ops.append(Op("tag_move", (reg.name, repo.name, "latest", target.digest)))
                spent += 2
        elif r < 0.85:  # API DELETE of an untagged single-arch revision: its link file goes, the directory stays
            tagged = set(repo.tags.values())
            cands = [img for img in repo.images if img.kind == "image" and img.digest not in tagged
                     and img.digest not in repo.deleted and img.digest not in repo.index_children]
            if cands:
                ops.append(Op("api_delete", (reg.name, repo.name, cands[0].digest)))
                spent += 1
        elif r < 0.95:  # uploads finish and start
            if repo.uploads:
                ops.append(Op("upload_done", (reg.name, repo.name, repo.uploads[0])))
            else:
                ops.append(Op("upload_start", (reg.name, repo.name, f"{rng.getrandbits(128):032x}")))
            spent += 2
        else:
            ops.append(Op("sweep", (reg.name,)))
            spent += 5
        if len(ops) > n_before:
            _apply(t, ops[-1], dry=True)
    ops.append(Op("damage", ("private", f"churn{round_}", rng.getrandbits(32))))
    _apply(t, ops[-1], dry=True)
    return ops


def written_paths(ops: list[Op]) -> list[str]:
    """Files the plan writes or rewrites: a benchmark working on a hard-linked copy of the cached tree gives
    those that exist their own inode first, so that writing them in place never changes the cache."""
    out = []
    for op in ops:
        for action in _PLANNED.get(id(op), []):
            if isinstance(action, tuple) and action[0] in ("put", "rewrite"):
                out.append(action[1])
    return out


def apply_churn(t: Tree, ops: list[Op]) -> None:
    for op in ops:
        _apply(t, op, dry=False)


def _apply(t: Tree, op: Op, dry: bool) -> None:
    """Dry: update the model (and the truth) only. Not dry: write the files (the model was updated when the
    plan was made)."""
    saved = t.write
    t.write = not dry
    try:
        if dry:
            _model_and_files(t, op)
        else:
            _files_only(t, op)
    finally:
        t.write = saved


_PLANNED: dict[int, Any] = {}


def _model_and_files(t: Tree, op: Op) -> None:
    # Run the operation against a snapshot-free model: record what must be written for the real pass.
    reg = t.regs[op.args[0]]
    if op.what == "push":
        repo = reg.repos[op.args[1]]
        rng = random.Random(op.args[2])
        rec = _Recorder(t)
        with rec:
            t.push(reg, repo, rng, len(repo.images))
        _PLANNED[id(op)] = rec.actions
    elif op.what == "new_repo":
        rng = random.Random(op.args[2])
        rec = _Recorder(t)
        with rec:
            repo = t.new_repo(reg, op.args[1])
            for k in range(3):
                t.push(reg, repo, rng, k)
        rec.actions.insert(0, ("mkrepo", op.args[1]))
        _PLANNED[id(op)] = rec.actions
    elif op.what == "tag_move":
        repo = reg.repos[op.args[1]]
        rec = _Recorder(t)
        with rec:
            t.tag(reg, repo, op.args[2], op.args[3])
        _PLANNED[id(op)] = rec.actions
    elif op.what == "api_delete":
        repo = reg.repos[op.args[1]]
        digest = op.args[2]
        repo.deleted.add(digest)
        # the latest tag's index still names it, so its data stays referenced: no finding
    elif op.what == "upload_done":
        repo = reg.repos[op.args[1]]
        repo.uploads.remove(op.args[2])
    elif op.what == "upload_start":
        repo = reg.repos[op.args[1]]
        rec = _Recorder(t)
        with rec:
            t.upload(reg, repo, op.args[2], FRESH_UPLOAD)
        _PLANNED[id(op)] = rec.actions
    elif op.what == "sweep":
        # GC-like sweep of the data of blobs nothing names (the injected unreferenced blobs of this registry)
        gone = sorted(k[3] for k in t.truth if k[0] == "unreferenced_blob" and k[1] == reg.name and k[2] is None
                      and t.truth[k] == "unreferenced_blob")
        for d in gone:
            t.unexpect("unreferenced_blob", reg, None, d)
            reg.blobs.pop(d, None)
        _PLANNED[id(op)] = gone
    elif op.what == "damage":
        rng = random.Random(op.args[2])
        rec = _Recorder(t)
        with rec:
            t.damage("orphan_layer_link", reg, op.args[1], rng)  # type: ignore[arg-type]
        _PLANNED[id(op)] = rec.actions


def _files_only(t: Tree, op: Op) -> None:
    reg = t.regs[op.args[0]]
    if op.what == "api_delete":
        os.unlink(t.revision_link(reg, op.args[1], op.args[2]))
    elif op.what == "upload_done":
        shutil.rmtree(os.path.join(t.repo_dir(reg, op.args[1]), "_uploads", op.args[2]))
    elif op.what == "sweep":
        for d in _PLANNED[id(op)]:
            shutil.rmtree(os.path.dirname(t.blob_path(reg, d)), ignore_errors=True)
    else:
        for action in _PLANNED[id(op)]:
            _replay(t, reg, action)


def _replay(t: Tree, reg: Reg, action: tuple[Any, ...]) -> None:
    what = action[0]
    if what == "mkrepo":
        d = t.repo_dir(reg, action[1])
        os.makedirs(os.path.join(d, "_layers", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(d, "_manifests", "revisions", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(d, "_manifests", "tags"), exist_ok=True)
    elif what == "put":
        t.write = True
        t._put(action[1], action[2])
        t.files -= 1
    elif what == "rewrite":
        t.write = True
        t._rewrite_in_place(action[1], action[2])
    elif what == "rmtree":
        shutil.rmtree(action[1])
    elif what == "unlink":
        os.unlink(action[1])


class _Recorder:
    """Capture the file actions of model operations run dry, to replay them later."""

    def __init__(self, t: Tree) -> None:
        self.t = t
        self.actions: list[tuple[Any, ...]] = []

    def __enter__(self) -> _Recorder:
        t, acts = self.t, self.actions
        self._saved = (t._put, t._rewrite_in_place, t._rmtree, t._unlink)

        def put(path: str, data: bytes) -> None:
            t.files += 1
            acts.append(("put", path, data))

        t._put = put  # type: ignore[method-assign]
        t._rewrite_in_place = lambda p, d: acts.append(("rewrite", p, d))  # type: ignore[method-assign]
        t._rmtree = lambda p: acts.append(("rmtree", p))  # type: ignore[method-assign]
        t._unlink = lambda p: acts.append(("unlink", p))  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.t._put, self.t._rewrite_in_place, self.t._rmtree, self.t._unlink = self._saved  # type: ignore[method-assign]
