"""regindex agrees with registry 2.8.2's HTTP API: every failing request is explained by an open ``error``
finding, and every open ``error`` finding explains a failing request (no false negatives, no false positives).

One world is built and pushed per module; each test damages a private copy of its storage the way production
does, scans it with ``regindex scan`` (through the CLI) and asks the real registry (``probe.probe``).

Matching rules (the registry is the judge):
- ``manifest_digest`` / ``blob`` failure in repo R for digest D: an open error finding on (registry, R, D);
- ``manifest_tag`` failure in repo R for tag T: an open error finding on (registry, R, tag T);
- ``copy_tag`` failure in repo R for tag T: an open error finding in R on tag T, or on any digest reachable
  from T's manifest (index -> children -> config/layers);
- every open error finding must match at least one failure by the same rules.

What is *intentionally* deleted (a removed tag, manifests GC removed because only that tag named them) is not
asked for: the probe asks for what the world says should be served, minus that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
import pytest
from click.testing import CliRunner

from regindex.cli import cli

from . import damage as dm
from . import images as im
from . import probe as pb
from . import registry as rg

pytestmark = pytest.mark.realreg

REG = "private"  # registry root BASE/private: regindex names the registry after the root directory
API, WEB, BASE = "team/app/api", "team/app/web", "library/base"


# ============================================================================================== fixtures
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One world, built and pushed once per module; every test damages a copy (clone_storage)."""
    rg.require_registry()
    top = tmp_path_factory.mktemp("agreement")
    root = top / "base" / REG
    with rg.Registry(root) as reg:
        world = im.build_world(reg, seed=1, layout_dir=top / "layout")
    return root, world


@dataclasses.dataclass
class Env:
    reg: rg.Registry
    world: im.World
    base: Path  # the scan BASE: holds BASE/private/docker/registry/v2
    db: Path  # scanned once, after the damage
    history_db: Path  # scanned before the damage too (the nightly case: findings come from a second run)
    verify_content: bool = False

    @property
    def v2(self) -> Path:
        return self.reg.v2

    @property
    def n(self) -> dict[str, str]:
        return self.world.named


@pytest.fixture
def env(pristine, tmp_path):
    root, world = pristine
    base = tmp_path / "base"
    rg.clone_storage(root, base / REG)
    with rg.Registry(base / REG) as reg:
        e = Env(reg, world, base, tmp_path / "regindex.db", tmp_path / "history.db")
        # A first run over the untouched copy: agree() compares the second run's findings with a first-ever run.
        assert scan(e, e.history_db) == []
        yield e


# =============================================================================================== helpers
def config_of(world: im.World, repo: str, manifest: str) -> str:
    cfg = world.repos[repo].manifests[manifest].config
    assert cfg is not None
    return cfg


def own_layer(world: im.World, repo: str, manifest: str) -> str:
    """The last layer of an image (never the shared base layer in build_world)."""
    return world.repos[repo].manifests[manifest].layers[-1]


def reachable(world: im.World, repo: str, digest: str) -> set[str]:
    """``digest`` and every manifest, config and layer below it in ``repo``."""
    rc = world.repos[repo]
    out: set[str] = set()
    todo = [digest]
    while todo:
        d = todo.pop()
        if d in out:
            continue
        out.add(d)
        m = rc.manifests.get(d)
        if m is not None:
            todo += m.children
            out.update(m.blobs)
    return out


def expected_after(env: Env, removed_tags: dict[str, set[str]]) -> dict:
    """world.expected() minus what was deleted on purpose: the removed tags, and manifests whose revision link
    is gone (GC, API DELETE) that no remaining tag reaches; blobs stay asked for while a remaining manifest names
    them or their _layers link is still there (a _layers link claims the repository serves the blob)."""
    exp = env.world.expected()
    for repo, rc in env.world.repos.items():
        gone = removed_tags.get(repo, set())
        tags = {t: d for t, d in rc.tags.items() if t not in gone}
        reach: set[str] = set()
        for d in tags.values():
            reach |= reachable(env.world, repo, d)
        exp[repo]["tags"] = tags
        exp[repo]["manifests"] = {
            d: s for d, s in exp[repo]["manifests"].items()
            if d in reach or dm.revision_link_path(env.v2, repo, d).exists()
        }
        exp[repo]["blobs"] = {
            d: s for d, s in exp[repo]["blobs"].items()
            if d in reach or dm.layer_link_path(env.v2, repo, d).exists()
        }
    return exp


