"""The SQL views are pinned to regindex.rules: both are evaluated over every damaged tree the check and
gc-preview tests build (plus the variants registry 2.8.2 judged in tests/realreg/test_rules.py) and must say
the same thing about every manifest request and every tag, on SQLite and on PostgreSQL.

A rule changes in one function (regindex.rules) and one view (a new migration); this test fails if they drift.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from regindex import demo, rules
from regindex.layout import BlobDataPath

from . import test_gc
from .test_checks import CASES
from .worlds import API, BASE, World, build_world

Damage = Callable[[World], Any]


def _overwrite(world: World, digest: str, edit: Callable[[bytes], bytes]) -> None:
    p = world.w.path(BlobDataPath(digest))
    data = p.read_bytes()
    new = edit(data)
    assert len(new) == len(data) and new != data
    p.write_bytes(new)


def overwrite_naming_another_layer(world: World) -> None:
    own, other = world.base_img.layers[0], world.api.children[0].layers[-1]
    _overwrite(world, world.base_img.digest, lambda b: b.replace(own.encode(), other.encode()))


def overwrite_changing_a_size(world: World) -> None:
    def edit(b: bytes) -> bytes:
        i = list(re.finditer(rb'"size":\s*(\d+)', b))[-1].end(1) - 1
        return b[:i] + bytes([ord("0") + (b[i] - ord("0") + 1) % 10]) + b[i + 1:]
    _overwrite(world, world.base_img.digest, edit)


def overwrite_child_with_garbage(world: World) -> None:
    _overwrite(world, world.api.children[1].digest, lambda b: b"x" * len(b))


def misdirected_elsewhere_without_tags(world: World) -> None:
    world.w.write_revision_link(BASE, world.base_img.digest, world.api.children[0].digest.encode())
    world.w.remove_tags_dir(BASE)


def misdirected_nowhere(world: World) -> None:
    nowhere = "sha256:" + hashlib.sha256(b"no such manifest").hexdigest()
    world.w.write_revision_link(BASE, world.base_img.digest, nowhere.encode())


def odd_names(world: World) -> None:
    for name in ("Team/app", "team/App", "localhost:5000/app", "team/-app"):
        shutil.copytree(world.w.v2 / "repositories" / BASE, world.w.v2 / "repositories" / name)


def layers_fallback_garbage(world: World) -> None:
    child = world.api.children[1].digest
    world.w.delete_revision_link(API, child)
    world.w.write_layer_link(API, child, b"garbage")


def revision_naming_a_garbage_layer_link(world: World) -> None:
    """The mark phase looks a revision's target up through the layer link when the target has no revision
    link: a layer link that does not parse aborts it (a ``layer`` blocker)."""
    child = world.api.children[1].digest
    world.w.delete_revision_link(API, child)
    world.w.write_layer_link(API, child, b"garbage")
    world.w.write_revision_link(API, world.api.children[0].digest, child.encode())


def tag_naming_an_unlinked_manifest(world: World) -> None:
    world.w.write_tag_link(BASE, "latest", world.api.children[0].digest.encode())


def empty_tagged_manifest(world: World) -> None:
    world.w.truncate_blob(world.base_img.digest, 0)


def sha512_revision_alias(world: World) -> None:
    data = world.w.path(BlobDataPath(world.base_img.digest)).read_bytes()
    world.w.write_revision_link(BASE, "sha512:" + hashlib.sha512(data).hexdigest(), world.base_img.digest.encode())


def truncated_index(world: World) -> None:
    """An index whose data lost its end, with a child it can no longer name: the nightly scan has its old parse
    (an index, at the old size), which no longer describes the data on disk."""
    data = world.w.path(BlobDataPath(world.api.digest)).read_bytes()
    world.w.truncate_blob(world.api.digest, len(data) // 2)
    world.w.delete_revision_link(API, world.api.children[1].digest)


def index_reached_nowhere(world: World) -> None:
    """The index is no manifest of this registry any more (its tag and revision gone, a _layers link left; one of
    its children's revision gone too), while the other registries of the tree, built alike, still parse it: its
    parse does not count here (0012), so its _layers link serves it unparsed and it has no orphan children."""
    world.w.remove_tag(API, "v1")
    world.w.remove_revision(API, world.api.digest)
    world.w.link_layer(API, world.api.digest)
    world.w.remove_revision(API, world.api.children[1].digest)


def index_bytes_naming_another_child(world: World) -> None:
    """The index's data rewritten in place, same length, naming another child in place of its second (whose
    revision is gone): the data is not its digest's content, and the parse of the genuine content (the other
    registries hold it) does not describe it: no orphan child is derived from it (0012)."""
    data = world.w.path(BlobDataPath(world.api.digest))
    child = world.api.children[1].digest
    data.write_bytes(data.read_bytes().replace(child.encode(), world.web.children[0].digest.encode()))
    world.w.remove_revision(API, child)


def _check_cases() -> dict[str, Damage]:
    return {f"checks-{name}": f for name, f in CASES.items()}


def _gc_cases() -> dict[str, Damage]:
    fns = [test_gc.garbage_revision, test_gc.newline_revision, test_gc.garbage_tag, test_gc.empty_tag,
           test_gc.no_tags_dir, test_gc.truncated_tagged_manifest, test_gc.empty_tagged_manifest,
           test_gc.config_as_revision, test_gc.bad_repository_name]
    return {f"gc-{f.__name__}": f for f in fns}


EXTRA: dict[str, Damage] = {f.__name__: f for f in (
    overwrite_naming_another_layer, overwrite_changing_a_size, overwrite_child_with_garbage,
    misdirected_elsewhere_without_tags, misdirected_nowhere, odd_names, layers_fallback_garbage,
    revision_naming_a_garbage_layer_link, tag_naming_an_unlinked_manifest, empty_tagged_manifest, sha512_revision_alias,
    truncated_index, index_reached_nowhere, index_bytes_naming_another_child,
)}
ALL: dict[str, Damage] = {"healthy": lambda world: None, **_check_cases(), **_gc_cases(), **EXTRA}


def _slug(case: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")


def damaged_trees(base: Path, invoke: Callable[..., Any], db: str, nightly: bool) -> int:
    """Every case in its own registry under ``base``; scanned once after the damage, or (nightly) once before
    and once after it. Returns the number of registries."""
    worlds = {case: build_world(base, _slug(case)) for case in ALL}
    if nightly:
        invoke("scan", base, "--db", db, "-q", "--fail-on", "never")
    for case, damage in ALL.items():
        damage(worlds[case])
    invoke("scan", base, "--db", db, "-q", "--fail-on", "never")
    return len(worlds)


def _migration(name: str) -> Any:
    path = Path(__file__).resolve().parents[1] / "migrations" / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in conn.execute(text(sql))), key=repr)


# 0012 made a stored parse count only where the registry reaches it: the indexes orphan_index_children starts
# from are those reached, whose data is their own content. Said in the 0002 definition's terms.
_FROM_0012 = (
    "JOIN manifests pm ON pm.digest = p.digest AND pm.size = p.size AND pm.kind = 'index'",
    "JOIN manifests pm ON pm.digest = p.digest AND pm.size = p.size AND pm.kind = 'index' "
    "AND EXISTS (SELECT 1 FROM manifest_reach x WHERE x.registry_id = p.registry_id AND x.digest = pm.digest) "
    "AND NOT EXISTS (SELECT 1 FROM blob_verifications v JOIN blobs vb ON vb.registry_id = v.registry_id "
    "AND vb.digest = v.digest AND vb.gone_run IS NULL AND vb.size = v.size WHERE v.registry_id = p.registry_id "
    "AND v.digest = pm.digest AND v.mtime IS NOT NULL AND ABS(v.mtime - vb.mtime) < 0.000001 "
    "AND v.computed_digest <> v.digest)",
)


def first_definitions() -> dict[str, str]:
    """The views as 0002 defined them, with what 0012 changed of their rows (``_FROM_0012``)."""
    first = dict(_migration("0002_views").VIEWS)
    assert _FROM_0012[0] in first["orphan_index_children"]
    first["orphan_index_children"] = first["orphan_index_children"].replace(*_FROM_0012)
    return first


def rewritten_views_as_first_defined(conn: Any) -> dict[str, list[tuple[Any, ...]]]:
    """0008 rewrote tag_serving (SQLite) and orphan_index_children for their plans: assert they give every
    row, every column, as the 0002 definitions do (with 0012's change of rows); returns each view's rows."""
    first = first_definitions()
    rows = {}
    for view in ("tag_serving", "orphan_index_children"):
        rows[view] = _rows(conn, f"SELECT * FROM {view}")
        assert rows[view] == _rows(conn, f"SELECT * FROM ({first[view]}) v"), view
    return rows


def assert_views_equal_their_first_definitions(url: str) -> set[str]:
    """``rewritten_views_as_first_defined`` on a damaged tree, where both views have rows. Returns the child
    statuses seen."""
    engine = create_engine(url)
    with engine.connect() as conn:
        for view, rows in rewritten_views_as_first_defined(conn).items():
            assert rows, view
        statuses = {r[0] for r in conn.execute(text("SELECT child_status FROM orphan_index_children"))}
    engine.dispose()
    return statuses


def assert_views_agree_with_rules(url: str, registries: int, every_status: bool = True) -> set[str]:
    """Compare; returns every status seen (manifests and tags)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        regs = conn.execute(text("SELECT id, name FROM registries ORDER BY name")).all()
        assert len(regs) == registries
        py_manifests: list[tuple[str, ...]] = []
        py_tags: list[tuple[str, ...]] = []
        blocked: set[str] = set()
        for reg_id, name in regs:
            inv = rules.load(conn, reg_id, name)
            for repo in inv.repos.values():
                for d in set(repo.revisions) | set(repo.layers):
                    served = rules.manifest(inv, repo, d)
                    if served is not None:
                        py_manifests.append((name, repo.name, d, served.via, served.status))
                for t in repo.tags:
                    py_tags.append((name, repo.name, t, rules.tag(inv, repo, t)))
            # the repositories where SQL says a blocker can be hold every blocker the whole has
            candidates = rules.blocker_candidates(conn, reg_id)
            assert {b.repository for b, _ in rules.blockers(inv)} <= candidates, name
            only = list(rules.load_parts(conn, reg_id, name, size=2, only=candidates))
            assert sorted((x for part in only for x in rules.blockers(part)), key=repr) == sorted(
                rules.blockers(inv), key=repr), name
            blocked.update(b.what for b, _ in rules.blockers(inv))
            # the parts the gc_blocker check reads (a few repositories each) say what the whole says
            for size in (1, 3):
                parts = list(rules.load_parts(conn, reg_id, name, size=size))
                assert sorted(r for inv in parts for r in inv.repos) == sorted(inv.repos)
                assert sorted((x for part in parts for x in rules.blockers(part)), key=repr) == sorted(
                    rules.blockers(inv), key=repr), (name, size)
                assert sorted(
                    (name, repo.name, d, served.via, served.status)
                    for part in parts for repo in part.repos.values() for d in set(repo.revisions) | set(repo.layers)
                    if (served := rules.manifest(part, repo, d)) is not None
                ) == sorted(m for m in py_manifests if m[0] == name), (name, size)
                assert sorted((name, repo.name, t, rules.tag(part, repo, t)) for part in parts
                              for repo in part.repos.values() for t in repo.tags) == sorted(
                    t for t in py_tags if t[0] == name), (name, size)
        sql_manifests = [tuple(r) for r in conn.execute(text(
            "SELECT registry, repository, digest, via, status FROM manifest_serving"))]
        sql_tags = [tuple(r) for r in conn.execute(text(
            "SELECT registry, repository, tag, status FROM tag_serving"))]
    engine.dispose()
    assert sorted(sql_manifests) == sorted(py_manifests)
    assert sorted(sql_tags) == sorted(py_tags)
    seen = {s for *_, s in py_manifests} | {s for *_, s in py_tags}
    if not every_status:
        return seen
    # the cases reach every kind of garbage-collect blocker (each is a condition of blocker_candidates)
    assert blocked == {"invalid_name", "revision", "layer", "tag_current", "no_tags_dir", "invalid_manifest"}
    # the cases reach every status both sides know (a status no case produces is a status nobody pins)
    assert {s for *_, s in py_manifests} == {
        rules.SERVED, rules.CORRUPT_LINK, rules.DATA_MISSING, rules.DATA_EMPTY, rules.UNPARSABLE,
        rules.DIGEST_MISMATCH, rules.MISDIRECTED, rules.NOT_PARSED}
    assert {s for *_, s in py_tags} >= {rules.SERVED, rules.NO_CURRENT_LINK, rules.CORRUPT_LINK,
                                        rules.TARGET_NOT_LINKED, rules.DATA_MISSING}
    return seen


@pytest.mark.parametrize("nightly", [False, True], ids=["first-scan", "nightly"])
def test_views_agree_with_rules_on_sqlite(base, invoke, db_path, nightly):
    n = damaged_trees(base, invoke, str(db_path), nightly)
    assert_views_agree_with_rules(f"sqlite:///{db_path}", n)
    assert len(assert_views_equal_their_first_definitions(f"sqlite:///{db_path}")) >= 3


def test_views_agree_with_rules_on_the_demo_nights(base, invoke, db_path):
    """The demo's generated registries (a private one after GC and tag cleanup, two pull-through caches), after
    each of its two nights."""
    rng = random.Random(5)
    state = demo.build_night1(base, rng)
    invoke("scan", base, "--db", db_path, "-q", "--fail-on", "never")
    night1 = assert_views_agree_with_rules(f"sqlite:///{db_path}", 3, every_status=False)
    assert_views_equal_their_first_definitions(f"sqlite:///{db_path}")
    assert night1 >= {rules.SERVED, rules.NO_CURRENT_LINK, rules.DATA_MISSING}
    demo.apply_night2(state, rng)
    invoke("scan", base, "--db", db_path, "-q", "--fail-on", "never")
    night2 = assert_views_agree_with_rules(f"sqlite:///{db_path}", 3, every_status=False)
    assert_views_equal_their_first_definitions(f"sqlite:///{db_path}")
    assert rules.SERVED in night2 and rules.NO_CURRENT_LINK not in night2  # the canary tag was cleaned up


@pytest.mark.postgres
def test_views_agree_with_rules_on_postgresql(base, invoke, pg_url):  # noqa: F811
    n = damaged_trees(base, invoke, pg_url, nightly=True)
    assert_views_agree_with_rules(pg_url, n)
    assert len(assert_views_equal_their_first_definitions(pg_url)) >= 3
