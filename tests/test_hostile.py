"""Hostile or unlucky storage (issue 9): what regindex cannot see is unknown, never gone; one odd object fails
one registry at most, never the night's scan."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from regindex.crawl import crawl, discover, parse_rfc3339
from regindex.layout import TagCurrentLinkPath
from regindex.sample import StorageWriter, sha256

from .conftest import ident

OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


def damaged(base: Path, rng: Any) -> dict[str, Any]:
    """Two registries: 'private' with open error and warning findings in a namespaced repository, 'other'
    clean (so a registry that fails makes a partial run, not a failed one)."""
    w = StorageWriter(base / "private")
    img = w.push_image("team/app", rng)
    w.tag("team/app", "v1", img.digest)
    gone = w.push_image("team/app", rng)
    w.tag("team/app", "v2", gone.digest)
    w.remove_blob(gone.layers[0])  # orphan_layer_link + unlinked_blob_ref (errors)
    w.remove_blob(gone.digest)  # dangling_revision, dangling_tag (errors)
    w.upload("team/app", "u1", OLD)  # stale_upload (warning)
    StorageWriter(base / "other").push_image("lib/x", rng)
    return {"w": w, "img": img, "gone": gone}


def open_findings(findings: Any) -> list[tuple[Any, ...]]:
    return sorted(ident(f) for f in findings("--state", "open"))


def last_run(invoke: Any, db_path: Path) -> dict[str, Any]:
    return json.loads(invoke("runs", "--db", db_path, "--format", "json").output)[0]


def _hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


SYMLINK_PLACES = {
    "namespace": lambda t: "repositories/team",
    "layers-alg": lambda t: "repositories/team/app/_layers/sha256",
    "layer-link-dir": lambda t: f"repositories/team/app/_layers/sha256/{_hex_of(t['gone'].layers[0])}",
    "layer-link-file": lambda t: f"repositories/team/app/_layers/sha256/{_hex_of(t['gone'].layers[0])}/link",
    "revisions-alg": lambda t: "repositories/team/app/_manifests/revisions/sha256",
    "tags": lambda t: "repositories/team/app/_manifests/tags",
    "tag": lambda t: "repositories/team/app/_manifests/tags/v2",
    "tag-current": lambda t: "repositories/team/app/_manifests/tags/v2/current",
    "tag-current-link": lambda t: "repositories/team/app/_manifests/tags/v2/current/link",
    "tag-index-alg": lambda t: "repositories/team/app/_manifests/tags/v2/index/sha256",
    "uploads": lambda t: "repositories/team/app/_uploads",
    "upload": lambda t: "repositories/team/app/_uploads/u1",
    "upload-startedat": lambda t: "repositories/team/app/_uploads/u1/startedat",
    "blobs-alg": lambda t: "blobs/sha256",
    "blob-prefix": lambda t: f"blobs/sha256/{_hex_of(t['img'].config)[:2]}",
    "blob-dir": lambda t: f"blobs/sha256/{_hex_of(t['img'].config)[:2]}/{_hex_of(t['img'].config)}",
    "blob-data": lambda t: f"blobs/sha256/{_hex_of(t['img'].config)[:2]}/{_hex_of(t['img'].config)}/data",
}


@pytest.mark.parametrize("place", sorted(SYMLINK_PLACES))
def test_symlink_below_the_structure_makes_its_content_unknown_not_gone(
        place, tmp_path, base, rng, scan, findings, invoke, db_path):
    """Item 1: the same content moved behind a symlink must not resolve a single finding."""
    t = damaged(base, rng)
    assert scan(expect=1).exit_code == 1
    before = open_findings(findings)
    assert any(f[1] == "error" for f in before)

    rel = SYMLINK_PLACES[place](t)
    real = t["w"].v2 / rel
    moved = tmp_path / "moved" / place
    moved.parent.mkdir()
    shutil.move(real, moved)
    os.symlink(moved, real)

    r = invoke("scan", base, "--db", db_path, expect=2)
    assert f"{rel} is a symlink" in r.output and "never follows symlinks" in r.output
    run = last_run(invoke, db_path)
    assert run["status"] == "partial" and run["findings_resolved"] == 0, run
    assert open_findings(findings) == before
    assert findings("--state", "resolved") == []


def test_registry_that_is_not_utf8_fails_alone(base, rng, scan, findings, invoke, db_path):
    StorageWriter(base / "ok").push_image("a", rng)
    StorageWriter(Path(os.fsdecode(os.fsencode(base) + b"/bad\xff"))).push_image("a", rng)
    r = scan(expect=2)
    assert "bad\\xff" in r.output and "not UTF-8" in r.output
    assert last_run(invoke, db_path)["status"] == "partial"


def test_a_registry_not_utf8_whose_escaped_name_is_another_registrys_fails_alone(base, rng, scan, findings, invoke,
                                                                                   db_path):
    """b"reg\\xff" is shown as the text "reg\\\\xff", which is also a valid directory name: the two registries must
    not become one name in the database (the whole run failed on a duplicate row)."""
    StorageWriter(base / "reg\\xff").push_image("a", rng)
    StorageWriter(Path(os.fsdecode(os.fsencode(base) + b"/reg\xff"))).push_image("a", rng)
    r = scan(expect=2)
    assert "not UTF-8" in r.output and "UNIQUE" not in r.output
    run = last_run(invoke, db_path)
    assert run["status"] == "partial" and run["registries"] >= 1, run
    names = {row["registry"] for row in json.loads(invoke("sql", "--db", db_path, "--format", "json",
                                                          "SELECT name AS registry FROM registries").output)}
    assert "reg\\xff" in names and len(names) == 2, names


def test_names_that_are_not_utf8_become_anomalies(base, rng, scan, findings, private):
    """Item 3: a directory name that is not UTF-8 anywhere in the tree is an anomaly, not an aborted run."""
    img = private.push_image("team/app", rng)
    private.tag("team/app", "v1", img.digest)
    v2 = os.fsencode(private.v2)
    for where in (b"/repositories/bad\xffrepo/_layers", b"/repositories/team/bad\xfe",
                  b"/repositories/team/app/_manifests/tags/t\xff/current",
                  b"/repositories/team/app/_uploads/u\xff", b"/repositories/team/app/_layers/sha256/\xff",
                  b"/blobs/sha256/\xfe\xff", b"/blobs/sha256/ab/\xff"):
        os.makedirs(v2 + where)
    scan(expect=0)
    paths = {f["detail"]["path"] for f in findings("--kind", "storage_anomaly") if "path" in f["detail"]} | {
        json.dumps(f["detail"]) for f in findings("--kind", "storage_anomaly")}
    text = " ".join(paths)
    for shown in ("bad\\xffrepo", "team/bad\\xfe", "tags/t\\xff", "_uploads/u\\xff", "blobs/sha256/\\xfe\\xff"):
        assert shown in text, (shown, text)
    # the second scan of an unchanged tree changes nothing
    before = findings("--state", "all")
    scan(expect=0)
    assert [ident(f) for f in findings("--state", "new")] == []
    assert len(findings("--state", "all")) == len(before)


def test_very_deep_nesting_is_an_anomaly_not_an_aborted_run(base, rng, scan, findings, private):
    private.push_image("a", rng)
    made = [str(private.v2 / "repositories")]
    try:
        for _ in range(1200):  # deeper than Python's recursion limit (os.makedirs itself would recurse)
            made.append(os.path.join(made[-1], "d"))
            os.mkdir(made[-1])
        made.append(os.path.join(made[-1], "_layers"))
        os.mkdir(made[-1])
        scan(expect=0)
        reasons = [f["detail"] for f in findings("--kind", "storage_anomaly")]
        assert any("refuse" in json.dumps(d) for d in reasons), reasons
    finally:  # bottom-up: shutil.rmtree (pytest's clean-up) recurses and would fail on this tree
        for d in reversed(made[1:]):
            if os.path.isdir(d):
                os.rmdir(d)


@pytest.mark.parametrize("started", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00",
                                     "0000-01-01T00:00:00Z", "99999-01-01T00:00:00Z"])
def test_out_of_range_startedat_is_no_time_not_an_aborted_run(started, base, scan, findings, private):
    private.upload("a", "u1", OLD)
    (private.v2 / "repositories/a/_uploads/u1/startedat").write_text(started)
    assert parse_rfc3339(started) is None
    scan(expect=0)
    [f] = findings("--kind", "stale_upload")  # an upload whose start is not a time is reported without an age
    assert f["detail"]["age_hours"] is None and f["detail"]["started_at"] == started


def _manifest_with_config_size(w: StorageWriter, size_literal: str) -> str:
    cfg = w.put_blob(b"{}")
    raw = ('{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", '
           '"config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "%s", "size": %s}, '
           '"layers": []}' % (cfg, size_literal)).encode()
    digest = w.put_blob(raw)
    w.link_layer("a", cfg)
    w.link_revision("a", digest)
    w.tag("a", "v1", digest)
    return digest


@pytest.mark.parametrize("size", [str(1 << 64), "9" * 5000], ids=["2**64", "5000-digits"])
def test_manifest_size_beyond_int64_is_a_manifest_the_registry_refuses(size, base, rng, scan, findings, private):
    """Item 3: the registry's Go decoder refuses a size that does not fit int64; so does regindex (a finding)."""
    StorageWriter(base / "other").push_image("b", rng)
    digest = _manifest_with_config_size(private, size)
    scan(expect=1)
    [f] = [f for f in findings("--kind", "truncated_manifest")]
    assert f["digest"] == digest and "int64" in f["detail"]["parse_error"]


