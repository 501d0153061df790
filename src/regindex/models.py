"""The schema. ORM classes define it; alembic migrations create it; bulk writes use Core ``insert()``.

History is kept by *episodes*: a fact that can appear and disappear (a repository, a link file, a blob, an
upload, a finding) is one row per continuous presence, with ``first_run`` (first run that saw it) and
``gone_run`` (first complete run that no longer saw it; NULL while present). An unchanged night writes no
inventory row. Immutable content (a manifest and its references) is stored once per (digest, size).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST = String(140)  # "sha512:" + 128 hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    """One scan. ``status``: running, complete, partial (some registry could not be read), failed."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    base: Mapped[str] = mapped_column(Text)
    options: Mapped[str | None] = mapped_column(Text)  # JSON
    tool_version: Mapped[str | None] = mapped_column(String(32))
    registries: Mapped[int | None] = mapped_column(Integer)
    repositories: Mapped[int | None] = mapped_column(Integer)
    links: Mapped[int | None] = mapped_column(Integer)
    blobs: Mapped[int | None] = mapped_column(Integer)
    blob_bytes: Mapped[int | None] = mapped_column(BigInteger)
    manifests_parsed: Mapped[int | None] = mapped_column(Integer)
    uploads: Mapped[int | None] = mapped_column(Integer)
    inventory_changes: Mapped[int | None] = mapped_column(Integer)
    findings_open: Mapped[int | None] = mapped_column(Integer)
    open_errors: Mapped[int | None] = mapped_column(Integer)  # not acknowledged: what the summary line printed
    findings_new: Mapped[int | None] = mapped_column(Integer)
    findings_resolved: Mapped[int | None] = mapped_column(Integer)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # storage work of the run (0005): files and directories stat'ed or listed, files read, files skipped
    files_stat: Mapped[int | None] = mapped_column(Integer)
    files_read: Mapped[int | None] = mapped_column(Integer)
    files_skipped: Mapped[int | None] = mapped_column(Integer)
    # (0006) the run read every file (--full, full_scan_every, or nothing to reuse); NULL before 0006: it did
    full_scan: Mapped[bool | None] = mapped_column(Boolean)


class RunPhase(Base):
    """Wall time of each phase of a run (crawl, load, manifests, verify, checks, history), summed over its
    registries; ``items`` is what the phase worked through (files, inventory changes, manifests, findings)."""

    __tablename__ = "run_phases"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    phase: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    items: Mapped[int | None] = mapped_column(Integer)


class Registry(Base):
    """A registry root. ``role``: authoritative, or cache (a pull-through cache: missing children are expected)."""

    __tablename__ = "registries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    root: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default="authoritative")
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    last_scanned_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    # What the open findings of this registry were last derived under (regindex.checks.fingerprint: the checks'
    # code, the schema, the severity rules and options, the role): an unchanged inventory under the same
    # fingerprint carries them forward instead of deriving them again.
    checks_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # (0012) The run that last recorded the digests its tree names as manifests (ManifestReach); NULL: never
    # (the next scan walks the manifests from every root).
    reached_run: Mapped[int | None] = mapped_column(Integer)


class RunRegistry(Base):
    """How each registry fared in each run (a run is partial when one of these failed)."""

    __tablename__ = "run_registries"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # complete | failed
    error: Mapped[str | None] = mapped_column(Text)
    repositories: Mapped[int | None] = mapped_column(Integer)
    links: Mapped[int | None] = mapped_column(Integer)
    blobs: Mapped[int | None] = mapped_column(Integer)
    blob_bytes: Mapped[int | None] = mapped_column(BigInteger)
    uploads: Mapped[int | None] = mapped_column(Integer)
    files_seen: Mapped[int | None] = mapped_column(Integer)
    inventory_added: Mapped[int | None] = mapped_column(Integer)
    inventory_removed: Mapped[int | None] = mapped_column(Integer)


class Repository(Base):
    __tablename__ = "repositories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    name: Mapped[str] = mapped_column(Text)
    has_manifests: Mapped[bool] = mapped_column(Boolean)
    has_tags_dir: Mapped[bool] = mapped_column(Boolean)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    gone_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (Index("ix_repositories_current", "registry_id", "gone_run", "name"),)


# The _layers links that name another digest than their path (0009: a partial index holds them alone).
_ALIAS_WHERE = "kind = 'layer' AND gone_run IS NULL AND path_digest <> target_digest"
_UNSETTLED_WHERE = "changed IS NULL AND gone_run IS NULL"


