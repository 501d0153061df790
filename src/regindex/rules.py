"""The registry's rules, stated once: how registry 2.8.2 serves a manifest, a tag and a blob from a repository,
and what makes ``garbage-collect`` abort. Every other statement of them is pinned to this one.

* The SQL views ``manifest_serving`` and ``tag_serving`` (migrations) say the same as :func:`manifest` and
  :func:`tag`; ``tests/test_rules_parity.py`` evaluates both over every damaged tree the tests build, on
  SQLite and PostgreSQL, and fails when they drift.
* ``gc-preview`` (:mod:`regindex.gc`) runs :func:`mark`, then sweeps, and compares :func:`manifest`,
  :func:`tag` and :func:`blob` on the tree before and after.
* The ``gc_blocker`` findings (:mod:`regindex.checks`) are the :class:`Blocker` values :func:`mark` finds.
* Names, digests and aliases are :mod:`regindex.layout`'s (``valid_repository_name``, ``names_other_content``,
  ``is_empty_digest``).

Read from distribution 2.8.2 (``registry/storage``: ``linkedblobstore.go``, ``manifeststore.go``,
``tagstore.go``, ``garbagecollect.go``, ``catalog.go``) and proven against the real registry by tests/realreg.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, bindparam, text

from regindex.layout import (
    LinkKind,
    LinkState,
    is_empty_digest,
    link_file,
    names_other_content,
    valid_repository_name,
)

# The age at which the registry purges an upload (storage.maintenance.uploadpurging.age, default 168h): an
# upload older than this is stale.
UPLOAD_PURGE_HOURS = 168.0

ABSENT, OK = LinkState.ABSENT.value, LinkState.OK.value
VIA_REVISION, VIA_LAYER = LinkKind.REVISION.value, LinkKind.LAYER.value

# How a manifest request is answered (the ``status`` column of the manifest_serving view).
SERVED = "ok"
CORRUPT_LINK = "corrupt_link"  # the link does not parse: 500
DATA_MISSING = "data_missing"  # 404 MANIFEST_UNKNOWN
DATA_EMPTY = "data_empty"  # 500
UNPARSABLE = "unparsable"  # 500
DIGEST_MISMATCH = "digest_mismatch"  # 200 with bytes that are not the digest's content: the client refuses them
NOT_PARSED = "not_parsed"  # regindex never parsed the data (e.g. it appeared after the crawl)
MISDIRECTED = "misdirected"  # the link names another digest: 200 with that object's bytes
# ... of a tag (tag_serving): these, or the status of its target
NO_CURRENT_LINK = "no_current_link"
TARGET_NOT_LINKED = "target_not_linked"
# ... of a blob
NOT_LINKED = "not_linked"

_SERVED_KINDS = frozenset({"image", "index", "schema1"})
_MARKED_ROLES = frozenset({"config", "layer", "child"})  # 2.8 knows no OCI subject


# ---------------------------------------------------------------------------------------------
# One registry's storage, as the last scan saw it


@dataclass(frozen=True, slots=True)
class Link:
    state: str  # a LinkState value; "absent" = the directory without its link file
    target: str | None  # the digest in the file, when it parses


@dataclass(frozen=True, slots=True)
class Manifest:
    """The parse of some manifest bytes."""

    kind: str
    media_type: str | None
    parse_error: str | None
    refs: tuple[tuple[str, str, bool], ...] = ()  # (role, digest, foreign)

    @property
    def servable(self) -> bool:
        return self.kind in _SERVED_KINDS and self.parse_error is None

    def get_error(self) -> str | None:
        """Why 2.8's ``manifestService.Get`` fails on these bytes (and garbage-collect aborts), if it does."""
        if self.kind == "invalid":
            return self.parse_error or "not JSON"
        if self.kind == "unknown":  # an unknown mediaType or a schemaVersion other than 1 and 2
            return self.parse_error or f"unrecognized manifest content type {self.media_type}"
        if self.kind in ("image", "index") and self.parse_error:
            return self.parse_error
        return None


@dataclass(frozen=True, slots=True)
class Content:
    """Blob data that is not its digest's content (hashed when read): what it hashes to, and why it does not
    parse (None when it parses: its parse is stored under ``computed``)."""

    computed: str
    parse_error: str | None