def scan(env: Env, db: Path) -> list[dict]:
    """``regindex scan BASE --db DB`` then ``regindex findings --format json``: every open finding."""
    runner = CliRunner()
    args = ["scan", str(env.base), "--db", str(db), "--fail-on", "never", "-q"]
    if env.verify_content:
        args.append("--verify-content")
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, (r.output, r.exception)
    r = runner.invoke(cli, ["findings", "--db", str(db), "--format", "json"])
    assert r.exit_code == 0, (r.output, r.exception)
    rows = json.loads(r.output)
    assert {f["registry"] for f in rows} <= {REG}
    return rows


def explains(f: dict, fail: pb.Failure, world: im.World) -> bool:
    if f["registry"] != REG or f["repository"] != fail.repository:
        return False
    if fail.kind in ("manifest_digest", "blob"):
        return f["digest"] == fail.reference
    if fail.kind == "manifest_tag":
        return f["tag"] == fail.reference
    if fail.kind == "copy_tag":
        if f["tag"] == fail.reference:
            return True
        target = world.repos[fail.repository].tags.get(fail.reference)
        return target is not None and f["digest"] in reachable(world, fail.repository, target)
    raise AssertionError(fail.kind)


def _ident(f: dict) -> tuple:
    return (f["kind"], f["severity"], f["repository"], f["digest"] or "", f["tag"] or "", f["parent_digest"] or "")


def _fmt_finding(f: dict) -> str:
    return (f"{f['kind']}({f['severity']}) {f['repository']} digest={f['digest']} tag={f['tag']} "
            f"parent={f['parent_digest']} detail={json.dumps(f['detail'], sort_keys=True)}")


@dataclasses.dataclass
class Outcome:
    failures: list[pb.Failure]
    findings: list[dict]

    @property
    def errors(self) -> list[dict]:
        return [f for f in self.findings if f["severity"] == "error"]

    @property
    def error_kinds(self) -> set[str]:
        return {f["kind"] for f in self.errors}

    @property
    def failure_keys(self) -> set[tuple[str, str, str]]:
        return pb.failure_keys(self.failures)


def agree(env: Env, removed_tags: dict[str, set[str]] | None = None) -> Outcome:
    """Scan, probe, and assert both directions of the agreement."""
    env.reg.restart()
    findings = scan(env, env.db)
    second_run = scan(env, env.history_db)
    exp = expected_after(env, removed_tags or {})
    out = Outcome(pb.probe(env.reg, exp), findings)
    failures, errors = out.failures, out.errors
    unexplained = [fl for fl in failures if not any(explains(f, fl, env.world) for f in errors)]
    false_pos = [f for f in errors if not any(explains(f, fl, env.world) for fl in failures)]
    msg = []
    if unexplained:
        msg.append("failing requests no open error finding explains (false negatives):")
        msg += [f"  {fl.kind} {fl.repository} {fl.reference}: {fl.detail[:300]}" for fl in unexplained]
    if false_pos:
        msg.append("open error findings that explain no failing request (false positives):")
        msg += [f"  {_fmt_finding(f)}" for f in false_pos]
    if msg:
        msg.append("all failures:")
        msg += [f"  {fl.kind} {fl.repository} {fl.reference}" for fl in failures]
        msg.append("all open findings:")
        msg += [f"  {_fmt_finding(f)}" for f in findings]
    assert not msg, "\n".join(msg)
    first, second = sorted(map(_ident, findings)), sorted(map(_ident, second_run))
    assert first == second, (
        "a second run (after a clean first run) disagrees with a first-ever run on the open findings:\n"
        f"  only in the first-ever run: {sorted(set(first) - set(second))}\n"
        f"  only in the second run: {sorted(set(second) - set(first))}"
    )
    return out


# ============================================================================================= scenarios
def test_pristine_world(env):
    out = agree(env)
    assert out.failures == []
    assert out.findings == []


