"""Findings depend on the tree, not on which manifests were ever parsed (migration 0012, ``manifest_reach``).

A parse is stored once per (digest, size), ever, and shared by every registry. It counts for a registry only at
the digests its current tree names as manifests: a database that followed the tree night after night, a fresh
one, and one that scans the registry alone agree on what each registry reaches and on every finding.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from regindex.layout import BlobDataPath
from regindex.sample import Index, StorageWriter
from tests.test_scale import _url, assert_same, inventory, rows_of, urls  # noqa: F401 (urls: a fixture)

EXAMPLES = int(os.environ.get("REGINDEX_HYPOTHESIS_EXAMPLES", "8"))


def findings(db_: str, registry: str | None = None) -> list[tuple[str, ...]]:
    where = "" if registry is None else f" AND registry = '{registry}'"  # a literal of the test's own
    return rows_of(db_, "SELECT kind, severity, registry, repository, digest, tag, parent_digest FROM findings "
                        f"WHERE resolved_run IS NULL{where}")


def findings_in_full(db_: str) -> list[tuple[Any, ...]]:
    """The open findings with their hint and detail, the detail without run numbers (they differ between
    databases): what a user reads of each."""
    out = []
    for row in rows_of(db_, "SELECT kind, severity, registry, repository, digest, tag, parent_digest, hint, detail "
                            "FROM findings WHERE resolved_run IS NULL"):
        detail = {k: v for k, v in json.loads(row[-1]).items() if "run" not in k}
        out.append((*row[:-1], json.dumps(detail, sort_keys=True)))
    return sorted(out)


def reach(db_: str, registry: str) -> set[str]:
    return {r[0] for r in rows_of(db_, "SELECT x.digest FROM manifest_reach x JOIN registries g "
                                       f"ON g.id = x.registry_id WHERE g.name = '{registry}'")}


def scan(invoke: Any, base: Path, db_: str, *extra: Any) -> None:
    invoke("scan", base, "--db", db_, "-q", "--fail-on", "never", *extra)


def test_a_config_once_tagged_is_no_manifest_once_the_tag_moves_back(urls, base, invoke, tmp_path):
    """A tag rewritten to name an image's config (a cleanup script's slip) makes the config a manifest of the
    registry for a night: it is parsed ("not a manifest") and reported. Once the tag is restored, the config is
    only a layer again, linked through _layers: the kept database reports nothing about it (no truncated
    manifest served through the _layers link), as a fresh scan of the same tree does, incremental or full."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w = StorageWriter(base / "private")
    rng = random.Random(11)
    img = w.push_image("team/app", rng)
    w.tag("team/app", "v1", img.digest)
    other = w.push_image("team/other", rng)
    w.tag("team/other", "v1", other.digest)
    kept_scan = (*("scan", base, "--db", kept, "-q", "--fail-on", "never"), "--config", config)
    invoke(*kept_scan)
    assert img.config not in reach(kept, "private")
    current = w.v2 / "repositories" / "team" / "other" / "_manifests" / "tags" / "v1" / "current" / "link"
    held = current.read_bytes()
    current.write_bytes(img.config.encode())  # team/other:v1 now names team/app's config
    w.link_layer("team/other", img.config)
    invoke(*kept_scan)
    assert img.config in reach(kept, "private")
    night = {(f[0], f[3], f[4]) for f in findings(kept)}
    assert ("truncated_manifest", "team/other", img.config) in night  # the tag's target is no manifest
    current.write_bytes(held)
    invoke(*kept_scan)
    assert img.config not in reach(kept, "private")
    other_db = fresh()
    scan(invoke, base, other_db)
    assert_same(kept, other_db, "incremental")
    assert not [f for f in findings(kept) if f[4] == img.config]
    invoke(*kept_scan, "--full")
    assert_same(kept, other_db, "--full")


def test_a_registrys_findings_do_not_depend_on_what_another_registry_parsed(urls, base, invoke, tmp_path):
    """Registry "a" tags a blob that registry "b" holds as a config, linked through _layers only: "a" parses it
    (no valid manifest), "b" never reads it as one. "b"'s findings and reach in the database that scans both
    equal those of a database that scans "b" alone, and stay so when "a" lets go of the blob."""
    kept, fresh = urls
    rng = random.Random(12)
    b = StorageWriter(base / "b")
    img = b.push_image("lib/app", rng)
    b.tag("lib/app", "v1", img.digest)
    config_bytes = b.path(BlobDataPath(img.config)).read_bytes()
    a = StorageWriter(base / "a")
    a.push_image("keep/me", rng)
    assert a.put_blob(config_bytes) == img.config
    a.link_revision("odd/repo", img.config)
    a.tag("odd/repo", "v1", img.config)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copytree(base / "b", alone / "b", symlinks=True)
    scan(invoke, base, kept)
    only_b = fresh()
    scan(invoke, alone, only_b)
    assert ("truncated_manifest", "odd/repo", img.config) in {(f[0], f[3], f[4]) for f in findings(kept, "a")}
    assert findings(kept, "b") == findings(only_b, "b") and not [f for f in findings(kept, "b")
                                                                 if f[4] == img.config]
    assert img.config in reach(kept, "a") and reach(kept, "b") == reach(only_b, "b")
    shutil.rmtree(base / "a" / "docker" / "registry" / "v2" / "repositories" / "odd")
    scan(invoke, base, kept)
    assert findings(kept, "b") == findings(only_b, "b") and img.config not in reach(kept, "a")


