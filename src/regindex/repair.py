"""Repair what a finding proves is safe to repair: dry run by default, quarantine instead of delete, undo.

* ``orphan_layer_link`` (the default, what the reference scanner deletes): the ``_layers/<alg>/<hex>/``
  directory is *moved* into a quarantine directory, with a JSON manifest of what moved from where.
* ``orphan_index_child`` (opt-in): the child's revision link is written again (exactly ``<alg>:<hex>``, no
  newline, the mode and owner of the index's own revision link), only when the child's manifest data and every
  blob it references are present, hash to their digests and are linked in the repository.

Before each action the condition is checked again on disk; an action whose condition no longer holds is skipped
with the reason. Nothing here deletes: undo moves what repair wrote into the quarantine too, and puts back
what repair moved, refusing to overwrite anything that appeared since. Symlinks are never followed: every
directory on a path is opened with ``O_NOFOLLOW`` relative to its parent and every action is done relative to
those descriptors. Blob data, manifests and tags are only ever read.
"""

from __future__ import annotations

import errno
import fnmatch
import getpass
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.engine import make_url

from regindex import layout
from regindex.errors import RepairError
from regindex.layout import LinkKind, link_path, parse_link
from regindex.manifests import KIND_IMAGE, parse_manifest
from regindex.models import Finding, RepairAction, Registry, table
from regindex.safefs import (
    DIR_FLAGS,
    MAX_LINK_FILE,
    Unsafe,
    describe_files,
    fsync_dir,
    flat_files,
    hash_at,
    in_storage,
    lstat_in_storage,
    makedirs,
    move_dir,
    opened_dir,
    parts_of,
    read_at,
    rename,
)
from regindex.store import as_utc, utcnow

F = table(Finding)
G = table(Registry)
A = table(RepairAction)

LAYER, CHILD = "orphan_layer_link", "orphan_index_child"
REPAIRABLE = {
    LAYER: "move the _layers/<alg>/<hex>/ directory into the quarantine (what the reference scanner deletes)",
    CHILD: "write the child's revision link again, when its manifest and every blob it needs are present",
}
QUARANTINE, RESTORE, UNDO = "quarantine", "restore_revision_link", "undo"
WOULD, DONE, SKIPPED, REFUSED, FAILED = "would", "done", "skipped", "refused", "failed"
READY = "ready"
QUARANTINE_DIRNAME = "regindex-quarantine"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST = 64 * 1024 * 1024
GC_NOTE = ("a later `garbage-collect --delete-untagged` removes this revision link again while the child has no "
           "tag of its own (tag it, or run garbage-collect without --delete-untagged)")



# ---------------------------------------------------------------------------------------------
# What is selected, what each step is


@dataclass(frozen=True)
class Selection:
    kinds: tuple[str, ...] = ()  # empty: orphan_layer_link, or every repairable kind with --finding/--incident
    registries: tuple[str, ...] = ()
    repositories: tuple[str, ...] = ()  # globs (fnmatch, case-sensitive)
    keys: tuple[str, ...] = ()  # finding keys or unique prefixes (8+ hex digits)
    incidents: tuple[str, ...] = ()


@dataclass
class Target:
    finding_id: int
    key: str
    kind: str
    registry: str
    role: str
    repository: str
    digest: str
    parent_digest: str | None
    detail: dict[str, Any]
    v2: Path


@dataclass
class Step:
    target: Target
    action: str
    path: str  # relative to the registry's v2 root
    outcome: str
    reason: str = ""
    quarantine_path: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def absolute(self) -> Path:
        return self.target.v2 / self.path


