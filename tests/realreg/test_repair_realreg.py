"""regindex repair against registry 2.8.2, after ``garbage-collect --delete-untagged``.

(a) ``repair --apply`` removes the orphan layer links, no request that worked before fails, and a skopeo re-push
    makes every pull work -- with the in-memory blob-descriptor cache off and on;
(b) restoring an orphan child's revision link makes the index pullable (``skopeo copy --all``) when its blobs
    were kept (here: the child images were also pushed, tagged, to another repository, so GC marked them);
(c) undo brings the tree back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from regindex.cli import cli

from . import harness as h

pytestmark = pytest.mark.realreg

REG = "private"
API, WEB, BASE = "team/app/api", "team/app/web", "library/base"
MIRROR = "mirror/keep"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    h.require_registry()
    top = tmp_path_factory.mktemp("repair")
    root = top / "base" / REG
    with h.Registry(root) as reg:
        world = h.build_world(reg, seed=1, layout_dir=top / "layout")
    return root, world


def run(*args: object, expect: int | None = 0) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if expect is not None:
        assert r.exit_code == expect, (r.exit_code, r.output, r.exception)
    return r.output


def findings(db: Path) -> list[dict]:
    return json.loads(run("findings", "--db", db, "--format", "json"))


def snapshot(root: Path) -> dict[str, tuple[str, int, str | None]]:
    out: dict[str, tuple[str, int, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out[str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode),
                                             None if kind == "dir" else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def desc(world: h.World, repo: str, digest: str) -> dict:
    m = world.repos[repo].manifests[digest]
    return {"mediaType": m.media_type, "digest": digest, "size": m.size}


def batch_of(out: str) -> str:
    return out.split("batch ")[1].split(":")[0]


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "inmemory-cache"])
def test_repair_after_gc_then_repush(pristine, tmp_path, cache):
    root, world = pristine
    base = tmp_path / "base"
    h.clone_storage(root, base / REG)
    db = tmp_path / "regindex.db"
    with h.Registry(base / REG, cache=cache) as reg:
        gc = reg.garbage_collect(delete_untagged=True)
        assert gc.returncode == 0, gc.stderr
        exp = world.expected()
        before = h.failure_keys(h.probe(reg, exp))
        assert before == h.predict_gc_delete_untagged(world)
        run("scan", base, "--db", db, "-q", "--fail-on", "never")
        orphans = {(f["repository"], f["digest"]) for f in findings(db) if f["kind"] == "orphan_layer_link"}
        assert orphans
        # the registry is running, as in production: repair works on a live tree
        out = run("repair", "--db", db, "--apply")
        assert f"{len(orphans)} done, 0 skipped, 0 refused, 0 failed" in out
        for repo, d in orphans:
            assert not h.layer_link_dir(reg.v2, repo, d).exists()
        heads = {(repo, d): reg.request("HEAD", f"/v2/{repo}/blobs/{d}")[0] for repo, d in orphans}
        after = h.failure_keys(h.probe(reg, exp))
        assert after <= before, f"requests that worked before fail now: {sorted(after - before)}"
        run("scan", base, "--db", db, "-q", "--fail-on", "never")
        assert not [f for f in findings(db) if f["kind"] == "orphan_layer_link"]
        # re-push every tag a pull of which fails
        broken = sorted({(repo, ref) for repo, ref, kind in after if kind == "copy_tag"})
        assert broken
        for repo, tag in broken:
            digest = world.repos[repo].tags[tag]
            h.push(reg, world.layout, f"repush-{tag}", repo, tag, desc(world, repo, digest))
        final = h.probe(reg, exp)
        assert final == [], [f"{f.kind} {f.repository} {f.reference}: {f.detail[:200]}" for f in final]
    print(f"cache={cache}: HEAD of repaired links before a restart: {sorted(set(heads.values()))}")
    assert set(heads.values()) == {404}


def test_restore_child_link_makes_the_index_pullable_and_undo_is_byte_for_byte(pristine, tmp_path):
    root, world = pristine
    base = tmp_path / "base"
    h.clone_storage(root, base / REG)
    db = tmp_path / "regindex.db"
    n = world.named
    kept = [n["api_arm64"], n["api_att_amd64"], n["api_att_arm64"]]
    with h.Registry(base / REG) as reg:
        for i, d in enumerate(kept):  # tagged elsewhere: garbage-collect marks their configs and layers
            h.push(reg, world.layout, f"keep-{i}", MIRROR, f"k{i}", desc(world, API, d))
        gc = reg.garbage_collect(delete_untagged=True)
        assert gc.returncode == 0, gc.stderr
        for d in kept:
            assert not h.revision_dir(reg.v2, API, d).exists()  # GC removed the untagged children's revisions
        assert h.copy_tag(reg, API, "v1").returncode != 0
        exp = world.expected()
        before_probe = h.failure_keys(h.probe(reg, exp, copy=False))
        after_gc = snapshot(base)
        run("scan", base, "--db", db, "-q", "--fail-on", "never")
        layers_out = run("repair", "--db", db, "--apply")
        out = run("repair", "--db", db, "--kind", "orphan_index_child", "--apply")
        assert "3 done, 0 skipped, 2 refused" in out, out
        assert "garbage-collect --delete-untagged` removes this revision link again" in out
        assert out.count("push again: team/app/web:v2") == 2
        for d in kept:
            link = h.revision_link_path(reg.v2, API, d)
            assert link.read_bytes() == d.encode()
            index_link = h.revision_link_path(reg.v2, API, n["api_index"])
            assert link.stat().st_mode == index_link.stat().st_mode
        reg.restart()
        r = h.copy_tag(reg, API, "v1")
        assert r.returncode == 0, r.stderr
        for d in kept:
            assert reg.get_manifest(API, d)[0] == 200
        run("scan", base, "--db", db, "-q", "--fail-on", "never")
        assert {f["repository"] for f in findings(db) if f["kind"] == "orphan_index_child"} == {WEB}
        # (c) undo both batches, newest first: the tree is the one GC left, byte for byte
        run("repair", "--db", db, "--undo", batch_of(out))
        run("repair", "--db", db, "--undo", batch_of(layers_out))
        assert snapshot(base) == after_gc
        reg.restart()
        assert h.failure_keys(h.probe(reg, exp, copy=False)) == before_probe


def test_inmemory_cache_warm_before_the_damage(pristine, tmp_path):
    """With the blob-descriptor cache warm (every blob served once) and blob data swept while the registry
    runs, what does HEAD of a repaired link answer before a restart, and does a re-push then heal the pulls?"""
    root, world = pristine
    base = tmp_path / "base"
    h.clone_storage(root, base / REG)
    db = tmp_path / "regindex.db"
    n = world.named
    shared = n["base_layer_amd64"]
    seen: dict[str, object] = {}
    with h.Registry(base / REG, cache=True) as reg:
        exp = world.expected()
        assert h.probe(reg, exp, copy=False) == []  # warms the cache: every blob served once
        h.remove_blob_dir(reg.v2, shared)  # swept under the running registry
        repos = world.repos_with_blob(shared)
        seen["head_orphan_before_repair"] = sorted({reg.request("HEAD", f"/v2/{r}/blobs/{shared}")[0] for r in repos})
        run("scan", base, "--db", db, "-q", "--fail-on", "never")
        assert {(f["repository"], f["digest"]) for f in findings(db) if f["kind"] == "orphan_layer_link"} == {
            (r, shared) for r in repos}
        assert "3 done" in run("repair", "--db", db, "--apply")
        seen["head_repaired_before_restart"] = sorted(
            {reg.request("HEAD", f"/v2/{r}/blobs/{shared}")[0] for r in repos})
        get = reg.request("GET", f"/v2/{BASE}/blobs/{shared}")
        seen["get_repaired_before_restart"] = (get[0], len(get[2]))
        h.push(reg, world.layout, "repush-latest", BASE, "latest", desc(world, BASE, n["base"]))
        seen["data_back_after_repush_before_restart"] = h.blob_data_path(reg.v2, shared).exists()
        seen["link_back_after_repush_before_restart"] = h.layer_link_path(reg.v2, BASE, shared).exists()
        seen["pull_after_repush_before_restart"] = h.copy_tag(reg, BASE, "latest").returncode
        reg.restart()
        seen["head_after_restart"] = reg.request("HEAD", f"/v2/{BASE}/blobs/{shared}")[0]
        h.push(reg, world.layout, "repush-latest", BASE, "latest", desc(world, BASE, n["base"]))
        seen["pull_after_restart_and_repush"] = h.copy_tag(reg, BASE, "latest").returncode
    print("warm in-memory cache:", json.dumps(seen, sort_keys=True))
    # what README's "What the real registry showed" records: until a restart the cache answers for the moved
    # link as if nothing happened, so a re-push skips the blob and the pull stays broken
    assert seen == {
        "head_orphan_before_repair": [200],
        "head_repaired_before_restart": [200],
        "get_repaired_before_restart": (200, 0),
        "data_back_after_repush_before_restart": False,
        "link_back_after_repush_before_restart": False,
        "pull_after_repush_before_restart": 1,
        "head_after_restart": 404,
        "pull_after_restart_and_repush": 0,
    }
