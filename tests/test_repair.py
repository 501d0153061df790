"""regindex repair: dry run by default, parity with the reference scanner's deletions, quarantine, undo.

The parity rule: on the same trees, the set of _layers directories ``repair --apply`` moves equals the set the
reference scanner (without --dry-run) deletes, as (registry, repository, digest). Where they differ by design
(a sha512 _layers directory, which the reference never looks at) the difference is pinned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from regindex.layout import LayerLinkPath, RevisionLinkPath

from .test_checks import CASES, R, build_world
from .test_reference import REFERENCE


def snapshot(root: Path) -> dict[str, tuple[str, int, str | None]]:
    """Every entry under ``root``: (type, mode, sha256 of a file's bytes or a symlink's target)."""
    out: dict[str, tuple[str, int, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", stat.S_IMODE(st.st_mode), os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def layer_dirs(base: Path) -> set[tuple[str, str, str]]:
    """(registry, repository, digest) of every _layers/<alg>/<hex> directory under base."""
    out = set()
    for reg in sorted(p for p in base.iterdir() if p.is_dir()):
        repos = reg / "docker" / "registry" / "v2" / "repositories"
        for d in repos.rglob("_layers/*/*"):
            if d.is_dir() and not d.is_symlink():
                repo = str(d.parent.parent.parent.relative_to(repos))
                out.add((reg.name, repo, f"{d.parent.name}:{d.name}"))
    return out


def reference_deletes(base: Path) -> set[tuple[str, str, str]]:
    if not REFERENCE.is_file():
        pytest.skip(f"reference scanner not found at {REFERENCE}")
    before = layer_dirs(base)
    subprocess.run([sys.executable, str(REFERENCE), str(base)], capture_output=True, text=True, timeout=120,
                   check=True)
    return before - layer_dirs(base)


def repair_apply(invoke, base: Path, db: Path, *extra) -> tuple[set[tuple[str, str, str]], str]:
    before = layer_dirs(base)
    out = invoke("repair", "--db", db, "--apply", *extra).output
    return before - layer_dirs(base), out


# -- parity with the reference scanner ----------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_repair_moves_exactly_what_the_reference_deletes(case, tmp_path, invoke):
    ours, theirs = tmp_path / "ours" / "base", tmp_path / "theirs"
    ours.mkdir(parents=True)
    world = build_world(ours)
    CASES[case](world)
    shutil.copytree(ours, theirs, symlinks=True)
    deleted = reference_deletes(theirs)
    db = tmp_path / "ours" / "regindex.db"
    invoke("scan", ours, "--db", db, "-q", expect=None)
    moved, _out = repair_apply(invoke, ours, db)
    assert moved == deleted
    if case in ("gc_delete_untagged", "shared_layer_gone"):
        assert moved  # not vacuous where the reference deletes something
    # every other file is untouched: the two trees are the same but for what each removed
    assert snapshot(ours) == snapshot(theirs)


def test_parity_on_all_damage_at_once(tmp_path, invoke):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for i, (_n, inject) in enumerate(sorted(CASES.items())):
        inject(build_world(ours, f"r{i:02d}"))
    shutil.copytree(ours, theirs, symlinks=True)
    deleted = reference_deletes(theirs)
    db = tmp_path / "all.db"
    invoke("scan", ours, "--db", db, "-q", expect=1)
    moved, _out = repair_apply(invoke, ours, db)
    assert moved == deleted and len(moved) > 10


def test_pinned_difference_sha512_alias_whose_data_is_gone(tmp_path, invoke):
    """The reference only walks _layers/sha256; a sha512 alias naming gone data is an orphan regindex moves
    (the registry answers 404 for it either way)."""
    base = tmp_path / "base"
    world = build_world(base)
    layer = world.base_img.layers[0]
    alias = "sha512:" + hashlib.sha512(b"content that is gone").hexdigest()
    world.w.write_layer_link("library/base", alias, b"sha256:" + hashlib.sha256(b"content that is gone")
                             .hexdigest().encode())
    theirs = tmp_path / "theirs"
    shutil.copytree(base, theirs, symlinks=True)
    assert reference_deletes(theirs) == set()
    db = tmp_path / "r.db"
    invoke("scan", base, "--db", db, "-q", expect=1)
    moved, _ = repair_apply(invoke, base, db)
    assert moved == {(R, "library/base", alias)}
    assert world.w.path(LayerLinkPath("library/base", layer)).exists()


# -- dry run, apply, records, rescans ------------------------------------------------------------


@pytest.fixture
def gc_damaged(base, db_path, invoke):
    world = build_world(base)
    CASES["gc_delete_untagged"](world)
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    return world


def test_dry_run_changes_nothing_and_says_exactly_what_it_would_do(gc_damaged, base, db_path, invoke, findings):
    before = snapshot(base)
    out = invoke("repair", "--db", db_path).output  # exit 0
    assert snapshot(base) == before
    assert not (db_path.parent / "regindex-quarantine").exists()
    orphans = findings("--kind", "orphan_layer_link")
    v2 = (base / R / "docker" / "registry" / "v2").absolute()
    for f in orphans:
        hex_ = f["digest"].split(":")[1]
        rel = f"repositories/{f['repository']}/_layers/sha256/{hex_}"
        q = db_path.parent.absolute() / "regindex-quarantine"
        assert f"would move {v2}/{rel}/ -> {q}/<batch>/{R}/{rel}/  [{R}/{f['repository']}]" in out
    assert out.splitlines()[0].startswith("dry run")
    assert f"{len(orphans)} to do, 0 skipped, 0 refused" in out
    r = create_engine(f"sqlite:///{db_path}")
    with r.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM repair_actions")).scalar() == 0
    r.dispose()


def test_apply_moves_records_and_the_next_scan_resolves(gc_damaged, base, db_path, invoke, findings):
    orphans = {(f["repository"], f["digest"]) for f in findings("--kind", "orphan_layer_link")}
    out = invoke("repair", "--db", db_path, "--apply").output
    assert f"{len(orphans)} done, 0 skipped, 0 refused, 0 failed" in out
    for repo, d in orphans:
        assert not gc_damaged.w.path(LayerLinkPath(repo, d)).parent.exists()
    qroot = db_path.parent / "regindex-quarantine"
    (batch_dir,) = list(qroot.iterdir())
    manifest = json.loads((batch_dir / "manifest.json").read_text())
    assert {(a["repository"], a["digest"]) for a in manifest["actions"]} == orphans
    for a in manifest["actions"]:
        q = Path(a["quarantined"])
        assert (q / "link").read_text() == a["digest"] and a["source"].endswith(a["digest"].split(":")[1])
        assert a["files"] == [{"name": "link", "size": 71, "mode": "0o644",
                               "sha256": hashlib.sha256(a["digest"].encode()).hexdigest()}]
    rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
    assert len(rows) == len(orphans)
    assert {(r["action"], r["outcome"], r["batch"]) for r in rows} == {("quarantine", "done", batch_dir.name)}
    assert all(r["os_user"] and r["at"] and len(r["finding_key"]) == 64 for r in rows)
    table = invoke("repairs", "--db", db_path).output.splitlines()  # the table names the finding too, UTC ISO
    assert table[0].split()[:5] == ["id", "batch", "at", "os_user", "finding"]
    shown = {line.split()[4]: line.split()[2] for line in table[2:]}
    assert set(shown) == {r["finding_key"][:12] for r in rows}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at) for at in shown.values())
    # the scan after the repair resolves exactly those findings; the orphan children stay
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    assert findings("--kind", "orphan_layer_link") == []
    resolved = findings("--state", "resolved")
    assert {(f["repository"], f["digest"]) for f in resolved if f["kind"] == "orphan_layer_link"} == orphans
    assert {f["kind"] for f in findings()} - {"unreferenced_blob"} == {"orphan_index_child"}
    # a second run finds nothing to do
    out = invoke("repair", "--db", db_path, "--apply").output
    assert "0 done, 0 skipped" in out


def test_filters(gc_damaged, db_path, invoke, findings):
    out = invoke("repair", "--db", db_path, "--repository", "team/app/web").output
    assert "team/app/api" not in out and "team/app/web" in out
    key = findings("--kind", "orphan_layer_link")[0]["key"]
    out = invoke("repair", "--db", db_path, "--finding", key[:10]).output
    assert "1 to do" in out
    assert "0 to do" in invoke("repair", "--db", db_path, "--repository", "library/*").output
    r = invoke("repair", "--db", db_path, "--registry", "nope", expect=2)
    assert "unknown registry 'nope'" in r.output
    r = invoke("repair", "--db", db_path, "--finding", "zz", expect=2)
    assert "first 8 hex digits" in r.output
    r = invoke("repair", "--db", db_path, "--finding", "0" * 12, expect=2)
    assert "no open finding" in r.output
    child = findings("--kind", "orphan_index_child")[0]["key"]
    out = invoke("repair", "--db", db_path, "--finding", child).output  # --finding picks its own kind
    assert "refused" in out and "push again: team/app/" in out


def test_recheck_skips_what_changed_since_the_scan(gc_damaged, base, db_path, invoke, findings):
    w = gc_damaged.w
    orphans = findings("--kind", "orphan_layer_link")
    gone_dir, back_data = orphans[0], orphans[1]
    shutil.rmtree(w.path(LayerLinkPath(gone_dir["repository"], gone_dir["digest"])).parent)
    data = w.path(LayerLinkPath(back_data["repository"], back_data["digest"])).parent  # any bytes will do
    blob = base / R / "docker/registry/v2/blobs/sha256" / back_data["digest"][7:9] / back_data["digest"][7:] / "data"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"pushed again")
    out = invoke("repair", "--db", db_path, "--apply").output
    assert f"{len(orphans) - 2} done, 2 skipped" in out
    assert "the link directory is gone" in out and "the blob data is present again" in out
    assert (data / "link").exists()
    rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
    assert sorted(r["outcome"] for r in rows).count("skipped") == 2


def test_symlinks_are_never_followed(gc_damaged, base, db_path, invoke, findings, tmp_path):
    w = gc_damaged.w
    f = findings("--kind", "orphan_layer_link", "--registry", R)[0]
    d = w.path(LayerLinkPath(f["repository"], f["digest"])).parent
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(d), elsewhere)
    d.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    out = invoke("repair", "--db", db_path, "--apply", "--repository", f["repository"]).output
    assert "refused" in out and "symlink" in out
    assert d.is_symlink() and snapshot(elsewhere) == before
    # a symlinked _layers directory: nothing under it is touched
    other = [g for g in findings("--kind", "orphan_layer_link") if g["repository"] != f["repository"]][0]
    layers = w.path(LayerLinkPath(other["repository"], other["digest"])).parent.parent.parent
    real = tmp_path / "real_layers"
    shutil.move(str(layers), real)
    layers.symlink_to(real, target_is_directory=True)
    before = snapshot(real)
    out = invoke("repair", "--db", db_path, "--apply", "--repository", other["repository"]).output
    assert "refused" in out and "done" not in out.split("batch")[0]
    assert snapshot(real) == before


@pytest.mark.parametrize("linked", ["docker", "registry"])
def test_a_registry_whose_storage_became_a_symlink_is_refused_not_repaired_behind_it(
        gc_damaged, base, db_path, invoke, tmp_path, linked):
    """The scan refuses a registry whose directory or docker/registry/v2 is a symlink; repair and undo act on the
    root a scan recorded, so they refuse it too, whatever was there when it was scanned."""
    reg = base / R
    moved = reg / "docker" if linked == "docker" else reg
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(moved), elsewhere)
    moved.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    out = invoke("repair", "--db", db_path, "--apply", expect=None).output
    assert "refused" in out and "symlink" in out and " done" not in out.split("batch")[0]
    assert snapshot(elsewhere) == before
    # undo: a batch applied on the real tree is not put back behind a symlink either
    moved.unlink()
    shutil.move(str(elsewhere), moved)
    out = invoke("repair", "--db", db_path, "--apply").output
    batch = out.split("batch ")[1].split(":")[0]
    shutil.move(str(moved), elsewhere)
    moved.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    out = invoke("repair", "--db", db_path, "--undo", batch, expect=None).output
    assert "0 put back" in out and "symlink" in out
    assert snapshot(elsewhere) == before


def test_undo_restores_the_tree_byte_for_byte(gc_damaged, base, db_path, invoke):
    before = snapshot(base)
    out = invoke("repair", "--db", db_path, "--apply").output
    batch = out.split("batch ")[1].split(":")[0]
    assert snapshot(base) != before
    out = invoke("repair", "--db", db_path, "--undo", batch).output
    assert "12 put back, 0 not" in out
    assert snapshot(base) == before
    rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
    undos = [r for r in rows if r["action"] == "undo"]
    assert len(undos) == 12 and all(r["outcome"] == "done" for r in undos)
    assert all(r["undone_by"] for r in rows if r["action"] == "quarantine")
    r = invoke("repair", "--db", db_path, "--undo", batch, expect=2)
    assert "already undone" in r.output
    r = invoke("repair", "--db", db_path, "--undo", "no-such-batch", expect=2)
    assert "no repair action or batch" in r.output


def test_undo_refuses_to_overwrite_what_appeared_since(gc_damaged, base, db_path, invoke, findings):
    orphans = findings("--kind", "orphan_layer_link")
    invoke("repair", "--db", db_path, "--apply")
    rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
    pushed = orphans[0]
    # a push re-created the link (and its data) after the repair
    gc_damaged.w.link_layer(pushed["repository"], pushed["digest"])
    new_link = gc_damaged.w.path(LayerLinkPath(pushed["repository"], pushed["digest"]))
    new_link.write_bytes(pushed["digest"].encode())
    action = next(r for r in rows if r["digest"] == pushed["digest"] and r["repository"] == pushed["repository"])
    out = invoke("repair", "--db", db_path, "--undo", str(action["id"])).output
    assert "refused" in out and "appeared again since the repair" in out
    assert Path(action["quarantine_path"], "link").exists()  # still in quarantine
    other = next(r for r in rows if r["id"] != action["id"])
    out = invoke("repair", "--db", db_path, "--undo", str(other["id"])).output
    assert "1 put back" in out
    assert (base / R / "docker/registry/v2" / other["path"] / "link").read_text() == other["digest"]


def test_quarantine_on_another_filesystem_is_copied_fsynced_then_removed(gc_damaged, base, db_path, invoke):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == base.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    before = snapshot(base)
    with tempfile.TemporaryDirectory(dir=shm) as q:
        out = invoke("repair", "--db", db_path, "--apply", "--quarantine", q).output
        assert "12 done" in out
        rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
        engine = create_engine(f"sqlite:///{db_path}")
        with engine.connect() as c:
            moved_by = {json.loads(d)["moved_by"] for d in c.execute(text("SELECT detail FROM repair_actions")).scalars()}
        engine.dispose()
        assert moved_by == {"copy"}
        assert all(r["quarantine_path"].startswith(q) for r in rows)
        for r in rows:
            assert Path(r["quarantine_path"], "link").read_text() == r["digest"]
        invoke("repair", "--db", db_path, "--undo", rows[0]["batch"])
        assert snapshot(base) == before


def test_same_filesystem_rename_failure_is_recorded_not_raised(gc_damaged, db_path, invoke, monkeypatch):
    from regindex import safefs

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safefs, "rename", refuse)
    r = invoke("repair", "--db", db_path, "--apply", expect=1)
    assert "0 done, 0 skipped, 0 refused, 12 failed" in r.output and "Traceback" not in r.output
    rows = json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
    assert {r["outcome"] for r in rows} == {"failed"}


# -- orphan_index_child: restore the revision link when that makes the child servable ------------------


def test_restore_child_revision_link_when_its_blobs_were_kept(base, db_path, invoke, findings):
    world = build_world(base)
    w = world.w
    kept, swept = world.api.children[0], world.api.children[2]
    w.remove_revision("team/app/api", kept.digest)  # GC removed its revision dir; its blobs are still named
    w.remove_revision("team/app/api", swept.digest)
    w.remove_blob(swept.layers[-1])
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    before = snapshot(base)
    index_link = w.path(RevisionLinkPath("team/app/api", world.api.digest))
    os.chmod(index_link, 0o640)
    before = snapshot(base)
    out = invoke("repair", "--db", db_path, "--kind", "orphan_index_child").output
    link = w.path(RevisionLinkPath("team/app/api", kept.digest))
    assert f"would write {link.absolute()} = {kept.digest} (no newline, mode 0o640)" in out
    assert "garbage-collect --delete-untagged` removes this revision link again" in out
    assert "refused" in out and "1 of its 3 blobs are gone" in out and "push again: team/app/api:v1" in out
    assert snapshot(base) == before
    out = invoke("repair", "--db", db_path, "--kind", "orphan_index_child", "--apply").output
    assert "1 done, 0 skipped, 1 refused" in out
    assert link.read_bytes() == kept.digest.encode()
    assert stat.S_IMODE(link.stat().st_mode) == 0o640
    assert stat.S_IMODE(link.parent.stat().st_mode) == stat.S_IMODE(link.parent.parent.stat().st_mode)
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    assert {f["digest"] for f in findings("--kind", "orphan_index_child")} == {swept.digest}
    batch = out.split("batch ")[1].split(":")[0]
    out = invoke("repair", "--db", db_path, "--undo", batch).output
    assert "1 put back" in out
    assert snapshot(base) == before  # the link and the directories repair created are gone again
    undone = [r for r in json.loads(invoke("repairs", "--db", db_path, "--format", "json").output)
              if r["action"] == "undo"]
    assert Path(undone[0]["quarantine_path"]).read_bytes() == kept.digest.encode()  # moved, never deleted


def test_restore_is_refused_for_a_cache_and_for_unlinked_blobs(base, db_path, invoke):
    world = build_world(base)
    child = world.api.children[0]
    world.w.remove_revision("team/app/api", child.digest)
    world.w.remove_layer_link("team/app/api", child.config)
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    out = invoke("repair", "--db", db_path, "--kind", "orphan_index_child", "--apply").output
    assert "1 of its blobs have no _layers link in team/app/api" in out
    assert not world.w.path(RevisionLinkPath("team/app/api", child.digest)).exists()
    invoke("scan", base, "--db", db_path, "-q", "--cache", R, expect=None)
    out = invoke("repair", "--db", db_path, "--kind", "orphan_index_child").output
    assert "pull-through cache" in out


def test_quarantine_needs_a_place_on_postgres():
    from regindex.errors import RepairError
    from regindex.repair import default_quarantine

    with pytest.raises(RepairError, match="--quarantine"):
        default_quarantine("postgresql+psycopg://u@h/db")
    assert default_quarantine("sqlite:////var/lib/regindex/r.db") == Path("/var/lib/regindex/regindex-quarantine")


def test_report_shows_the_repairs(gc_damaged, base, db_path, invoke, tmp_path):
    out = tmp_path / "r.html"
    invoke("report", "--db", db_path, "--out", out)
    assert 'id="repairs"' not in out.read_text()
    invoke("repair", "--db", db_path, "--apply", "--repository", "team/app/web")
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    invoke("report", "--db", db_path, "--out", out)
    html = out.read_text()
    assert html.count('data-repair="') == 4 and html.count('data-outcome="done"') == 4
    assert "repositories/team/app/web/_layers/sha256/" in html


@pytest.mark.postgres
def test_repair_and_undo_on_postgres(pg_url, base, tmp_path, invoke):
    CASES["gc_delete_untagged"](build_world(base))
    before = snapshot(base)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    r = invoke("repair", "--db", pg_url, "--apply", expect=2)
    assert "--quarantine" in r.output
    out = invoke("repair", "--db", pg_url, "--apply", "--quarantine", tmp_path / "q").output
    assert "12 done" in out
    rows = json.loads(invoke("repairs", "--db", pg_url, "--format", "json").output)
    assert len(rows) == 12 and {r["outcome"] for r in rows} == {"done"}
    invoke("repair", "--db", pg_url, "--undo", rows[0]["batch"], "--quarantine", tmp_path / "q")
    assert snapshot(base) == before


def test_quarantine_inside_the_storage_is_refused(gc_damaged, base, db_path, invoke):
    before = snapshot(base)
    r = invoke("repair", "--db", db_path, "--apply", "--quarantine", base / R / "docker/registry/v2/q", expect=2)
    assert "inside the storage of a registry" in r.output
    assert snapshot(base) == before


def test_restore_refuses_blob_data_that_is_a_symlink(base, db_path, invoke, tmp_path):
    world = build_world(base)
    child = world.api.children[0]
    world.w.remove_revision("team/app/api", child.digest)
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    data = base / R / "docker/registry/v2/blobs/sha256" / child.config[7:9] / child.config[7:] / "data"
    elsewhere = tmp_path / "config-elsewhere"
    data.rename(elsewhere)
    data.symlink_to(elsewhere)
    out = invoke("repair", "--db", db_path, "--kind", "orphan_index_child").output  # the dry run goes on
    assert "refused" in out and "push again: team/app/api:v1" in out and "0 to do" in out


@pytest.mark.parametrize("where", ["unwritable", "proc", "under_a_file"])
def test_a_quarantine_that_cannot_be_written_is_one_line_before_any_step(gc_damaged, base, db_path, invoke,
                                                                          tmp_path, where):
    if where == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes into a mode 0555 directory")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        q = ro / "q"
    elif where == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        q = Path("/proc/regindex-quarantine")
    else:
        (tmp_path / "afile").write_text("x")
        q = tmp_path / "afile" / "q"
    before = snapshot(base)
    r = invoke("repair", "--db", db_path, "--apply", "--quarantine", q, expect=2)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: quarantine {q}"), r.output
    assert snapshot(base) == before
    assert json.loads(invoke("repairs", "--db", db_path, "--format", "json").output) == []  # no step was tried
