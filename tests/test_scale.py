"""Scale machinery: a re-scan's inventory equals a full scan's into a fresh database after every kind of change
(SQLite and PostgreSQL), per-run phase timings, and the 0005 migration on a database built by the previous head."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, inspect, text

from regindex import checks, db, store
from regindex.errors import StorageError
from regindex.layout import BlobDataPath
from regindex.sample import StorageWriter, sha256


INVENTORY = {
    "repositories": "name, has_manifests, has_tags_dir",
    "links": "repository, kind, tag, path_digest, target_digest, state, preview",
    "blobs": "digest, size, mtime",
    "uploads": "repository, uuid, started_raw, size",
    "anomalies": "path, reason",
}


def assert_same(kept: str, fresh: str, what: str = "") -> None:
    """The kept database equals the fresh one, except that it may know more manifests: a parse is kept once
    per (digest, size), ever, while the fresh database parsed only what the tree names now. What each registry
    reaches as a manifest (where a parse counts) and the findings are equal."""
    a, b = inventory(_url(kept)), inventory(_url(fresh))
    for key in ("manifests", "refs"):
        assert set(b.pop(key)) <= set(a.pop(key)), (what, key)
    assert a == b, what


def inventory(url: str) -> dict[str, Any]:
    """Everything a scan derives from storage, without run numbers and ids (they differ between databases)."""
    engine = create_engine(url)
    out: dict[str, Any] = {}
    with engine.connect() as c:
        for t, cols in INVENTORY.items():
            out[t] = sorted(
                (tuple(str(x) for x in r) for r in c.execute(text(
                    f"SELECT g.name, {', '.join('t.' + x.strip() for x in cols.split(','))} FROM {t} t "
                    "JOIN registries g ON g.id = t.registry_id WHERE t.gone_run IS NULL"))),
            )
        out["manifests"] = sorted(tuple(map(str, r)) for r in c.execute(text(
            "SELECT digest, size, kind, media_type, parse_error, bad_refs FROM manifests")))
        out["refs"] = sorted(tuple(map(str, r)) for r in c.execute(text(
            "SELECT m.digest, r.role, r.position, r.digest, r.size FROM manifest_refs r "
            "JOIN manifests m ON m.id = r.manifest_id")))
        # what each registry's tree names as a manifest: where a stored parse counts (exactly, not "at least")
        out["reach"] = sorted(tuple(map(str, r)) for r in c.execute(text(
            "SELECT g.name, x.digest FROM manifest_reach x JOIN registries g ON g.id = x.registry_id")))
        out["findings"] = sorted(tuple(map(str, r)) for r in c.execute(text(
            "SELECT kind, severity, registry, repository, digest, tag, parent_digest FROM findings "
            "WHERE resolved_run IS NULL")))
    engine.dispose()
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """The database that follows the tree across scans, and a factory of fresh databases for full scans."""
    if request.param == "sqlite":
        n = iter(range(1000))
        return str(tmp_path / "kept.db"), lambda: str(tmp_path / f"fresh{next(n)}.db")
    kept = request.getfixturevalue("pg_url")
    admin = create_engine(kept.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def fresh() -> str:
        name = f"{kept.rsplit('/', 1)[1]}_f{len(made)}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return kept.rsplit("/", 1)[0] + "/" + name

    request.addfinalizer(lambda: _drop(admin, made))
    return kept, fresh


def _drop(admin: Engine, names: list[str]) -> None:
    with admin.connect() as c:
        for name in names:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _url(db_: str) -> str:
    return db_ if "://" in db_ else f"sqlite:///{db_}"


def build(base: Path) -> tuple[StorageWriter, random.Random, dict[str, Any]]:
    rng = random.Random(5)
    w = StorageWriter(base / "private")
    shared = rng.randbytes(500)
    imgs: dict[str, Any] = {}
    for i in range(3):
        repo = f"team/app{i}"
        idx = w.push_index(repo, rng, shared_layers=[shared])
        w.tag(repo, "v1", idx.digest)
        img = w.push_image(repo, rng)
        w.tag(repo, "latest", img.digest)
        old = w.push_image(repo, rng)
        imgs[repo] = (idx, img, old)
    w.push_image("team/gone", rng)
    w.upload("team/app0", "u-1", __import__("datetime").datetime(2020, 1, 1, tzinfo=__import__("datetime").timezone.utc))
    StorageWriter(base / "other").push_image("lib/x", rng)
    return w, rng, imgs


def same_length_rewrite(path: Path, data: bytes) -> None:
    """In place (same inode, same directory entry), keeping the length: what a tag move looks like."""
    assert len(data) == path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(data)


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """A same-length rewrite that sets the file's times back (``touch -r``, rsync -t, a restore from backup):
    only the ctime tells."""
    st = path.stat()
    same_length_rewrite(path, data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def changes(w: StorageWriter, rng: random.Random, imgs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every kind of change a night can bring, as (name, action) steps."""
    v2 = w.v2
    idx0, img0, old0 = imgs["team/app0"]
    idx1, img1, old1 = imgs["team/app1"]
    idx2, img2, old2 = imgs["team/app2"]
    repo_dir = v2 / "repositories"

    def layer(repo: str, d: str) -> Path:
        return repo_dir / repo / "_layers" / "sha256" / d[7:] / "link"

    def revision(repo: str, d: str) -> Path:
        return repo_dir / repo / "_manifests" / "revisions" / "sha256" / d[7:] / "link"

    def current(repo: str, tag: str) -> Path:
        return repo_dir / repo / "_manifests" / "tags" / tag / "current" / "link"

    def index_link(repo: str, tag: str, d: str) -> Path:
        return repo_dir / repo / "_manifests" / "tags" / tag / "index" / "sha256" / d[7:] / "link"

    def blob(d: str) -> Path:
        return v2 / "blobs" / "sha256" / d[7:9] / d[7:] / "data"

    return [
        ("layer link added", lambda: w.link_layer("team/app0", img1.layers[0])),
        ("layer link removed", lambda: shutil.rmtree(layer("team/app0", img0.layers[0]).parent)),
        ("layer link emptied", lambda: layer("team/app1", img1.config).write_bytes(b"")),
        ("layer link rewritten, same length", lambda: same_length_rewrite(layer("team/app1", img1.layers[0]),
                                                                         img1.config.encode())),
        ("layer link touched (same bytes)", lambda: os.utime(layer("team/app2", img2.config))),
        ("layer link file removed in its directory", lambda: layer("team/app2", img2.layers[0]).unlink()),
        ("known repository vanishes", lambda: shutil.rmtree(repo_dir / "team" / "gone")),
        # moved out of the tree and back (rename keeps the files' change times): the links come back exactly as
        # the episodes the first move closed
        ("repository moved away", lambda: (repo_dir / "team" / "app2").rename(w.root.parent / "parked")),
        ("repository moved back", lambda: (w.root.parent / "parked").rename(repo_dir / "team" / "app2")),
        ("revision link added", lambda: w.link_revision("team/app1", old0.digest)),
        ("revision link removed", lambda: shutil.rmtree(revision("team/app0", old0.digest).parent)),
        ("revision link emptied", lambda: revision("team/app1", old1.digest).write_bytes(b"")),
        ("revision link rewritten, same length", lambda: same_length_rewrite(revision("team/app2", old2.digest),
                                                                            img2.digest.encode())),
        ("revision link file removed (API DELETE)", lambda: revision("team/app2", img2.digest).unlink()),
        ("revision link rewritten in place, its mtime set back", lambda: rewrite_keeping_mtime(
            revision("team/app0", img0.digest), idx0.digest.encode())),
        ("tag moved in place", lambda: same_length_rewrite(current("team/app0", "latest"), old0.digest.encode())),
        ("tag current emptied", lambda: current("team/app1", "latest").write_bytes(b"")),
        ("tag current removed", lambda: current("team/app2", "v1").unlink()),
        ("tag index link added", lambda: w.tag("team/app0", "latest", old0.digest)),
        ("tag index link rewritten, same length", lambda: same_length_rewrite(
            index_link("team/app1", "v1", idx1.digest), old1.digest.encode())),
        ("tag appears", lambda: w.tag("team/app1", "new", img1.digest)),
        ("tag vanishes", lambda: w.remove_tag("team/app0", "v1")),
        ("blob data truncated", lambda: w.truncate_blob(img0.layers[0], 10)),
        ("blob data removed", lambda: blob(old1.config).unlink()),
        ("blob data replaced, same size", lambda: same_length_rewrite(
            blob(img1.layers[0]), bytes(b ^ 1 for b in blob(img1.layers[0]).read_bytes()))),
        ("manifest data rewritten, same size, its mtime set back", lambda: rewrite_keeping_mtime(
            blob(img2.digest), b" " * blob(img2.digest).stat().st_size)),
        ("blob appears", lambda: w.put_blob(b"fresh blob " + rng.randbytes(30))),
        ("blob directory vanishes", lambda: w.remove_blob(old2.config)),
        ("manifest data replaced, other size", lambda: blob(old2.digest).write_bytes(b'{"schemaVersion": 2}')),
        ("repository appears", lambda: w.push_image("team/new", rng)),
        ("nested repository appears", lambda: w.push_image("team/app1/nested", rng)),
        ("repository vanishes", lambda: shutil.rmtree(repo_dir / "team" / "app1" / "nested")),
        ("upload appears", lambda: w.upload("team/app1", "u-2", __import__("datetime").datetime.now(
            __import__("datetime").timezone.utc))),
        ("upload vanishes", lambda: shutil.rmtree(repo_dir / "team" / "app0" / "_uploads" / "u-1")),
        ("stray entry appears", lambda: (repo_dir / "team" / "_stray").mkdir()),
        ("empty blob replaced", lambda: w.put_blob(b"")),
        ("registry appears", lambda: StorageWriter(w.root.parent / "third").push_image("a/b", rng)),
    ]


