"""Where regindex's two statements of the registry's rules disagreed, registry 2.8.2 is the judge.

Three disagreements (issue 11), each with its variants, on a private copy of one pushed world:

* manifest data overwritten with other bytes of the same size that still parse (one naming another layer,
  one changing only a declared size): the API, ``skopeo copy``, and what garbage-collect marks;
* a revision link naming a digest the repository does not link (the target exists in another repository, or
  nowhere), with and without the repository's ``_manifests/tags``;
* repository directories whose names have a colon, uppercase, or a component starting with ``-`` or ``_``.

Every garbage-collect scenario goes through ``test_gc_preview``'s ``scenario``: gc-preview's deletions,
breakage and outcome, and the gc_blocker findings, must equal what the real ``garbage-collect`` did.
The API scenarios go through ``test_agreement``'s ``agree``: every failing request is explained by an open
error finding and every error finding by a failing request.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from regindex.cli import cli

from . import damage as dm
from . import images as im
from . import registry as rg
from .test_agreement import agree, env  # noqa: F401  (env is a fixture; it uses this module's pristine)
from .test_gc_preview import API, BASE, WEB, pristine, scenario  # noqa: F401  (fixtures)

pytestmark = pytest.mark.realreg


# ---------------------------------------------------------------------------------------------------------
# 1. same-size overwrite of manifest data that still parses


def other_layer_same_size(v2: Path, world: im.World, repo: str, handle: str) -> str:
    """Rewrite the manifest's own (last) layer digest to another layer's digest: same size, still JSON, and
    the manifest now names a layer it did not name. Returns the layer no longer named."""
    digest = world.named[handle]
    m = world.repos[repo].manifests[digest]
    own = m.layers[-1]
    other = next(l for r in world.repos.values() for mm in r.manifests.values() for l in mm.layers
                 if l not in m.layers)
    p = dm.blob_data_path(v2, digest)
    data = p.read_bytes()
    assert data.count(own.encode()) == 1
    p.write_bytes(data.replace(own.encode(), other.encode()))
    assert p.stat().st_size == len(data) and json.loads(p.read_bytes())
    return own


def declared_size_only(v2: Path, world: im.World, repo: str, handle: str) -> None:
    """Change one digit of the last declared size: same size, still JSON, the same digests named."""
    p = dm.blob_data_path(v2, world.named[handle])
    data = p.read_bytes()
    last = list(re.finditer(rb'"size":\s*(\d+)', data))[-1]
    i = last.end(1) - 1
    p.write_bytes(data[:i] + bytes([ord("0") + (data[i] - ord("0") + 1) % 10]) + data[i + 1:])
    assert p.stat().st_size == len(data) and json.loads(p.read_bytes())


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["plain", "delete-untagged"])
def test_overwrite_naming_another_layer_gc(scenario, delete_untagged) -> None:
    """garbage-collect reads the bytes on disk: the layer they no longer name is swept when nothing else marks
    it (plain GC marks the untagged child through its revision link)."""
    dropped: list[str] = []
    o = scenario(lambda reg, w: dropped.append(other_layer_same_size(reg.v2, w, API, "api_arm64")),
                 delete_untagged=delete_untagged, copy=False)
    assert o.prediction["outcome"] == "completes"
    assert dropped[0] in o.deleted.blobs  # named by the genuine bytes only


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["plain", "delete-untagged"])
def test_overwrite_changing_only_a_size_gc(scenario, delete_untagged) -> None:
    o = scenario(lambda reg, w: declared_size_only(reg.v2, w, BASE, "base"), delete_untagged=delete_untagged,
                 copy=False)
    assert o.prediction["outcome"] == "completes"


@pytest.mark.parametrize("how", ["other_layer", "size_only"])
@pytest.mark.parametrize("repo,handle", [(BASE, "base"), (API, "api_arm64")], ids=["tagged", "child"])
def test_overwrite_that_still_parses_api(env, how, repo, handle):  # noqa: F811
    """GET by digest answers 200 with bytes that are not the digest's (the client refuses them), so do the
    tag and the pull: a digest_mismatch, without --verify-content (manifests are hashed whenever read)."""
    if how == "other_layer":
        other_layer_same_size(env.v2, env.world, repo, handle)
    else:
        declared_size_only(env.v2, env.world, repo, handle)
    out = agree(env)
    assert (repo, env.n[handle], "manifest_digest") in out.failure_keys
    if repo == BASE:  # the tag answers 200 with the same wrong bytes
        assert (BASE, "latest", "manifest_tag") in out.failure_keys
    assert "digest_mismatch" in out.error_kinds


# ---------------------------------------------------------------------------------------------------------
# 2. a revision link naming a digest this repository does not link


def _misdirect(target: str, tags_dir: bool):
    def damage(reg: rg.Registry, world: im.World) -> None:
        other = world.named["api_amd64"] if target == "elsewhere" else rg.sha256_digest(b"no such manifest")
        dm.point_revision_link(reg.v2, BASE, world.named["base"], other)
        if not tags_dir:
            dm.remove_tags_dir(reg.v2, BASE)
    return damage


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["plain", "delete-untagged"])
@pytest.mark.parametrize("tags_dir", [True, False], ids=["tags", "no-tags-dir"])
@pytest.mark.parametrize("target", ["elsewhere", "nowhere"])
def test_revision_link_naming_what_the_repository_does_not_link(scenario, pristine, target, tags_dir,
                                                                 delete_untagged) -> None:
    """The walk reads the link, then looks its digest up through this repository's own links: not linked here,
    the revision is skipped silently, so no tag is looked up and a missing _manifests/tags blocks nothing; the
    manifest's own config (named by nothing else) is swept."""
    _, world = pristine
    o = scenario(_misdirect(target, tags_dir), delete_untagged=delete_untagged, copy=False)
    assert o.prediction["outcome"] == "completes"
    assert [s["digest"] for s in o.prediction["skipped"] if s["repository"] == BASE] == [world.named["base"]]
    assert world.repos[BASE].manifests[world.named["base"]].config in o.deleted.blobs


