"""Predict what registry 2.8's ``garbage-collect [--delete-untagged]`` would do, from the database alone.

The model follows distribution 2.8's ``MarkAndSweep`` (``registry/storage/garbagecollect.go``) and the stores it
goes through (``linkedblobstore.go``, ``tagstore.go``, ``manifeststore.go``, ``vacuum.go``):

mark
    Repositories are the directories holding ``_layers``, walked in sorted path order. In each, every ``link``
    file under ``_manifests/revisions`` is read: bytes that are not a digest abort the whole run. The digest
    read (T) is then looked up as the linked blob statter does (the revision link for T, else the ``_layers``
    link for T, then T's blob data); when that finds nothing the revision is *skipped silently*, so nothing it
    names is marked. With ``--delete-untagged`` a manifest that no tag's ``current/link`` names is scheduled
    for deletion and not marked (that includes every index child without a tag of its own); looking the tags
    up aborts on a tag link that is not a digest, and on a repository without ``_manifests/tags``. Otherwise
    T is marked, its data is parsed (invalid JSON aborts) and its *direct* references are marked: config and
    layers of an image, the children of an index (not the children's own blobs).
sweep
    Each scheduled manifest loses its tag index entries (``tags/*/index/<T>``) and its revision directory
    (a revision directory that is not there stops the run with exit 1, after what was already removed). Then
    every blob whose digest is not marked loses its directory. ``_layers`` links are never touched.

Breakage is found by evaluating the registry's serving rules on the current state and on the predicted
post-GC state: a pull that works now and fails afterwards is predicted breakage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from regindex import output
from regindex.errors import ConfigError
from regindex.layout import (
    LinkKind,
    is_empty_digest,
    link_path,
    split_digest,
    valid_repo_component,
)

# Outcomes of a garbage-collect run.
COMPLETES = "completes"  # exit 0
ABORTS = "aborts"  # exit 1 in the mark phase: nothing is deleted
SWEEP_ERROR = "sweep_error"  # exit 1 in the sweep: the revision directories removed before the error stay removed

# What a pull asks for (the same four requests a client makes).
MANIFEST_DIGEST = "manifest_digest"  # GET /v2/<repo>/manifests/<digest>
MANIFEST_TAG = "manifest_tag"  # GET /v2/<repo>/manifests/<tag>
BLOB = "blob"  # GET /v2/<repo>/blobs/<digest>
PULL_TAG = "pull_tag"  # the whole image behind a tag: manifest, children, configs and layers

_SERVED_KINDS = frozenset({"image", "index", "schema1"})
_MARKED_ROLES = frozenset({"config", "layer", "child"})  # 2.8 knows no OCI subject
MAX_DEPTH = 8  # nested indexes deeper than this are treated as unpullable (and cycles end)

# distribution 2.8's reference grammar for a repository name: an optional domain, then path components.
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?$"
)
NAME_TOTAL_LENGTH_MAX = 255


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Deletion:
    """Something ``garbage-collect`` removes. ``kind``: revision, tag_index (directories) or blob."""

    kind: str
    repository: str | None
    digest: str
    tag: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Breakage:
    """A request that works now and fails after the run. ``reference`` is a digest or a tag."""

    kind: str
    repository: str
    reference: str
    why: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A revision the mark phase passes over silently: nothing it names is marked."""

    repository: str
    digest: str
    why: str


