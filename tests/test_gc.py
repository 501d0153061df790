"""gc-preview on generated trees: each case writes a tree, scans it, and compares the prediction with what
registry 2.8's garbage-collect does to such a tree (see regindex.gc and tests/realreg/test_gc_preview.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from regindex import gc

from .worlds import API, BASE, WEB, World, build_world

Invoke = Callable[..., Result]
Scan = Callable[..., Result]


def build(base: Path, name: str = "private") -> World:
    return build_world(base, name, orphan=True)


@pytest.fixture
def world(base: Path) -> World:
    return build(base)


@pytest.fixture
def preview(invoke: Invoke, scan: Scan, db_path: Path) -> Callable[..., dict[str, Any]]:
    """Scan the tree, run gc-preview, check its exit status against the prediction, return it (one registry)."""

    def run(*args: str) -> dict[str, Any]:
        scan()
        out = invoke("gc-preview", "--db", db_path, "--format", "json", *args, expect=None)
        preds = json.loads(out.output)
        assert len(preds) == 1
        p = preds[0]
        risky = p["outcome"] != gc.COMPLETES or p["breakage"]
        assert out.exit_code == (1 if risky else 0), out.output
        return p

    return run


def revisions(p: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["repository"], r["digest"]) for r in p["revisions"]}


def blobs(p: dict[str, Any]) -> set[str]:
    return {b["digest"] for b in p["blobs"]}


def broken(p: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(b["kind"], b["repository"], b["reference"]) for b in p["breakage"]}


def blob_breakage(world: World, swept: set[str]) -> set[tuple[str, str, str]]:
    """Every _layers link to a swept blob fails (GC never removes _layers links)."""
    out = set()
    for repo in (BASE, API, WEB):
        for link in (world.w.v2 / "repositories" / repo / "_layers").glob("*/*/link"):
            if link.read_text() in swept:
                out.add(("blob", repo, link.read_text()))
    return out


# ---------------------------------------------------------------------------------------------
# without --delete-untagged


def test_plain_gc_on_a_healthy_tree_sweeps_only_unreferenced_blobs(world: World, preview) -> None:
    p = preview()
    assert p["outcome"] == "completes" and p["exit_code"] == 0 and p["reasons"] == []
    assert p["revisions"] == [] and p["tag_index_entries"] == []
    assert p["blobs"] == [{"digest": world.orphan, "size": len(b"left behind by an interrupted push")}]
    assert p["bytes_reclaimed"] == len(b"left behind by an interrupted push")
    assert p["breakage"] == [] and p["skipped"] == [] and p["warnings"] == []


def test_plain_gc_keeps_untagged_manifests(world: World, preview) -> None:
    world.w.remove_tag(API, "v1")
    p = preview()
    assert revisions(p) == set() and blobs(p) == {world.orphan} and p["breakage"] == []


def test_dangling_revision_is_skipped_and_what_it_names_is_swept(world: World, preview) -> None:
    """A revision whose manifest data is gone is passed over silently: its config is swept, its layer
    survives because the index children (marked through their own revision links) name it too."""
    world.w.remove_blob(world.base_img.digest)
    p = preview()
    assert p["outcome"] == "completes"
    assert p["skipped"] == [{"repository": BASE, "digest": world.base_img.digest, "why": "manifest data missing"}]
    assert blobs(p) == {world.orphan, world.base_img.config}
    # the tag already fails (its manifest is gone): only the config blob request is new breakage
    assert broken(p) == {("blob", BASE, world.base_img.config)}


def test_revision_without_link_file_is_not_marked_even_when_served_through_layers(world: World, preview) -> None:
    """An API DELETE leaves the revision directory without its link; the registry still serves the manifest
    through a _layers link (as 2.1 wrote them), but GC's walk only reads link files, so it is swept."""
    w, img = world.w, world.base_img
    w.delete_revision_link(BASE, img.digest)
    w.write_layer_link(BASE, img.digest, img.digest.encode())
    p = preview()
    assert revisions(p) == set()
    assert blobs(p) == {world.orphan, img.digest, img.config}
    assert broken(p) == {
        ("manifest_digest", BASE, img.digest), ("manifest_tag", BASE, "latest"), ("pull_tag", BASE, "latest"),
        ("blob", BASE, img.digest), ("blob", BASE, img.config),
    }


# ---------------------------------------------------------------------------------------------
# --delete-untagged


def test_delete_untagged_on_an_untouched_tree_breaks_every_multi_arch_image(world: World, preview) -> None:
    p = preview("--delete-untagged")
    assert p["outcome"] == "completes"
    kids = world.children
    assert revisions(p) == {(repo, c.digest) for repo, cs in kids.items() for c in cs}
    # the index marks its children's manifest blobs, not their configs and layers; the shared layer survives
    # through library/base, which is tagged
    swept = {b for cs in kids.values() for c in cs for b in c.blobs} - set(world.base_img.blobs)
    assert blobs(p) == swept | {world.orphan}
    assert not {c.digest for cs in kids.values() for c in cs} & blobs(p)
    assert p["bytes_reclaimed"] == sum(b["size"] for b in p["blobs"])
    assert broken(p) == (
        {("manifest_digest", repo, c.digest) for repo, cs in kids.items() for c in cs}
        | {("pull_tag", API, "v1"), ("pull_tag", WEB, "v2")}
        | blob_breakage(world, swept)
    )
    assert not any(b["kind"] == "manifest_tag" for b in p["breakage"])  # the index itself is still served


