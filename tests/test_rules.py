"""regindex.rules, the one statement of the registry's rules: pure cases (the parity test pins the SQL views
to it; tests/realreg/test_rules.py pins it to registry 2.8.2)."""

from __future__ import annotations

import pytest

from regindex import rules
from regindex.layout import EMPTY_SHA256, valid_repository_name
from regindex.rules import Inventory, Link, Manifest, Repo

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
A512 = "sha512:" + "a" * 128


def test_repositories_are_met_in_walk_order() -> None:
    names = ["ab", "a/b", "a", "a/0x", "a/b/c"]
    assert sorted(names, key=rules.walk_key) == ["a/0x", "a", "a/b", "a/b/c", "ab"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("library/base", True), ("a", True), ("a__b/c--d/e.f", True), ("x" * 256, False), ("", False),
     # what registry 2.8.2 did with each (tests/realreg/test_rules.py)
     ("Team/app", True), ("team/App", False), ("My-Host.example/app", True), ("team/app:1", False),
     ("localhost:5000/app", False), ("My-Host.example:5000/app", False), ("-team/app", False),
     ("team/-app", False), ("App", False)],
)
def test_repository_names_registry_2_8_2_accepts(name: str, ok: bool) -> None:
    assert valid_repository_name(name) is ok


def _inv(repo: Repo, blobs: dict[str, int], manifests: dict[tuple[str, int], Manifest] | None = None,
         content: dict[str, rules.Content] | None = None) -> Inventory:
    return Inventory("r", {repo.name: repo}, blobs, manifests or {}, content or {})


def test_empty_blob_of_the_empty_digest_is_served() -> None:
    repo = Repo("x", True, layers={EMPTY_SHA256: Link("ok", EMPTY_SHA256), A: Link("ok", A)})
    inv = _inv(repo, {EMPTY_SHA256: 0, A: 0})
    assert rules.blob(inv, repo, EMPTY_SHA256) == rules.SERVED
    assert rules.blob(inv, repo, A) == rules.DATA_EMPTY


def test_manifest_statuses_in_the_views_order() -> None:
    image = Manifest("image", None, None, (("config", B, False),))
    repo = Repo("x", True, revisions={A: Link("ok", A)}, layers={B: Link("ok", B)})
    inv = _inv(repo, {A: 10}, {(A, 10): image})
    assert rules.manifest(inv, repo, A) == rules.Served("revision", Link("ok", A), rules.SERVED)
    # no revision link file: the _layers link serves it
    repo.revisions[A] = Link("absent", None)
    repo.layers[A] = Link("ok", A)
    assert rules.manifest(inv, repo, A).via == "layer"  # type: ignore[union-attr]
    del repo.layers[A]
    assert rules.manifest(inv, repo, A) is None
    repo.revisions[A] = Link("garbage", None)
    assert rules.manifest(inv, repo, A).status == rules.CORRUPT_LINK  # type: ignore[union-attr]
    repo.revisions[A] = Link("ok", B)  # names other content
    inv.blobs[B] = 10
    inv.manifests[(B, 10)] = image
    assert rules.manifest(inv, repo, A).status == rules.MISDIRECTED  # type: ignore[union-attr]
    # same-size data that is not its digest's content: served with 200 and bytes the client refuses
    repo.revisions[A] = Link("ok", A)
    other = "sha256:" + "c" * 64
    inv.content[A] = rules.Content(other, None)
    inv.manifests[(other, 10)] = Manifest("image", None, None, (("layer", other, False),))
    assert rules.manifest(inv, repo, A).status == rules.DIGEST_MISMATCH  # type: ignore[union-attr]
    # and garbage-collect reads those bytes: it marks what they name
    assert inv.manifest_data(A) == inv.manifests[(other, 10)]
    inv.content[A] = rules.Content(other, "not valid JSON")
    assert rules.manifest(inv, repo, A).status == rules.UNPARSABLE  # type: ignore[union-attr]
    assert inv.manifest_data(A).get_error() == "not valid JSON"  # type: ignore[union-attr]


def test_tag_statuses() -> None:
    repo = Repo("x", True, revisions={A: Link("ok", A)},
                tags={"v1": Link("ok", A), "gone": Link("absent", None), "bad": Link("empty", None),
                      "other": Link("ok", B)})
    inv = _inv(repo, {A: 10}, {(A, 10): Manifest("image", None, None)})
    assert [rules.tag(inv, repo, t) for t in ("v1", "gone", "bad", "other")] == [
        rules.SERVED, rules.NO_CURRENT_LINK, rules.CORRUPT_LINK, rules.TARGET_NOT_LINKED]


def test_sha512_layers_alias_is_served_and_not_misdirected() -> None:
    repo = Repo("x", True, layers={A512: Link("ok", A)})
    assert rules.blob(_inv(repo, {A: 5}), repo, A512) == rules.SERVED


def test_a_revision_naming_a_digest_the_repository_does_not_link_is_skipped_before_any_tag_lookup() -> None:
    """Registry 2.8.2 (tests/realreg/test_rules.py): the digest is looked up through the repository's own links;
    not linked there, the revision is skipped, so a missing _manifests/tags blocks nothing."""
    repo = Repo("x", False, revisions={A: Link("ok", B)})
    inv = _inv(repo, {B: 10}, {(B, 10): Manifest("image", None, None)})
    for delete_untagged in (False, True):
        m = rules.mark(inv, delete_untagged)
        assert not m.blockers and not m.marked
        assert m.skipped == [rules.Skip("x", A, "the revision link names a digest this repository does not link")]
    repo.revisions[B] = Link("ok", B)  # linked here after all: looked up, and the tags lookup fails
    assert [b.what for b in rules.mark(inv, True).blockers] == ["no_tags_dir"]
    assert list(rules.blockers(inv)) == [(rules.Blocker("no_tags_dir", "x"), rules.UNTAGGED)]


def test_invalid_repository_names_block_every_run() -> None:
    repo = Repo("team/App", True)
    inv = Inventory("r", {"team/App": repo}, {}, {})
    assert list(rules.blockers(inv)) == [(rules.Blocker("invalid_name", "team/App"), "every garbage-collect run")]
