"""Generated trees with known injected damage: the findings equal the injected set exactly.

Each case builds a small healthy registry ("private", as the reference scanner names its authoritative one),
injects one kind of production damage, scans, and compares every open finding (except the informational
unreferenced_blob, tested on its own) with what the injection must produce.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from regindex.layout import BlobDataPath
from regindex.sample import StorageWriter

from .conftest import ident
from .worlds import World, build_world

R = "private"
E, W, I = "error", "warning", "info"


Expected = set[tuple]
Inject = Callable[[World], Expected]


def gc_delete_untagged(world: World) -> Expected:
    """GC --delete-untagged on an untouched tree: every index child (untagged) loses its revision dir, its own
    config and layers are swept, every _layers link to a swept blob stays."""
    w = world.w
    exp: Expected = set()
    for repo, idx in (("team/app/api", world.api), ("team/app/web", world.web)):
        for child in idx.children:
            w.remove_revision(repo, child.digest)
            exp.add(("orphan_index_child", E, R, repo, child.digest, None, idx.digest))
    linking = {}
    for d in set(world.api.children[0].blobs + world.api.children[1].blobs + world.api.children[2].blobs
                 + world.api.children[3].blobs + world.web.children[0].blobs + world.web.children[1].blobs):
        linking[d] = world.repos_linking(d)
    swept = w.sweep()
    for d in swept:
        for repo in linking.get(d, []):
            exp.add(("orphan_layer_link", E, R, repo, d, None, None))
    assert swept, "the sweep must remove the children's own blobs"
    return exp


def shared_layer_gone(world: World) -> Expected:
    d = world.base_img.layers[0]
    repos = world.repos_linking(d)
    world.w.remove_blob(d)
    assert len(repos) == 3
    return {("orphan_layer_link", E, R, repo, d, None, None) for repo in repos}


def api_delete_child(world: World) -> Expected:
    child = world.web.children[1]
    world.w.delete_revision_link("team/app/web", child.digest)
    return {("orphan_index_child", E, R, "team/app/web", child.digest, None, world.web.digest)}


def child_link_present_data_gone(world: World) -> Expected:
    child = world.api.children[2]
    world.w.remove_blob(child.digest)
    return {
        ("orphan_index_child", E, R, "team/app/api", child.digest, None, world.api.digest),
        ("dangling_revision", E, R, "team/app/api", child.digest, None, None),
    }


def child_served_through_layers(world: World) -> Expected:
    child = world.api.children[0]
    world.w.remove_revision("team/app/api", child.digest)
    world.w.link_layer("team/app/api", child.digest)
    return set()


def index_without_media_type(world: World) -> Expected:
    idx = world.w.push_index("team/app/worker", world.rng, with_media_type=False, attestations=False)
    world.w.tag("team/app/worker", "1.0", idx.digest)
    world.w.remove_revision("team/app/worker", idx.children[1].digest)
    return {("orphan_index_child", E, R, "team/app/worker", idx.children[1].digest, None, idx.digest)}


def index_over_one_mib(world: World) -> Expected:
    idx = world.w.push_index("team/app/big", world.rng, attestations=False, padding=1_200_000)
    assert idx.size > 1024 * 1024
    world.w.tag("team/app/big", "huge", idx.digest)
    world.w.remove_revision("team/app/big", idx.children[0].digest)
    return {("orphan_index_child", E, R, "team/app/big", idx.children[0].digest, None, idx.digest)}


def tag_without_current_link(world: World) -> Expected:
    world.w.remove_tag_current("library/base", "latest")
    return {("dangling_tag", E, R, "library/base", None, "latest", None)}


def garbage_layer_link(world: World) -> Expected:
    d = world.base_img.config
    world.w.write_layer_link("library/base", d, b"not a digest")
    return {("corrupt_link", E, R, "library/base", d, None, None)}


def newline_revision_link(world: World) -> Expected:
    d = world.base_img.digest
    world.w.write_revision_link("library/base", d, d.encode() + b"\n")
    return {
        ("corrupt_link", E, R, "library/base", d, None, None),
        ("gc_blocker", W, R, "library/base", d, None, None),
        ("dangling_tag", E, R, "library/base", d, "latest", None),
    }


def misdirected_revision_link(world: World) -> Expected:
    """The registry answers the digest and the tag with 200 and the other manifest's bytes."""
    other = world.w.push_image("library/base", world.rng)
    world.w.write_revision_link("library/base", world.base_img.digest, other.digest.encode())
    return {
        ("misdirected_link", E, R, "library/base", world.base_img.digest, None, None),
        ("dangling_tag", E, R, "library/base", world.base_img.digest, "latest", None),
    }