@dataclass
class Repo:
    name: str
    has_tags_dir: bool
    revisions: dict[str, Link] = field(default_factory=dict)  # path digest -> link (absent included)
    layers: dict[str, Link] = field(default_factory=dict)
    tags: dict[str, Link] = field(default_factory=dict)  # tag -> current link (absent: no current/link)
    tag_index: set[tuple[str, str]] = field(default_factory=set)  # (tag, digest) directories


@dataclass
class Inventory:
    registry: str
    repos: dict[str, Repo]
    blobs: dict[str, int]  # digest -> size of its data
    manifests: dict[tuple[str, int], Manifest]  # (content digest, size) -> parse
    content: dict[str, Content] = field(default_factory=dict)  # digest -> what its data really is, when not it
    anomalies: list[tuple[str, str]] = field(default_factory=list)
    last_scan_failed: bool = False
    # the digests the registry's tree names as manifests (manifest_reach): a stored parse counts only there
    reached: set[str] = field(default_factory=set)

    def manifest_data(self, digest: str) -> Manifest | None:
        """The parse of the bytes stored as ``digest``'s data, genuine or not (what 2.8 reads); None when
        there is no data or it was never parsed."""
        size = self.blobs.get(digest)
        if size is None:
            return None
        c = self.content.get(digest)
        if c is not None and c.parse_error is not None:
            return Manifest("invalid", None, c.parse_error)
        return self.manifests.get((c.computed if c else digest, size))

    def after(self, revisions: set[tuple[str, str]], blobs: set[str]) -> Inventory:
        """This storage with the given revision directories and blob data removed (a sweep's result)."""
        repos = {
            name: replace(r, revisions={d: link for d, link in r.revisions.items() if (name, d) not in revisions})
            for name, r in self.repos.items()
        }
        kept = {d: s for d, s in self.blobs.items() if d not in blobs}
        return replace(self, repos=repos, blobs=kept)


def load(conn: Connection, registry_id: int, name: str) -> Inventory:
    """One registry's current inventory, whole (gc-preview sweeps it)."""
    return _load(conn, registry_id, name, scoped=False)


# Repositories per part of :func:`load_parts`: memory is bounded by a part's links, not by the registry's.
PART_REPOSITORIES = 200


def load_parts(conn: Connection, registry_id: int, name: str, size: int = PART_REPOSITORIES,
               only: Iterable[str] | None = None) -> Iterator[Inventory]:
    """One registry's current inventory (or that of the repositories ``only`` names) in parts of ``size``
    repositories each, with only the blob data, hashes and manifest parses that those repositories' revision
    and ``_layers`` links name: everything :func:`manifest` and :func:`mark`'s blockers read of a repository.
    (Not for :func:`blob` of a digest its links do not name, nor for the sweep: use :func:`load`.) Memory
    stays flat however big the registry."""
    if only is None:
        names = [r[0] for r in conn.execute(
            text("SELECT name FROM repositories WHERE registry_id = :r AND gone_run IS NULL ORDER BY name"),
            {"r": registry_id})]
    else:
        names = sorted(set(only))
    for i in range(0, len(names), size):
        _fill_scope(conn, "rules_scope_repos", "name", names[i : i + size])
        yield _load(conn, registry_id, name, scoped=True)
    for t in ("rules_scope_repos", "rules_scope_digests"):
        _drop_scope(conn, t)


