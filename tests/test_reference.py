"""Parity with the reference scanner (../shared/reference/registry_integrity_scan.py --dry-run).

On every generated tree regindex reports every orphan the reference reports (same registry, repository and
digest). Where they disagree, the registry decides (tests/realreg proves the API side); the cases where the
reference is wrong are pinned here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_checks import CASES, build_world

REFERENCE = Path(os.environ.get(
    "REGINDEX_REFERENCE_SCANNER",
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "registry_integrity_scan.py",
))

LAYER_RE = re.compile(r"\[DRY RUN\] \[(?P<reg>[^/\]]+)/(?P<repo>[^\]]+)\] removing orphaned layer link: (?P<d>[0-9a-f]{12})")
CHILD_RE = re.compile(
    r"WARNING \[(?P<reg>[^/\]]+)/(?P<repo>[^\]]+)\] ORPHAN INDEX: (?P<idx>[0-9a-f]{12}) references missing child "
    r"(?P<child>[0-9a-f]{12})"
)


def reference(base: Path) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str, str]]]:
    if not REFERENCE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference scanner missing at {REFERENCE}")
        pytest.skip(f"reference scanner not found at {REFERENCE}")
    out = subprocess.run([sys.executable, str(REFERENCE), str(base), "--dry-run"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    layers = {(m["reg"], m["repo"], m["d"]) for m in LAYER_RE.finditer(out)}
    children = {(m["reg"], m["repo"], m["child"], m["idx"]) for m in CHILD_RE.finditer(out)}
    assert out.count("removing orphaned layer link") == len(layers)
    assert out.count("ORPHAN INDEX") == len(children)
    return layers, children


def ours(findings) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str, str]]]:
    fs = findings()
    layers = {(f["registry"], f["repository"], f["digest"][7:19]) for f in fs if f["kind"] == "orphan_layer_link"}
    children = {(f["registry"], f["repository"], f["digest"][7:19], f["parent_digest"][7:19])
                for f in fs if f["kind"] == "orphan_index_child"}
    return layers, children


# Where the reference reports an orphan the registry serves fine (pinned below, proven in tests/realreg).
REFERENCE_WRONG = {"child_served_through_layers"}


@pytest.mark.parametrize("case", sorted(set(CASES) - REFERENCE_WRONG))
def test_regindex_reports_every_orphan_the_reference_reports(case, base, scan, findings):
    world = build_world(base)
    CASES[case](world)
    ref_layers, ref_children = reference(base)
    scan()
    our_layers, our_children = ours(findings)
    assert ref_layers <= our_layers
    assert ref_children <= our_children


def _short(d: str) -> str:
    return d[7:19]


@pytest.mark.parametrize("case", ["index_without_media_type", "index_over_one_mib", "child_link_present_data_gone"])
def test_pinned_reference_false_negatives(case, base, scan, findings):
    """The reference misses these orphans (it needs mediaType, reads 1 MiB, trusts a link without data)."""
    world = build_world(base)
    expected = CASES[case](world)
    _ref_layers, ref_children = reference(base)
    scan()
    _our_layers, our_children = ours(findings)
    missed = {("private", e[3], _short(e[4]), _short(e[6])) for e in expected if e[0] == "orphan_index_child"}
    assert missed and missed <= our_children
    assert not (missed & ref_children)


def test_pinned_reference_false_positive_layers_fallback(base, scan, findings):
    """A child without a revision link but with a _layers link is served (registry 2.8 falls back to _layers):
    the reference calls it an orphan, regindex does not."""
    world = build_world(base)
    CASES["child_served_through_layers"](world)
    child = world.api.children[0]
    _l, ref_children = reference(base)
    scan()
    assert ("private", "team/app/api", _short(child.digest), _short(world.api.digest)) in ref_children
    assert not [f for f in findings() if f["kind"] == "orphan_index_child"]


def test_reference_skips_caches_regindex_reports_them_as_info(base, invoke, db_path, findings):
    import random

    from regindex.sample import StorageWriter

    hub = StorageWriter(base / "dockerhub")
    idx = hub.push_index("library/nginx", random.Random(5), attestations=False)
    hub.tag("library/nginx", "1", idx.digest)
    hub.remove_revision("library/nginx", idx.children[0].digest)
    _l, ref_children = reference(base)
    assert ref_children == set()
    invoke("scan", base, "--db", db_path, "-q", "--cache", "dockerhub")
    assert [(f["kind"], f["severity"]) for f in findings() if f["kind"] != "unreferenced_blob"] == [
        ("orphan_index_child", "info")]


def test_reference_and_regindex_agree_on_gc_damage(base, scan, findings):
    """Not vacuous: on GC --delete-untagged damage both report orphans, and exactly the same ones."""
    world = build_world(base)
    CASES["gc_delete_untagged"](world)
    ref_layers, ref_children = reference(base)
    scan()
    our_layers, our_children = ours(findings)
    assert ref_layers and ref_children
    assert (ref_layers, ref_children) == (our_layers, our_children)