@dataclass
class Prediction:
    registry: str
    delete_untagged: bool
    outcome: str = COMPLETES
    reasons: list[str] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    breakage: list[Breakage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    marked: int = 0  # digests in the mark set ("N blobs marked" in garbage-collect's output)
    scheduled: int = 0  # manifests scheduled for deletion ("N manifests eligible for deletion")

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome == COMPLETES else 1

    @property
    def bytes_reclaimed(self) -> int:
        return sum(d.size or 0 for d in self.deletions if d.kind == "blob")

    def of_kind(self, kind: str) -> list[Deletion]:
        return [d for d in self.deletions if d.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "command": _command(self.delete_untagged),
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "reasons": list(self.reasons),
            "marked": self.marked,
            "scheduled": self.scheduled,
            "bytes_reclaimed": self.bytes_reclaimed,
            "revisions": [{"repository": d.repository, "digest": d.digest} for d in self.of_kind("revision")],
            "tag_index_entries": [
                {"repository": d.repository, "tag": d.tag, "digest": d.digest} for d in self.of_kind("tag_index")
            ],
            "blobs": [{"digest": d.digest, "size": d.size} for d in self.of_kind("blob")],
            "breakage": [
                {"kind": b.kind, "repository": b.repository, "reference": b.reference, "why": b.why}
                for b in self.breakage
            ],
            "skipped": [{"repository": s.repository, "digest": s.digest, "why": s.why} for s in self.skipped],
            "warnings": list(self.warnings),
        }


def _command(delete_untagged: bool) -> str:
    return "garbage-collect --delete-untagged" if delete_untagged else "garbage-collect"


# ---------------------------------------------------------------------------------------------
# Inventory of one registry, as loaded from the database


@dataclass(frozen=True, slots=True)
class _Link:
    state: str
    target: str | None


@dataclass(frozen=True, slots=True)
class _Manifest:
    kind: str
    media_type: str | None
    parse_error: str | None
    refs: tuple[tuple[str, str, bool], ...]  # (role, digest, foreign)

    @property
    def servable(self) -> bool:
        """The registry answers a GET with this manifest (its data parses as a manifest it knows)."""
        return self.kind in _SERVED_KINDS and self.parse_error is None

    def get_error(self) -> str | None:
        """Why 2.8's ``manifestService.Get`` fails on this data (and garbage-collect aborts), if it does."""
        if self.kind == "invalid":
            return self.parse_error or "not JSON"
        if self.kind == "unknown":  # an unknown mediaType or a schemaVersion other than 1 and 2
            return self.parse_error or f"unrecognized manifest content type {self.media_type}"
        if self.kind in ("image", "index") and self.parse_error:
            return self.parse_error
        return None


@dataclass
class _Repo:
    name: str
    has_tags_dir: bool
    revisions: dict[str, _Link] = field(default_factory=dict)  # path digest -> link (state absent included)
    layers: dict[str, _Link] = field(default_factory=dict)
    tags: dict[str, _Link] = field(default_factory=dict)  # tag -> current link (absent: no current/link)
    tag_index: set[tuple[str, str]] = field(default_factory=set)  # (tag, digest) directories


@dataclass
class _Inventory:
    registry: str
    repos: dict[str, _Repo]
    blobs: dict[str, int]  # digest -> size
    manifests: dict[tuple[str, int], _Manifest]
    anomalies: list[tuple[str, str]]
    last_scan_failed: bool = False

    def manifest_data(self, digest: str) -> _Manifest | None:
        size = self.blobs.get(digest)
        return None if size is None else self.manifests.get((digest, size))


def _load(conn: Connection, registry_id: int, name: str) -> _Inventory:
    p = {"r": registry_id}
    repos: dict[str, _Repo] = {}
    for row in conn.execute(
        text("SELECT name, has_tags_dir FROM repositories WHERE registry_id = :r AND gone_run IS NULL"), p
    ):
        repos[row.name] = _Repo(row.name, bool(row.has_tags_dir))
    for row in conn.execute(
        text("""SELECT repository, kind, tag, path_digest, target_digest, state FROM links
                WHERE registry_id = :r AND gone_run IS NULL"""),
        p,
    ):
        repo = repos.get(row.repository)
        if repo is None:
            continue
        link = _Link(row.state, row.target_digest)
        if row.kind == LinkKind.REVISION.value:
            repo.revisions[row.path_digest] = link
        elif row.kind == LinkKind.LAYER.value:
            repo.layers[row.path_digest] = link
        elif row.kind == LinkKind.TAG_CURRENT.value:
            repo.tags[row.tag] = link
        elif row.kind == LinkKind.TAG_INDEX.value:
            repo.tag_index.add((row.tag, row.path_digest))
    blobs = {
        row.digest: int(row.size)
        for row in conn.execute(
            text("SELECT digest, size FROM blobs WHERE registry_id = :r AND gone_run IS NULL"), p
        )
    }
    on_disk = """FROM manifests m JOIN blobs b ON b.digest = m.digest AND b.size = m.size
                 WHERE b.registry_id = :r AND b.gone_run IS NULL"""
    refs: dict[int, list[tuple[str, str, bool]]] = {}
    for row in conn.execute(
        text(f"""SELECT r.manifest_id, r.role, r.digest, r.is_foreign FROM manifest_refs r
                 JOIN (SELECT m.id {on_disk}) d ON d.id = r.manifest_id
                 ORDER BY r.manifest_id, r.id"""),
        p,
    ):
        refs.setdefault(row.manifest_id, []).append((row.role, row.digest, bool(row.is_foreign)))
    manifests = {
        (row.digest, int(row.size)): _Manifest(row.kind, row.media_type, row.parse_error, tuple(refs.get(row.id, ())))
        for row in conn.execute(
            text(f"SELECT m.id, m.digest, m.size, m.kind, m.media_type, m.parse_error {on_disk}"), p
        )
    }
    # Data that is not its digest's content and does not parse (truncated, overwritten): its evidence is in
    # blob_verifications, never in manifests (whose row belongs to the genuine content). 2.8 reads it as such.
    for row in conn.execute(
        text("""SELECT v.digest, v.size, v.parse_error FROM blob_verifications v
                JOIN blobs b ON b.registry_id = v.registry_id AND b.digest = v.digest AND b.size = v.size
                WHERE v.registry_id = :r AND b.gone_run IS NULL AND v.computed_digest <> v.digest
                  AND v.parse_error IS NOT NULL"""),
        p,
    ):
        manifests[(row.digest, int(row.size))] = _Manifest("invalid", None, row.parse_error, ())
    anomalies = [
        (row.path, row.reason)
        for row in conn.execute(
            text("SELECT path, reason FROM anomalies WHERE registry_id = :r AND gone_run IS NULL ORDER BY path"), p
        )
    ]
    # The scan after this registry's last complete one failed, for it alone or outright (a failed run records
    # no per-registry row): the inventory may be stale.
    failed_since = conn.execute(
        text("""SELECT COUNT(*) FROM runs r WHERE r.id > (SELECT last_scanned_run FROM registries WHERE id = :r)
                AND (r.status = 'failed' OR EXISTS (SELECT 1 FROM run_registries x WHERE x.run_id = r.id
                                                    AND x.registry_id = :r AND x.status = 'failed'))"""),
        p,
    ).scalar()
    return _Inventory(name, repos, blobs, manifests, anomalies, last_scan_failed=bool(failed_since))


# ---------------------------------------------------------------------------------------------
# Mark and sweep


def _walk_key(repo: str) -> tuple[str, ...]:
    """The order 2.8 meets repositories: a sorted walk that reaches ``<repo>/_layers`` among its siblings."""
    return (*repo.split("/"), "_layers")


def _digest_key(digest: str) -> tuple[str, str]:
    alg, _, hex_ = digest.partition(":")
    return alg, hex_


def valid_repository_name(name: str) -> bool:
    """``reference.WithName`` of distribution 2.8: garbage-collect aborts on a repository it refuses."""
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        return False
    parts = name.split("/")
    if len(parts) > 1 and not valid_repo_component(parts[0]) and _DOMAIN_RE.match(parts[0]):
        parts = parts[1:]
    return all(valid_repo_component(p) for p in parts)


def _rel(kind: LinkKind, repo: str, digest: str | None = None, tag: str | None = None) -> str:
    return str(link_path(kind, repo, digest, tag))


class _Marker:
    """The mark phase over one registry's inventory."""

    def __init__(self, inv: _Inventory, delete_untagged: bool) -> None:
        self.inv = inv
        self.delete_untagged = delete_untagged
        self.marked: set[str] = set()
        self.scheduled: list[tuple[str, str]] = []  # (repository, digest), in the order GC schedules them
        self.blockers: dict[str, None] = {}  # ordered set of reasons
        self.skipped: list[Skipped] = []
        self.unparsed: list[str] = []

    def block(self, reason: str) -> None:
        self.blockers.setdefault(reason, None)

    def run(self) -> None:
        for name in sorted(self.inv.repos, key=_walk_key):
            if not valid_repository_name(name):
                self.block(f"failed to parse repo name {name!r}")
                continue
            self.repository(self.inv.repos[name])

    def repository(self, repo: _Repo) -> None:
        for path_digest in sorted(repo.revisions, key=_digest_key):
            link = repo.revisions[path_digest]
            if link.state == "absent":
                continue  # a revision directory without its link file: the walk finds nothing to read
            if link.state != "ok" or link.target is None:
                self.block(f"{_rel(LinkKind.REVISION, repo.name, path_digest)}: revision link is {link.state}")
                continue
            self.revision(repo, path_digest, link.target)

    def _stat(self, repo: _Repo, digest: str) -> tuple[str | None, str | None]:
        """The linked blob statter of the manifest store: (data digest or None when unknown, blocker)."""
        for kind, links in ((LinkKind.REVISION, repo.revisions), (LinkKind.LAYER, repo.layers)):
            link = links.get(digest)
            if link is None or link.state == "absent":
                continue
            if link.state != "ok" or link.target is None:
                return None, f"{_rel(kind, repo.name, digest)}: link is {link.state}"
            return (link.target if link.target in self.inv.blobs else None), None
        return None, None

    def revision(self, repo: _Repo, path_digest: str, digest: str) -> None:
        data, blocker = self._stat(repo, digest)
        if blocker:
            self.block(blocker)
            return
        if data is None:
            why = "manifest data missing" if digest in repo.revisions or digest in repo.layers else (
                "the revision link names a digest this repository does not link")
            self.skipped.append(Skipped(repo.name, path_digest, why))
            return
        if self.delete_untagged and not self.tagged(repo, digest):
            if not repo.has_tags_dir:
                self.block(f"repositories/{repo.name}/_manifests/tags is missing: failed to retrieve tags")
                return
            self.scheduled.append((repo.name, digest))
            return
        self.marked.add(digest)
        manifest = self.inv.manifest_data(data)
        if manifest is None:
            self.unparsed.append(f"{repo.name}@{data}")
            return
        error = manifest.get_error()
        if error:
            self.block(f"{repo.name}: failed to retrieve manifest {digest}: {error}")
            return
        for role, ref, _foreign in manifest.refs:
            if role in _MARKED_ROLES:
                self.marked.add(ref)

    def tagged(self, repo: _Repo, digest: str) -> bool:
        """``Tags().Lookup``: the tags whose current link names ``digest``; a link that is not a digest aborts."""
        found = False
        for tag in sorted(repo.tags):
            link = repo.tags[tag]
            if link.state == "absent":
                continue
            if link.state != "ok":
                self.block(f"{_rel(LinkKind.TAG_CURRENT, repo.name, tag=tag)}: tag link is {link.state}")
                continue
            found = found or link.target == digest
        return found


def _sweep(inv: _Inventory, marker: _Marker, pred: Prediction) -> None:
    existing = {(r.name, d) for r in inv.repos.values() for d in r.revisions}
    index_gone: set[tuple[str, str, str]] = set()
    for repo_name, digest in marker.scheduled:
        repo = inv.repos[repo_name]
        for tag in sorted(repo.tags):  # every tag of the repository: its index entry for the digest goes
            if (tag, digest) in repo.tag_index and (repo_name, tag, digest) not in index_gone:
                index_gone.add((repo_name, tag, digest))
                pred.deletions.append(Deletion("tag_index", repo_name, digest, tag=tag))
        if (repo_name, digest) not in existing:
            pred.outcome = SWEEP_ERROR
            pred.reasons.append(
                f"failed to delete manifest {digest}: repositories/{repo_name}/_manifests/revisions/"
                f"{digest.replace(':', '/', 1)} not found (blobs are not swept)"
            )
            return
        existing.discard((repo_name, digest))
        pred.deletions.append(Deletion("revision", repo_name, digest))
    for digest in sorted(inv.blobs, key=_digest_key):
        if digest not in marker.marked:
            pred.deletions.append(Deletion("blob", None, digest, size=inv.blobs[digest]))


# ---------------------------------------------------------------------------------------------
# Serving rules (what a pull needs), evaluated on a state


@dataclass
class _State:
    inv: _Inventory
    gone_revisions: set[tuple[str, str]] = field(default_factory=set)
    gone_blobs: set[str] = field(default_factory=set)

    def data(self, digest: str) -> int | None:
        return None if digest in self.gone_blobs else self.inv.blobs.get(digest)

    def revision(self, repo: _Repo, digest: str) -> _Link | None:
        if (repo.name, digest) in self.gone_revisions:
            return None
        link = repo.revisions.get(digest)
        return None if link is None or link.state == "absent" else link


def _same_content(requested: str, target: str) -> bool:
    # a link naming another digest of the same algorithm serves other bytes; across algorithms it is an alias
    return requested == target or split_digest(requested)[0] != split_digest(target)[0]


def _missing(what: str, digest: str, target: str, swept: set[str]) -> str:
    name = what if target == digest else f"{what} {target}"
    return f"{name} swept" if target in swept else f"{name} missing"


def _link_problem(link: _Link, via: str, digest: str) -> str | None:
    """Why a link present on disk does not lead to ``digest``'s content (None when it does)."""
    if link.state != "ok" or link.target is None:
        return f"{via} link is {link.state}"
    if not _same_content(digest, link.target):
        return f"{via} link names {link.target}"
    return None


class _Server:
    """Why a request fails on a state (None when it works), memoised."""

    def __init__(self, state: _State) -> None:
        self.s = state
        self.memo: dict[tuple[str, str, str], str | None] = {}

    def manifest(self, repo: _Repo, digest: str) -> str | None:
        key = (MANIFEST_DIGEST, repo.name, digest)
        if key not in self.memo:
            self.memo[key] = self._manifest(repo, digest)
        return self.memo[key]

    def _manifest(self, repo: _Repo, digest: str) -> str | None:
        link, via = self.s.revision(repo, digest), "revision"
        if link is None:  # no revision link file: the registry falls back to the _layers link
            layer = repo.layers.get(digest)
            link, via = (None if layer is None or layer.state == "absent" else layer), "_layers"
        if link is None:
            gone = (repo.name, digest) in self.s.gone_revisions
            return "revision directory removed" if gone else "no revision link"
        problem = _link_problem(link, via, digest)
        if problem or link.target is None:
            return problem
        size = self.s.data(link.target)
        if size is None:
            return _missing("manifest data", digest, link.target, self.s.gone_blobs)
        m = self.s.inv.manifests.get((link.target, size))
        if m is None or not m.servable:
            return "manifest data does not parse"
        return None

    def blob(self, repo: _Repo, digest: str) -> str | None:
        link = repo.layers.get(digest)
        if link is None or link.state == "absent":
            return "no _layers link"
        problem = _link_problem(link, "_layers", digest)
        if problem or link.target is None:
            return problem
        size = self.s.data(link.target)
        if size is None:
            return _missing("blob data", digest, link.target, self.s.gone_blobs)
        if size == 0 and not is_empty_digest(link.target):
            return "blob data is empty"
        return None

    def tag(self, repo: _Repo, tag: str) -> str | None:
        link = repo.tags.get(tag)
        if link is None or link.state == "absent":
            return "no current link"
        if link.state != "ok" or link.target is None:
            return f"current link is {link.state}"
        problem = self.manifest(repo, link.target)
        return None if problem is None else f"{link.target}: {problem}"

    def pull(self, repo: _Repo, tag: str) -> str | None:
        problem = self.tag(repo, tag)
        if problem is not None:
            return problem
        target = repo.tags[tag].target
        assert target is not None
        return self.content(repo, target, 0)

    def content(self, repo: _Repo, digest: str, depth: int) -> str | None:
        """Everything below a servable manifest: children (recursively), configs and layers."""
        key = ("content", repo.name, digest)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = "index nested too deeply (or a cycle)"
        problem = None if depth <= MAX_DEPTH else self.memo[key]
        if problem is None:
            link = self.s.revision(repo, digest) or repo.layers.get(digest)
            m = self.s.inv.manifest_data(link.target) if link and link.target else None
            for role, ref, foreign in m.refs if m else ():
                if role == "child":
                    why = self.manifest(repo, ref)
                    why = why if why is not None else self.content(repo, ref, depth + 1)
                elif role in ("config", "layer") and not foreign:
                    why = self.blob(repo, ref)
                else:
                    continue
                if why is not None:
                    problem = f"{role} {ref}: {why}"
                    break
        self.memo[key] = problem
        return problem


def _requests(inv: _Inventory) -> Iterable[tuple[str, _Repo, str]]:
    for name in sorted(inv.repos):
        repo = inv.repos[name]
        for d in sorted(set(repo.revisions) | set(repo.layers)):
            yield MANIFEST_DIGEST, repo, d
        for d in sorted(repo.layers):
            yield BLOB, repo, d
        for t in sorted(repo.tags):
            yield MANIFEST_TAG, repo, t
            yield PULL_TAG, repo, t


def _ask(server: _Server, kind: str, repo: _Repo, ref: str) -> str | None:
    if kind == MANIFEST_DIGEST:
        return server.manifest(repo, ref)
    if kind == BLOB:
        return server.blob(repo, ref)
    if kind == MANIFEST_TAG:
        return server.tag(repo, ref)
    return server.pull(repo, ref)


def _breakage(inv: _Inventory, pred: Prediction) -> None:
    if pred.outcome == ABORTS:
        return
    after = _State(
        inv,
        gone_revisions={(d.repository or "", d.digest) for d in pred.of_kind("revision")},
        gone_blobs={d.digest for d in pred.of_kind("blob")},
    )
    now, later = _Server(_State(inv)), _Server(after)
    for kind, repo, ref in _requests(inv):
        if _ask(now, kind, repo, ref) is not None:
            continue  # already failing: not something GC breaks
        why = _ask(later, kind, repo, ref)
        if why is not None:
            pred.breakage.append(Breakage(kind, repo.name, ref, why))


# ---------------------------------------------------------------------------------------------
# Entry point


def predict_inventory(inv: _Inventory, delete_untagged: bool) -> Prediction:
    pred = Prediction(inv.registry, delete_untagged)
    marker = _Marker(inv, delete_untagged)
    marker.run()
    pred.skipped = marker.skipped
    pred.marked = len(marker.marked)
    pred.scheduled = len(marker.scheduled)
    if marker.blockers:
        pred.outcome = ABORTS
        pred.reasons = list(marker.blockers)
    else:
        _sweep(inv, marker, pred)
    _breakage(inv, pred)
    pred.warnings = _warnings(inv, marker)
    return pred


def _warnings(inv: _Inventory, marker: _Marker) -> list[str]:
    out: list[str] = []
    if inv.last_scan_failed:
        out.append("a scan after this registry's last complete one failed: the prediction uses that older scan")
    if inv.anomalies:
        shown = ", ".join(p for p, _ in inv.anomalies[:3]) + (", …" if len(inv.anomalies) > 3 else "")
        out.append(
            f"{len(inv.anomalies)} storage anomalies ({shown}): garbage-collect may treat paths regindex did "
            "not index differently (under blobs/ an odd name stops the blob sweep with exit 1)"
        )
    if marker.unparsed:
        out.append(
            f"{len(marker.unparsed)} marked manifests were never parsed (e.g. {marker.unparsed[0]}): their "
            "references are not marked here, and garbage-collect may abort on them"
        )
    if not inv.repos:
        out.append("no repositories: garbage-collect 2.8 aborts when the repositories directory is missing")
    return out


def predict(
    conn: Connection, delete_untagged: bool = False, registries: Sequence[str] = ()
) -> list[Prediction]:
    """One prediction per scanned registry (or per name in ``registries``), from the current inventory."""
    rows = conn.execute(
        text("SELECT id, name FROM registries WHERE last_scanned_run IS NOT NULL ORDER BY name")
    ).all()
    known = {r.name: r.id for r in rows}
    unknown = [n for n in registries if n not in known]
    if unknown:
        raise ConfigError(
            f"no scanned registry named {unknown[0]!r}; known: {', '.join(sorted(known)) or 'none (run regindex scan)'}"
        )
    if not known:
        raise ConfigError("no scanned registry in the database: run `regindex scan` first")
    wanted = [n for n in known if not registries or n in registries]
    return [predict_inventory(_load(conn, known[n], n), delete_untagged) for n in wanted]


# ---------------------------------------------------------------------------------------------
# Rendering


COLUMNS = ("registry", "action", "kind", "repository", "reference", "tag", "size", "detail")


def rows(preds: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Flat rows: abort reasons, deletions, breakage, skipped revisions and warnings."""
    out: list[dict[str, Any]] = []
    for p in preds:
        out += _rows(p)
    return out


def _rows(p: Prediction) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def row(action: str, kind: str, **kw: Any) -> None:
        out.append({"registry": p.registry, "action": action, "kind": kind, **kw})

    for reason in p.reasons:
        row("abort" if p.outcome == ABORTS else "fail", "blocker" if p.outcome == ABORTS else "sweep", detail=reason)
    for d in p.deletions:
        row("delete", d.kind, repository=d.repository, reference=d.digest, tag=d.tag, size=d.size)
    for b in p.breakage:
        row("break", b.kind, repository=b.repository, reference=b.reference, detail=b.why)
    for s in p.skipped:
        row("skip", "revision", repository=s.repository, reference=s.digest,
            detail=f"{s.why}: not marked, what it names is swept unless marked elsewhere")
    for w in p.warnings:
        row("warn", "warning", detail=w)
    return out


def summary(p: Prediction) -> str:
    cmd = _command(p.delete_untagged)
    if p.outcome == ABORTS:
        return f"{p.registry}: {cmd} aborts (exit 1) and deletes nothing: {p.reasons[0]}" + (
            f" (+{len(p.reasons) - 1} more)" if len(p.reasons) > 1 else "")
    blobs = p.of_kind("blob")
    head = (f"{p.registry}: {cmd} " + ("completes" if p.outcome == COMPLETES else "fails in the sweep (exit 1)")
            + f": deletes {len(p.of_kind('revision'))} revision directories, {len(p.of_kind('tag_index'))} tag "
            f"index entries, {len(blobs)} blobs ({p.bytes_reclaimed} bytes reclaimed); "
            f"{len(p.breakage)} requests that work now would fail")
    return head


def render(preds: Sequence[Prediction], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([p.as_dict() for p in preds], indent=2) + "\n"
    table = output.render(rows(preds), COLUMNS, fmt, max_width=240)  # abort reasons are read whole
    if fmt == "csv":
        return table
    return "".join(output._printable(summary(p)) + "\n" for p in preds) + "\n" + table
