"""gc-preview against the real thing: predict, run docker-registry 2.8.2's garbage-collect, compare.

Per scenario, on a private copy of one pushed world: damage the storage, probe the API, scan, run
``regindex gc-preview``, snapshot the revision, tag index and blob directories, run the real
``garbage-collect``, snapshot again, probe again. Then: predicted deletions == directories that disappeared,
predicted breakage == requests that fail now and did not before, predicted abort == exit 1 with nothing
deleted (and a predicted failure in the sweep == exit 1 after exactly the predicted deletions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from regindex.cli import cli

from . import harness as h

pytestmark = pytest.mark.realreg

API, WEB, BASE = "team/app/api", "team/app/web", "library/base"
# gc-preview's request kinds, in the probe's words
PROBE_KIND = {"manifest_digest": "manifest_digest", "manifest_tag": "manifest_tag", "blob": "blob",
              "pull_tag": "copy_tag"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, h.World]:
    h.require_registry()
    base = tmp_path_factory.mktemp("gc-pristine")
    with h.Registry(base / "root") as reg:
        world = h.build_world(reg, seed=1, layout_dir=base / "layout")
    return base / "root", world


@dataclass(frozen=True)
class Snapshot:
    revisions: frozenset[tuple[str, str]]  # (repository, digest)
    tag_index: frozenset[tuple[str, str, str]]  # (repository, tag, digest)
    blobs: frozenset[str]

    @classmethod
    def of(cls, v2: Path) -> Snapshot:
        revs, index, blobs = set(), set(), set()
        repos = v2 / "repositories"
        for d in repos.rglob("_manifests/revisions/*/*"):
            repo = str(d.parent.parent.parent.parent.relative_to(repos))
            revs.add((repo, f"{d.parent.name}:{d.name}"))
        for d in repos.rglob("_manifests/tags/*/index/*/*"):
            tag_dir = d.parent.parent.parent
            repo = str(tag_dir.parent.parent.parent.relative_to(repos))
            index.add((repo, tag_dir.name, f"{d.parent.name}:{d.name}"))
        for d in (v2 / "blobs").glob("*/*/*"):
            blobs.add(f"{d.parent.parent.name}:{d.name}")
        return cls(frozenset(revs), frozenset(index), frozenset(blobs))

    def minus(self, later: Snapshot) -> Snapshot:
        return Snapshot(self.revisions - later.revisions, self.tag_index - later.tag_index, self.blobs - later.blobs)


@dataclass
class Outcome:
    prediction: dict[str, Any]
    preview_exit: int
    gc: Any  # subprocess.CompletedProcess
    deleted: Snapshot
    new_failures: set[tuple[str, str, str]]
    probed: bool = True
    copied: bool = True  # skopeo copy ran in the probes (else pull predictions are not compared)
    findings: list[dict[str, Any]] = field(default_factory=list)  # open findings of the scan before GC
    delete_untagged: bool = False

    @property
    def blockers(self) -> list[dict[str, Any]]:
        """The gc_blocker findings that say this garbage-collect run aborts."""
        return [f for f in self.findings
                if f["kind"] == "gc_blocker" and aborts_in(f["detail"]["aborts"], self.delete_untagged)]

    @property
    def predicted(self) -> Snapshot:
        p = self.prediction
        return Snapshot(
            frozenset((r["repository"], r["digest"]) for r in p["revisions"]),
            frozenset((t["repository"], t["tag"], t["digest"]) for t in p["tag_index_entries"]),
            frozenset(b["digest"] for b in p["blobs"]),
        )

    @property
    def predicted_breakage(self) -> set[tuple[str, str, str]]:
        return {
            (b["repository"], b["reference"], PROBE_KIND[b["kind"]])
            for b in self.prediction["breakage"]
            if self.copied or b["kind"] != "pull_tag"
        }

    def check(self) -> None:
        """The assertions every scenario shares."""
        p, gc = self.prediction, self.gc
        assert gc.returncode == p["exit_code"], (p["outcome"], p["reasons"], gc.stderr[-2000:])
        assert self.preview_exit == (0 if p["outcome"] == "completes" and not p["breakage"] else 1)
        assert self.deleted == self.predicted
        if self.probed:
            assert self.new_failures == self.predicted_breakage
        else:
            assert not self.prediction["breakage"]
        if p["outcome"] == "aborts":
            assert self.deleted == Snapshot(frozenset(), frozenset(), frozenset())
            assert "failed to mark" in gc.stderr
        # the findings agree with the registry too: a gc_blocker for this run exactly when it aborted in the mark
        aborted = gc.returncode != 0 and "failed to mark" in gc.stderr
        assert bool(self.blockers) is aborted, (gc.stderr[-1000:], self.blockers)
        assert p["bytes_reclaimed"] == sum(b["size"] for b in p["blobs"])
        if p["outcome"] == "completes":  # garbage-collect's own count line agrees with the mark set
            m = re.search(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion", gc.stdout)
            assert m, gc.stdout[-2000:]
            assert [int(x) for x in m.groups()] == [p["marked"], len(p["blobs"]), p["scheduled"]]


Damage = Callable[[h.Registry, h.World], None]


def aborts_in(aborts: str, delete_untagged: bool) -> bool:
    """Whether a gc_blocker finding's ``detail.aborts`` covers this garbage-collect run."""
    return {"every garbage-collect run": True, "garbage-collect --delete-untagged": delete_untagged,
            "garbage-collect without --delete-untagged": not delete_untagged}[aborts]