def empty_layer_blob(world: World) -> Expected:
    d = world.base_img.layers[0]
    world.w.truncate_blob(d, 0)
    return {("empty_blob", E, R, repo, d, None, None) for repo in world.repos_linking(d)}


def half_truncated_layer(world: World) -> Expected:
    """Served with 200 and the short body in every repository that links it (the declaring manifests are
    evidence in detail.declared_by)."""
    d = world.base_img.layers[0]
    world.w.truncate_blob(d, 1000)
    return {("size_mismatch", E, R, repo, d, None, None) for repo in world.repos_linking(d)}


def truncated_manifest(world: World) -> Expected:
    d = world.base_img.digest
    world.w.truncate_blob(d, world.base_img.size // 2)
    return {
        ("truncated_manifest", E, R, "library/base", d, None, None),
        ("dangling_tag", E, R, "library/base", d, "latest", None),
        ("gc_blocker", W, R, "library/base", d, None, None),  # garbage-collect reads it and aborts
    }


def stale_upload(world: World) -> Expected:
    world.w.upload("library/base", "0b5e-old", datetime.now(timezone.utc) - timedelta(hours=200))
    world.w.upload("library/base", "0b5e-new", datetime.now(timezone.utc) - timedelta(hours=2))
    return {("stale_upload", W, R, "library/base", None, None, None)}


def no_tags_directory(world: World) -> Expected:
    world.w.remove_tags_dir("library/base")
    return {("gc_blocker", W, R, "library/base", None, None, None)}


def unlinked_layer(world: World) -> Expected:
    d = world.base_img.config
    world.w.remove_layer_link("library/base", d)
    return {("unlinked_blob_ref", E, R, "library/base", d, None, world.base_img.digest)}


CASES: dict[str, Inject] = {f.__name__: f for f in (
    gc_delete_untagged, shared_layer_gone, api_delete_child, child_link_present_data_gone,
    child_served_through_layers, index_without_media_type, index_over_one_mib, tag_without_current_link,
    garbage_layer_link, newline_revision_link, misdirected_revision_link, empty_layer_blob, half_truncated_layer,
    truncated_manifest, stale_upload, no_tags_directory, unlinked_layer,
)}


def open_set(findings) -> Expected:
    return {ident(f) for f in findings() if f["kind"] != "unreferenced_blob"}


def test_healthy_world_has_no_findings(base, scan, findings):
    build_world(base)
    assert scan().exit_code == 0
    assert findings("--state", "all") == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_injected_damage_is_found_exactly(case, base, scan, findings):
    world = build_world(base)
    expected = CASES[case](world)
    scan()
    assert open_set(findings) == expected


def test_all_damage_at_once(tmp_path, invoke):
    """Injections in separate registries of one base: the union, nothing more (and no cross-talk)."""
    base = tmp_path / "many"
    expected: Expected = set()
    for i, (_name, inject) in enumerate(sorted(CASES.items())):
        world = build_world(base, f"r{i:02d}")
        for e in inject(world):
            expected.add((e[0], e[1], f"r{i:02d}", *e[3:]))
    db = tmp_path / "all.db"
    invoke("scan", base, "--db", db, "-q", expect=1)
    got = {ident(f) for f in json.loads(invoke("findings", "--db", db, "--format", "json").output)
           if f["kind"] != "unreferenced_blob"}
    assert got == expected


def test_unreferenced_blobs_are_exactly_the_unlinked_ones(base, scan, findings):
    world = build_world(base)
    stray = world.w.put_blob(b"pushed but never linked")
    child = world.api.children[1]
    world.w.remove_revision("team/app/api", child.digest)  # the child manifest blob is now named by no link
    scan()
    unref = {(f["digest"], f["detail"]["named_by_a_manifest"]) for f in findings("--kind", "unreferenced_blob")}
    assert unref == {(stray, False), (child.digest, True)}
    assert {f["severity"] for f in findings("--kind", "unreferenced_blob")} == {"info"}


def test_cache_registry_missing_child_is_info(base, invoke, db_path, findings):
    rng = random.Random(3)
    hub = StorageWriter(base / "dockerhub")
    idx = hub.push_index("library/nginx", rng, attestations=False)
    hub.tag("library/nginx", "1.27", idx.digest)
    hub.remove_revision("library/nginx", idx.children[1].digest)
    invoke("scan", base, "--db", db_path, "-q", "--cache", "dockerhub", expect=0)
    got = {ident(f) for f in findings() if f["kind"] != "unreferenced_blob"}
    assert got == {("orphan_index_child", I, "dockerhub", "library/nginx", idx.children[1].digest, None, idx.digest)}
    # the same tree as an authoritative registry: the same child is an error
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    assert {f["severity"] for f in findings("--kind", "orphan_index_child")} == {E}


def test_orphan_child_evidence_and_hints(base, scan, findings):
    world = build_world(base)
    w = world.w
    restorable, rebuild = world.api.children[0], world.api.children[2]
    w.remove_revision("team/app/api", restorable.digest)
    w.remove_revision("team/app/api", rebuild.digest)
    w.remove_blob(rebuild.layers[-1])  # its own (non-shared) layer was swept
    scan()
    by_child = {f["digest"]: f for f in findings("--kind", "orphan_index_child")}
    ok = by_child[restorable.digest]
    assert ok["detail"]["child_blob_data_present"] is True
    assert ok["detail"]["child_blobs_present"] == ok["detail"]["child_blobs"] == 3
    assert "Restore the revision link" in ok["detail"]["hint"]
    bad = by_child[rebuild.digest]
    assert bad["detail"]["child_blobs_present"] == bad["detail"]["child_blobs"] - 1
    assert "Rebuild and push" in bad["detail"]["hint"] and "v1" in bad["detail"]["hint"]


def test_verify_content_finds_digest_mismatch_and_rehashes_only_changed_blobs(base, scan, findings, db_path):
    from sqlalchemy import create_engine, text

    world = build_world(base)
    d = world.base_img.layers[0]
    p = world.w.path(BlobDataPath(d))
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes
    st = p.stat()
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime: first verification hashes all
    scan()
    assert not [f for f in findings() if f["kind"] == "digest_mismatch"]  # off by default
    scan("--verify-content")
    got = {ident(f) for f in findings() if f["kind"] == "digest_mismatch"}
    assert got == {("digest_mismatch", E, R, repo, d, None, None) for repo in world.repos_linking(d)}

    def verified():
        e = create_engine(f"sqlite:///{db_path}")
        with e.connect() as c:
            out = dict(c.execute(text("SELECT digest, verified_run FROM blob_verifications")).all())
        e.dispose()
        return out

    first = verified()
    assert first[d] == 2 and set(first.values()) <= {1, 2}  # manifests are hashed whenever they are read
    scan("--verify-content")
    assert verified() == first  # nothing changed on disk: nothing re-hashed
    p.write_bytes(world.base_layer)  # repaired (new mtime)
    scan("--verify-content")
    again = verified()
    assert again[d] == 4 and {k: v for k, v in again.items() if k != d} == {k: v for k, v in first.items() if k != d}
    assert not [f for f in findings() if f["kind"] == "digest_mismatch"]


def _flip_first_byte(world: World, digest: str) -> None:
    p = world.w.path(BlobDataPath(digest))
    data = bytearray(p.read_bytes())
    data[0] = ord("[")  # same size, no longer a JSON object
    p.write_bytes(bytes(data))
    world.w.touch_mtime(digest)


def test_same_size_manifest_rewrite_is_seen_by_a_nightly_scan_as_by_a_first_one(base, scan, findings, tmp_path,
                                                                                invoke):
    world = build_world(base)
    scan()
    _flip_first_byte(world, world.base_img.digest)
    scan()
    fresh = tmp_path / "fresh.db"
    invoke("scan", base, "--db", fresh, "-q", expect=1)
    expected = {
        ("truncated_manifest", E, R, "library/base", world.base_img.digest, None, None),
        ("dangling_tag", E, R, "library/base", world.base_img.digest, "latest", None),
        ("gc_blocker", W, R, "library/base", world.base_img.digest, None, None),
    }
    assert open_set(findings) == expected
    first_ever = json.loads(invoke("findings", "--db", fresh, "--format", "json").output)
    assert {ident(f) for f in first_ever if f["kind"] != "unreferenced_blob"} == expected


def test_corrupt_copy_never_poisons_the_genuine_manifest_of_another_registry(base, scan, findings):
    """Manifests are stored once per (digest, size): a corrupt same-size copy read first must not become it."""
    bad = build_world(base, "a-first")  # scanned first (registries are crawled in name order)
    build_world(base, "b-second")  # the same seed: the same digests, genuine bytes
    _flip_first_byte(bad, bad.base_img.digest)
    scan()
    assert {f["registry"] for f in findings() if f["kind"] != "unreferenced_blob"} == {"a-first"}


def test_gc_blockers_match_the_gc_preview(base, scan, findings, invoke, db_path):
    """Each gc_blocker finding is a reason gc-preview gives for an abort, and the other way round."""
    world = build_world(base)
    world.w.write_revision_link("team/app/api", world.api.digest, b"garbage")
    world.w.write_tag_link("team/app/web", "v2", b"")
    world.w.remove_tags_dir("library/base")
    scan()
    blockers = {(f["repository"], f["detail"]["aborts"]) for f in findings("--kind", "gc_blocker")}
    assert blockers == {
        ("team/app/api", "every garbage-collect run"),
        ("team/app/web", "garbage-collect --delete-untagged"),
        ("library/base", "garbage-collect --delete-untagged"),
    }
    plain = json.loads(invoke("gc-preview", "--db", db_path, "--format", "json", expect=1).output)
    untagged = json.loads(invoke("gc-preview", "--db", db_path, "--format", "json", "--delete-untagged",
                                 expect=1).output)
    assert [p["outcome"] for p in plain + untagged] == ["aborts", "aborts"]
    assert len(plain[0]["reasons"]) == 1 and len(untagged[0]["reasons"]) == 3


def test_sha512_alias_is_legitimate_only_when_its_content_matches(base, scan, findings):
    """_layers/sha512/<hex>/link may name the sha256 digest of the same content (registry 2.8 serves it);
    naming other content is misdirected, which only hashing (--verify-content) can tell."""
    import hashlib

    world = build_world(base)
    layer = world.base_layer
    good = "sha512:" + hashlib.sha512(layer).hexdigest()
    bad = "sha512:" + hashlib.sha512(b"some other content").hexdigest()
    world.w.write_layer_link("library/base", good, world.base_img.layers[0].encode())
    world.w.write_layer_link("library/base", bad, world.base_img.layers[0].encode())
    scan()
    assert open_set(findings) == set()  # without hashing both look like aliases
    scan("--verify-content")
    assert open_set(findings) == {("misdirected_link", E, R, "library/base", bad, None, None)}


def test_data_gone_run_is_the_last_run_the_data_vanished_in_batched_or_not(base, invoke, tmp_path):
    """The evidence 'blob_data_gone_in_run' names the latest run that saw the data disappear; the checks ask
    for it in batches (one query per 500 digests), and a batch answers as one query per digest does."""
    from sqlalchemy import text

    from regindex import checks, db as rdb
    from regindex.layout import BlobDataPath

    world = build_world(base)
    dbfile = tmp_path / "g.db"
    scan = ("scan", base, "--db", dbfile, "-q", "--fail-on", "never")
    layer = world.base_img.layers[0]
    data = world.w.path(BlobDataPath(layer))
    kept = data.read_bytes()
    invoke(*scan)  # 1
    data.unlink()
    invoke(*scan)  # 2: gone
    data.write_bytes(kept)
    invoke(*scan)  # 3: back
    data.unlink()
    invoke(*scan)  # 4: gone again
    engine = rdb.make_engine(f"sqlite:///{dbfile}")
    with engine.connect() as conn:
        rid = conn.execute(text("SELECT id FROM registries")).scalar_one()
        present = world.base_img.config
        one = checks._Context(conn, [rid])
        singly = {d: one.data_gone_run(rid, d) for d in (layer, present, "sha256:" + "0" * 64)}
        batch = checks._Context(conn, [rid])
        batch.prefetch_gone([(rid, layer), (rid, present), (rid, "sha256:" + "0" * 64), (rid, layer)])
        assert {d: batch._gone[(rid, d)] for d in singly} == singly == {layer: 4, present: None,
                                                                        "sha256:" + "0" * 64: None}
        details = conn.execute(text("SELECT detail FROM findings WHERE kind = 'orphan_layer_link' "
                                    "AND digest = :d AND resolved_run IS NULL"), {"d": layer}).scalars().all()
    engine.dispose()
    assert len(details) == 3 and {json.loads(d)["blob_data_gone_in_run"] for d in details} == {4}