def test_a_child_with_its_own_tag_survives(world: World, preview) -> None:
    amd64 = world.api.children[0]
    world.w.tag(API, "v1-amd64", amd64.digest)
    p = preview("--delete-untagged")
    assert (API, amd64.digest) not in revisions(p)
    assert not set(amd64.blobs) & blobs(p)
    assert ("manifest_digest", API, amd64.digest) not in broken(p)


def test_tag_removal_then_delete_untagged_removes_the_whole_image(world: World, preview) -> None:
    """Nothing marks an untagged index, so nothing marks its children either: manifests, configs and layers
    all go (except the layer library/base shares)."""
    world.w.remove_tag(API, "v1")
    p = preview("--delete-untagged")
    api_all = {world.api.digest, *(c.digest for c in world.api.children)}
    assert {d for r, d in revisions(p) if r == API} == api_all
    api_blobs = {b for c in world.api.children for b in c.blobs} - set(world.base_img.blobs)
    assert api_all | api_blobs <= blobs(p)
    assert {("manifest_digest", API, d) for d in api_all} <= broken(p)
    assert not any(r == API and k != "manifest_digest" and k != "blob" for k, r, _ in broken(p))


def test_tag_index_entries_of_deleted_manifests_go_too(world: World, preview) -> None:
    w = world.w
    w.remove_tag_current(API, "v1")  # tags/v1/index/<index digest> stays: the tag is listed, answers 404
    p = preview("--delete-untagged")
    assert p["outcome"] == "completes"  # a tag without current/link does not block
    assert (API, world.api.digest) in revisions(p)
    assert p["tag_index_entries"] == [{"repository": API, "tag": "v1", "digest": world.api.digest}]


def test_misdirected_revision_link_makes_the_sweep_fail_part_way(world: World, preview) -> None:
    """The revision link of the tagged base image names an untagged web child: that child is scheduled twice
    (walk order: library/base first), and removing its revision directory the second time fails. Everything
    scheduled before stays deleted; no blob is swept."""
    kid = world.web.children[0]
    world.w.write_revision_link(BASE, world.base_img.digest, kid.digest.encode())
    world.w.link_layer(BASE, kid.digest)  # the base repository can reach the child's data through _layers
    p = preview("--delete-untagged")
    assert p["outcome"] == "sweep_error" and p["exit_code"] == 1
    assert "failed to delete manifest" in p["reasons"][0]
    assert p["blobs"] == []
    # base's link names kid, which library/base does not tag; kid has no revision dir in library/base
    assert revisions(p) == set()


def test_duplicate_schedule_fails_after_earlier_deletions(world: World, preview) -> None:
    kids = sorted(world.web.children, key=lambda c: c.digest)
    # the web index's own revision link names its first child: the index is no longer marked, the child is
    # scheduled twice, from its own link and from the index's (in walk order)
    world.w.write_revision_link(WEB, world.web.digest, kids[0].digest.encode())
    p = preview("--delete-untagged")
    assert p["outcome"] == "sweep_error"
    order = sorted([world.web.digest, *(c.digest for c in kids)])
    # api's children go first (team/app/api sorts before team/app/web); then web's in digest order up to the
    # second scheduling of kids[0]
    api_kids = {(API, c.digest) for c in world.api.children}
    web_done = set()
    for d in order:
        target = kids[0].digest if d == world.web.digest else d
        if (WEB, target) in web_done:
            break
        web_done.add((WEB, target))
    assert revisions(p) == api_kids | web_done
    assert p["blobs"] == []


# ---------------------------------------------------------------------------------------------
# blockers


Damage = Callable[[World], None]


def garbage_revision(world: World) -> None:
    world.w.write_revision_link(WEB, world.web.digest, b"this is not a digest")


def newline_revision(world: World) -> None:
    world.w.write_revision_link(BASE, world.base_img.digest, (world.base_img.digest + "\n").encode())


def garbage_tag(world: World) -> None:
    world.w.write_tag_link(API, "v1", b"garbage")


def empty_tag(world: World) -> None:
    world.w.write_tag_link(API, "v1", b"")


def no_tags_dir(world: World) -> None:
    world.w.remove_tags_dir(BASE)


def truncated_tagged_manifest(world: World) -> None:
    world.w.truncate_blob(world.web.digest, 10)


def empty_tagged_manifest(world: World) -> None:
    world.w.truncate_blob(world.base_img.digest, 0)