def test_bytes_rewritten_to_name_other_children_are_followed_as_they_read_on_every_night(urls, base, invoke,
                                                                                         tmp_path):
    """An index's data overwritten in place, same length, with bytes that name another child (one digest for
    another): it is no longer its digest's content, and what it names is what the bytes name, on the night it
    is read and on every night after, when the bytes stand hashed at their size and mtime (never the parse of
    the genuine content, which the kept database holds from the nights before)."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    kept_scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    w = StorageWriter(base / "private")
    rng = random.Random(13)
    idx = w.push_index("team/app", rng)
    w.tag("team/app", "v1", idx.digest)
    stray = w.push_image("team/stray", rng)  # a manifest team/app links only as a layer after the rewrite
    w.link_layer("team/app", stray.digest)
    w.remove_revision("team/stray", stray.digest)
    invoke(*kept_scan)
    data = w.path(BlobDataPath(idx.digest))
    old_child = idx.children[0].digest
    raw = data.read_bytes()
    assert raw.count(old_child.encode()) == 1
    with open(data, "r+b") as fh:  # in place: same inode, same size
        fh.write(raw.replace(old_child.encode(), stray.digest.encode()))
    for night in ("read", "standing"):
        invoke(*kept_scan)
        other = fresh()
        scan(invoke, base, other)
        assert_same(kept, other, night)
        assert findings_in_full(kept) == findings_in_full(other), night
        assert stray.digest in reach(kept, "private"), night


def test_an_orphan_child_whose_data_was_overwritten_is_damaged_not_restorable(urls, base, invoke, tmp_path):
    """An index child whose revision was deleted and whose data was then overwritten in place (same size): the
    kept database holds the parse of its genuine content from the nights before, which no longer describes the
    data; the finding's hint says the data is damaged (restoring the revision link cannot help), as a fresh scan
    says, and its detail counts no blobs of a content that is not there."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    kept_scan = ("scan", base, "--db", kept, "-q", "--fail-on", "never", "--config", config)
    w = StorageWriter(base / "private")
    rng = random.Random(14)
    idx = w.push_index("team/app", rng)
    w.tag("team/app", "v1", idx.digest)
    child = idx.children[0].digest
    invoke(*kept_scan)
    w.remove_revision("team/app", child)
    invoke(*kept_scan)
    data = w.path(BlobDataPath(child))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    with open(data, "r+b") as fh:
        fh.write(bytes(raw))
    invoke(*kept_scan)
    other = fresh()
    scan(invoke, base, other)
    assert_same(kept, other)

    def orphan(db_: str) -> tuple[str, dict[str, Any]]:
        engine = create_engine(_url(db_))
        with engine.connect() as c:
            hint, detail = c.execute(text("SELECT hint, detail FROM findings WHERE resolved_run IS NULL AND "
                                          "kind = 'orphan_index_child' AND digest = :d"), {"d": child}).one()
        engine.dispose()
        return hint, json.loads(detail)

    assert orphan(kept) == orphan(other)
    hint, detail = orphan(kept)
    assert "damaged" in hint and "Restore" not in hint, hint
    assert detail["child_blobs"] == 0


def test_data_replaced_by_another_manifest_of_the_registry_is_parsed_once(urls, base, invoke):
    """One manifest's data replaced by the bytes of another the registry also holds (a copy over the wrong
    path): the walk meets both contents in one batch, the genuine one and the bytes that hash to it, and
    stores their parse once (it stored it twice, and the registry failed on the unique constraint). Found by
    a fuzz of random nights."""
    kept, fresh = urls
    w = StorageWriter(base / "private")
    rng = random.Random(15)
    one, two = w.push_image("team/one", rng), w.push_image("team/two", rng)
    w.tag("team/one", "v1", one.digest)
    w.tag("team/two", "v1", two.digest)
    w.path(BlobDataPath(one.digest)).write_bytes(w.path(BlobDataPath(two.digest)).read_bytes())
    scan(invoke, base, kept)  # exit 0: no registry failed
    got = {(f[0], f[3], f[4]) for f in findings(kept)}
    assert ("size_mismatch", "team/one", one.digest) in got or ("digest_mismatch", "team/one", one.digest) in got
    assert reach(kept, "private") >= {one.digest, two.digest}
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM manifests WHERE digest = :d"), {"d": two.digest}).scalar_one() == 1
    engine.dispose()