@pytest.fixture
def scenario(pristine: tuple[Path, h.World], tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    root, world = pristine
    runner = CliRunner()

    def run(damage: Damage | None, delete_untagged: bool, probe: bool = True, copy: bool = True,
            expected: dict[str, Any] | None = None) -> Outcome:
        """``expected``: what the probes ask for (default: the world)."""
        asked = expected or world.expected()
        storage = h.clone_storage(root, tmp_path / "root")
        db = tmp_path / "regindex.db"
        with h.Registry(storage) as reg:
            if damage:
                damage(reg, world)
                reg.restart()
            before = h.failure_keys(h.probe(reg, asked, copy=copy)) if probe else set()
            scanned = runner.invoke(cli, ["scan", str(storage), "--db", str(db), "-q"], catch_exceptions=False)
            assert scanned.exit_code in (0, 1), scanned.output
            args = ["gc-preview", "--db", str(db), "--format", "json"]
            out = runner.invoke(cli, args + (["--delete-untagged"] if delete_untagged else []),
                                catch_exceptions=False)
            [prediction] = json.loads(out.output)
            listed = runner.invoke(cli, ["findings", "--db", str(db), "--format", "json"], catch_exceptions=False)
            findings = json.loads(listed.output)
            snap0 = Snapshot.of(reg.v2)
            gc = reg.garbage_collect(delete_untagged=delete_untagged)
            snap1 = Snapshot.of(reg.v2)
            after = h.failure_keys(h.probe(reg, asked, copy=copy)) if probe else set()
        outcome = Outcome(prediction, out.exit_code, gc, snap0.minus(snap1), after - before, probe, copy,
                          findings, delete_untagged)
        outcome.check()
        return outcome

    yield run


def test_delete_untagged_on_an_untouched_world(scenario, pristine) -> None:
    _, world = pristine
    o = scenario(None, delete_untagged=True)
    assert o.prediction["outcome"] == "completes"
    assert o.new_failures == h.predict_gc_delete_untagged(world)  # the md's description agrees too
    assert o.deleted.revisions and o.deleted.blobs


def test_tag_removal_then_delete_untagged(scenario, pristine) -> None:
    _, world = pristine
    n = world.named

    def untag_api_index(reg: h.Registry, world: h.World) -> None:
        h.remove_tag(reg.v2, API, "v1")
        h.remove_tag(reg.v2, API, "latest")

    o = scenario(untag_api_index, delete_untagged=True)
    assert (API, n["api_index"]) in o.deleted.revisions
    assert n["api_index"] in o.deleted.blobs
    assert (API, n["api_amd64"]) not in o.deleted.revisions  # it has a tag of its own (v1-amd64)


def test_plain_gc_after_tag_removal_and_api_delete(scenario, pristine) -> None:
    """Plain GC keeps an untagged index; a manifest deleted through the API loses its blobs."""
    _, world = pristine
    n = world.named

    def damage(reg: h.Registry, world: h.World) -> None:
        h.remove_tag(reg.v2, API, "v1")
        h.remove_tag(reg.v2, API, "latest")
        assert reg.delete_manifest(WEB, n["web_legacy"]) == 202

    o = scenario(damage, delete_untagged=False)
    assert o.deleted.revisions == frozenset()
    legacy = world.repos[WEB].manifests[n["web_legacy"]]
    assert {n["web_legacy"], *legacy.blobs} == set(o.deleted.blobs)


def test_dangling_revision_is_skipped_and_its_blobs_swept(scenario, pristine) -> None:
    _, world = pristine
    n = world.named
    o = scenario(lambda reg, w: h.remove_blob_data(reg.v2, n["base"]), delete_untagged=False)
    assert o.prediction["skipped"] == [{"repository": BASE, "digest": n["base"], "why": "manifest data missing"}]
    base = world.repos[BASE].manifests[n["base"]]
    assert o.deleted.blobs == {base.config}  # its layer is also named by the amd64 children


def test_dangling_revision_with_delete_untagged(scenario, pristine) -> None:
    _, world = pristine
    n = world.named
    o = scenario(lambda reg, w: h.remove_blob_data(reg.v2, n["api_amd64"]), delete_untagged=True)
    assert {"repository": API, "digest": n["api_amd64"], "why": "manifest data missing"} in o.prediction["skipped"]


def test_revision_link_removed_but_served_through_layers(scenario, pristine) -> None:
    _, world = pristine
    n = world.named

    def damage(reg: h.Registry, world: h.World) -> None:
        h.remove_revision_link(reg.v2, BASE, n["base"])
        h.write_layer_link(reg.v2, BASE, n["base"], n["base"])

    expected = world.expected()  # the manifest is a blob of library/base now: probe it as one too
    expected[BASE]["blobs"][n["base"]] = world.repos[BASE].manifests[n["base"]].size
    o = scenario(damage, delete_untagged=False, expected=expected)
    assert {(BASE, n["base"], "manifest_digest"), (BASE, n["base"], "blob")} <= o.new_failures


def test_misdirected_revision_link_fails_in_the_sweep(scenario, pristine) -> None:
    _, world = pristine
    n = world.named
    o = scenario(lambda reg, w: h.point_revision_link(reg.v2, WEB, n["web_legacy"], n["web_amd64"]),
                 delete_untagged=True)
    assert o.prediction["outcome"] == "sweep_error" and o.gc.returncode == 1
    assert o.deleted.revisions and not o.deleted.blobs


def tag_without_current_link(reg: h.Registry, world: h.World) -> None:
    h.remove_tag_current_link(reg.v2, WEB, "legacy")


def garbage_revision_link(reg: h.Registry, world: h.World) -> None:
    h.corrupt_revision_link(reg.v2, WEB, world.named["web_amd64"])


def newline_tag_link(reg: h.Registry, world: h.World) -> None:
    h.corrupt_tag_link(reg.v2, BASE, "3.19", h.newline_link(world.named["base"]))


def no_tags_directory(reg: h.Registry, world: h.World) -> None:
    h.remove_tags_dir(reg.v2, BASE)


def truncated_tagged_manifest(reg: h.Registry, world: h.World) -> None:
    h.truncate_blob_half(reg.v2, world.named["web_legacy"])


def test_tag_without_current_link_does_not_block(scenario, pristine) -> None:
    """The tag is listed but names nothing: its manifest is untagged, loses its revision and the tag's index
    entry for it."""
    legacy = pristine[1].named["web_legacy"]
    o = scenario(tag_without_current_link, delete_untagged=True, copy=False)
    assert o.prediction["outcome"] == "completes"
    assert (WEB, legacy) in o.deleted.revisions
    assert (WEB, "legacy", legacy) in o.deleted.tag_index


@pytest.mark.parametrize(
    ("damage", "delete_untagged", "aborts"),
    [
        (garbage_revision_link, False, True),
        (newline_tag_link, False, False),
        (newline_tag_link, True, True),
        (no_tags_directory, False, False),
        (no_tags_directory, True, True),
        (truncated_tagged_manifest, False, True),
    ],
)
def test_blockers(scenario, damage: Damage, delete_untagged: bool, aborts: bool) -> None:
    o = scenario(damage, delete_untagged=delete_untagged, probe=not aborts, copy=False)
    assert (o.prediction["outcome"] == "aborts") is aborts