def test_lone_surrogate_in_a_manifest_does_not_fail_the_scan(base, rng, scan, findings, invoke, db_path, private):
    """Item 2: Go's decoder reads "\\ud800" as U+FFFD; regindex stores that, and every registry is scanned."""
    StorageWriter(base / "other").push_image("b", rng)
    img = private.push_image("a", rng)
    raw = json.loads(private.path(__import__("regindex.layout").layout.BlobDataPath(img.digest)).read_bytes())
    raw["annotations"] = {"x": "\ud800"}
    raw["artifactType"] = "application/x\ud800y"
    raw["config"]["platform"] = {"os": "li\udfffnux", "architecture": "\x00"}
    body = json.dumps(raw).encode()  # ensure_ascii: the surrogate is written as the escape \ud800
    assert b"\\ud800" in body
    digest = private.put_blob(body)
    private.link_revision("a", digest)
    private.tag("a", "odd", digest)
    scan(expect=0)
    run = last_run(invoke, db_path)
    assert run["status"] == "complete" and run["registries"] == 2
    out = invoke("sql", "SELECT artifact_type FROM manifests WHERE digest = :d".replace(":d", f"'{digest}'"),
                 "--db", db_path, "--format", "json").output
    assert json.loads(out) == [{"artifact_type": "application/x\ufffdy"}]