def test_bytes_not_their_digests_content_are_described_by_no_parse_of_the_genuine_content(urls, base, invoke,
                                                                                        tmp_path):
    """An index's data garbled in place (same size): the kept database holds the parse of the genuine index from
    the night before, a fresh one never saw it. manifest_serving gives the garbled bytes no parse of the genuine
    content (kind NULL), so the truncated_manifest finding reads the same in both."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w = StorageWriter(base / "private")
    idx = w.push_index("team/app", random.Random(16))
    w.tag("team/app", "v1", idx.digest)
    scan(invoke, base, kept, "--config", config)
    data = w.path(BlobDataPath(idx.digest))
    raw = bytearray(data.read_bytes())
    raw[0] = ord("X")  # no longer JSON
    with open(data, "r+b") as fh:
        fh.write(bytes(raw))
    scan(invoke, base, kept, "--config", config)
    other = fresh()
    scan(invoke, base, other)
    assert findings_in_full(kept) == findings_in_full(other)
    engine = create_engine(_url(kept))
    with engine.connect() as c:
        assert c.execute(text("SELECT status, manifest_kind, manifest_id FROM manifest_serving WHERE digest = :d"),
                         {"d": idx.digest}).one() == ("unparsable", None, None)
    engine.dispose()
    assert "truncated_manifest" in {f[0] for f in findings(kept)}


def test_bytes_hashed_by_verify_content_are_read_when_they_become_a_manifest(urls, base, invoke, tmp_path):
    """--verify-content hashes every blob and records no parse error: a layer whose data became the bytes of a
    config (whose parse the database holds: a tag named that config for a night) is read by the walk once a tag
    names the layer, and is reported as no manifest (truncated_manifest), as a fresh scan reports it, instead
    of standing on the hash and saying only digest_mismatch."""
    kept, fresh = urls
    config = tmp_path / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    w = StorageWriter(base / "r")
    rng = random.Random(1)
    a = w.push_image("team/app", rng)
    w.tag("team/app", "t1", a.digest)
    b = w.push_image("team/app", rng)
    w.tag("team/app", "t2", b.digest)

    def kept_scan() -> None:
        scan(invoke, base, kept, "--verify-content", "--config", config)

    kept_scan()
    w.write_tag_link("team/app", "t2", a.config.encode())  # the config, tagged: parsed as no manifest
    kept_scan()
    w.write_tag_link("team/app", "t2", b.digest.encode())
    w.path(BlobDataPath(b.layers[0])).write_bytes(w.path(BlobDataPath(a.config)).read_bytes())
    kept_scan()  # --verify-content hashes the layer's new bytes (to the config's digest)
    w.write_tag_link("team/app", "t2", b.layers[0].encode())  # now a tag names the layer
    kept_scan()
    other = fresh()
    scan(invoke, base, other, "--verify-content")
    assert findings_in_full(kept) == findings_in_full(other)
    assert ("truncated_manifest", "team/app", b.layers[0]) in {(f[0], f[3], f[4]) for f in findings(kept)}


# ---------------------------------------------------------------------------------------------
# Random nights: tags moved to any digest of the tree (configs, layers, children), revisions deleted and
# restored, data truncated, removed and rewritten, two registries sharing content. After every night the kept
# database equals a fresh scan of the same tree.

_OPS = ("retag", "retag", "retag_config", "retag_home", "retag_home", "drop_revision", "restore_revision", "truncate", "remove_data", "garble",
        "layer_link", "drop_tag", "unlink_layer")


def _digests_of(thing: Any) -> list[str]:
    """An image's or an index's digests: its own, its children's, their configs and layers."""
    out = [thing.digest]
    for image in getattr(thing, "children", None) or [thing]:
        out += [image.digest, *image.blobs]
    return sorted(set(out))


def _build(base: Path, seed: int) -> tuple[list[StorageWriter], list[Any], list[str]]:
    """Two registries, each with an index and an image in one repository, sharing a layer."""
    rng = random.Random(seed)
    ws = [StorageWriter(base / "r0"), StorageWriter(base / "r1")]
    shared = rng.randbytes(300)
    things: list[Any] = []
    for i, w in enumerate(ws):
        idx = w.push_index(f"team/app{i}", rng, shared_layers=[shared])
        w.tag(f"team/app{i}", "v1", idx.digest)
        img = w.push_image(f"team/app{i}", rng, layers=[shared])
        w.tag(f"team/app{i}", "latest", img.digest)
        things += [(w, f"team/app{i}", idx), (w, f"team/app{i}", img)]
    return ws, things, sorted({d for _w, _r, t in things for d in _digests_of(t)})