@dataclass
class Batch:
    id: str | None
    quarantine: Path | None
    steps: list[Step]
    applied: bool

    def count(self, outcome: str) -> int:
        return sum(1 for s in self.steps if s.outcome == outcome)


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def default_quarantine(db_url: str) -> Path:
    """Beside the SQLite database; PostgreSQL has no "beside": ``--quarantine`` is required there."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise RepairError("the database is not a local file: pass --quarantine DIR (where moved files are kept)")
    return Path(url.database).absolute().parent / QUARANTINE_DIRNAME


def select_targets(conn: Connection, sel: Selection,
                   incident_findings: Callable[[Connection, str], list[int]] | None = None) -> list[Target]:
    """The open findings ``sel`` names, repairable kinds only. Unknown names are errors, not empty results."""
    kinds = sel.kinds or ((LAYER,) if not (sel.keys or sel.incidents) else tuple(REPAIRABLE))
    bad = [k for k in kinds if k not in REPAIRABLE]
    if bad:
        raise RepairError(f"repair does not handle {bad[0]!r}; it repairs: {', '.join(REPAIRABLE)}")
    regs = {r.name: r for r in conn.execute(select(G.c.name, G.c.root, G.c.role))}
    unknown = [r for r in sel.registries if r not in regs]
    if unknown:
        raise RepairError(f"unknown registry {unknown[0]!r}; registries: {', '.join(sorted(regs)) or 'none yet'}")
    q = select(F.c.id, F.c.key, F.c.kind, F.c.registry, F.c.repository, F.c.digest, F.c.parent_digest,
               F.c.detail).where(F.c.resolved_run.is_(None))
    ids: set[int] | None = None
    if sel.keys:
        ids = set()
        for k in sel.keys:
            ids.add(resolve_key(conn, k))
    if sel.incidents:
        if incident_findings is None:
            raise RepairError("--incident needs the incidents module")
        inc: set[int] = set()
        for i in sel.incidents:
            inc.update(incident_findings(conn, i))
        ids = inc if ids is None else ids & inc
    rows = list(conn.execute(q.where(F.c.kind.in_(list(kinds))).order_by(
        F.c.registry, F.c.repository, F.c.kind, F.c.digest, F.c.parent_digest, F.c.id)))
    if sel.keys:
        named = {r.id: r.kind for r in conn.execute(select(F.c.id, F.c.kind).where(F.c.id.in_(list(ids or ()))))}
        for fid, kind in named.items():
            if kind not in kinds:
                raise RepairError(f"finding {fid} is {kind!r}: repair handles {', '.join(kinds)} here")
    out = []
    for r in rows:
        if ids is not None and r.id not in ids:
            continue
        if sel.registries and r.registry not in sel.registries:
            continue
        if sel.repositories and not any(fnmatch.fnmatchcase(r.repository or "", g) for g in sel.repositories):
            continue
        reg = regs.get(r.registry)
        if reg is None or not r.repository or not r.digest:
            continue
        if not Path(reg.root).is_absolute():
            raise RepairError(f"registry {r.registry!r} was last scanned by a relative path ({reg.root}): scan it "
                              "again (roots are now recorded absolute) before repairing")
        out.append(Target(r.id, r.key, r.kind, r.registry, reg.role, r.repository, r.digest, r.parent_digest,
                          json.loads(r.detail or "{}"), Path(reg.root)))
    return out


def resolve_key(conn: Connection, value: str) -> int:
    """The open episode of the finding whose key is ``value`` (or starts with it: 8 hex digits or more)."""
    v = value.strip().lower()
    if len(v) < 8 or any(c not in "0123456789abcdef" for c in v):
        raise RepairError(f"{value!r} is not a finding key: give at least its first 8 hex digits (`findings -v` "
                          "and `findings --format json` show keys)")
    rows = list(conn.execute(select(F.c.id, F.c.key).where(F.c.resolved_run.is_(None), F.c.key.like(v + "%"))))
    keys = {r.key for r in rows}
    if not rows:
        raise RepairError(f"no open finding has the key {value!r}")
    if len(keys) > 1:
        raise RepairError(f"the key prefix {value!r} names {len(keys)} open findings: give more digits")
    return int(rows[0].id)


# ---------------------------------------------------------------------------------------------
# Checks on disk (run again right before each action)


def _exists(v2: Path, rel: str | PurePosixPath) -> bool:
    """Whether something is at ``rel`` (a symlink counts: it is not followed, and not called missing)."""
    return lstat_in_storage(v2, rel) is not None


def _blob_rel(digest: str) -> PurePosixPath:
    return layout.path_for(layout.BlobDataPath(digest))


def check_layer(t: Target) -> Step:
    """An orphan layer link is moved only if, on disk now, it is still the orphan the finding describes: the
    link file is there and regular, and the blob data it would serve is gone (the orphan_layer_links view)."""
    rel_dir = str(link_path(LinkKind.LAYER, t.repository, t.digest, None).parent)
    step = Step(t, QUARANTINE, rel_dir, READY)
    parts = parts_of(rel_dir)
    try:
        with in_storage(t.v2, parts) as fd:
            files = flat_files(fd)
            names = [n for n, _st in files]
            if "link" not in names:
                return _not(step, SKIPPED, "the link file is gone (already removed?)")
            if names != ["link"]:
                return _not(step, REFUSED, f"the directory holds more than its link ({', '.join(names)}): look at "
                                           "it by hand")
            raw = read_at(fd, "link", MAX_LINK_FILE)
            step.detail["files"] = describe_files(fd)
    except FileNotFoundError:
        return _not(step, SKIPPED, "the link directory is gone (already removed?)")
    except Unsafe as exc:
        return _not(step, REFUSED, str(exc))
    except OSError as exc:
        return _not(step, REFUSED, f"cannot read it: {exc.strerror or exc}")
    parsed = parse_link(raw)
    step.detail["link_bytes"] = raw.decode("ascii", "replace") if parsed.state.value == "ok" else parsed.preview
    try:
        path_data = _exists(t.v2, _blob_rel(t.digest))
        target = parsed.target if parsed.state.value == "ok" else None
        target_data = _exists(t.v2, _blob_rel(target)) if target else False
    except (Unsafe, OSError) as exc:
        return _not(step, REFUSED, f"cannot tell whether the blob data is there: {exc}")
    same_alg = target is not None and target.split(":")[0] == t.digest.split(":")[0]
    orphan = (target is not None and not target_data) or (not path_data and (target is None or same_alg))
    if not orphan:
        return _not(step, SKIPPED, "the blob data is present again: the link is no longer an orphan")
    step.detail["blob_data_missing"] = str(_blob_rel(target or t.digest))
    return step


def check_child(t: Target) -> Step:
    """An orphan index child gets its revision link back only when that makes it servable: its manifest data
    is present and hashes to its digest, and every config and layer it names is present, hashes to its
    digest and is linked in the repository."""
    rel = str(link_path(LinkKind.REVISION, t.repository, t.digest, None))
    step = Step(t, RESTORE, rel, READY)
    tags = t.detail.get("index_tags") or []
    push_again = (f"push again: {', '.join(f'{t.repository}:{x}' for x in tags)}" if tags
                  else "push the image again (the index has no tag)")
    if t.role == "cache":
        return _not(step, REFUSED, "pull-through cache: the child is fetched from upstream on its first pull")
    if t.detail.get("index_status") not in (None, "ok"):
        return _not(step, REFUSED, f"the index itself is not servable ({t.detail.get('index_status')}): "
                                   f"{push_again}")
    try:
        if _exists(t.v2, rel):
            return _not(step, SKIPPED, "a revision link for the child exists again")
        index_rel = link_path(LinkKind.REVISION, t.repository, t.parent_digest or "", None)
        iparts = parts_of(index_rel)
        with in_storage(t.v2, iparts[:-1]) as ifd:
            if parse_link(read_at(ifd, "link", MAX_LINK_FILE)).target != t.parent_digest:
                return _not(step, SKIPPED, "the index's own revision link is gone or changed")
            ist = os.stat("link", dir_fd=ifd, follow_symlinks=False)
        alg = t.digest.split(":")[0]
        bparts = parts_of(_blob_rel(t.digest))
        with in_storage(t.v2, bparts[:-1]) as bfd:
            raw = read_at(bfd, "data", MAX_MANIFEST)
        if f"{alg}:{hashlib.new(alg, raw).hexdigest()}" != t.digest:
            return _not(step, REFUSED, f"the child's manifest data does not hash to its digest: {push_again}")
        pm = parse_manifest(raw)
        if pm.kind != KIND_IMAGE:
            return _not(step, REFUSED, f"the child is a {pm.kind} manifest, not an image: not restored "
                                       f"automatically; {push_again}")
        blobs = [r for r in pm.refs if r.role in ("config", "layer") and not r.foreign]
        gone, bad, unlinked = [], [], []
        for ref in blobs:
            st = lstat_in_storage(t.v2, _blob_rel(ref.digest))
            if st is None:
                gone.append(ref.digest)
                continue
            dparts = parts_of(_blob_rel(ref.digest))
            with in_storage(t.v2, dparts[:-1]) as dfd:
                got, size = hash_at(dfd, "data", ref.digest.split(":")[0])
            if got != ref.digest or (ref.size is not None and size != ref.size):
                bad.append(ref.digest)
            lrel = link_path(LinkKind.LAYER, t.repository, ref.digest, None)
            lparts = parts_of(lrel)
            try:
                with in_storage(t.v2, lparts[:-1]) as lfd:
                    if parse_link(read_at(lfd, "link", MAX_LINK_FILE)).target != ref.digest:
                        unlinked.append(ref.digest)
            except FileNotFoundError:
                unlinked.append(ref.digest)
    except FileNotFoundError as exc:
        return _not(step, SKIPPED, f"{Path(exc.filename or '').name or 'a file'} it needs is gone: {push_again}")
    except Unsafe as exc:
        return _not(step, REFUSED, str(exc))
    except OSError as exc:  # a symlink where data should be (O_NOFOLLOW), permissions: never followed, never forced
        return _not(step, REFUSED, f"cannot read what it needs ({exc.strerror or exc}): {push_again}")
    step.detail.update(blobs=len(blobs), tags=tags)
    if gone or bad:
        what = []
        if gone:
            what.append(f"{len(gone)} of its {len(blobs)} blobs are gone")
        if bad:
            what.append(f"{len(bad)} do not hash to their digest")
        return _not(step, REFUSED, f"{' and '.join(what)}, so restoring its revision link cannot make it pullable: "
                                   f"{push_again}")
    if unlinked:
        return _not(step, REFUSED, f"{len(unlinked)} of its blobs have no _layers link in {t.repository}, so the "
                                   f"revision link alone would not make it pullable: {push_again}")
    step.detail.update(content=t.digest, mode=oct(stat.S_IMODE(ist.st_mode)), uid=ist.st_uid, gid=ist.st_gid,
                       note=GC_NOTE)
    return step


def _not(step: Step, outcome: str, reason: str) -> Step:
    step.outcome, step.reason = outcome, reason
    return step


CHECKS: dict[str, Callable[[Target], Step]] = {LAYER: check_layer, CHILD: check_child}


def plan(conn: Connection, sel: Selection,
         incident_findings: Callable[[Connection, str], list[int]] | None = None,
         quarantine: Path | None = None) -> list[Step]:
    """The dry run: what ``--apply`` would do now, each step checked on disk (``quarantine``: where moved
    directories would go; the batch id is only made by ``--apply``)."""
    steps, seen = [], set()
    for t in select_targets(conn, sel, incident_findings):
        step = CHECKS[t.kind](t)
        where = (t.registry, step.path)
        if step.outcome == READY:
            step.outcome = SKIPPED if where in seen else WOULD
            if where in seen:
                step.reason = "the same path as a step above"
        seen.add(where)
        if step.outcome == WOULD and step.action == QUARANTINE and quarantine is not None:
            step.quarantine_path = str(quarantine.absolute() / "<batch>" / t.registry / step.path)
        steps.append(step)
    return steps


# ---------------------------------------------------------------------------------------------
# Doing it


def new_batch_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class _Manifest:
    """``<quarantine>/<batch>/manifest.json``: every action of the batch, rewritten atomically after each."""

    def __init__(self, batch_dir: Path, batch: str, user: str, db: str) -> None:
        self.path = batch_dir / MANIFEST_NAME
        self.doc: dict[str, Any] = {"batch": batch, "created_at": utcnow().isoformat(), "os_user": user,
                                    "database": db, "actions": []}

    def add(self, entry: dict[str, Any]) -> None:
        self.doc["actions"].append(entry)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.doc, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def _do_quarantine(step: Step, batch_dir: Path) -> None:
    t = step.target
    parts = parts_of(step.path)
    dest_parts = [t.registry, *parts]
    makedirs(batch_dir, dest_parts[:-1], 0o700)
    with in_storage(t.v2, parts[:-1]) as src_fd, opened_dir(batch_dir, dest_parts[:-1]) as dst_fd:
        step.detail["moved_by"] = move_dir(src_fd, parts[-1], dst_fd, parts[-1])
    step.quarantine_path = str(batch_dir.joinpath(*dest_parts))


def _do_restore(step: Step) -> None:
    t = step.target
    parts = parts_of(step.path)  # repositories/<repo>/_manifests/revisions/<alg>/<hex>/link
    revisions = parts[:-3]
    created: list[str] = []
    with in_storage(t.v2, revisions) as rfd:
        dir_mode = stat.S_IMODE(os.fstat(rfd).st_mode)
        st_parent = os.fstat(rfd)
        cur = os.dup(rfd)
        try:
            for i, name in enumerate(parts[-3:-1]):
                try:
                    os.mkdir(name, dir_mode, dir_fd=cur)
                    os.chmod(name, dir_mode, dir_fd=cur)  # mkdir's mode passes through the umask
                    _chown_like(name, cur, st_parent.st_uid, st_parent.st_gid)
                    created.append("/".join(parts[: len(revisions) + i + 1]))
                except FileExistsError:
                    pass
                nfd = os.open(name, DIR_FLAGS, dir_fd=cur)
                os.close(cur)
                cur = nfd
            mode = int(step.detail["mode"], 8)
            content = step.target.digest.encode("ascii")
            fd = os.open("link", os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode,
                         dir_fd=cur)
            try:
                os.write(fd, content)
                os.fchmod(fd, mode)
                if os.geteuid() == 0:
                    os.fchown(fd, step.detail["uid"], step.detail["gid"])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(cur)
        finally:
            os.close(cur)
        os.fsync(rfd)
    step.detail["created_dirs"] = created


def _chown_like(name: str, dir_fd: int, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _record(conn: Connection, batch: str, user: str, run: int | None, step: Step, at: datetime) -> int:
    t = step.target
    res = conn.execute(insert(A).values(
        batch=batch, at=at, os_user=user, based_on_run=run, finding_id=t.finding_id, finding_key=t.key,
        kind=t.kind, registry=t.registry, repository=t.repository, digest=t.digest, action=step.action,
        path=step.path, quarantine_path=step.quarantine_path, outcome=step.outcome, reason=step.reason or None,
        detail=json.dumps(step.detail, sort_keys=True, default=str),
    ))
    pk = res.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def apply(engine: Engine, db_url: str, sel: Selection, quarantine: Path | None,
          echo: Callable[[Step], None] = lambda s: None,
          incident_findings: Callable[[Connection, str], list[int]] | None = None) -> Batch:
    """Do what the dry run shows, re-checking each step on disk right before it, recording each in the
    database (and the quarantine manifest) as it happens. Holds the scan lock: no scan runs meanwhile."""
    from regindex.history import latest_run
    from regindex.scan import scan_lock

    qdir = (quarantine or default_quarantine(db_url)).absolute()
    user = os_user()
    with scan_lock(engine):
        with engine.connect() as conn:
            targets = select_targets(conn, sel, incident_findings)
            run = latest_run(conn)
            roots = [Path(r) for r in conn.execute(select(G.c.root)).scalars()]
        _outside_storage(qdir, roots)
        if any(t.kind == LAYER for t in targets):
            _prepare_quarantine(qdir)  # a quarantine that cannot be written is one error before any step
        batch = new_batch_id()
        batch_dir = qdir / batch
        steps: list[Step] = []
        manifest: _Manifest | None = None
        seen: set[tuple[str, str]] = set()
        for t in targets:
            step = CHECKS[t.kind](t)  # checked again now, right before acting
            if step.outcome == READY and (t.registry, step.path) in seen:
                _not(step, SKIPPED, "the same path as a step above")
            seen.add((t.registry, step.path))
            if step.outcome == READY:
                try:
                    if step.action == QUARANTINE:
                        if manifest is None:
                            _prepare_quarantine(qdir)
                            try:
                                batch_dir.mkdir(mode=0o700)
                            except OSError as exc:
                                raise RepairError(f"quarantine {qdir}: cannot create {batch_dir.name}: "
                                                  f"{exc.strerror or exc}") from None
                            manifest = _Manifest(batch_dir, batch, user,
                                                 make_url(db_url).render_as_string(hide_password=True))
                        _do_quarantine(step, batch_dir)
                    else:
                        _do_restore(step)
                    step.outcome = DONE
                except Unsafe as exc:
                    _not(step, REFUSED, str(exc))
                except OSError as exc:
                    _not(step, FAILED, f"{exc.strerror or exc}")
            with engine.begin() as conn:
                step.id = _record(conn, batch, user, run, step, utcnow())
            if manifest is not None and step.outcome == DONE and step.action == QUARANTINE:
                manifest.add(_manifest_entry(step))
            steps.append(step)
            echo(step)
        return Batch(batch, qdir if manifest else None, steps, applied=True)


def _outside_storage(qdir: Path, roots: Sequence[Path]) -> None:
    """A quarantine inside a registry's storage would be crawled (and served): refuse it."""
    q = qdir.resolve()
    for root in roots:
        storage = root.resolve()
        if q == storage or storage in q.parents:
            raise RepairError(f"quarantine {qdir} is inside the storage of a registry ({root}): choose another "
                              "--quarantine")


