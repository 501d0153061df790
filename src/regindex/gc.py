"""Predict what registry 2.8's ``garbage-collect [--delete-untagged]`` would do, from the database alone.

The model follows distribution 2.8's ``MarkAndSweep`` (``registry/storage/garbagecollect.go``) and the stores it
goes through (``linkedblobstore.go``, ``tagstore.go``, ``manifeststore.go``, ``vacuum.go``):

mark
    :func:`regindex.rules.mark`, the one statement of the mark phase (and of what aborts it): which
    revisions the walk reads, skips silently or schedules for deletion, and which digests it marks.
sweep
    Each scheduled manifest loses its tag index entries (``tags/*/index/<T>``) and its revision directory
    (a revision directory that is not there stops the run with exit 1, after what was already removed). Then
    every blob whose digest is not marked loses its directory. ``_layers`` links are never touched.

Breakage is found by evaluating the registry's serving rules (:mod:`regindex.rules`) on the current state and
on the predicted post-GC state: a pull that works now and fails afterwards is predicted breakage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from regindex import output, rules
from regindex.errors import ConfigError
from regindex.rules import Inventory, Mark, Repo, digest_key

# Outcomes of a garbage-collect run.
COMPLETES = "completes"  # exit 0
ABORTS = "aborts"  # exit 1 in the mark phase: nothing is deleted
SWEEP_ERROR = "sweep_error"  # exit 1 in the sweep: the revision directories removed before the error stay removed

# What a pull asks for (the same four requests a client makes).
MANIFEST_DIGEST = "manifest_digest"  # GET /v2/<repo>/manifests/<digest>
MANIFEST_TAG = "manifest_tag"  # GET /v2/<repo>/manifests/<tag>
BLOB = "blob"  # GET /v2/<repo>/blobs/<digest>
PULL_TAG = "pull_tag"  # the whole image behind a tag: manifest, children, configs and layers

MAX_DEPTH = 8  # nested indexes deeper than this are treated as unpullable (and cycles end)


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
# Sweep


def _sweep(inv: Inventory, marked: Mark, pred: Prediction) -> None:
    existing = {(r.name, d) for r in inv.repos.values() for d in r.revisions}
    index_gone: set[tuple[str, str, str]] = set()
    for repo_name, digest in marked.scheduled:
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
    for digest in sorted(inv.blobs, key=digest_key):
        if digest not in marked.marked:
            pred.deletions.append(Deletion("blob", None, digest, size=inv.blobs[digest]))


# ---------------------------------------------------------------------------------------------
# Why a request fails on a state (the registry's rules, in words), before and after the sweep


def _missing(what: str, digest: str, target: str, swept: set[str]) -> str:
    name = what if target == digest else f"{what} {target}"
    return f"{name} swept" if target in swept else f"{name} missing"


class _Server:
    """Why a request fails on a state (None when it works), memoised. ``gone_*``: what the sweep removed."""

    def __init__(self, inv: Inventory, gone_revisions: set[tuple[str, str]] | None = None,
                 gone_blobs: set[str] | None = None) -> None:
        self.gone_revisions = gone_revisions or set()
        self.gone_blobs = gone_blobs or set()
        self.inv = inv.after(self.gone_revisions, self.gone_blobs) if gone_revisions or gone_blobs else inv
        self.memo: dict[tuple[str, str, str], str | None] = {}

    def manifest(self, repo: Repo, digest: str) -> str | None:
        key = (MANIFEST_DIGEST, repo.name, digest)
        if key not in self.memo:
            self.memo[key] = self._manifest(self.inv.repos[repo.name], digest)
        return self.memo[key]

    def _manifest(self, repo: Repo, digest: str) -> str | None:
        served = rules.manifest(self.inv, repo, digest)
        if served is None:
            gone = (repo.name, digest) in self.gone_revisions
            return "revision directory removed" if gone else "no revision link"
        via = "revision" if served.via == rules.VIA_REVISION else "_layers"
        link, status = served.link, served.status
        if status == rules.SERVED:
            return None
        if status == rules.CORRUPT_LINK or link.target is None:
            return f"{via} link is {link.state}"
        if status == rules.MISDIRECTED:
            return f"{via} link names {link.target}"
        if status == rules.DATA_MISSING:
            return _missing("manifest data", digest, link.target, self.gone_blobs)
        if status == rules.DIGEST_MISMATCH:
            return "manifest data is not its digest's content"
        return "manifest data does not parse"

    def blob(self, repo: Repo, digest: str) -> str | None:
        repo = self.inv.repos[repo.name]
        status = rules.blob(self.inv, repo, digest)
        link = repo.layers.get(digest)
        if status == rules.SERVED:
            return None
        if status == rules.NOT_LINKED or link is None:
            return "no _layers link"
        if status == rules.CORRUPT_LINK or link.target is None:
            return f"_layers link is {link.state}"
        if status == rules.MISDIRECTED:
            return f"_layers link names {link.target}"
        if status == rules.DATA_MISSING:
            return _missing("blob data", digest, link.target, self.gone_blobs)
        return "blob data is empty"

    def tag(self, repo: Repo, tag: str) -> str | None:
        link = repo.tags.get(tag)
        if link is None or link.state == rules.ABSENT:
            return "no current link"
        if link.state != rules.OK or link.target is None:
            return f"current link is {link.state}"
        problem = self.manifest(repo, link.target)
        return None if problem is None else f"{link.target}: {problem}"

    def pull(self, repo: Repo, tag: str) -> str | None:
        problem = self.tag(repo, tag)
        if problem is not None:
            return problem
        target = repo.tags[tag].target
        assert target is not None
        return self.content(repo, target, 0)

    def content(self, repo: Repo, digest: str, depth: int) -> str | None:
        """Everything below a servable manifest: children (recursively), configs and layers."""
        key = ("content", repo.name, digest)
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = "index nested too deeply (or a cycle)"
        problem = None if depth <= MAX_DEPTH else self.memo[key]
        if problem is None:
            served = rules.manifest(self.inv, self.inv.repos[repo.name], digest)
            target = served.link.target if served else None
            m = self.inv.manifest_data(target) if target else None
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


def _requests(inv: Inventory) -> Iterable[tuple[str, Repo, str]]:
    for name in sorted(inv.repos):
        repo = inv.repos[name]
        for d in sorted(set(repo.revisions) | set(repo.layers)):
            yield MANIFEST_DIGEST, repo, d
        for d in sorted(repo.layers):
            yield BLOB, repo, d
        for t in sorted(repo.tags):
            yield MANIFEST_TAG, repo, t
            yield PULL_TAG, repo, t


def _ask(server: _Server, kind: str, repo: Repo, ref: str) -> str | None:
    if kind == MANIFEST_DIGEST:
        return server.manifest(repo, ref)
    if kind == BLOB:
        return server.blob(repo, ref)
    if kind == MANIFEST_TAG:
        return server.tag(repo, ref)
    return server.pull(repo, ref)


def _breakage(inv: Inventory, pred: Prediction) -> None:
    if pred.outcome == ABORTS:
        return
    now = _Server(inv)
    later = _Server(inv, {(d.repository or "", d.digest) for d in pred.of_kind("revision")},
                    {d.digest for d in pred.of_kind("blob")})
    for kind, repo, ref in _requests(inv):
        if _ask(now, kind, repo, ref) is not None:
            continue  # already failing: not something GC breaks
        why = _ask(later, kind, repo, ref)
        if why is not None:
            pred.breakage.append(Breakage(kind, repo.name, ref, why))


# ---------------------------------------------------------------------------------------------
# Entry point


def predict_inventory(inv: Inventory, delete_untagged: bool) -> Prediction:
    pred = Prediction(inv.registry, delete_untagged)
    marked = rules.mark(inv, delete_untagged)
    pred.skipped = [Skipped(s.repository, s.digest, s.why) for s in marked.skipped]
    pred.marked = len(marked.marked)
    pred.scheduled = len(marked.scheduled)
    if marked.blockers:
        pred.outcome = ABORTS
        pred.reasons = [b.reason for b in marked.blockers]
    else:
        _sweep(inv, marked, pred)
    _breakage(inv, pred)
    pred.warnings = _warnings(inv, marked)
    return pred


def _warnings(inv: Inventory, marked: Mark) -> list[str]:
    out: list[str] = []
    if inv.last_scan_failed:
        out.append("a scan after this registry's last complete one failed: the prediction uses that older scan")
    if inv.anomalies:
        shown = ", ".join(p for p, _ in inv.anomalies[:3]) + (", …" if len(inv.anomalies) > 3 else "")
        out.append(
            f"{len(inv.anomalies)} storage anomalies ({shown}): garbage-collect may treat paths regindex did "
            "not index differently (under blobs/ an odd name stops the blob sweep with exit 1)"
        )
    if marked.unparsed:
        out.append(
            f"{len(marked.unparsed)} marked manifests were never parsed (e.g. {marked.unparsed[0]}): their "
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
    return [predict_inventory(rules.load(conn, known[n], n), delete_untagged) for n in wanted]


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
    return "".join(output.printable(summary(p)) + "\n" for p in preds) + "\n" + table