def rows_of(url: str, sql: str) -> list[tuple[str, ...]]:
    """The rows of one query, sorted, each value as text: two databases compared by value."""
    engine = create_engine(_url(url))
    with engine.connect() as c:
        out = sorted(tuple(map(str, r)) for r in c.execute(text(sql)))
    engine.dispose()
    return out


def change_times(db_: str) -> list[tuple[str, ...]]:
    """Each open link's settled change time (``changed``), by its identity."""
    return rows_of(db_, "SELECT g.name, l.repository, l.kind, l.tag, l.path_digest, l.changed FROM links l "
                        "JOIN registries g ON g.id = l.registry_id WHERE l.gone_run IS NULL")


def link_sums(db_: str) -> list[tuple[str, ...]]:
    """What a database keeps per repository of its link files, by registry name."""
    return rows_of(db_, "SELECT g.name, k.repository, k.links, k.checksum FROM link_sums k "
                        "JOIN registries g ON g.id = k.registry_id")


def skipped(db_: str) -> list[int]:
    """files_skipped of each run, in order."""
    engine = create_engine(_url(db_))
    with engine.connect() as c:
        out = [r[0] for r in c.execute(text("SELECT files_skipped FROM runs ORDER BY id"))]
    engine.dispose()
    return out


@pytest.mark.parametrize("settle", ["0", "default"], ids=["incremental", "settle-window"])
def test_rescan_equals_full_scan_into_a_fresh_database_after_every_kind_of_change(
        urls, base, invoke, unlistable, tmp_path, settle, monkeypatch):
    """The kept database's re-scans are incremental: with ``settle_seconds = 0`` every link read by an earlier
    scan is only stat'ed (the changes come right after a scan, so with the default window of 10 s everything
    they touch, and everything else, is read again: the second parameter). Either way the inventory and the
    findings equal those of a full scan of the same tree into a fresh database. The first parameter's loads
    look each staged link up in the inventory (``store.PROBE_RATIO``; this tree is too small to choose it by
    itself), the second's take set differences."""
    kept, fresh = urls
    if settle == "0":
        monkeypatch.setattr(store, "PROBE_RATIO", 0)
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n" if settle == "0" else "")
    kept_scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    w, rng, imgs = build(base)
    invoke(*kept_scan)
    steps = changes(w, rng, imgs)
    # one change per scan for the first steps (each must be seen alone, within the same second as the scan
    # before it), then the rest together
    for name, action in steps[:10]:
        action()
        invoke(*kept_scan)
        other = fresh()
        invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
        assert_same(kept, other, name)
    for _name, action in steps[10:]:
        action()
    invoke(*kept_scan)
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)
    if settle == "0":  # the change times the next night reuses rows by: as a fresh scan reads them
        settled = fresh()
        invoke("scan", base, "--db", settled, "-q", "--fail-on", "never", "--config", config)
        assert change_times(kept) == change_times(settled)
        # and the link sums it finds repositories clean by: as a fresh scan computes them
        assert link_sums(kept) == link_sums(settled) and len(link_sums(kept)) >= 4
    if settle == "0":  # the re-scans did reuse rows (this test would prove nothing otherwise)
        assert skipped(kept)[0] == 0 and all(n > 10 for n in skipped(kept)[1:])
    else:  # the scan right after the first (seconds later) read everything again: it was all too recent
        assert skipped(kept)[:2] == [0, 0]
    # a directory that cannot be listed fails its registry (the inventory stays as it was) ...
    before = inventory(_url(kept))
    locked = [True]
    unlistable(lambda p: locked[0] and p.endswith(os.path.join("repositories", "team", "app0")))
    w.push_image("team/app2", rng)
    invoke(*kept_scan, expect=2)
    after = inventory(_url(kept))
    assert [r for r in after["links"] if r[0] == "private"] == [r for r in before["links"] if r[0] == "private"]
    # ... and once readable again the re-scan catches up with everything
    locked[0] = False
    invoke(*kept_scan)
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)