def _night(things: list[Any], digests: list[str], op: str, a: int, b: int) -> None:
    """One change: to a digest of thing ``a`` (mostly: a tag's target may be any digest of the trees)."""
    w, repo, thing = things[a % len(things)]
    own = _digests_of(thing)
    target = own[b % len(own)] if op != "retag" or b % 3 else digests[b % len(digests)]
    tag = "v1" if b % 2 else "latest"
    v2 = w.v2
    rev = v2 / "repositories" / repo / "_manifests" / "revisions" / "sha256" / target[7:]
    data = v2 / "blobs" / "sha256" / target[7:9] / target[7:] / "data"
    if op == "retag":
        w.write_tag_link(repo, tag, target.encode())
    elif op == "retag_config":  # a cleanup script's slip: the tag names a config
        image = (getattr(thing, "children", None) or [thing])[0]
        w.write_tag_link(repo, tag, image.config.encode())
    elif op == "retag_home":
        w.write_tag_link(repo, "v1" if isinstance(thing, Index) else "latest", thing.digest.encode())
    elif op == "drop_revision" and rev.exists():
        shutil.rmtree(rev)
    elif op == "restore_revision" and data.exists():
        w.link_revision(repo, target)
    elif op == "truncate" and data.exists() and data.stat().st_size > 4:
        w.truncate_blob(target, data.stat().st_size // 2)
    elif op == "remove_data" and data.exists():
        w.remove_blob(target)
    elif op == "garble" and data.exists() and data.stat().st_size > 0:
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 1
        with open(data, "r+b") as fh:
            fh.write(bytes(raw))
    elif op == "layer_link":
        w.link_layer(repo, target)
    elif op == "drop_tag" and (v2 / "repositories" / repo / "_manifests" / "tags" / tag).exists():
        w.remove_tag(repo, tag)
    elif op == "unlink_layer" and (v2 / "repositories" / repo / "_layers" / "sha256" / target[7:]).exists():
        w.remove_layer_link(repo, target)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), nights=st.lists(
    st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 99), st.integers(0, 999)), min_size=1, max_size=4),
    min_size=2, max_size=5))
# the case that found the bug: a tag names its image's config for a night, then its image again
@example(seed=0, nights=[[("retag_config", 1, 0)], [("retag_home", 1, 0)]])
# and through an index's child: the child's revision is deleted, then the index's tag moves away and back
@example(seed=0, nights=[[("drop_revision", 0, 1), ("retag_config", 0, 1)], [("retag_home", 0, 1)]])
def test_random_nights_kept_database_equals_a_fresh_scan(tmp_path_factory, seed, nights):
    from click.testing import CliRunner

    from regindex.cli import cli

    tmp = tmp_path_factory.mktemp("nights")
    base = tmp / "storage"
    base.mkdir()
    config = tmp / "regindex.toml"
    config.write_text("settle_seconds = 0\n")
    runner = CliRunner()

    def run(db_: Path, *extra: str) -> None:
        r = runner.invoke(cli, ["scan", str(base), "--db", str(db_), "-q", "--fail-on", "never", *extra],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output

    _ws, things, digests = _build(base, seed)
    kept = tmp / "kept.db"
    run(kept, "--config", str(config))
    for n, ops in enumerate(nights):
        for op, a, b in ops:
            _night(things, digests, op, a, b)
        run(kept, "--config", str(config))
        fresh = tmp / f"fresh{n}.db"
        run(fresh)
        assert_same(str(kept), str(fresh), json.dumps(ops))
        assert findings_in_full(str(kept)) == findings_in_full(str(fresh)), json.dumps(ops)


def test_the_random_nights_reach_what_they_are_about(tmp_path):
    """The random nights' trees hold what the property needs: digests that are manifests in one registry and
    layers in another, and an index whose children are reached only through it."""
    _ws, things, digests = _build(tmp_path, 1)
    kinds = {type(t).__name__ for _w, _r, t in things}
    assert kinds == {"Index", "Image"} and len(digests) > 10
    db_ = tmp_path / "x.db"
    from click.testing import CliRunner

    from regindex.cli import cli

    assert CliRunner().invoke(cli, ["scan", str(tmp_path), "--db", str(db_), "-q"]).exit_code == 0
    engine = create_engine(_url(str(db_)))
    with engine.connect() as c:
        reached = c.execute(text("SELECT COUNT(*) FROM manifest_reach")).scalar_one()
    engine.dispose()
    assert reached == sum(1 + len(getattr(t, "children", [])) for _w, _r, t in things)
    assert inventory(_url(str(db_)))["findings"] == []