class Link(Base):
    """A link file (or a link directory without its file: state ``absent``).

    ``kind``: layer, revision, tag_current, tag_index. ``path_digest`` is the digest spelled by the path
    (NULL for tag_current); ``target_digest`` the digest in the file when it parses.
    ``state``: ok, empty, whitespace, garbage, unreadable, absent.
    """

    __tablename__ = "links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    repository: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str | None] = mapped_column(Text)
    path_digest: Mapped[str | None] = mapped_column(DIGEST)
    target_digest: Mapped[str | None] = mapped_column(DIGEST)
    state: Mapped[str] = mapped_column(String(16))
    preview: Mapped[str | None] = mapped_column(Text)  # printable rendering of bytes that do not parse
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    gone_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    # (0006) the file's change time (later of mtime and ctime, epoch seconds) when it was read, if settled
    # then: an incremental scan that stats the same time reuses this row unread. NULL: read it next time.
    changed: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (
        Index("ix_links_current", "registry_id", "gone_run", "repository", "kind", "path_digest"),
        Index("ix_links_target", "registry_id", "target_digest"),
        Index("ix_links_path_digest", "path_digest"),
        # (0009) the _layers aliases alone (regindex.store.layer_aliases reads them on every manifest walk)
        Index("ix_links_aliases", "registry_id", "path_digest", "target_digest",
              sqlite_where=text(_ALIAS_WHERE), postgresql_where=text(_ALIAS_WHERE)),
        # (0009) the open links read while unsettled (no change time): an incremental load compares them again
        Index("ix_links_unsettled", "registry_id",
              sqlite_where=text(_UNSETTLED_WHERE), postgresql_where=text(_UNSETTLED_WHERE)),
    )


class Blob(Base):
    """Blob data (``blobs/<alg>/<xx>/<hex>/data``). A change of size is a new episode."""

    __tablename__ = "blobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    digest: Mapped[str] = mapped_column(DIGEST)
    size: Mapped[int] = mapped_column(BigInteger)
    # when the data file last changed in any way: the later of its mtime and ctime (databases scanned by
    # earlier versions hold the mtime alone: the next scan replaces it in place, and reads and hashes once)
    mtime: Mapped[float | None] = mapped_column(Float)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    gone_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (
        Index("ix_blobs_current", "registry_id", "gone_run", "digest"),
        Index("ix_blobs_digest", "digest"),
    )


class BlobBucket(Base):
    """(0010) What the last scan saw of a registry's blobs whose digest starts with ``bucket`` (an algorithm and
    four hex digits): how many, their bytes, and a checksum of their (digest, size, mtime), sorted. A crawl
    given these skips the rows of every bucket it finds the same, so an unchanged blob is neither staged nor
    diffed (``regindex.store.Stage``). Internal bookkeeping of the scan, replaced with the inventory it
    describes; not part of the documented schema."""

    __tablename__ = "blob_buckets"
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"), primary_key=True)
    bucket: Mapped[str] = mapped_column(String(32), primary_key=True)
    blobs: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    checksum: Mapped[str] = mapped_column(String(64))


class LinkSum(Base):
    """(0011) What the last scan saw of one repository's link files (the layer, revision, tag current and tag
    index links the layout names): how many, and a checksum of their (kind, tag, path digest, change time),
    sorted. Kept only when every one was a regular file whose change time was settled. A crawl given these
    stats a repository's link files and, when they stat the same, gives no row for them and asks nothing of
    the inventory about them (``regindex.crawl``). Internal bookkeeping of the scan, replaced with the
    inventory it describes; not part of the documented schema."""

    __tablename__ = "link_sums"
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"), primary_key=True)
    repository: Mapped[str] = mapped_column(Text, primary_key=True)
    links: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64))


class BlobVerification(Base):
    """Content hash of blob data, recomputed only when its size or change time (``Blob.mtime``) changes
    (``--verify-content``)."""

    __tablename__ = "blob_verifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    digest: Mapped[str] = mapped_column(DIGEST)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float | None] = mapped_column(Float)
    computed_digest: Mapped[str | None] = mapped_column(DIGEST)
    # for manifest data that is not its digest's content: why it does not parse (NULL if it parses). Such
    # bytes never become the (digest, size) row of ``manifests``, which belongs to the genuine content.
    parse_error: Mapped[str | None] = mapped_column(Text)
    verified_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (UniqueConstraint("registry_id", "digest"),)


class Upload(Base):
    __tablename__ = "uploads"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    repository: Mapped[str] = mapped_column(Text)
    uuid: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_raw: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    gone_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (Index("ix_uploads_current", "registry_id", "gone_run"),)