@pytest.mark.parametrize("tags_dir", [True, False], ids=["tags", "no-tags-dir"])
@pytest.mark.parametrize("target", ["elsewhere", "nowhere"])
def test_revision_link_naming_what_the_repository_does_not_link_api(env, target, tags_dir):  # noqa: F811
    """GET by digest: 200 with another repository's manifest (misdirected_link), or 404 when the digest names no
    data (dangling_revision); without _manifests/tags nothing answers by tag, and that is no error."""
    _misdirect(target, tags_dir)(env.reg, env.world)
    out = agree(env, {} if tags_dir else {BASE: {"latest", "3.19"}})
    assert (BASE, env.n["base"], "manifest_digest") in out.failure_keys
    assert ("misdirected_link" if target == "elsewhere" else "dangling_revision") in out.error_kinds


# ---------------------------------------------------------------------------------------------------------
# 3. repository names: a copy of library/base under a name the reference grammar may or may not accept

NAMES = {
    # name: (garbage-collect walks it without aborting, the API's status for its manifests and blobs)
    # reference.WithName accepts a domain with a port as the first component, but the storage driver refuses
    # a path with a colon ("filesystem: invalid path"): 500 for every request, garbage-collect aborts
    "localhost:5000/app": (False, 500),
    "team/app:1": (False, 404),  # a colon in a later component: the API's route does not match
    "Team/app": (True, 200),  # uppercase in the first component: a domain, served
    "team/App": (False, 404),  # uppercase in a later component
    "-team/app": (False, 404),
    "team/-app": (False, 404),
    "_team/app": (True, 404),  # never a repository: the walk and the catalog skip every entry starting with "_"
    "team/_app": (True, 404),
}


def _copy_repo(v2: Path, name: str) -> None:
    shutil.copytree(dm.repo_dir(v2, BASE), v2 / "repositories" / name)


def _skopeo_copy(reg: rg.Registry, name: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="regindex-pull-") as tmp:
        return subprocess.run(
            [rg.SKOPEO_BIN, "copy", "--all", "--quiet", "--src-tls-verify=false",
             f"docker://{reg.url}/{name}:latest", f"dir:{tmp}/img"],
            capture_output=True, text=True, timeout=im.SKOPEO_TIMEOUT, check=False)


@pytest.mark.parametrize("delete_untagged", [False, True], ids=["plain", "delete-untagged"])
@pytest.mark.parametrize("name", list(NAMES))
def test_repository_name_gc(scenario, name, delete_untagged) -> None:
    o = scenario(lambda reg, w: _copy_repo(reg.v2, name), delete_untagged=delete_untagged, copy=False)
    assert (o.prediction["outcome"] == "aborts") is not NAMES[name][0]


@pytest.mark.parametrize("name", list(NAMES))
def test_repository_name_api(pristine, tmp_path, name) -> None:  # noqa: F811
    """What the API answers for the copy, what skopeo makes of the name, and what regindex reports."""
    root, world = pristine
    storage = rg.clone_storage(root, tmp_path / "root")
    _copy_repo(storage / "docker" / "registry" / "v2", name)
    base = world.repos[BASE]
    with rg.Registry(storage) as reg:
        tag_status, _, _ = reg.request("GET", f"/v2/{name}/manifests/latest", {"Accept": rg.MANIFEST_ACCEPT})
        digest_status, _, _ = reg.request("GET", f"/v2/{name}/manifests/{base.tags['latest']}",
                                             {"Accept": rg.MANIFEST_ACCEPT})
        blob_status, _, _ = reg.request("GET", f"/v2/{name}/blobs/{base.layers()[0]}")
        listed = reg.tags(name)
        catalog = reg.catalog()
        pulled = _skopeo_copy(reg, name)
    accepted, status = NAMES[name]
    assert (tag_status, digest_status, blob_status) == (status, status, status)
    assert (sorted(listed or []) == ["3.19", "latest"]) is (status == 200)  # in readdir order: the filesystem's
    underscore = any(c.startswith("_") for c in name.split("/"))
    assert (name in catalog) is not underscore  # the catalog lists every other directory holding _layers
    # skopeo's own reference grammar (containers/image) is stricter than the registry's: it refuses every one of
    # these names before asking the registry, even the one the API serves
    assert pulled.returncode != 0 and "invalid reference format" in pulled.stderr, pulled.stderr

    db = tmp_path / "regindex.db"
    runner = CliRunner()
    r = runner.invoke(cli, ["scan", str(storage), "--db", str(db), "-q", "--fail-on", "never"])
    assert r.exit_code == 0, r.output
    findings = json.loads(runner.invoke(cli, ["findings", "--db", str(db), "--format", "json"]).output)
    refused = [f for f in findings if f["kind"] == "storage_anomaly" and "refuse" in f["detail"]["reason"]]
    blockers = [f for f in findings if f["kind"] == "gc_blocker"]
    assert bool(refused) is (not accepted), findings
    assert bool(blockers) is (not accepted), findings
    assert not [f for f in findings if f["severity"] == "error"], findings