def test_pristine_world_with_verify_content(env):
    env.verify_content = True
    out = agree(env)
    assert out.failures == [] and out.findings == []


def test_harmless_leftovers_are_not_errors(env):
    """Things pulls never read: a misdirected and a garbage tag index link, a stale upload, unlinked blob data.
    No failure, so no error (warnings and info are fine)."""
    n = env.n
    dm.write_link(dm.tag_index_link_path(env.v2, BASE, "latest", n["base"]), n["api_index"])
    dm.write_link(dm.tag_index_link_path(env.v2, WEB, "legacy", n["web_legacy"]), dm.GARBAGE)
    dm.add_upload(env.v2, API, "6f1c0a52-3b8e-4d0e-9a43-2f0d1b9c7e11", "2020-01-01T00:00:00.123456789Z", b"x" * 10)
    stray = b"no link names me"
    p = dm.blob_data_path(env.v2, rg.sha256_digest(stray))
    p.parent.mkdir(parents=True)
    p.write_bytes(stray)
    out = agree(env)
    assert out.failures == [] and out.errors == []
    assert {(f["kind"], f["severity"]) for f in out.findings} == {
        ("misdirected_link", "warning"), ("corrupt_link", "warning"), ("stale_upload", "warning"),
        ("unreferenced_blob", "info"),
    }


# -- garbage-collect, tag cleanup, API DELETE
def test_gc_delete_untagged_on_untouched_tree(env):
    r = env.reg.garbage_collect(delete_untagged=True)
    assert r.returncode == 0, r.stderr
    out = agree(env)
    assert out.failure_keys == pb.predict_gc_delete_untagged(env.world)
    assert out.error_kinds == {"orphan_index_child", "orphan_layer_link"}


@pytest.mark.parametrize(
    "repo,tag", [(WEB, "v2"), (API, "v1-amd64")], ids=["untag-docker-list", "untag-index-child"]
)
def test_tag_removal_then_gc_delete_untagged(env, repo, tag):
    dm.remove_tag(env.v2, repo, tag)
    r = env.reg.garbage_collect(delete_untagged=True)
    assert r.returncode == 0, r.stderr
    out = agree(env, {repo: {tag}})
    assert out.failures
    assert out.error_kinds == {"orphan_index_child", "orphan_layer_link"}


@pytest.mark.parametrize(
    "repo,handle,untags",
    [(API, "api_arm64", set()), (WEB, "web_amd64", set()), (API, "api_amd64", {"v1-amd64"})],
    ids=["oci-index-child", "docker-list-child", "tagged-child"],
)
def test_api_delete_of_child_named_by_index(env, repo, handle, untags):
    assert env.reg.delete_manifest(repo, env.n[handle]) == 202
    for t in untags:  # DELETE also untags every tag naming the manifest
        assert not dm.tag_current_link_path(env.v2, repo, t).exists()
    out = agree(env, {repo: untags})
    assert (repo, env.n[handle], "manifest_digest") in out.failure_keys
    assert out.error_kinds == {"orphan_index_child"}


@pytest.mark.parametrize("gc", [False, True], ids=["delete-only", "then-gc"])
def test_api_delete_of_tagged_index(env, gc):
    """DELETE of an index untags v1 and latest; its children stay servable until GC removes them (untagged)."""
    assert env.reg.delete_manifest(API, env.n["api_index"]) == 202
    if gc:
        r = env.reg.garbage_collect(delete_untagged=True)
        assert r.returncode == 0, r.stderr
    out = agree(env, {API: {"v1", "latest"}})
    if gc:
        assert out.error_kinds == {"orphan_layer_link", "orphan_index_child"}  # web's children break too
    else:
        assert out.failures == [] and out.errors == []


def test_repository_without_tags_dir(env):
    """No _manifests/tags: tags/list 404, every manifest still served by digest; only a GC blocker."""
    dm.remove_tags_dir(env.v2, BASE)
    out = agree(env, {BASE: {"latest", "3.19"}})
    assert out.failures == [] and out.errors == []
    assert {f["kind"] for f in out.findings} == {"gc_blocker"}