def test_a_known_indexs_children_are_followed_to_data_that_changed(urls, base, invoke, tmp_path):
    """A child manifest without a revision link is reached only through its index. Once the index is parsed,
    later nights follow its stored references: when the child's data then changes, it is read and hashed
    again, as a full scan into a fresh database does."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    kept_scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    w, _rng, imgs = build(base)
    child = imgs["team/app0"][0].children[0]
    invoke(*kept_scan)
    w.remove_revision("team/app0", child.digest)  # an orphan index child, its data still present
    invoke(*kept_scan)
    w.truncate_blob(child.digest, 10)
    invoke(*kept_scan)
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)

    def seen(url: str) -> tuple[Any, ...]:
        engine = create_engine(_url(url))
        with engine.connect() as c:
            hashed = c.execute(text("SELECT size, computed_digest FROM blob_verifications WHERE digest = :d"),
                               {"d": child.digest}).all()
            detail = c.execute(text("SELECT detail FROM findings WHERE kind = 'orphan_index_child' "
                                    "AND digest = :d AND resolved_run IS NULL"), {"d": child.digest}).scalar_one()
        engine.dispose()
        return sorted(map(tuple, hashed)), json.loads(detail)

    got, want = seen(kept), seen(other)
    assert got == want and got[0][0][0] == 10  # the truncated bytes were hashed
    assert got[1]["child_blob_data_size"] == 10


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "full"])
def test_blob_data_rewritten_with_its_mtime_set_back_is_read_again(urls, base, invoke, tmp_path, full):
    """``cp -p``, ``rsync -a``, ``touch -d`` or a restore can put a file's mtime back, not its ctime. Blob data
    rewritten to the same size with its old mtime is read and hashed again by the next scan of the kept
    database, incremental or ``--full``, as a scan into a fresh database reads it: a manifest (the checks) and a
    layer (``--verify-content``). (Judged by size and mtime, neither scan saw it, and the findings stayed those
    of the old bytes.)"""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w, _rng, imgs = build(base)
    kept_scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config, "--verify-content")
    invoke(*kept_scan)
    _idx, img, _old = imgs["team/app1"]
    for d in (img.digest, img.layers[0]):
        data = w.v2 / "blobs" / "sha256" / d[7:9] / d[7:] / "data"
        rewrite_keeping_mtime(data, b"X" * data.stat().st_size)
    invoke(*kept_scan, *(["--full"] if full else []))
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never", "--verify-content")
    assert_same(kept, other)
    found = {(f["kind"], f["digest"]) for f in json.loads(invoke("findings", "--db", kept, "--format", "json").output)}
    assert ("digest_mismatch", img.layers[0]) in found and ("dangling_tag", img.digest) in found, found


def verifications(url: str) -> list[tuple[str, ...]]:
    """The blob data each registry hashed, as it stands (which bytes the manifest walk read)."""
    return rows_of(url, "SELECT g.name, v.digest, v.size, v.mtime, v.computed_digest, v.parse_error "
                        "FROM blob_verifications v JOIN registries g ON g.id = v.registry_id")


def test_an_incremental_manifest_walk_reads_what_a_walk_from_every_root_reads(urls, base, invoke, tmp_path,
                                                                             monkeypatch):
    """A re-scan walks manifests from the roots its links diff opened and from the changed blobs that a walk
    from every root reaches. Two databases with the same history, the last scan incremental in one and
    ``--full`` in the other, hold the same parses and hashes: a child reached only through its index is read
    again when its data changes, a manifest no root reaches is not read when its data changes (nor one named only by what its index's bytes
    were before they changed), the target of
    a new _layers alias under a reached path is read, and so is a manifest that was on disk, unread, when a
    tag comes to name it."""
    kept, fresh = urls
    twin = fresh()
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w, _rng, imgs = build(base)
    idx0, _img0, old0 = imgs["team/app0"]
    idx1, img1, _old1 = imgs["team/app1"]
    _idx2, _img2, old2 = imgs["team/app2"]
    child = idx0.children[0]

    def manifest(layers: int) -> bytes:
        return json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": img1.config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": img1.config, "size": 2}]
            * layers}).encode()

    lone = w.put_blob(manifest(1))  # no link names it (a half-finished push): never read ...
    stray = w.put_blob(manifest(0))  # the same, until a _layers alias under a reached path names it

    def both(*extra: str) -> None:
        for url in (kept, twin):
            invoke("scan", base, "--db", url, "-q", "--fail-on", "never", "--config", config,
                   *(extra if url == twin else ()))

    both()
    w.remove_revision("team/app0", child.digest)  # reached through its index only
    w.remove_revision("team/app2", old2.digest)  # reached by nothing
    dropped = idx1.children[0]
    w.remove_revision("team/app1", dropped.digest)  # reached through its index only, until ...
    both()
    w.truncate_blob(child.digest, 10)
    blob = w.v2 / "blobs" / "sha256" / old2.digest[7:9] / old2.digest[7:] / "data"
    blob.write_bytes(b'{"schemaVersion": 2}')
    w.write_layer_link("team/app1", img1.digest, stray.encode())  # an alias: a reached path names the stray
    w.tag("team/app0", "again", old0.digest)
    w.tag("team/app2", "lone", lone)  # ... until a tag names it
    index = w.v2 / "blobs" / "sha256" / idx1.digest[7:9] / idx1.digest[7:] / "data"
    same_length_rewrite(index, index.read_bytes().replace(dropped.digest.encode(), b"sha256:" + b"0" * 64))
    w.truncate_blob(dropped.digest, 10)  # ... its index's bytes no longer name it: not read
    walked: list[tuple[set[str], set[str]]] = []
    reached = store.reached_from_roots

    def spy(conn: Any, rid: int, digests: set[str], aliases: dict[str, set[str]]) -> set[str]:
        got = reached(conn, rid, digests, aliases)
        walked.append((digests, got))
        return got

    monkeypatch.setattr(store, "reached_from_roots", spy)
    both("--full")
    asked = set().union(*(d for d, _ in walked))
    found = set().union(*(g for _, g in walked))
    assert {child.digest, old2.digest, stray} <= asked  # the incremental walk ran (not its fallback) ...
    assert {child.digest, stray} <= found and old2.digest not in found  # ... and judged reachability
    a, b = inventory(_url(kept)), inventory(_url(twin))
    assert a == b
    assert verifications(kept) == verifications(twin)
    hashed = {(r[1], r[2]) for r in verifications(kept)}
    assert (child.digest, "10") in hashed and (dropped.digest, "10") not in hashed
    assert {stray, lone} <= {d for d, _size in hashed} and {stray, lone} <= {r[0] for r in a["manifests"]}
    assert (old2.digest, str(blob.stat().st_size)) not in hashed


_HEX = "0123456789abcdef"


@settings(max_examples=300, deadline=None)
@given(dirty=st.sets(st.sampled_from([f"{alg}:{a}{b}{c}{d}" for alg in ("sha256", "sha512") for a in "0f"
                                      for b in "01ef" for c in "0f" for d in _HEX])),
       digests=st.lists(st.tuples(st.sampled_from(["sha256", "sha512"]), st.text(_HEX, min_size=6, max_size=6)),
                        max_size=60))
def test_bucket_ranges_hold_every_digest_inside_the_buckets_given_and_none_outside(dirty, digests):
    """``store.bucket_ranges``: the inventory's side of a blob diff. A digest falls in one of the ranges exactly
    when its bucket is one the crawl gave (edges: the first and last buckets, runs of consecutive buckets, 9 -> a
    and f -> the next digit, both ends of each algorithm)."""
    from regindex.crawl import bucket_of

    ranges = store.bucket_ranges(sorted(dirty))
    edges = [f"{alg}:{h * 6}" for alg in ("sha256", "sha512") for h in "0f"]
    for digest in [f"{alg}:{hx}" for alg, hx in digests] + edges:
        inside = [g for g in ranges if g[0] <= digest < g[1]]
        assert len(inside) == (bucket_of(digest) in dirty), (digest, ranges)


def test_unchanged_blob_buckets_stage_no_blob_and_a_changed_bucket_stages_its_blobs(urls, base, invoke, tmp_path,
                                                                                    monkeypatch):
    """A re-scan stages the blobs of the buckets (an algorithm and four hex digits) whose blobs changed, and
    none of the others: an unchanged night stages no blob row. Blobs truncated, removed and added are each
    seen, and the inventory and what is kept per bucket equal those of a full scan into a fresh database."""
    kept, fresh = urls
    blob_bucket_nights(kept, fresh, base, invoke, tmp_path, monkeypatch)


def test_blob_buckets_on_a_postgresql_database_that_sorts_text_as_en_us(pg_url, base, invoke, tmp_path,
                                                                        monkeypatch):
    """The same nights in a PostgreSQL database whose collation is ICU en-US (':' ';' and '~' do not sort as
    their bytes there): which blobs a night stages and diffs must not depend on the database's text order."""
    admin = create_engine(pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = pg_url.rsplit("/", 1)[1] + "_icu"
    made: list[str] = []

    def fresh() -> str:
        made.append(f"{name}_f{len(made)}")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{made[-1]}"'))
        return pg_url.rsplit("/", 1)[0] + "/" + made[-1]

    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE \'en-US\' '
                       "LOCALE 'C.UTF-8'"))
    try:
        icu = pg_url.rsplit("/", 1)[0] + "/" + name
        engine = create_engine(icu)
        with engine.connect() as c:  # the order that would mislead a range of digests
            assert c.execute(text("SELECT 'sha256:abcd' < 'sha256;'")).scalar_one() is False
        engine.dispose()
        blob_bucket_nights(icu, fresh, base, invoke, tmp_path, monkeypatch)
    finally:
        _drop(admin, [name, *made])


def blob_bucket_nights(kept: str, fresh: Any, base: Path, invoke: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from regindex.crawl import BlobRow, bucket_of

    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w, rng, imgs = build(base)
    # blobs in the first and the last bucket of the digests, each with a neighbour in the next or previous one:
    # the ends of the inventory's ranges
    edge = {prefix: w.put_blob(content_starting(prefix)) for prefix in ("0000", "0001", "fffe", "ffff")}
    staged: list[str] = []
    add = store.Stage.add

    def spy(self: store.Stage, row: Any) -> None:
        if type(row) is BlobRow:
            staged.append(row.digest)
        add(self, row)

    monkeypatch.setattr(store.Stage, "add", spy)
    scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    invoke(*scan)
    everything = len(staged)
    assert everything > 20 and buckets(kept) == bucket_rows(kept)
    staged.clear()
    invoke(*scan)
    assert staged == []  # nothing changed: no blob row staged, none diffed
    idx0, img0, old0 = imgs["team/app0"]
    new = w.put_blob(b"new " + rng.randbytes(40))
    w.truncate_blob(img0.layers[0], 3)
    w.remove_blob(old0.config)
    w.remove_blob(edge["ffff"])
    w.remove_blob(edge["0000"])
    invoke(*scan)
    dirty = {bucket_of(d) for d in (new, img0.layers[0], old0.config, edge["ffff"], edge["0000"])}
    assert {new, img0.layers[0]} <= set(staged) and {bucket_of(d) for d in staged} <= dirty
    assert len(staged) < everything / 4
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)
    assert buckets(kept) == buckets(other) == bucket_rows(kept)