def blocker_candidates(conn: Connection, registry_id: int, only: Collection[str] | None = None) -> set[str]:
    """The repositories of a registry (or of those ``only`` names) where :func:`mark` can find a blocker, in
    either mode: a superset, found in SQL, of those holding one. Every other repository has a valid name,
    ``_manifests/tags``, only links that parse (or are absent) where the walk reads them, and no revision or
    layer link naming data whose parse fails or that is not its digest's content: nothing there can abort.
    (The parity test checks that evaluating only these finds every blocker the whole inventory has.)"""
    if only is not None and not only:
        return set()
    p: dict[str, Any] = {"r": registry_id, "no": False}
    within = ""
    if only is not None:  # a list of values: looked up by repository, like the per-repository checks' scope
        p["only"] = sorted(only)
        within = " AND {col} IN :only"

    def query(sql: str) -> Any:
        stmt = text(sql)
        if only is not None:
            stmt = stmt.bindparams(bindparam("only", expanding=True))
        return conn.execute(stmt, p)

    names = {r[0] for r in query("SELECT name FROM repositories WHERE registry_id = :r AND gone_run IS NULL"
                                 + within.format(col="name"))}
    out = {n for n in names if not valid_repository_name(n)}
    out.update(r[0] for r in query(
        """SELECT name FROM repositories WHERE registry_id = :r AND gone_run IS NULL AND has_tags_dir = :no"""
        + within.format(col="name") + """
           UNION
           SELECT repository FROM links WHERE registry_id = :r AND gone_run IS NULL
             AND kind IN ('revision', 'layer', 'tag_current') AND state NOT IN ('ok', 'absent')"""
        + within.format(col="repository") + """
           UNION
           SELECT l.repository FROM links l
           WHERE l.registry_id = :r AND l.gone_run IS NULL AND l.kind IN ('revision', 'layer')"""
        + within.format(col="l.repository") + """
             AND l.target_digest IN (
               SELECT b.digest FROM manifests m JOIN blobs b ON b.digest = m.digest AND b.size = m.size
                 AND b.registry_id = :r AND b.gone_run IS NULL
               WHERE m.parse_error IS NOT NULL OR m.kind IN ('invalid', 'unknown')
               UNION
               SELECT v.digest FROM blob_verifications v WHERE v.registry_id = :r AND v.computed_digest <> v.digest)
        """))  # (from the few broken manifests to the links naming them, not from every link)
    return out & names


def _drop_scope(conn: Connection, name: str) -> None:
    schema = "pg_temp" if conn.dialect.name == "postgresql" else "temp"
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{name}")


def _fill_scope(conn: Connection, name: str, column: str, values: list[str]) -> None:
    """A temporary one-column table holding ``values`` (joined by the scoped queries: no IN lists)."""
    _drop_scope(conn, name)
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} ({column} TEXT)")
    if values:
        conn.execute(text(f"INSERT INTO {name} ({column}) VALUES (:v)"), [{"v": v} for v in values])
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"ANALYZE {name}")