def test_odd_value_the_database_refuses_fails_one_registry_not_the_run(
        base, rng, scan, invoke, db_path, private, monkeypatch):
    """Whatever one registry's content raises while it is loaded fails that registry; the others are scanned."""
    from regindex import store

    StorageWriter(base / "other").push_image("b", rng)
    private.push_image("a", rng)
    from sqlalchemy import text

    real = store.Stage.apply

    def boom(self, run_id, rid):
        name = self.conn.execute(text("SELECT name FROM registries WHERE id = :i"), {"i": rid}).scalar_one()
        if name == "private":
            "\udcff".encode("utf-8")
        return real(self, run_id, rid)

    monkeypatch.setattr(store.Stage, "apply", boom)
    r = scan(expect=2)
    assert "private: cannot index this registry: UnicodeEncodeError" in r.output
    run = last_run(invoke, db_path)
    assert run["status"] == "partial" and run["registries"] == 1


# -- unprivileged reader (item 4) -------------------------------------------------------------------------


def run_unprivileged(fn: Any) -> Any:
    """``fn()`` as an unprivileged user: in this process when we are not root (chmod then binds us), else in a
    forked child that drops to ``nobody`` (everything it needs is imported by the parent first)."""
    if os.geteuid() != 0:
        return fn()
    import importlib
    import pickle
    import pwd
    import traceback

    # what the command imports lazily must be imported now: nobody may not read the interpreter's library
    # (an installed, non-editable package may live under root's home, which nobody cannot even traverse)
    import pkgutil

    import regindex
    from regindex import db

    for info in pkgutil.iter_modules(regindex.__path__, "regindex."):
        if info.name not in ("regindex.__main__", "regindex.serve"):  # serve needs the optional datasette
            importlib.import_module(info.name)
    for mod in ("sqlalchemy.orm", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.sqlite.pysqlite", "sqlite3",
                "alembic.command", "alembic.runtime.migration"):
        importlib.import_module(mod)
    db.head_revision()  # reads the migrations directory once; cached for the child
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out: tuple[str, Any] = ("ok", fn())
        except BaseException:
            out = ("error", traceback.format_exc())
        with os.fdopen(w, "wb") as fh:
            pickle.dump(out, fh)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