def test_sums_kept_in_another_form_cost_one_night_of_judging_not_a_change_missed(urls, base, invoke, tmp_path):
    """The link sums and blob bucket checksums a database holds may come from another version (their form
    changed once already): such a night judges every repository against the inventory and stages every
    bucket, misses nothing, and keeps the sums a fresh scan computes; the night after finds everything clean."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    w, rng, imgs = build(base)
    invoke(*scan)
    engine = create_engine(_url(kept))
    with engine.begin() as c:
        assert c.execute(text("UPDATE link_sums SET checksum = 'another form'")).rowcount >= 4
        assert c.execute(text("UPDATE blob_buckets SET checksum = 'another form'")).rowcount > 10
    engine.dispose()
    idx0, img0, old0 = imgs["team/app0"]
    w.truncate_blob(img0.layers[0], 3)  # data changed in place: only its own times tell
    rewrite_keeping_mtime(w.v2 / "repositories" / "team/app1" / "_manifests" / "tags" / "latest" / "current" /
                          "link", imgs["team/app1"][2].digest.encode())  # a tag moved, its mtime set back
    invoke(*scan)
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never", "--config", config)
    assert_same(kept, other)
    assert link_sums(kept) == link_sums(other) and buckets(kept) == buckets(other) == bucket_rows(kept)
    invoke(*scan)
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        read, skipped_, links = c.execute(text(
            "SELECT files_read, files_skipped, links FROM runs ORDER BY id DESC LIMIT 1")).one()
    engine.dispose()
    assert (read, skipped_) == (1, links)  # (the one read: the upload's startedat, read every night)


def index_definitions(url: str) -> list[tuple[str, ...]]:
    """A database's indexes as it defines them (name, table, SQL; PostgreSQL: and whether it is valid)."""
    if url.endswith(".db"):
        return rows_of(url, "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                            "ORDER BY name")
    return rows_of(url, "SELECT c.relname, t.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
                        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
                        "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = current_schema() "
                        "ORDER BY c.relname")


def test_a_bulk_load_builds_the_tables_indexes_after_and_a_failure_rolls_the_drop_back(
        urls, base, invoke, tmp_path, monkeypatch):
    """A first load of many rows into a table drops its indexes and builds them after the insert: the database
    ends with the indexes a migrated database has, intact, and the inventory and findings of a scan that kept
    them. A registry that fails after its load rolls the drop back with the rest of its savepoint. PostgreSQL
    drops them only while the table holds nothing committed (DROP INDEX locks readers out until commit): in a
    new database's first scan, never once a scan committed rows."""
    from regindex import scan as scan_mod

    kept, fresh = urls
    monkeypatch.setattr(store, "BULK_INDEX_ROWS", 1)  # (every load into a table that held fewer rows)
    dropped: list[str] = []
    drop = store._drop_indexes_for_bulk

    def spy(conn: Any, table_name: str, stage: str, run_id: int) -> list[str]:
        got = drop(conn, table_name, stage, run_id)
        dropped.extend(table_name for _sql in got[:1])
        return got

    monkeypatch.setattr(store, "_drop_indexes_for_bulk", spy)
    parse = scan_mod._parse_manifests
    failing = [True]

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        if failing[0] and "private" in str(args[3]):  # (its v2 root: the registry with most rows)
            failing[0] = False
            raise StorageError("private: the disk went away")
        return parse(*args, **kwargs)

    monkeypatch.setattr(scan_mod, "_parse_manifests", fail_once)
    build(base)
    scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never")
    invoke(*scan, expect=None)
    sqlite = kept.endswith(".db")
    assert {"links", "blobs"} <= set(dropped)
    reference = fresh()
    engine = db.make_engine(db.resolve_url(reference))
    db.upgrade(engine)  # a database migrated, nothing more
    engine.dispose()
    migrated = index_definitions(reference)
    assert index_definitions(kept) == migrated and len(migrated) > 10
    dropped.clear()
    held = {t: int(rows_of(kept, f"SELECT COUNT(*) FROM {t}")[0][0]) for t in ("links", "blobs", "uploads")}
    invoke(*scan, "--full")  # (a full scan: the registry that failed loads into nothing open again)
    assert {"links", "blobs"} <= set(dropped) if sqlite else {t for t in dropped if held[t]} == set()
    assert held["links"] and held["blobs"]
    other = fresh()
    monkeypatch.setattr(store, "BULK_INDEX_ROWS", 10**9)
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)
    assert index_definitions(kept) == migrated
    if sqlite:
        assert rows_of(kept, "PRAGMA integrity_check") == [("ok",)]


def content_starting(prefix: str) -> bytes:
    """Bytes whose sha256 starts with ``prefix`` (found by trying: ~16^len tries)."""
    i = 0
    while not sha256(b"%d" % i).startswith("sha256:" + prefix):
        i += 1
    return b"%d" % i


def buckets(url: str) -> list[tuple[str, ...]]:
    """What a database keeps per blob bucket, by registry name."""
    return rows_of(url, "SELECT g.name, k.bucket, k.blobs, k.bytes, k.checksum FROM blob_buckets k "
                        "JOIN registries g ON g.id = k.registry_id")


def bucket_rows(url: str) -> list[tuple[str, ...]]:
    """The same, computed from the inventory's open blobs."""
    from regindex.crawl import BlobRow, bucket_checksum, bucket_of

    engine = create_engine(_url(url))
    groups: dict[tuple[str, str], list[BlobRow]] = {}
    with engine.connect() as c:
        for name, digest, size, mtime in c.execute(text(
                "SELECT g.name, b.digest, b.size, b.mtime FROM blobs b JOIN registries g ON g.id = b.registry_id "
                "WHERE b.gone_run IS NULL")):
            groups.setdefault((name, bucket_of(digest)), []).append(BlobRow(digest, int(size), float(mtime)))
    engine.dispose()
    return sorted((name, b, str(len(rows)), str(sum(r.size for r in rows)), bucket_checksum(rows))
                  for (name, b), rows in groups.items())


def test_full_scans_read_every_link_and_incremental_ones_only_what_changed(urls, base, invoke, tmp_path):
    """Who reads what: ``--full`` and ``full_scan_every`` read every link; an incremental scan reads only links
    that changed since (or within the settle window of) the scan that read them; runs record which they were."""
    import json

    kept, _fresh = urls
    w, rng, imgs = build(base)
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\nfull_scan_every = 2\n")
    run = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    invoke(*run)  # 1: a first scan: nothing to reuse
    invoke(*run)  # 2: incremental
    w.tag("team/app0", "latest", imgs["team/app0"][2].digest)  # one tag moved: its current link rewritten
    invoke(*run)  # 3: full by the schedule (every 2nd scan)
    invoke(*run)  # 4: incremental
    invoke(*run, "--full")  # 5: full on demand (and the schedule counts from it)
    invoke(*run)  # 6: incremental
    runs = sorted(json.loads(invoke("runs", "--db", kept, "--format", "json").output), key=lambda r: r["id"])
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        full = [r[0] for r in c.execute(text("SELECT full_scan FROM runs ORDER BY id"))]
        uploads = c.execute(text("SELECT uploads FROM runs WHERE id = 1")).scalar_one()
    engine.dispose()
    assert [bool(f) for f in full] == [True, False, True, False, True, False]
    links = runs[0]["links"]
    assert uploads == 1
    for r, f in zip(runs, full):
        if f:
            assert r["files_skipped"] == 0 and r["files_read"] >= r["links"] >= links
        else:
            assert r["files_skipped"] + r["files_read"] == r["links"] + uploads  # uploads' startedat
            assert r["files_read"] <= uploads + 2  # (+ the moved tag's two links in run 4: none)
    assert [r.get("full_scan") for r in runs] == [bool(f) for f in full]


def test_known_links_of_the_repositories_not_found_clean_come_in_batches_and_equal_one_query_per_repository(
    urls, base, invoke, tmp_path,
):
    """Without link sums every repository the crawl walks is asked about, in batches; a batch's answer equals
    what a query for each repository alone returns, whatever the batch, and a repository the inventory does not
    hold has no links."""
    from regindex import store
    from regindex.crawl import _JUDGE_REPOSITORIES

    kept, _fresh = urls
    w, rng, _imgs = build(base)
    for repo in ("team/app0/nested", "team/app0/nested/deeper", "team/app0-x", "team/app0.y", "zz"):
        w.push_image(repo, rng)
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")  # every link read is settled: it has a change time to reuse
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    engine = create_engine(_url(kept))
    with engine.connect() as conn:
        rid = conn.execute(text("SELECT id FROM registries WHERE name = 'private'")).scalar_one()
        alone = {}
        for (name,) in conn.execute(text("SELECT name FROM repositories WHERE registry_id = :r AND gone_run IS NULL"),
                                    {"r": rid}):
            rows = conn.execute(text(
                "SELECT kind, tag, path_digest, changed, id FROM links WHERE registry_id = :r AND gone_run IS NULL "
                "AND repository = :n AND changed IS NOT NULL"), {"r": rid, "n": name})
            alone[name] = {(k, t, p): (float(c), int(i)) for k, t, p, c, i in rows}
        assert sum(map(len, alone.values())) > 20 and all(alone.values())
        asked: list[list[str]] = []
        from regindex.crawl import crawl_into, discover

        root = next(r for r in discover(base) if r.name == "private")
        crawl_into(root, lambda row: None, known=lambda names: asked.append(names) or {n: {} for n in names})
        walked = [n for names in asked for n in names]
        assert sorted(walked) == sorted(alone) and "team/app0/nested/deeper" in walked
        assert all(len(names) <= _JUDGE_REPOSITORIES for names in asked)
        known = store.KnownLinks(conn, rid)
        for batch in ([walked[i:i + 3] for i in range(0, len(walked), 3)], [walked[::-1]], [[n] for n in walked]):
            got = {}
            for names in batch:
                got.update({n: {k: tuple(v) for k, v in links.items()} for n, links in known(names).items()})
            assert got == alone
        assert known(["not/here", walked[0]])["not/here"] == {}
    engine.dispose()