def config_as_revision(world: World) -> None:
    """Valid JSON without schemaVersion (an image config) behind an untagged revision link: 2.8's manifest
    store refuses schema version 0, so plain GC aborts; --delete-untagged deletes it without reading it."""
    world.w.link_revision("team/app/other", world.w.put_blob(b'{"architecture": "amd64", "os": "linux"}'))


def bad_repository_name(world: World) -> None:
    world.w.ensure_repo("team/App")


@pytest.mark.parametrize(
    ("damage", "plain_aborts", "untagged_aborts", "reason"),
    [
        (garbage_revision, True, True, "revision link is garbage"),
        (newline_revision, True, True, "revision link is whitespace"),
        (garbage_tag, False, True, "tag link is garbage"),
        (empty_tag, False, True, "tag link is empty"),
        (no_tags_dir, False, True, "_manifests/tags is missing"),
        (truncated_tagged_manifest, True, True, "failed to retrieve manifest"),
        (empty_tagged_manifest, True, True, "failed to retrieve manifest"),
        (bad_repository_name, True, True, "failed to parse repo name"),
        (config_as_revision, True, False, "failed to retrieve manifest"),
    ],
)
@pytest.mark.parametrize("delete_untagged", [False, True])
def test_blockers_abort_and_delete_nothing(
    world: World, preview, damage: Damage, plain_aborts: bool, untagged_aborts: bool, reason: str,
    delete_untagged: bool,
) -> None:
    damage(world)
    p = preview(*(["--delete-untagged"] if delete_untagged else []))
    aborts = untagged_aborts if delete_untagged else plain_aborts
    if aborts:
        assert p["outcome"] == "aborts" and p["exit_code"] == 1
        assert any(reason in r for r in p["reasons"]), p["reasons"]
        assert p["revisions"] == p["blobs"] == p["tag_index_entries"] == p["breakage"] == []
    else:
        assert p["outcome"] == "completes" and p["reasons"] == []


def test_untagged_truncated_manifest_is_deleted_not_read(world: World, preview) -> None:
    world.w.truncate_blob(world.web.digest, 10)
    world.w.remove_tag(WEB, "v2")
    p = preview("--delete-untagged")
    assert p["outcome"] == "completes"
    assert (WEB, world.web.digest) in revisions(p)


def test_tag_blockers_need_a_revision_that_is_looked_up(world: World, preview) -> None:
    """Tags are looked up only for a revision the walk reaches with its data present."""
    w = world.w
    w.write_tag_link(BASE, "latest", b"garbage")
    w.remove_blob(world.base_img.digest)
    p = preview("--delete-untagged")
    assert p["outcome"] == "completes"
    w.remove_tags_dir(BASE)
    assert preview("--delete-untagged")["outcome"] == "completes"


# ---------------------------------------------------------------------------------------------
# command line


def test_registry_filter_and_unknown_registry(base: Path, invoke: Invoke, scan: Scan, db_path: Path) -> None:
    one = build(base, "one")
    build(base, "two")
    scan()
    out = invoke("gc-preview", "--db", db_path, "--format", "json", "--registry", "one").output
    preds = json.loads(out)
    assert [p["registry"] for p in preds] == ["one"]
    assert blobs(preds[0]) == {one.orphan}
    both = json.loads(invoke("gc-preview", "--db", db_path, "--format", "json").output)
    assert [p["registry"] for p in both] == ["one", "two"]
    bad = invoke("gc-preview", "--db", db_path, "--registry", "three", expect=2)
    assert "no scanned registry named 'three'" in bad.output


def test_table_and_csv(world: World, invoke: Invoke, scan: Scan, db_path: Path) -> None:
    scan()
    table = invoke("gc-preview", "--db", db_path, "--delete-untagged", expect=1).output
    first = table.splitlines()[0]
    assert first.startswith("private: garbage-collect --delete-untagged completes: deletes 6 revision directories")
    assert "break" in table and "pull_tag" in table
    csv_out = invoke("gc-preview", "--db", db_path, "--format", "csv", expect=0).output.splitlines()
    assert csv_out[0] == ",".join(gc.COLUMNS)
    assert csv_out[1:] == [f"private,delete,blob,,{world.orphan},,{len(b'left behind by an interrupted push')},"]


def test_no_database(tmp_path: Path, invoke: Invoke) -> None:
    out = invoke("gc-preview", "--db", tmp_path / "none.db", expect=2)
    assert "run `regindex scan` first" in out.output


def test_no_scanned_registry_is_an_error_and_a_failed_scan_is_warned_about(
    base: Path, tmp_path: Path, invoke: Invoke, scan: Scan, db_path: Path
) -> None:
    invoke("scan", tmp_path / "missing", "--db", db_path, expect=2)  # only a failed run
    r = invoke("gc-preview", "--db", db_path, expect=2)
    assert "no scanned registry" in r.output
    build(base)
    scan()
    invoke("scan", tmp_path / "missing", "--db", db_path, expect=2)  # the latest scan failed outright
    [p] = json.loads(invoke("gc-preview", "--db", db_path, "--format", "json", expect=None).output)
    assert any("failed" in w for w in p["warnings"])