def _prepare_quarantine(qdir: Path) -> None:
    if qdir.exists() and not qdir.is_dir():
        raise RepairError(f"quarantine {qdir} is not a directory")
    if not qdir.parent.is_dir():
        what = "is not a directory" if qdir.parent.exists() else "does not exist"
        raise RepairError(f"quarantine {qdir}: {qdir.parent} {what}")
    try:
        qdir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise RepairError(f"quarantine {qdir} cannot be created: {exc.strerror or exc}") from None
    if not os.access(qdir, os.W_OK | os.X_OK):
        raise RepairError(f"quarantine {qdir} is not writable: choose another --quarantine")


def _manifest_entry(step: Step) -> dict[str, Any]:
    t = step.target
    return {"action_id": step.id, "action": step.action, "finding_key": t.key, "kind": t.kind,
            "registry": t.registry, "repository": t.repository, "digest": t.digest, "v2_root": str(t.v2),
            "source": str(step.absolute), "quarantined": step.quarantine_path,
            "files": step.detail.get("files", [])}


# ---------------------------------------------------------------------------------------------
# Undo


def undo(engine: Engine, db_url: str, ref: str, quarantine: Path | None,
         echo: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Put back what action ``ref`` (an id) or batch ``ref`` did, newest first; refuse to overwrite anything
    that appeared since. A restored revision link is moved into the quarantine, never deleted."""
    from regindex.scan import scan_lock

    user = os_user()
    with scan_lock(engine):
        with engine.connect() as conn:
            q = select(A, G.c.root).join(G, G.c.name == A.c.registry)
            rows = [dict(r) for r in conn.execute(
                (q.where(A.c.id == int(ref)) if ref.isdigit() else q.where(A.c.batch == ref)).order_by(A.c.id.desc())
            ).mappings()]
        if not rows:
            raise RepairError(f"no repair action or batch {ref!r} (see `regindex repairs`)")
        todo = [r for r in rows if r["outcome"] == DONE and r["action"] in (QUARANTINE, RESTORE)]
        if not todo:
            if any(r["action"] == UNDO for r in rows):
                raise RepairError(f"{ref} is an undo itself; undo the action it undid instead")
            raise RepairError(f"{ref}: nothing to undo (no action of it was done)")
        if all(r["undone_by"] is not None for r in todo):
            raise RepairError(f"{ref}: already undone")
        batch = new_batch_id()
        results = []
        for r in todo:
            if r["undone_by"] is not None:
                continue
            outcome, reason, qpath = DONE, "", None
            detail: dict[str, Any] = {"undoes": r["id"]}
            try:
                if r["action"] == QUARANTINE:
                    _undo_quarantine(r)
                else:
                    qpath = _undo_restore(r, (quarantine or default_quarantine(db_url)).absolute() / batch)
            except (Unsafe, RepairError) as exc:
                outcome, reason = REFUSED, str(exc)
            except FileNotFoundError as exc:
                outcome, reason = REFUSED, f"{exc.filename or 'a path'} is gone: nothing to put back"
            except OSError as exc:
                outcome, reason = FAILED, f"{exc.strerror or exc}"
            with engine.begin() as conn:
                res = conn.execute(insert(A).values(
                    batch=batch, at=utcnow(), os_user=user, based_on_run=r["based_on_run"],
                    finding_id=r["finding_id"], finding_key=r["finding_key"], kind=r["kind"], registry=r["registry"],
                    repository=r["repository"], digest=r["digest"], action=UNDO, path=r["path"],
                    quarantine_path=qpath or r["quarantine_path"], outcome=outcome, reason=reason or None,
                    detail=json.dumps(detail, sort_keys=True)))
                pk = res.inserted_primary_key
                assert pk is not None
                if outcome == DONE:
                    conn.execute(update(A).where(A.c.id == r["id"]).values(undone_by=int(pk[0])))
            row = {"id": int(pk[0]), "undoes": r["id"], "action": r["action"], "registry": r["registry"],
                   "path": r["path"], "v2": r["root"], "outcome": outcome, "reason": reason}
            results.append(row)
            echo(row)
        return results


def _undo_quarantine(r: dict[str, Any]) -> None:
    v2 = Path(r["root"])
    parts = parts_of(r["path"])
    qpath = Path(r["quarantine_path"] or "")
    if not qpath.is_absolute():
        raise RepairError("the action has no quarantine path")
    if lstat_in_storage(v2, r["path"]) is not None:
        raise RepairError(f"{r['path']} appeared again since the repair (a push re-created it): not overwritten")
    expected = {f["name"]: f for f in json.loads(r["detail"] or "{}").get("files", [])}
    with opened_dir(qpath.parent, []) as qparent_fd:
        qfd = os.open(qpath.name, DIR_FLAGS, dir_fd=qparent_fd)
        try:
            now = {f["name"]: f for f in describe_files(qfd)}
        finally:
            os.close(qfd)
        if {k: v["sha256"] for k, v in now.items()} != {k: v["sha256"] for k, v in expected.items()}:
            raise RepairError(f"the quarantined copy in {qpath} changed since it was moved: not put back")
        with in_storage(v2, parts[:-1]) as dst_fd:
            move_dir(qparent_fd, qpath.name, dst_fd, parts[-1])


def _undo_restore(r: dict[str, Any], undo_dir: Path) -> str:
    v2 = Path(r["root"])
    parts = parts_of(r["path"])
    detail = json.loads(r["detail"] or "{}")
    with in_storage(v2, parts[:-1]) as fd:
        if read_at(fd, "link", MAX_LINK_FILE) != (r["digest"] or "").encode():
            raise RepairError(f"{r['path']} changed since it was written: not undone")
        _prepare_quarantine(undo_dir.parent)
        dest_parts = [r["registry"], *parts]
        makedirs(undo_dir, dest_parts[:-1], 0o700)
        with opened_dir(undo_dir, dest_parts[:-1]) as qfd:
            try:
                os.stat("link", dir_fd=qfd, follow_symlinks=False)
                raise RepairError(f"{undo_dir} already holds that link")
            except FileNotFoundError:
                pass
            try:
                rename("link", "link", src_dir_fd=fd, dst_dir_fd=qfd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                data = read_at(fd, "link", MAX_LINK_FILE)
                st = os.stat("link", dir_fd=fd, follow_symlinks=False)
                out = os.open("link", os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode), dir_fd=qfd)
                try:
                    os.write(out, data)
                    os.fsync(out)
                finally:
                    os.close(out)
                os.unlink("link", dir_fd=fd)
            os.fsync(qfd)
        os.fsync(fd)
    for d in sorted(detail.get("created_dirs", []), key=len, reverse=True):
        dparts = parts_of(d)
        with in_storage(v2, dparts[:-1]) as pfd:
            try:
                os.rmdir(dparts[-1], dir_fd=pfd)  # only if still empty: anything that appeared since stays
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    raise
    return str(undo_dir.joinpath(r["registry"], *parts))


# ---------------------------------------------------------------------------------------------
# Reading the record


ACTION_COLUMNS = ("id", "batch", "at", "os_user", "action", "outcome", "registry", "repository", "digest", "path",
                  "quarantine_path", "reason", "finding_key", "undone_by")


def list_actions(conn: Connection, limit: int = 100, batch: str | None = None) -> list[dict[str, Any]]:
    q = select(A).order_by(A.c.id.desc()).limit(limit)
    if batch:
        q = q.where(A.c.batch == batch)
    out = []
    for r in conn.execute(q).mappings():
        d = dict(r)
        d["at"] = as_utc(d["at"])
        out.append(d)
    return out


def describe(step: Step, applied: bool) -> list[str]:
    """The lines saying exactly what was or would be done (a restore adds its garbage-collect note)."""
    t = step.target
    where = f"[{t.registry}/{t.repository}] {t.kind} {t.digest}"
    if step.outcome in (WOULD, DONE):
        verb = {(QUARANTINE, False): "would move", (QUARANTINE, True): "moved",
                (RESTORE, False): "would write", (RESTORE, True): "wrote"}[(step.action, applied)]
        if step.action == QUARANTINE:
            dest = step.quarantine_path or "<quarantine>/<batch>/" + "/".join([t.registry, step.path])
            return [f"{verb} {step.absolute}/ -> {dest}/  {where}"]
        return [f"{verb} {step.absolute} = {t.digest} (no newline, mode {step.detail.get('mode')})  {where}",
                f"    note: {GC_NOTE}"]
    return [f"{step.outcome} {step.absolute}  {where}: {step.reason}"]