@pytest.mark.parametrize("damage", ["half", "zero", "longer"])
def test_damaged_layer_after_gc_still_linked_where_no_manifest_is_served(env, damage):
    """After GC --delete-untagged, team/app/web still links the shared base layer but serves no manifest that
    names it; damaged base layer data fails there too."""
    r = env.reg.garbage_collect(delete_untagged=True)
    assert r.returncode == 0, r.stderr
    d = env.n["base_layer_amd64"]
    if damage == "half":
        dm.truncate_blob_half(env.v2, d)
    elif damage == "zero":
        dm.truncate_blob(env.v2, d, 0)
    else:
        p = dm.blob_data_path(env.v2, d)
        p.write_bytes(p.read_bytes() + b"\0")
    out = agree(env)
    assert (WEB, d, "blob") in out.failure_keys


# -- blob data: removed, 0 bytes, truncated, longer, same size but other bytes
def _target(env: Env, which: str) -> str:
    w, n = env.world, env.n
    return {
        "shared_layer": n["base_layer_amd64"],
        "own_layer": own_layer(w, API, n["api_arm64"]),
        "config": config_of(w, BASE, n["base"]),
        "tagged_manifest": n["base"],
        "index": n["api_index"],
        "docker_list": n["web_list"],
        "child_manifest": n["api_arm64"],
        "docker_child_manifest": n["web_amd64"],
    }[which]


def test_shared_layer_blob_data_removed(env):
    shared = env.n["base_layer_amd64"]
    dm.remove_blob_data(env.v2, shared)
    out = agree(env)
    assert {(r, d) for r, d, k in out.failure_keys if k == "blob"} == {
        (repo, shared) for repo in env.world.repos_with_blob(shared)
    }
    assert out.error_kinds == {"orphan_layer_link"}


@pytest.mark.parametrize("repo,handle", [(API, "api_arm64"), (API, "api_att_arm64"), (WEB, "web_amd64"),
                                         (API, "api_amd64")])
def test_child_revision_link_without_data(env, repo, handle):
    d = env.n[handle]
    dm.remove_blob_data(env.v2, d)
    out = agree(env)
    assert (repo, d, "manifest_digest") in out.failure_keys
    assert {"dangling_revision", "orphan_index_child"} <= out.error_kinds


@pytest.mark.parametrize(
    "which", ["shared_layer", "own_layer", "config", "tagged_manifest", "index", "child_manifest"]
)
def test_zero_byte_blob(env, which):
    dm.truncate_blob(env.v2, _target(env, which), 0)
    out = agree(env)
    assert out.failures
    assert "empty_blob" in out.error_kinds


@pytest.mark.parametrize("which", ["shared_layer", "own_layer", "config"])
def test_half_truncated_layer_or_config_blob(env, which):
    dm.truncate_blob_half(env.v2, _target(env, which))
    out = agree(env)
    assert out.failures
    assert out.error_kinds == {"size_mismatch"}


@pytest.mark.parametrize(
    "which", ["tagged_manifest", "index", "docker_list", "child_manifest", "docker_child_manifest"]
)
def test_half_truncated_manifest_blob(env, which):
    dm.truncate_blob_half(env.v2, _target(env, which))
    out = agree(env)
    assert out.failures
    assert "truncated_manifest" in out.error_kinds


def test_longer_child_manifest_blob(env):
    """Child manifest data with a byte appended (still valid JSON): 200 with the long body; the index declares
    the size, so regindex sees it without hashing."""
    d = env.n["api_arm64"]
    p = dm.blob_data_path(env.v2, d)
    p.write_bytes(p.read_bytes() + b"\n")
    out = agree(env)
    assert (API, d, "manifest_digest") in out.failure_keys
    assert "size_mismatch" in out.error_kinds


def _swap_space_for_tab(v2: Path, digest: str) -> None:
    """Same size, still valid JSON, other bytes."""
    p = dm.blob_data_path(v2, digest)
    data = p.read_bytes()
    i = data.index(b" ")
    p.write_bytes(data[:i] + b"\t" + data[i + 1:])


