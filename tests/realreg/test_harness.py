"""Self-test of the real-registry harness against docker-registry 2.8.2 and skopeo."""

import json
import random

import pytest

from . import damage as dm
from . import images as im
from . import probe as pb
from . import registry as rg

pytestmark = pytest.mark.realreg

API, WEB, BASE = "team/app/api", "team/app/web", "library/base"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One world, built and pushed once; tests damage copies of its storage (see ``registry``)."""
    rg.require_registry()
    base = tmp_path_factory.mktemp("pristine")
    with rg.Registry(base / "root") as reg:
        world = im.build_world(reg, seed=1, layout_dir=base / "layout")
    return base / "root", world


@pytest.fixture
def registry(pristine, tmp_path):
    """A running registry over a private copy of the pristine storage."""
    root, _ = pristine
    rg.clone_storage(root, tmp_path / "root")
    with rg.Registry(tmp_path / "root") as reg:
        yield reg


@pytest.fixture
def world(pristine):
    return pristine[1]


def test_world_shape(world):
    assert set(world.repos) == {API, WEB, BASE}
    api, web = world.repos[API], world.repos[WEB]
    assert api.tags["v1"] == api.tags["latest"] == world.named["api_index"]
    assert api.tags["v1-amd64"] == world.named["api_amd64"]
    index = api.manifests[world.named["api_index"]]
    assert index.media_type == rg.OCI_INDEX and len(index.children) == 4
    attestations = [api.manifests[c] for c in index.children if api.manifests[c].attestation_for]
    assert {a.attestation_for for a in attestations} == {world.named["api_amd64"], world.named["api_arm64"]}
    assert all(a.platform == {"architecture": "unknown", "os": "unknown"} for a in attestations)
    assert web.manifests[world.named["web_list"]].media_type == rg.DOCKER_LIST
    assert web.manifests[world.named["web_amd64"]].media_type == rg.DOCKER_MANIFEST
    # the base layer is the same bytes in three repositories
    assert world.repos_with_blob(world.named["base_layer_amd64"]) == sorted([BASE, API, WEB])


def test_make_layer_is_deterministic():
    assert im.make_layer(random.Random(7), 100) == im.make_layer(random.Random(7), 100)
    assert im.make_layer(random.Random(7), 100) != im.make_layer(random.Random(8), 100)


def test_pristine_world_probes_clean(registry, world):
    assert registry.catalog() == sorted(world.repos)
    assert pb.probe(registry, world) == []
    assert pb.probe(registry, world.expected()) == []


def test_gc_delete_untagged_breaks_index_children(registry, world):
    n = world.named
    result = registry.garbage_collect(delete_untagged=True)
    assert result.returncode == 0, result.stderr

    failures = pb.probe(registry, world)
    got = pb.failure_keys(failures)
    assert got == pb.predict_gc_delete_untagged(world)

    broken_children = {
        (API, n["api_arm64"]), (API, n["api_att_amd64"]), (API, n["api_att_arm64"]),
        (WEB, n["web_amd64"]), (WEB, n["web_arm64"]),
    }
    assert {(r, d) for r, d, k in got if k == "manifest_digest"} == broken_children
    assert (API, n["api_amd64"], "manifest_digest") not in got  # it has a tag of its own
    assert {(r, t) for r, t, k in got if k == "copy_tag"} == {(API, "v1"), (API, "latest"), (WEB, "v2")}
    assert not any(k == "manifest_tag" for _, _, k in got)  # the index itself is still served by tag
    # the children's manifest blobs stay (the index marks them); their swept layers leave _layers links behind
    for _, child in broken_children:
        assert dm.blob_data_path(registry.v2, child).exists()
    swept = {d for r, d, k in got if k == "blob"}
    assert n["base_layer_arm64"] in swept and n["base_layer_amd64"] not in swept
    for repo, dgst, kind in got:
        if kind == "blob":
            assert dm.layer_link_path(registry.v2, repo, dgst).exists()
            assert not dm.blob_dir(registry.v2, dgst).exists()


def test_removed_blob_fails_in_every_repo_linking_it(registry, world):
    shared = world.named["base_layer_amd64"]
    dm.remove_blob_data(registry.v2, shared)
    registry.restart()
    failures = pb.probe(registry, world)
    blob_failures = {(f.repository, f.reference) for f in failures if f.kind == "blob"}
    assert blob_failures == {(repo, shared) for repo in world.repos_with_blob(shared)}
    assert len(blob_failures) == 3
    assert all(f.kind in ("blob", "copy_tag") for f in failures)
    assert {(f.repository, f.reference) for f in failures if f.kind == "copy_tag"} == {
        (BASE, "latest"), (BASE, "3.19"), (API, "v1"), (API, "latest"), (API, "v1-amd64"), (WEB, "v2"),
    }


def test_misdirected_and_corrupt_links_are_reported(registry, world):
    n = world.named
    dm.point_revision_link(registry.v2, WEB, n["web_legacy"], n["web_list"])  # 200 with the wrong bytes
    dm.corrupt_tag_link(registry.v2, BASE, "3.19", dm.newline_link(n["base"]))  # 500
    dm.truncate_blob_half(registry.v2, n["base_layer_arm64"])  # 200 with a short body
    registry.restart()
    got = pb.failure_keys(pb.probe(registry, world, copy=False))
    assert got == {
        (WEB, n["web_legacy"], "manifest_digest"),
        (WEB, "legacy", "manifest_tag"),
        (BASE, "3.19", "manifest_tag"),
        (API, n["base_layer_arm64"], "blob"),
        (WEB, n["base_layer_arm64"], "blob"),
    }


def test_tag_without_current_link_is_still_probed(registry, world):
    dm.remove_tag_current_link(registry.v2, WEB, "legacy")
    expected = world.expected()
    del expected[WEB]["tags"]["legacy"]  # the prober must find it through tags/list
    assert "legacy" in registry.tags(WEB)
    got = pb.failure_keys(pb.probe(registry, expected))
    assert got == {(WEB, "legacy", "manifest_tag"), (WEB, "legacy", "copy_tag")}


def test_docker_list_with_oci_attestation_children_pushes(registry, tmp_path):
    rng = random.Random(3)
    layout = tmp_path / "layout"
    amd = im.build_image(layout, rng, [im.make_layer(rng, 300)], "amd64", "linux", "docker")
    arm = im.build_image(layout, rng, [im.make_layer(rng, 300)], "arm64", "linux", "oci")
    lst = im.build_index(layout, [amd, arm], fmt="docker", attestation=True)
    assert im.push(registry, layout, "mix", "t/mix", "1", desc=lst) == lst["digest"]
    status, _, body = registry.get_manifest("t/mix", "1")
    assert status == 200 and rg.sha256_digest(body) == lst["digest"]
    assert len(json.loads(body)["manifests"]) == 4
    w = im.World()
    w.record(layout, "t/mix", "1", lst)
    assert pb.probe(registry, w) == []


def test_require_registry_skips_or_fails(monkeypatch):
    monkeypatch.setattr(rg, "REGISTRY_BIN", "/nonexistent/docker-registry")
    monkeypatch.delenv(rg.REQUIRE_ENV, raising=False)
    assert not rg.registry_available()
    with pytest.raises(pytest.skip.Exception):
        rg.require_registry()
    monkeypatch.setenv(rg.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception):
        rg.require_registry()