def _load(conn: Connection, registry_id: int, name: str, scoped: bool) -> Inventory:
    """The inventory of the registry, or (``scoped``) of the repositories in ``rules_scope_repos`` and of the
    data their revision and layer links name (``rules_scope_digests``, filled here)."""
    p = {"r": registry_id}
    repo_scope = " JOIN rules_scope_repos x ON x.name = {col}" if scoped else ""
    repos: dict[str, Repo] = {}
    for row in conn.execute(
        text("SELECT r.name, r.has_tags_dir FROM repositories r" + repo_scope.format(col="r.name")
             + " WHERE r.registry_id = :r AND r.gone_run IS NULL"), p
    ):
        repos[row.name] = Repo(row.name, bool(row.has_tags_dir))
    targets: set[str] = set()
    for row in conn.execute(
        text("SELECT l.repository, l.kind, l.tag, l.path_digest, l.target_digest, l.state FROM links l"
             + repo_scope.format(col="l.repository") + " WHERE l.registry_id = :r AND l.gone_run IS NULL"),
        p,
    ):
        repo = repos.get(row.repository)
        if repo is None:
            continue
        link = Link(row.state, row.target_digest)
        if row.kind == LinkKind.REVISION.value:
            repo.revisions[row.path_digest] = link
        elif row.kind == LinkKind.LAYER.value:
            repo.layers[row.path_digest] = link
        elif row.kind == LinkKind.TAG_CURRENT.value:
            repo.tags[row.tag] = link
            continue
        elif row.kind == LinkKind.TAG_INDEX.value:
            repo.tag_index.add((row.tag, row.path_digest))
            continue
        if scoped and row.target_digest is not None:
            targets.add(row.target_digest)
    if scoped:
        _fill_scope(conn, "rules_scope_digests", "digest", sorted(targets))
    digest_scope = " JOIN rules_scope_digests d ON d.digest = {col}" if scoped else ""
    blobs = {
        row.digest: int(row.size)
        for row in conn.execute(
            text("SELECT b.digest, b.size FROM blobs b" + digest_scope.format(col="b.digest")
                 + " WHERE b.registry_id = :r AND b.gone_run IS NULL"), p
        )
    }
    # Data hashed since its last change whose hash is not its digest (the manifest_serving view's join).
    content = {
        row.digest: Content(row.computed_digest, row.parse_error)
        for row in conn.execute(
            text("""SELECT v.digest, v.computed_digest, v.parse_error FROM blob_verifications v"""
                 + digest_scope.format(col="v.digest") + """
                    JOIN blobs b ON b.registry_id = v.registry_id AND b.digest = v.digest AND b.size = v.size
                     AND b.gone_run IS NULL AND v.mtime IS NOT NULL AND ABS(v.mtime - b.mtime) < 0.000001
                    WHERE v.registry_id = :r AND v.computed_digest <> v.digest"""),
            p,
        )
    }
    # The parses of the bytes on disk: (digest, size) of genuine data, (computed, size) of the rest.
    manifests: dict[tuple[str, int], Manifest] = {}
    ids: dict[int, tuple[str, int]] = {}
    on_disk = ("SELECT m.id FROM manifests m JOIN blobs b ON b.digest = m.digest AND b.size = m.size"
               + digest_scope.format(col="b.digest") + """
                   WHERE b.registry_id = :r AND b.gone_run IS NULL
                 UNION
                 SELECT m.id FROM manifests m JOIN blob_verifications v ON v.computed_digest = m.digest
                   AND v.size = m.size""" + digest_scope.format(col="v.digest") + """
                   WHERE v.registry_id = :r AND v.computed_digest <> v.digest""")
    for row in conn.execute(
        text(f"""SELECT m.id, m.digest, m.size, m.kind, m.media_type, m.parse_error FROM manifests m
                 JOIN ({on_disk}) d ON d.id = m.id"""),
        p,
    ):
        key = (row.digest, int(row.size))
        manifests[key] = Manifest(row.kind, row.media_type, row.parse_error)
        ids[row.id] = key
    refs: dict[tuple[str, int], list[tuple[str, str, bool]]] = {}
    for row in conn.execute(
        text(f"""SELECT r.manifest_id, r.role, r.digest, r.is_foreign FROM manifest_refs r
                 JOIN ({on_disk}) d ON d.id = r.manifest_id ORDER BY r.manifest_id, r.id"""),
        p,
    ):
        owner = ids.get(row.manifest_id)
        if owner is not None:
            refs.setdefault(owner, []).append((row.role, row.digest, bool(row.is_foreign)))
    for key, rs in refs.items():
        manifests[key] = replace(manifests[key], refs=tuple(rs))
    reached = {
        row.digest for row in conn.execute(
            text("SELECT x.digest FROM manifest_reach x" + digest_scope.format(col="x.digest")
                 + " WHERE x.registry_id = :r"), p)
    }
    if scoped:  # the parts serve the serving rules and the blockers: neither reads these
        return Inventory(name, repos, blobs, manifests, content, reached=reached)
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
    return Inventory(name, repos, blobs, manifests, content, anomalies, last_scan_failed=bool(failed_since),
                     reached=reached)


# ---------------------------------------------------------------------------------------------
# Serving: GET /v2/<repo>/manifests/<digest>, /manifests/<tag>, /blobs/<digest>


@dataclass(frozen=True, slots=True)
class Served:
    via: str  # "revision", or "layer" when there is no revision link file (the linked blob statter's fallback)
    link: Link
    status: str


def manifest(inv: Inventory, repo: Repo, digest: str) -> Served | None:
    """How ``repo`` answers GET of manifest ``digest``; None when it links no such digest (404)."""
    link, via = repo.revisions.get(digest), VIA_REVISION
    if link is None or link.state == ABSENT:
        link, via = repo.layers.get(digest), VIA_LAYER
        if link is None or link.state == ABSENT:
            return None
    return Served(via, link, _manifest_status(inv, digest, link, via))


def _manifest_status(inv: Inventory, digest: str, link: Link, via: str) -> str:
    if link.state != OK or link.target is None:
        return CORRUPT_LINK
    size = inv.blobs.get(link.target)
    if size is None:
        return DATA_MISSING
    if size == 0:
        return DATA_EMPTY
    # A stored parse (or the parse error of bytes that are not their digest's) tells only about a target the
    # registry's tree names as a manifest: a revision link's always is (a root of the walk); a _layers link's
    # when the walk reached it. Else the data was never read as a manifest here, whatever was stored once.
    reached = via == VIA_REVISION or link.target in inv.reached
    c = inv.content.get(link.target)
    if c is not None:
        return UNPARSABLE if c.parse_error is not None and reached else DIGEST_MISMATCH
    m = inv.manifests.get((link.target, size)) if reached else None
    if m is None:
        return NOT_PARSED
    if m.parse_error is not None:
        return UNPARSABLE
    if names_other_content(digest, link.target):
        return MISDIRECTED
    return SERVED