def test_runs_show_phase_timings_and_file_counts(urls, base, invoke):
    import json

    kept, _fresh = urls
    build(base)
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")
    runs = json.loads(invoke("runs", "--db", kept, "--format", "json").output)
    assert len(runs) == 1
    r = runs[0]
    assert r["files_stat"] > 0 and r["files_read"] > 0 and r["files_skipped"] == 0
    phases = [p.split()[0] for p in r["phases"].split(", ")]
    assert phases == ["discover", "crawl", "load", "manifests", "checks", "history"]
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        files = c.execute(text("SELECT items FROM run_phases WHERE phase = 'crawl'")).scalar_one()
        seen = c.execute(text("SELECT SUM(files_seen) FROM run_registries")).scalar_one()
    engine.dispose()
    assert files == seen  # links, blob data and uploads seen
    assert r["files_stat"] > seen // 2 and r["files_read"] >= r["links"]  # listings and stats; every link read


def history_at(kept: str, revision: str, counts: dict[str, int], link: str | None = None) -> None:
    """A database built by the schema ``revision``, holding what it would: run 1 (with its ``counts``),
    registry ``r`` scanned by it, an open finding ``k`` and (``link``) a revision link episode of team/app."""
    from alembic import command

    engine = db.make_engine(db.resolve_url(kept))
    with engine.begin() as c:
        command.upgrade(db.alembic_config(c), revision)
        c.execute(text(f"INSERT INTO runs (id, started_at, status, base, {', '.join(counts)}) VALUES "
                       f"(1, '2026-11-01 00:00:00', 'complete', '/x', {', '.join(':' + k for k in counts)})"),
                  counts)
        c.execute(text("INSERT INTO registries (id, name, root, role, first_run, last_scanned_run) VALUES "
                       "(1, 'r', '/x', 'authoritative', 1, 1)"))
        if link:
            c.execute(text("INSERT INTO links (registry_id, repository, kind, path_digest, target_digest, state, "
                           "first_run) VALUES (1, 'team/app', 'revision', :d, :d, 'ok', 1)"), {"d": link})
        c.execute(text("INSERT INTO findings (key, episode, kind, severity, registry, detail, first_run, "
                       "last_seen_run) VALUES ('k', 1, 'empty_blob', 'error', 'r', '{}', 1, 1)"))
        if c.dialect.name == "postgresql":  # rows inserted with explicit ids: move the sequence on
            c.execute(text("SELECT setval('runs_id_seq', 1)"))
            c.execute(text("SELECT setval('registries_id_seq', 1)"))
    engine.dispose()