@pytest.mark.parametrize("which", ["shared_layer", "config", "tagged_manifest", "child_manifest"])
def test_same_size_corruption_with_verify_content(env, which):
    d = _target(env, which)
    env.verify_content = True
    if which.endswith("manifest"):
        _swap_space_for_tab(env.v2, d)
    else:
        dm.flip_blob_byte(env.v2, d, offset=dm.blob_data_path(env.v2, d).stat().st_size // 2)
    out = agree(env)
    assert out.failures
    assert "digest_mismatch" in out.error_kinds


def test_same_size_manifest_corruption_without_verify_content(env):
    dm.flip_blob_byte(env.v2, env.n["base"], offset=0)  # '{' -> not JSON: 500 by digest and by tag
    out = agree(env)
    assert out.failures


# -- link files that do not parse: garbage, empty, trailing newline
def _bad(content: str, digest: str) -> bytes:
    return {"garbage": dm.GARBAGE, "empty": dm.EMPTY, "newline": dm.newline_link(digest)}[content]


CONTENTS = ["garbage", "empty", "newline"]


@pytest.mark.parametrize(
    "repo,which,content",
    [(BASE, "shared_layer", c) for c in CONTENTS] + [(API, "own_layer", "garbage"), (WEB, "config", "newline")],
)
def test_corrupt_layer_link(env, repo, which, content):
    d = config_of(env.world, WEB, env.n["web_legacy"]) if which == "config" else _target(env, which)
    dm.corrupt_layer_link(env.v2, repo, d, _bad(content, d))
    out = agree(env)
    assert (repo, d, "blob") in out.failure_keys
    assert out.error_kinds == {"corrupt_link"}


@pytest.mark.parametrize(
    "repo,handle,content",
    [(BASE, "base", c) for c in CONTENTS]
    + [(API, "api_index", "garbage"), (API, "api_arm64", "newline"), (WEB, "web_amd64", "empty")],
)
def test_corrupt_revision_link(env, repo, handle, content):
    d = env.n[handle]
    dm.corrupt_revision_link(env.v2, repo, d, _bad(content, d))
    out = agree(env)
    assert (repo, d, "manifest_digest") in out.failure_keys
    assert "corrupt_link" in out.error_kinds
    assert any(f["kind"] == "gc_blocker" for f in out.findings)


@pytest.mark.parametrize(
    "repo,tag,content",
    [(BASE, "3.19", c) for c in CONTENTS] + [(API, "v1", "garbage"), (WEB, "legacy", "newline")],
)
def test_corrupt_tag_current_link(env, repo, tag, content):
    d = env.world.repos[repo].tags[tag]
    dm.corrupt_tag_link(env.v2, repo, tag, _bad(content, d))
    out = agree(env)
    assert (repo, tag, "manifest_tag") in out.failure_keys
    assert out.error_kinds == {"corrupt_link", "dangling_tag"}


# -- tags that name nothing servable
@pytest.mark.parametrize("how", ["link_file", "current_dir"])
@pytest.mark.parametrize("repo,tag", [(BASE, "3.19"), (API, "v1-amd64")])
def test_tag_without_current_link(env, how, repo, tag):
    if how == "link_file":
        dm.remove_tag_current_link(env.v2, repo, tag)
    else:
        shutil.rmtree(dm.tag_dir(env.v2, repo, tag) / "current")
    out = agree(env)
    assert (repo, tag, "manifest_tag") in out.failure_keys
    assert out.error_kinds == {"dangling_tag"}


def test_index_revision_link_removed_while_tagged(env):
    dm.remove_revision_link(env.v2, API, env.n["api_index"])
    out = agree(env)
    assert {(API, "v1", "manifest_tag"), (API, "latest", "manifest_tag")} <= out.failure_keys
    assert out.error_kinds == {"dangling_tag"}


@pytest.mark.parametrize("target", ["other_repo_manifest", "unknown_digest"])
def test_tag_names_a_manifest_the_repository_does_not_link(env, target):
    other = env.n["api_amd64"] if target == "other_repo_manifest" else rg.sha256_digest(b"no such manifest")
    dm.point_tag(env.v2, BASE, "3.19", other)
    out = agree(env)
    assert (BASE, "3.19", "manifest_tag") in out.failure_keys
    assert out.error_kinds == {"dangling_tag"}


# -- links that parse but name another existing object
@pytest.mark.parametrize(
    "repo,handle,other",
    [
        (WEB, "web_legacy", "web_list"),  # a tagged image's revision names the tagged list
        (API, "api_arm64", "api_amd64"),  # an index child's revision names its sibling
        (BASE, "base", "api_index"),  # names an index of another repository
        (BASE, "base", "api_amd64"),  # names an image of another repository (its blobs are not linked here)
    ],
    ids=["tagged", "child", "foreign-index", "foreign-image"],
)
def test_misdirected_revision_link(env, repo, handle, other):
    d = env.n[handle]
    dm.point_revision_link(env.v2, repo, d, env.n[other])
    out = agree(env)
    assert (repo, d, "manifest_digest") in out.failure_keys
    assert "misdirected_link" in out.error_kinds
    assert out.error_kinds <= {"misdirected_link", "dangling_tag", "orphan_index_child"}


@pytest.mark.parametrize("repo,which,other", [
    (BASE, "shared_layer", "config"),  # the layer link names the image's config
    (API, "own_layer", "shared_layer"),  # names another layer of the same image
])
def test_misdirected_layer_link(env, repo, which, other):
    d = _target(env, which)
    other_d = config_of(env.world, BASE, env.n["base"]) if other == "config" else _target(env, other)
    dm.point_layer_link(env.v2, repo, d, other_d)
    out = agree(env)
    assert (repo, d, "blob") in out.failure_keys
    assert out.error_kinds == {"misdirected_link"}


# -- _layers links: removed where a servable manifest needs them; the fallback for manifests
@pytest.mark.parametrize("how", ["dir", "link_file"])
@pytest.mark.parametrize(
    "repo,which", [(API, "own_layer"), (API, "shared_layer"), (BASE, "config")],
    ids=["own-layer", "shared-layer", "config"],
)
def test_removed_layer_link_of_served_blob(env, how, repo, which):
    d = _target(env, which)
    (dm.remove_layer_link_dir if how == "dir" else dm.remove_layer_link)(env.v2, repo, d)
    out = agree(env)
    assert (repo, d, "blob") in out.failure_keys
    assert out.error_kinds == {"unlinked_blob_ref"}


@pytest.mark.parametrize("how", ["link_file", "revision_dir"])
@pytest.mark.parametrize(
    "repo,handle", [(API, "api_arm64"), (API, "api_att_amd64"), (WEB, "web_arm64"), (BASE, "base")]
)
def test_manifest_served_through_layers_link_fallback(env, how, repo, handle):
    """No revision link file, but a _layers link for the manifest digest: the registry serves it from there."""
    d = env.n[handle]
    (dm.remove_revision_link if how == "link_file" else dm.remove_revision)(env.v2, repo, d)
    dm.write_layer_link(env.v2, repo, d, d)
    out = agree(env)
    assert out.failures == []
    assert out.errors == []


@pytest.mark.parametrize("how", ["data_gone", "misdirected", "garbage"])
def test_child_layers_link_fallback_broken(env, how):
    """Revision link file removed, _layers link for the child present but broken: the fallback fails."""
    d = env.n["api_arm64"]
    dm.remove_revision_link(env.v2, API, d)
    if how == "misdirected":
        dm.write_layer_link(env.v2, API, d, env.n["api_amd64"])
    elif how == "garbage":
        dm.write_layer_link(env.v2, API, d, dm.GARBAGE)
    else:
        dm.write_layer_link(env.v2, API, d, d)
        dm.remove_blob_data(env.v2, d)
    out = agree(env)
    assert (API, d, "manifest_digest") in out.failure_keys
    assert "orphan_index_child" in out.error_kinds


def test_sha512_layers_alias_is_served(env):
    """A _layers/sha512/<hex> link holding the sha256 digest of the same content is served, with content whose
    sha512 is the path digest: no error."""
    layer = env.n["base_layer_amd64"]
    data = dm.blob_data_path(env.v2, layer).read_bytes()
    alias = "sha512:" + hashlib.sha512(data).hexdigest()
    dm.write_layer_link(env.v2, BASE, alias, layer)
    out = agree(env)
    assert out.failures == [] and out.errors == []
    status, _, body = env.reg.request("GET", f"/v2/{BASE}/blobs/{alias}")
    assert status == 200 and "sha512:" + hashlib.sha512(body).hexdigest() == alias