def tag(inv: Inventory, repo: Repo, name: str) -> str:
    """How ``repo`` answers GET of manifest ``name`` (a tag directory): a status of its own or its target's."""
    link = repo.tags.get(name)
    if link is None or link.state == ABSENT:
        return NO_CURRENT_LINK
    if link.state != OK or link.target is None:
        return CORRUPT_LINK
    served = manifest(inv, repo, link.target)
    return TARGET_NOT_LINKED if served is None else served.status


def blob(inv: Inventory, repo: Repo, digest: str) -> str:
    """How ``repo`` answers GET of blob ``digest`` (a cold registry: no blob-descriptor cache)."""
    link = repo.layers.get(digest)
    if link is None or link.state == ABSENT:
        return NOT_LINKED
    if link.state != OK or link.target is None:
        return CORRUPT_LINK
    if names_other_content(digest, link.target):
        return MISDIRECTED
    size = inv.blobs.get(link.target)
    if size is None:
        return DATA_MISSING
    if size == 0 and not is_empty_digest(link.target):
        return DATA_EMPTY
    return SERVED


# ---------------------------------------------------------------------------------------------
# garbage-collect's mark phase: what it marks, schedules, skips, and what makes it abort


PLAIN, UNTAGGED = "garbage-collect", "garbage-collect --delete-untagged"


@dataclass(frozen=True, slots=True)
class Blocker:
    """Something that makes garbage-collect abort in the mark phase, with nothing deleted.

    ``what``: ``invalid_name`` (a repository name 2.8 refuses), ``revision`` / ``layer`` / ``tag_current`` (a
    link that does not parse where the walk reads it), ``no_tags_dir`` (``--delete-untagged``'s tag lookup in a
    repository without ``_manifests/tags``), ``invalid_manifest`` (marked manifest data ``Get`` refuses)."""

    what: str
    repository: str
    digest: str | None = None
    tag: str | None = None
    state: str | None = None  # of the link
    error: str | None = None  # why the manifest data is refused

    @property
    def path(self) -> str:
        if self.what in (VIA_REVISION, VIA_LAYER, LinkKind.TAG_CURRENT.value):
            return link_file(self.what, self.repository, self.digest, self.tag)
        if self.what == "no_tags_dir":
            return f"repositories/{self.repository}/_manifests/tags"
        if self.what == "invalid_manifest":
            return link_file(LinkKind.REVISION, self.repository, self.digest)
        return f"repositories/{self.repository}"

    @property
    def reason(self) -> str:
        """garbage-collect's own words, more or less."""
        if self.what == "invalid_name":
            return f"failed to parse repo name {self.repository!r}"
        if self.what == "no_tags_dir":
            return f"{self.path} is missing: failed to retrieve tags"
        if self.what == "invalid_manifest":
            return f"{self.repository}: failed to retrieve manifest {self.digest}: {self.error}"
        kind = {VIA_REVISION: "revision link", LinkKind.TAG_CURRENT.value: "tag link"}.get(self.what, "link")
        return f"{self.path}: {kind} is {self.state}"


@dataclass(frozen=True, slots=True)
class Skip:
    """A revision the mark phase passes over silently: nothing it names is marked."""

    repository: str
    digest: str  # of the revision directory
    why: str


@dataclass
class Mark:
    delete_untagged: bool
    marked: set[str] = field(default_factory=set)
    scheduled: list[tuple[str, str]] = field(default_factory=list)  # (repository, digest) in GC's order
    blockers: dict[Blocker, None] = field(default_factory=dict)  # ordered set
    skipped: list[Skip] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # marked manifests regindex never parsed


def walk_key(repo: str) -> tuple[str, ...]:
    """The order 2.8 meets repositories: a sorted walk that reaches ``<repo>/_layers`` among its siblings."""
    return (*repo.split("/"), "_layers")


def digest_key(digest: str) -> tuple[str, str]:
    alg, _, hex_ = digest.partition(":")
    return alg, hex_