class Anomaly(Base):
    """Something in the tree that regindex did not index (symlink, odd name, stray file): never skipped silently."""

    __tablename__ = "anomalies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"))
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    gone_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (Index("ix_anomalies_current", "registry_id", "gone_run"),)


class Manifest(Base):
    """A parsed manifest, once per (digest, size): content-addressed, so parsed once, ever.

    ``kind``: image, index, schema1, unknown (JSON, not a manifest), invalid (not JSON / empty).
    A (digest, size) whose data is not the digest's content (truncated, overwritten) gets its own row.
    """

    __tablename__ = "manifests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST)
    size: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    media_type: Mapped[str | None] = mapped_column(Text)
    artifact_type: Mapped[str | None] = mapped_column(Text)
    parse_error: Mapped[str | None] = mapped_column(Text)
    bad_refs: Mapped[int] = mapped_column(Integer, default=0)
    parsed_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    __table_args__ = (UniqueConstraint("digest", "size"),)


class ManifestReach(Base):
    """(0012) A digest the registry's current tree names as a manifest: what its manifest walk reaches from the
    targets of revision and tag links and the revisions' path digests, through the children and subjects of the
    parses that stand for reached data, and _layers aliases. A stored parse counts for a registry only at the
    digests it reaches (the views and checks join it): the findings depend on the tree, not on which manifests
    were ever parsed. ``first_run``: since when it has been reached without a break."""

    __tablename__ = "manifest_reach"
    registry_id: Mapped[int] = mapped_column(ForeignKey("registries.id"), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class ManifestRef(Base):
    """A descriptor inside a manifest. ``role``: child (of an index), config, layer, subject."""

    __tablename__ = "manifest_refs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(DIGEST)
    media_type: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    platform: Mapped[str | None] = mapped_column(Text)
    is_foreign: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        Index("ix_manifest_refs_manifest", "manifest_id"),
        Index("ix_manifest_refs_digest", "digest"),
    )


class Finding(Base):
    """One episode of a problem. ``key`` identifies the problem across runs; a re-opened problem is a new
    episode (``episode`` > 1). Open while ``resolved_run`` is NULL."""

    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    episode: Mapped[int] = mapped_column(Integer, default=1)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    # "registry" is reserved on declarative classes; the column keeps the name people query by
    registry_name: Mapped[str] = mapped_column("registry", Text)
    repository: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(DIGEST)
    tag: Mapped[str | None] = mapped_column(Text)
    parent_digest: Mapped[str | None] = mapped_column(DIGEST)
    detail: Mapped[str] = mapped_column(Text)  # JSON evidence
    hint: Mapped[str | None] = mapped_column(Text)
    first_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    last_seen_run: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    resolved_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    # which severity policy graded it: NULL for the built-in default, else the config rule that matched
    policy: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("key", "episode"),
        Index("ix_findings_open", "resolved_run", "registry"),
        Index("ix_findings_digest", "digest"),
    )


class RepairAction(Base):
    """One thing ``regindex repair --apply`` (or ``--undo``) did or declined to do, with who and when.

    ``action``: quarantine (a directory moved into the quarantine), restore_revision_link (a link file
    written), undo (``detail.undoes`` names the action put back). ``outcome``: done, skipped (the condition no
    longer held on disk), refused (repair would not help or is not safe), failed. ``path`` is relative to the
    registry's v2 root; ``quarantine_path`` is absolute.
    """

    __tablename__ = "repair_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    os_user: Mapped[str] = mapped_column(Text)
    based_on_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    finding_id: Mapped[int | None] = mapped_column(ForeignKey("findings.id"))
    finding_key: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str | None] = mapped_column(String(32))
    registry_name: Mapped[str] = mapped_column("registry", Text)
    repository: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(DIGEST)
    action: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)  # JSON: files moved, modes, directories created
    undone_by: Mapped[int | None] = mapped_column(Integer)
    __table_args__ = (
        Index("ix_repair_actions_batch", "batch"),
        Index("ix_repair_actions_finding_key", "finding_key"),
    )


class Acknowledgement(Base):
    """"Known, accepted": one episode of a finding (``finding_id``) is acknowledged until ``until`` (or for
    good), until it resolves, or until ``regindex unack`` ends it (``ended_at``). A re-opened finding is a new
    episode and is not acknowledged."""

    __tablename__ = "acknowledgements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"))
    finding_key: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    os_user: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_by: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_acknowledgements_finding", "finding_id"),)


def table(model: type[Base]) -> Table:
    """A model's Core table, typed as one (``__table__`` is typed as a plain FromClause)."""
    t = model.__table__
    assert isinstance(t, Table)
    return t