@pytest.fixture
def world(tmp_path: Path) -> Any:
    """A storage base and a database directory that the unprivileged user can reach (pytest's tmp_path is
    private to root): storage readable, database directory writable."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="regindex-nobody-"))
    try:
        top.chmod(0o755)
        (top / "storage").mkdir(mode=0o755)
        (top / "db").mkdir()
        (top / "db").chmod(0o777)
        yield top
    finally:
        for dirpath, dirnames, _files in os.walk(top):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(top)


def _cli(*args: Any) -> tuple[int, str]:
    from click.testing import CliRunner

    from regindex.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, res.output


def _hand_db_to_nobody(db_dir: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        for p in db_dir.iterdir():
            os.chown(p, nobody.pw_uid, nobody.pw_gid)


@pytest.mark.parametrize("what, mode", [("upload", 0o000), ("upload", 0o644), ("tag", 0o000), ("tag", 0o644)])
def test_unreadable_directory_as_unprivileged_user_fails_the_registry(what, mode, world, rng):
    """Item 4: an unreadable ``_uploads/<uuid>`` or tag directory, as a user without root's bypass: that registry
    fails in a partial run and none of its findings is resolved (never: the run aborts, or the tag looks gone)."""
    base, db = world / "storage", world / "db" / "r.db"
    damaged(base, rng)
    code, out = _cli("scan", base, "--db", db, "-q")
    assert code == 1, out
    _hand_db_to_nobody(world / "db")
    before = _cli("findings", "--db", db, "--format", "json", "--state", "open")[1]
    rel = {"upload": "repositories/team/app/_uploads/u1",
           "tag": "repositories/team/app/_manifests/tags/v2"}[what]
    (base / "private/docker/registry/v2" / rel).chmod(mode)

    def second_scan() -> tuple[tuple[int, str], str, str]:
        return (_cli("scan", base, "--db", db),
                _cli("runs", "--db", db, "--format", "json")[1],
                _cli("findings", "--db", db, "--format", "json", "--state", "open")[1])

    (code, out), runs, after = run_unprivileged(second_scan)
    assert code == 2, out
    assert f"private: cannot stat {rel}/" in out and "Permission denied" in out, out
    run = json.loads(runs)[0]
    assert run["status"] == "partial" and run["findings_resolved"] == 0, run
    assert sorted(ident(f) for f in json.loads(after)) == sorted(ident(f) for f in json.loads(before))


# -- the same odd content on PostgreSQL ---------------------------------------------------------------------



@pytest.mark.postgres
def test_odd_content_on_postgresql_matches_sqlite(pg_url, base, rng, invoke, tmp_path):  # noqa: F811
    """Names that are not UTF-8, a lone surrogate and NUL in manifest strings, a size beyond int64, an
    out-of-range upload start: PostgreSQL stores what SQLite stores (PostgreSQL text refuses NUL)."""
    w = StorageWriter(base / "private")
    img = w.push_image("a", rng)
    doc = json.loads(w.path(__import__("regindex.layout").layout.BlobDataPath(img.digest)).read_bytes())
    doc["artifactType"] = "application/x\ud800\x00y"
    odd = w.put_blob(json.dumps(doc).encode())
    w.link_revision("a", odd)
    w.tag("a", "odd", odd)
    _manifest_with_config_size(w, "9" * 5000)
    w.upload("a", "u1", OLD)
    (w.v2 / "repositories/a/_uploads/u1/startedat").write_text("9999-12-31T23:59:59-23:59")
    os.makedirs(os.fsencode(w.v2) + b"/repositories/bad\xff/_layers")
    StorageWriter(base / "other").push_image("b", rng)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    invoke("scan", base, "--db", tmp_path / "same.db", "-q", expect=1)
    pg = json.loads(invoke("findings", "--db", pg_url, "--format", "json").output)
    lite = json.loads(invoke("findings", "--db", tmp_path / "same.db", "--format", "json").output)
    assert sorted(map(ident, pg)) == sorted(map(ident, lite))
    assert {"truncated_manifest", "storage_anomaly", "stale_upload"} <= {f["kind"] for f in pg}
    out = invoke("sql", f"SELECT artifact_type FROM manifests WHERE digest = '{odd}'", "--db", pg_url,
                 "--format", "json").output
    assert json.loads(out) == [{"artifact_type": "application/x\ufffd\ufffdy"}]