def mark(inv: Inventory, delete_untagged: bool) -> Mark:
    """The mark phase of ``garbage-collect [--delete-untagged]`` (``MarkAndSweep``) over ``inv``.

    Repositories are the directories holding ``_layers`` (entries starting with ``_`` are never walked), in
    walk order; a name 2.8 refuses aborts. In each, every ``link`` under ``_manifests/revisions`` is read
    (bytes that are not a digest abort); its digest T is looked up through the repository's own links (the
    revision link for T, else the ``_layers`` link for T: one that does not parse aborts) and T's data; when
    that finds nothing the revision is skipped silently. With ``--delete-untagged`` a T that no tag's
    ``current/link`` names is scheduled for deletion and not marked (the tag lookup aborts on a tag link that is
    not a digest, and on a repository without ``_manifests/tags``). Otherwise T is marked, its data read (data
    ``Get`` refuses aborts: the bytes on disk, genuine or not) and its direct references marked."""
    m = Mark(delete_untagged)
    for name in sorted(inv.repos, key=walk_key):
        if not valid_repository_name(name):
            m.blockers.setdefault(Blocker("invalid_name", name))
            continue
        repo = inv.repos[name]
        for path_digest in sorted(repo.revisions, key=digest_key):
            link = repo.revisions[path_digest]
            if link.state == ABSENT:
                continue  # a revision directory without its link file: the walk finds nothing to read
            if link.state != OK or link.target is None:
                m.blockers.setdefault(Blocker(VIA_REVISION, name, path_digest, state=link.state))
                continue
            _revision(inv, m, repo, path_digest, link.target)
    return m


def _lookup(inv: Inventory, repo: Repo, digest: str) -> tuple[str | None, Blocker | None]:
    """The linked blob statter of the manifest store: (the data digest, or None when unknown; a blocker)."""
    for kind, links in ((VIA_REVISION, repo.revisions), (VIA_LAYER, repo.layers)):
        link = links.get(digest)
        if link is None or link.state == ABSENT:
            continue
        if link.state != OK or link.target is None:
            return None, Blocker(kind, repo.name, digest, state=link.state)
        return (link.target if link.target in inv.blobs else None), None
    return None, None


def _revision(inv: Inventory, m: Mark, repo: Repo, path_digest: str, digest: str) -> None:
    data, blocker = _lookup(inv, repo, digest)
    if blocker:
        m.blockers.setdefault(blocker)
        return
    if data is None:
        why = "manifest data missing" if digest in repo.revisions or digest in repo.layers else (
            "the revision link names a digest this repository does not link")
        m.skipped.append(Skip(repo.name, path_digest, why))
        return
    if m.delete_untagged and not _tagged(m, repo, digest):
        if not repo.has_tags_dir:
            m.blockers.setdefault(Blocker("no_tags_dir", repo.name))
            return
        m.scheduled.append((repo.name, digest))
        return
    m.marked.add(digest)
    parsed = inv.manifest_data(data)
    if parsed is None:
        m.unparsed.append(f"{repo.name}@{data}")
        return
    error = parsed.get_error()
    if error:
        m.blockers.setdefault(Blocker("invalid_manifest", repo.name, digest, error=error))
        return
    for role, ref, _foreign in parsed.refs:
        if role in _MARKED_ROLES:
            m.marked.add(ref)


def _tagged(m: Mark, repo: Repo, digest: str) -> bool:
    """``Tags().Lookup``: whether a tag's current link names ``digest``; a link that is not a digest aborts."""
    found = False
    for name in sorted(repo.tags):
        link = repo.tags[name]
        if link.state == ABSENT:
            continue
        if link.state != OK:
            m.blockers.setdefault(Blocker(LinkKind.TAG_CURRENT.value, repo.name, tag=name, state=link.state))
            continue
        found = found or link.target == digest
    return found


def blockers(inv: Inventory) -> Iterator[tuple[Blocker, str]]:
    """Every blocker with the runs it aborts: ``every garbage-collect run``, or one of the two modes."""
    plain, untagged = mark(inv, False).blockers, mark(inv, True).blockers
    for b in plain:
        yield b, ("every garbage-collect run" if b in untagged else "garbage-collect without --delete-untagged")
    for b in untagged:
        if b not in plain:
            yield b, UNTAGGED