def test_0005_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0004_run_open_errors (the previous head) with real runs and findings keeps all of it;
    the new columns are NULL."""
    kept, _fresh = urls
    history_at(kept, "0004_run_open_errors", {"links": 42})
    w = StorageWriter(base / "r")
    w.put_blob(b"x")
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")  # upgrades, then scans
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        old = c.execute(text("SELECT links, files_stat, files_read FROM runs WHERE id = 1")).one()
        assert tuple(old) == (42, None, None)
        assert c.execute(text("SELECT COUNT(*) FROM findings WHERE key = 'k'")).scalar_one() == 1
        assert c.execute(text("SELECT COUNT(*) FROM run_phases WHERE run_id = 2")).scalar_one() >= 5
        assert c.execute(text("SELECT COUNT(*) FROM run_phases WHERE run_id = 1")).scalar_one() == 0
        assert c.execute(text("SELECT COUNT(*) FROM blobs WHERE digest = :d"), {"d": sha256(b"x")}).scalar_one() == 1
    engine.dispose()


def scanned_after_upgrade(kept: str, base: Path, invoke: Any, revision: str) -> tuple[Any, Engine]:
    """Registry ``r`` with team/app pushed, a database built by ``revision`` holding its history (``history_at``:
    run 1, finding ``k``, the image's revision link), then a scan, which upgrades it first. Asserts the
    database is at the head and finding ``k`` is still there; returns the image and an engine on the database."""
    w = StorageWriter(base / "r")
    img = w.push_image("team/app", random.Random(3))
    history_at(kept, revision, {"links": 1, "files_read": 1}, link=img.digest)
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")  # upgrades, then scans
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        assert c.execute(text("SELECT COUNT(*) FROM findings WHERE key = 'k'")).scalar_one() == 1
    return img, engine


def test_0006_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0005_run_phases (the previous head) with a run, findings and link episodes keeps all
    of it; old links have no settled change time, so the first scan after the upgrade reads every link."""
    kept, _fresh = urls
    img, engine = scanned_after_upgrade(kept, base, invoke, "0005_run_phases")
    with engine.connect() as c:
        assert c.execute(text("SELECT links, files_read, full_scan FROM runs WHERE id = 1")).one() == (1, 1, None)
        # the old revision link's episode goes on (same identity), now with a change time
        old = c.execute(text("SELECT first_run, gone_run, changed FROM links WHERE path_digest = :d "
                             "AND kind = 'revision'"), {"d": img.digest}).one()
        assert old[:2] == (1, None)
        r2 = c.execute(text("SELECT files_skipped, files_read, links, full_scan FROM runs WHERE id = 2")).one()
        assert r2.files_skipped == 0 and r2.files_read >= r2.links > 1
        assert r2.full_scan is not None and not r2.full_scan  # incremental, with nothing settled to reuse
    engine.dispose()


class MemoryStorage:
    """Storage that is not a filesystem: a dict of paths, as an object store's listing would give them."""

    def __init__(self, top: Path) -> None:
        from regindex.storage import DIR, FILE

        self.kinds: dict[str, str] = {}
        self.data: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self.changed: dict[str, float] = {}  # (an object store's LastModified)
        for root, dirs, files in os.walk(top):
            self.kinds[root] = DIR
            for f in files:
                p = os.path.join(root, f)
                self.kinds[p] = FILE
                self.data[p] = Path(p).read_bytes()
                st = os.lstat(p)
                self.mtimes[p], self.changed[p] = st.st_mtime, max(st.st_mtime, st.st_ctime)
        self.calls = 0

    def join(self, path: str, name: str) -> str:
        return f"{path}/{name}"

    def list(self, path: str) -> Any:
        from regindex.storage import Entry

        self.calls += 1
        if self.kinds.get(path) != "dir":
            return None
        prefix = path + "/"
        names = sorted({p[len(prefix):].split("/")[0] for p in self.kinds if p.startswith(prefix)})
        return [Entry(n, prefix + n, self.kinds[prefix + n]) for n in names]

    def stat(self, path: str) -> Any:
        from regindex.storage import Stat

        self.calls += 1
        kind = self.kinds.get(path)
        return None if kind is None else Stat(kind, len(self.data.get(path, b"")), self.mtimes.get(path, 0.0),
                                              self.changed.get(path, 0.0))

    def stat_many(self, paths: list[str]) -> list[Any]:
        return [self.stat(p) for p in paths]

    def read(self, path: str, limit: int) -> Any:
        from regindex.storage import Read

        self.calls += 1
        kind = self.kinds.get(path)
        if kind is None:
            return None
        return Read(kind, self.data[path][:limit]) if kind == "file" else Read("other")


def test_the_crawl_reaches_storage_only_through_the_storage_interface(base, monkeypatch):
    """An object-store backend can replace the filesystem: with every filesystem call refused, a crawl through
    another Storage gives exactly the rows of the filesystem crawl."""
    from regindex.crawl import crawl_into, discover

    w, _rng, _imgs = build(base)
    w.write_layer_link("team/app0", sha256(b"q"), b"garbage")
    root = discover(base)[1]
    assert root.name == "private"
    on_disk: list[Any] = []
    crawl_into(root, on_disk.append)
    mem = MemoryStorage(base)

    def refused(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the crawl touched the filesystem")

    for name in ("scandir", "lstat", "stat", "open", "listdir", "access"):
        monkeypatch.setattr(os, name, refused)
    from_memory: list[Any] = []
    stats = crawl_into(root, from_memory.append, fs=mem)
    monkeypatch.undo()
    assert sorted(from_memory, key=repr) == sorted(on_disk, key=repr) and len(on_disk) > 50  # rows carry no order
    assert mem.calls == stats.stat + stats.read


# ---------------------------------------------------------------------------------------------
# Carried findings: a night that changes nothing derives only the clock's checks


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of the checks that ran, in order (each check wrapped)."""
    import dataclasses

    from regindex import checks

    ran: list[str] = []
    for kind, c in list(checks.CHECKS.items()):
        def wrapped(ctx: Any, opts: Any, _c: Any = c) -> Any:
            ran.append(_c.kind)
            return _c.run(ctx, opts)
        monkeypatch.setitem(checks.CHECKS, kind, dataclasses.replace(c, run=wrapped))
    return ran


def scan_at(url: str, base: Path, now: Any, **opts: Any) -> Any:
    from regindex.scan import ScanOptions, run_scan

    engine = db.open_writer(url)
    try:
        return run_scan(engine, ScanOptions(base=base, now=now, settle_seconds=0, **opts))
    finally:
        engine.dispose()


def open_findings(url: str) -> dict[str, tuple[Any, ...]]:
    engine = create_engine(_url(url))
    with engine.connect() as c:
        out = {r[0]: tuple(r[1:]) for r in c.execute(text(
            "SELECT key, kind, severity, detail, hint, policy, last_seen_run FROM findings WHERE resolved_run IS NULL"))}
    engine.dispose()
    return out


def without_run(found: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: v[:-1] for k, v in found.items()}


def damaged(base: Path) -> tuple[StorageWriter, random.Random, dict[str, Any]]:
    """``build`` with an orphan layer link, a dangling tag and manifest bytes that are not their digest's."""
    w, rng, imgs = build(base)
    idx0, img0, old0 = imgs["team/app0"]
    w.remove_blob(img0.layers[0])
    (w.v2 / "repositories" / "team/app1/_manifests/tags/latest/current/link").unlink()
    data = w.path(BlobDataPath(old0.digest))
    same_length_rewrite(data, data.read_bytes().replace(b'\n   "schemaVersion"', b'\n  "schemaVersion" '))
    return w, rng, imgs


def test_an_unchanged_night_carries_its_findings_and_derives_only_the_clock(urls, base, calls, monkeypatch):
    """Nothing changed: no manifest is read again (not even bytes that are not their digest's), only the
    clock's check runs (an upload came of age), and the open findings equal a fresh database's."""
    from datetime import datetime, timedelta, timezone

    from regindex import checks, scan

    kept, fresh = urls
    w, _rng, _imgs = damaged(base)
    t0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    w.upload("team/app2", "u-2", t0 - timedelta(hours=167, minutes=30))  # stale from t0 + 30 min
    scan_at(kept, base, t0)
    assert set(calls) == set(checks.CHECKS)
    before = open_findings(kept)
    assert {f[0] for f in before.values()} >= {"orphan_layer_link", "dangling_tag", "digest_mismatch",
                                                "stale_upload"}
    reads: list[str] = []
    real_read = scan.read_blob
    monkeypatch.setattr(scan, "read_blob", lambda *a: reads.append(a[1]) or real_read(*a))
    calls.clear()
    out = scan_at(kept, base, t0 + timedelta(hours=1))
    assert calls == sorted(checks.CLOCK_KINDS) and reads == []
    after = open_findings(kept)
    assert out.counts.new == 1 and out.counts.resolved == 0  # u-2
    assert all(v[-1] == out.run_id for v in after.values())  # every open finding seen by this run
    assert {k: v for k, v in without_run(after).items() if v[0] != "stale_upload"} == \
        {k: v for k, v in without_run(before).items() if v[0] != "stale_upload"}
    other = fresh()
    scan_at(other, base, t0 + timedelta(hours=1))
    assert without_run(open_findings(other)) == without_run(after)


def test_carried_findings_are_derived_again_when_their_rules_options_or_role_change(urls, base, calls):
    """A new severity rule, another role (``--cache``), another stale age or ``--full`` derive every check."""
    from datetime import datetime, timezone

    from regindex import checks
    from regindex.policy import Rule

    kept, fresh = urls
    damaged(base)
    t0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    scan_at(kept, base, t0)
    everything = set(checks.CHECKS)
    for opts in ({"severity_rules": (Rule("warning", kind="orphan_layer_link"),)},
                 {"caches": frozenset({"other"})}, {"stale_upload_hours": 1.0}, {"full": True}):
        calls.clear()
        scan_at(kept, base, t0, **opts)
        assert set(calls) == everything, opts
        calls.clear()
        scan_at(kept, base, t0, **opts)  # and the same again is carried (but --full derives everything)
        assert set(calls) == (everything if opts.get("full") else checks.CLOCK_KINDS), opts
        other = fresh()
        scan_at(other, base, t0, **opts)
        assert without_run(open_findings(other)) == without_run(open_findings(kept)), opts
    severities = {v[0]: v[1] for v in open_findings(kept).values()}
    assert severities["orphan_layer_link"] == "error"  # the rule is gone again: graded by the check


def unlinked_in_other(kept: str, base: Path) -> tuple[StorageWriter, random.Random, bytes, Any]:
    """``build``, plus a blob ``layer`` registry "other" holds and no link names, scanned once at ``t0``."""
    from datetime import datetime, timezone

    w, rng, _imgs = build(base)
    layer = rng.randbytes(300)
    StorageWriter(base / "other").put_blob(layer)
    t0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    scan_at(kept, base, t0)
    return w, rng, layer, t0


def derived_again(calls: list[str], kept: str, other: str, base: Path, t0: Any, layer: bytes) -> None:
    """The next scan derives every check (a manifest was parsed in the run), "other"'s finding still says no
    manifest names ``layer`` (a manifest of "private" is no manifest of "other": its garbage-collect marks
    from its own revisions and reclaims the blob), and the open findings equal those of a scan into the fresh
    database ``other``."""
    from regindex import checks

    calls.clear()
    scan_at(kept, base, t0)
    assert set(calls) == set(checks.CHECKS)
    assert not named(kept, layer)
    scan_at(other, base, t0)
    assert without_run(open_findings(other)) == without_run(open_findings(kept))


def named(url: str, layer: bytes) -> bool:
    """Whether registry "other"'s unreferenced_blob finding for ``layer`` says a manifest names it."""
    import json

    engine = create_engine(_url(url))
    with engine.connect() as c:
        got = c.execute(text("SELECT detail FROM findings WHERE resolved_run IS NULL AND kind = "
                             "'unreferenced_blob' AND registry = 'other' AND digest = :d"),
                        {"d": sha256(layer)}).scalar_one()
    engine.dispose()
    return bool(json.loads(got)["named_by_a_manifest"])


def test_a_manifest_new_in_one_registry_derives_the_others_again(urls, base, calls):
    """Parses are shared by digest, but count only where a registry's tree reaches them: a manifest pushed to one
    registry that names a blob another registry holds unlinked leaves that registry's finding as it was (and
    as a fresh scan says); the run derives every registry's checks all the same (a parse was made)."""
    kept, fresh = urls
    w, rng, layer, t0 = unlinked_in_other(kept, base)
    assert not named(kept, layer)
    w.push_image("team/late", rng, layers=[layer])  # only "private" changes
    derived_again(calls, kept, fresh(), base, t0, layer)


def test_0007_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0006_incremental (the previous head) with a run and findings keeps all of it; its
    registries have no fingerprint, so the first scan after the upgrade derives every check."""
    kept, _fresh = urls
    _img, engine = scanned_after_upgrade(kept, base, invoke, "0006_incremental")
    with engine.connect() as c:
        assert c.execute(text("SELECT links, files_read FROM runs WHERE id = 1")).one() == (1, 1)
        fp = c.execute(text("SELECT checks_fingerprint FROM registries WHERE name = 'r'")).scalar_one()
        assert fp is not None and len(fp) == 64
        # the old finding was derived again by the first scan: not found, it is resolved by run 2
        assert c.execute(text("SELECT resolved_run FROM findings WHERE key = 'k'")).scalar_one() == 2
    engine.dispose()


def test_0008_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0007_checks_fingerprint (the previous head) with a run, a link episode and a finding
    keeps all of it; the views 0008 rewrote answer as their first definitions did."""
    from .test_rules_parity import rewritten_views_as_first_defined

    kept, _fresh = urls
    img, engine = scanned_after_upgrade(kept, base, invoke, "0007_checks_fingerprint")
    with engine.connect() as c:
        assert c.execute(text("SELECT links, files_read FROM runs WHERE id = 1")).one() == (1, 1)
        assert c.execute(text("SELECT first_run, gone_run FROM links WHERE path_digest = :d AND kind = 'revision'"),
                         {"d": img.digest}).one() == (1, None)
        # derived under the new schema (the fingerprint names the head): the old finding is resolved by run 2
        assert c.execute(text("SELECT resolved_run FROM findings WHERE key = 'k'")).scalar_one() == 2
        rewritten_views_as_first_defined(c)
    engine.dispose()


def test_0009_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0008_serving_lookups (the previous head) with a run, link episodes (one of them a
    _layers alias) and a finding keeps all of it; the new partial index holds the alias the old schema stored,
    and the manifest walk's lookup (through that index on SQLite) finds it; a scan then works as before."""
    kept, _fresh = urls
    path, target = sha256(b"path"), sha256(b"target")
    history_at(kept, "0008_serving_lookups", {"links": 2}, link=sha256(b"manifest"))
    engine = db.make_engine(db.resolve_url(kept))
    with engine.begin() as c:
        c.execute(text("INSERT INTO links (registry_id, repository, kind, path_digest, target_digest, state, "
                       "first_run) VALUES (1, 'team/app', 'layer', :p, :t, 'ok', 1)"), {"p": path, "t": target})
    engine.dispose()
    engine = db.open_writer(kept)  # upgrades
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        assert {"ix_links_aliases", "ix_links_unsettled"} <= {i["name"] for i in inspect(c).get_indexes("links")}
        assert store.layer_aliases(c, 1) == {path: {target}}
        assert c.execute(text("SELECT COUNT(*) FROM links WHERE first_run = 1 AND gone_run IS NULL")).scalar_one() == 2
        assert c.execute(text("SELECT links FROM runs WHERE id = 1")).scalar_one() == 2
        assert c.execute(text("SELECT COUNT(*) FROM findings WHERE key = 'k'")).scalar_one() == 1
    engine.dispose()
    StorageWriter(base / "r").push_image("team/app", random.Random(3))
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")
    engine = create_engine(_url(kept))
    with engine.connect() as c:  # the scan closed the episodes the tree no longer holds, the alias among them
        assert c.execute(text("SELECT gone_run FROM links WHERE path_digest = :p"), {"p": path}).scalar_one() == 2
        assert store.layer_aliases(c, 1) == {}
    engine.dispose()


def test_0010_upgrades_a_database_with_history(urls, base, invoke):
    """A database built by 0009_partial_link_indexes (the previous head) with a run, a link episode and a
    finding keeps all of it; ``blob_buckets`` starts empty, so the first scan after the upgrade stages every
    blob, and fills it with what the inventory holds; the next scan finds every bucket the same."""
    kept, _fresh = urls
    img, engine = scanned_after_upgrade(kept, base, invoke, "0009_partial_link_indexes")
    with engine.connect() as c:
        assert c.execute(text("SELECT links, files_read FROM runs WHERE id = 1")).one() == (1, 1)
        assert c.execute(text("SELECT first_run, gone_run FROM links WHERE path_digest = :d AND kind = 'revision'"),
                         {"d": img.digest}).one() == (1, None)
    engine.dispose()
    held = buckets(kept)
    assert held and held == bucket_rows(kept) and sum(int(r[2]) for r in held) == len(img.blobs) + 1  # + manifest
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")
    assert buckets(kept) == held


def test_0011_upgrades_a_database_with_history(urls, base, invoke, tmp_path):
    """A database built by 0010_blob_buckets (the previous head) with a run, a link episode, a blob bucket and a
    finding keeps all of it; ``link_sums`` starts empty, so the first scan after the upgrade judges every link
    by itself and fills it with what a fresh scan computes; the next scan finds the repository clean and reads
    none of its links."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    img = StorageWriter(base / "r").push_image("team/app", random.Random(3))
    history_at(kept, "0010_blob_buckets", {"links": 1, "files_read": 1}, link=img.digest)
    engine = db.make_engine(db.resolve_url(kept))
    with engine.begin() as c:
        c.execute(text("INSERT INTO blob_buckets (registry_id, bucket, blobs, bytes, checksum) "
                       "VALUES (1, 'sha256:0000', 1, 5, 'c')"))
    engine.dispose()
    scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    invoke(*scan)  # upgrades, then scans
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        assert c.execute(text("SELECT links, files_read FROM runs WHERE id = 1")).one() == (1, 1)
        assert c.execute(text("SELECT COUNT(*) FROM findings WHERE key = 'k'")).scalar_one() == 1
        assert c.execute(text("SELECT first_run, gone_run FROM links WHERE path_digest = :d AND kind = 'revision'"),
                         {"d": img.digest}).one() == (1, None)
        links = c.execute(text("SELECT COUNT(*) FROM links WHERE gone_run IS NULL")).scalar_one()
    engine.dispose()
    held = link_sums(kept)
    assert [r[:3] for r in held] == [("r", "team/app", str(links))]
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never", "--config", config)
    assert link_sums(other) == held
    invoke(*scan)
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert c.execute(text("SELECT files_read, files_skipped FROM runs WHERE id = 3")).one() == (0, links)
    engine.dispose()
    assert link_sums(kept) == held


def test_0012_upgrades_a_database_with_history(urls, base, invoke, tmp_path):
    """A database built by 0011_link_sums (the previous head) with a run, a revision link episode, a finding,
    and what the old schema let stand: the parse of the image's config (once a tag's target: "not a manifest")
    and the truncated_manifest finding it gave through the config's _layers link. The upgrade keeps all of
    it and records no reach (``reached_run`` NULL); the first scan walks from every root though nothing
    changed, records what the tree reaches, and resolves the finding a fresh scan does not give; the next night
    is unchanged and carries everything."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w = StorageWriter(base / "r")
    img = w.push_image("team/app", random.Random(3))
    history_at(kept, "0011_link_sums", {"links": 1, "files_read": 1}, link=img.digest)
    engine = db.make_engine(db.resolve_url(kept))
    with engine.begin() as c:
        c.execute(text("INSERT INTO manifests (digest, size, kind, parse_error, bad_refs, parsed_run) "
                       "VALUES (:d, :s, 'unknown', 'not a manifest', 0, 1)"),
                  {"d": img.config, "s": w.path(BlobDataPath(img.config)).stat().st_size})
        c.execute(text("INSERT INTO findings (key, episode, kind, severity, registry, repository, digest, detail, "
                       "first_run, last_seen_run) VALUES ('t', 1, 'truncated_manifest', 'error', 'r', 'team/app', "
                       ":d, '{}', 1, 1)"), {"d": img.config})
    engine.dispose()
    engine = db.open_writer(kept)  # upgrades
    with engine.connect() as c:
        assert db.current_revision(c) == db.head_revision()
        assert c.execute(text("SELECT reached_run FROM registries WHERE name = 'r'")).scalar_one() is None
        assert c.execute(text("SELECT COUNT(*) FROM manifest_reach")).scalar_one() == 0
        assert c.execute(text("SELECT COUNT(*) FROM findings WHERE resolved_run IS NULL")).scalar_one() == 2
        assert c.execute(text("SELECT links, files_read FROM runs WHERE id = 1")).one() == (1, 1)
        assert c.execute(text("SELECT COUNT(*) FROM manifests WHERE digest = :d"), {"d": img.config}).scalar_one() == 1
    engine.dispose()
    scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    invoke(*scan)
    other = fresh()
    invoke("scan", base, "--db", other, "-q", "--fail-on", "never")
    assert_same(kept, other)
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert c.execute(text("SELECT reached_run FROM registries WHERE name = 'r'")).scalar_one() == 2
        assert [r[0] for r in c.execute(text("SELECT digest FROM manifest_reach"))] == [img.digest]
        assert c.execute(text("SELECT resolved_run FROM findings WHERE key = 't'")).scalar_one() == 2
        assert c.execute(text("SELECT first_run, gone_run FROM links WHERE path_digest = :d AND kind = 'revision'"),
                         {"d": img.digest}).one() == (1, None)
    engine.dispose()
    invoke(*scan)
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert c.execute(text("SELECT manifests_parsed, inventory_changes FROM runs WHERE id = 3")).one() == (0, 0)
        assert c.execute(text("SELECT reached_run FROM registries WHERE name = 'r'")).scalar_one() == 2
    engine.dispose()
    assert_same(kept, other)


def test_a_registry_that_failed_is_derived_again_on_its_next_unchanged_night(urls, base, calls, unlistable):
    """While "other" could not be read, "private" parsed a manifest naming a blob "other" holds unlinked; the
    next night "other" is readable and unchanged since the last scan that read it, but its findings predate
    that manifest: they are derived again, not carried (and say what a fresh scan says)."""
    kept, fresh = urls
    w, rng, layer, t0 = unlinked_in_other(kept, base)
    locked = [True]
    unlistable(lambda p: locked[0] and p.endswith(os.path.join("other", "docker", "registry", "v2", "repositories")))
    w.push_image("team/late", rng, layers=[layer])
    assert scan_at(kept, base, t0).status == "partial"
    assert not named(kept, layer)  # "other" failed: its findings stay as they were
    locked[0] = False
    derived_again(calls, kept, fresh(), base, t0, layer)


# ---------------------------------------------------------------------------------------------
# Scoped derivation: a night that changed little derives the per-repository checks only where it can matter


def whole_and_open(url: str, now: Any) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """Every check derived over the whole current inventory, and the open findings, by key."""
    from regindex import checks
    from regindex.policy import grade

    engine = create_engine(_url(url))
    with engine.connect() as c:
        regs = [r[0] for r in c.execute(text("SELECT id FROM registries"))]
        found = checks.run_checks(c, regs, checks.CheckOptions(now=now))
        grade(found, ())
        whole = {f.key: (f.kind, f.severity, f.detail_json(), f.hint, f.policy) for f in found}
        open_ = {r[0]: tuple(r[1:]) for r in c.execute(text(
            "SELECT key, kind, severity, detail, hint, policy FROM findings WHERE resolved_run IS NULL"))}
    engine.dispose()
    return whole, open_


def phase_items(url: str, run_id: int, phase: str) -> int | None:
    engine = create_engine(_url(url))
    with engine.connect() as c:
        got = c.execute(text("SELECT items FROM run_phases WHERE run_id = :r AND phase = :p"),
                        {"r": run_id, "p": phase}).scalar_one()
    engine.dispose()
    return got


def closure_steps(w: StorageWriter, rng: random.Random, imgs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Changes whose effect on a repository's findings comes through something the repository does not hold
    itself: another repository's link, a blob two manifests away."""
    idx2, _img2, old2 = imgs["team/app2"]
    child = idx2.children[0]
    orphan = old2.layers[0]
    elsewhere = imgs["team/app0"][2].config  # its data is present
    nowhere = sha256(b"data no registry holds")
    return [
        # a link whose own data is gone and that names present data: an orphan that counts that data's linkers
        ("a layer link names data present under another digest", lambda: w.write_layer_link(
            "team/app0", nowhere, elsewhere.encode())),
        ("another repository links the data it names", lambda: w.link_layer("team/app2", elsewhere)),
        ("a layer's data is gone", lambda: w.remove_blob(orphan)),
        # app2's orphan layer link counts the other repositories linking the digest
        ("another repository links the orphan's digest", lambda: w.link_layer("team/app1", orphan)),
        ("and unlinks it again", lambda: w.remove_layer_link("team/app1", orphan)),
        ("an index child loses its revision link", lambda: w.delete_revision_link("team/app2", child.digest)),
        ("the orphan child's config loses its _layers link", lambda: w.remove_layer_link("team/app2", child.config)),
        # app2 links neither the config nor the child now: its finding's evidence is two manifests away
        ("the orphan child's config data is gone", lambda: w.remove_blob(child.config)),
    ]


def digest_steps(w: StorageWriter, rng: random.Random, imgs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Changes to the evidence of the digest-scoped kinds: what makes a blob unreferenced (a tag as its only
    reference, a manifest in another registry that names it, a link by path only), a blob emptied and its
    linkers, a truncated config and the manifest that declares its size."""
    kid = imgs["team/app1"][0].children[-1]
    loose = {"empty": w.put_blob(b"emptied later " + rng.randbytes(8)),
             "solo": w.put_blob(b"referenced by a tag alone " + rng.randbytes(8)),
             "named": w.put_blob(b"named by a manifest elsewhere " + rng.randbytes(8)),
             "path": w.put_blob(b"linked by path alone " + rng.randbytes(8))}
    _idx0, img0, _old0 = imgs["team/app0"]
    other = StorageWriter(w.root.parent / "other")

    def named_elsewhere() -> None:  # an image in "other" whose config is the digest "private" holds unlinked
        other.put_blob(w.v2.joinpath("blobs", "sha256", loose["named"][7:9], loose["named"][7:], "data").read_bytes())
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": loose["named"],
                       "size": 38}, "layers": []}).encode()
        other.link_revision("lib/x", other.put_blob(manifest))

    return [
        ("loose blobs appear", lambda: None),  # put above, before the first step's scan
        ("a tag names a blob no link names", lambda: w.tag("team/app0", "solo", loose["solo"])),
        ("the tag goes", lambda: w.remove_tag("team/app0", "solo")),
        ("a manifest in another registry names an unlinked blob", named_elsewhere),
        ("a link names a blob by its path alone", lambda: w.write_layer_link("team/app1", loose["path"],
                                                                              img0.config.encode())),
        ("that link is emptied", lambda: w.write_layer_link("team/app1", loose["path"], b"")),
        ("a linked blob's data is emptied", lambda: (w.link_layer("team/app1", loose["empty"]),
                                                     w.truncate_blob(loose["empty"], 0))),
        ("its link goes", lambda: w.remove_layer_link("team/app1", loose["empty"])),
        ("an index child's config is truncated", lambda: w.truncate_blob(kid.config, 3)),
        ("the child's manifest data is gone", lambda: w.remove_blob(kid.digest)),
    ]


def blocker_steps(w: StorageWriter, imgs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Changes to what makes garbage-collect abort in a repository: its ``_manifests/tags`` directory (with
    --delete-untagged and an untagged revision), a revision link that does not parse, data a revision names
    that is not a manifest."""
    tags = w.v2 / "repositories" / "team" / "app2" / "_manifests" / "tags"
    _idx1, img1, old1 = imgs["team/app1"]
    return [
        ("a repository's _manifests/tags directory goes", lambda: shutil.move(tags, w.root.parent / "tags-parked")),
        ("and comes back", lambda: shutil.move(w.root.parent / "tags-parked", tags)),
        ("a revision link is garbage", lambda: w.write_revision_link("team/app1", old1.digest, b"not a digest")),
        ("a revision names data that is not a manifest", lambda: w.link_revision("team/app1", img1.config)),
    ]


def test_a_scoped_derivation_equals_a_whole_one_after_every_kind_of_change(urls, base):
    """Each change alone, then the night's scan (incremental: its per-repository checks derived only for the
    repositories the change can reach): its open findings, with their detail and hint, are every check derived
    over the whole inventory, and every one of them was seen by that scan."""
    from datetime import datetime, timezone

    kept, _fresh = urls
    w, rng, imgs = build(base)
    t0 = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    scan_at(kept, base, t0)
    scoped = []
    steps = digest_steps(w, rng, imgs) + closure_steps(w, rng, imgs) + blocker_steps(w, imgs) + changes(w, rng, imgs)
    seen: set[str] = set()
    for name, action in steps:
        action()
        out = scan_at(kept, base, t0)
        assert not out.full_scan and out.status == "complete", name
        whole, open_ = whole_and_open(kept, t0)
        assert open_ == whole, name
        seen |= {v[0] for v in open_.values()}
        assert set(open_findings(kept)) == set(whole) and {v[-1] for v in open_findings(kept).values()} <= {out.run_id}
        scoped.append(out.checks_scope)
        if out.checks_scope:  # recorded: regindex runs shows it
            assert phase_items(kept, out.run_id, "scope") == sum(out.checks_scope.values()), name
    # the scope was used, and narrow: most nights derived a few repositories of "private", not all seven
    assert sum(1 for s in scoped if s.get("private", 99) <= 2) >= len(steps) // 2, scoped
    kinds = {v[0] for v in open_.values()}
    assert {"orphan_layer_link", "orphan_index_child", "dangling_tag", "corrupt_link", "misdirected_link"} <= kinds
    assert checks.DIGEST_KINDS <= seen  # the digest-scoped kinds had findings to carry or resolve
    assert "gc_blocker" in seen and "gc_blocker" in checks.PER_REPOSITORY_KINDS


def test_saved_verifications_replace_a_digests_row_and_the_last_given_wins(urls, base, invoke):
    """blob_verifications holds one row per registry and digest: a batch replaces the rows it names (every
    column, and the run), leaves the others, and of a digest given twice in one batch keeps the last (one
    upsert statement on PostgreSQL cannot touch a row twice)."""
    kept, _fresh = urls
    build(base)
    invoke("scan", base, "--db", kept, "-q", "--fail-on", "never")
    engine = db.make_engine(db.resolve_url(kept))
    a, b, c = (f"sha256:{ch * 64}" for ch in "abc")
    with engine.begin() as conn:
        rid = int(conn.execute(text("SELECT MIN(id) FROM registries")).scalar_one())
        store.save_verifications(conn, rid, 1, [(a, 1, 1.0, a, None), (b, 2, 2.0, None, "bad")])
        store.save_verifications(conn, rid, 1, [(c, 3, 3.0, c, None), (c, 4, 4.0, None, None),
                                                (a, 5, 5.5, b, "moved")])
    with engine.connect() as conn:
        got = sorted(tuple(r) for r in conn.execute(text(
            "SELECT digest, size, mtime, computed_digest, parse_error, verified_run FROM blob_verifications "
            "WHERE registry_id = :rid AND digest IN (:a, :b, :c)"), {"rid": rid, "a": a, "b": b, "c": c}))
    engine.dispose()
    assert got == [(a, 5, 5.5, b, "moved", 1), (b, 2, 2.0, None, "bad", 1), (c, 4, 4.0, None, None, 1)]
