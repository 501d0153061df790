"""Operators' habits (issue 9): metrics that never go stale, JSON logs, output files that are only ever regular
files, error lines that stay one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from regindex.checks import KINDS
from regindex.cli import cli
from regindex.sample import StorageWriter

from .test_hostile import damaged, world  # noqa: F401  (fixture)

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\n"])*",?)*\})? '
                    r'(-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$')


def parse_prom(text: str) -> dict[tuple[str, str], float]:
    """Strict textfile-collector format: HELP and TYPE once per metric, before its samples, samples of one
    metric together, no sample timestamps. Returns {(name, labels): value}."""
    assert text.endswith("\n")
    helped: set[str] = set()
    typed: set[str] = set()
    done: set[str] = set()
    current = None
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in helped, f"HELP twice for {name}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _h, _t, name, typ = line.split()
            assert typ in ("gauge", "counter") and name not in typed, line
            typed.add(name)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        assert name in helped and name in typed, f"{name} has no HELP or TYPE"
        if name != current:
            assert name not in done, f"samples of {name} are not together"
            if current:
                done.add(current)
            current = name
        out[(name, m.group(2) or "")] = float(m.group(3))
    return out


def lbl(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    d = tmp_path / "textfile"
    d.mkdir()
    return d / "regindex.prom"


def test_metrics_have_help_type_zero_series_times_and_registry_status(base, rng, invoke, db_path, prom):
    t = damaged(base, rng)
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    m = parse_prom(prom.read_text())
    assert m[("regindex_last_run_success", "")] == 1
    assert m[("regindex_last_run_status", lbl(status="complete"))] == 1
    assert m[("regindex_last_run_status", lbl(status="failed"))] == 0
    first_success = m[("regindex_last_success_timestamp_seconds", "")]
    assert first_success > 1.7e9 and m[("regindex_last_run_timestamp_seconds", "")] == first_success
    for reg in ("private", "other"):
        assert m[("regindex_registry_scan_success", lbl(registry=reg))] == 1
        assert m[("regindex_registry_last_success_timestamp_seconds", lbl(registry=reg))] == first_success
        for kind in KINDS:  # a series for every known kind, 0 included
            assert ("regindex_findings_open", lbl(registry=reg, kind=kind, severity="error")) in m
    orphan = ("regindex_findings_open", lbl(registry="private", kind="orphan_layer_link", severity="error"))
    assert m[orphan] == 1
    assert m[("regindex_inventory_uploads", "")] == 1
    # the orphan link is removed: the count drops to 0 and reads 0, it does not vanish
    t["w"].remove_layer_link("team/app", t["gone"].layers[0])
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    assert parse_prom(prom.read_text())[orphan] == 0


def _metrics_after_failure(prom: Path) -> dict[tuple[str, str], float]:
    m = parse_prom(prom.read_text())
    assert m[("regindex_last_run_success", "")] == 0
    assert m[("regindex_last_run_status", lbl(status="failed"))] == 1
    return m


def test_metrics_are_rewritten_when_the_root_is_missing(base, rng, invoke, db_path, prom, tmp_path):
    """Item 18: a stale `regindex_last_run_success 1` after a failed run is what the issue found."""
    damaged(base, rng)
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    ok = parse_prom(prom.read_text())
    base.rename(tmp_path / "elsewhere")
    r = invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=2)
    assert "does not exist" in r.output
    m = _metrics_after_failure(prom)
    assert m[("regindex_last_run_id", "")] == 2
    assert m[("regindex_last_success_timestamp_seconds", "")] == ok[("regindex_last_success_timestamp_seconds", "")]
    assert m[("regindex_last_run_timestamp_seconds", "")] > ok[("regindex_last_run_timestamp_seconds", "")]
    assert m[("regindex_registry_scan_success", lbl(registry="private"))] == 0
    # what is known is kept: inventory and open findings are what the last good run left
    assert m[("regindex_inventory_blobs", "")] == ok[("regindex_inventory_blobs", "")]
    key = ("regindex_findings_open", lbl(registry="private", kind="orphan_layer_link", severity="error"))
    assert m[key] == ok[key] == 1


def test_metrics_are_rewritten_after_a_bad_cache_name_and_an_interrupt(base, rng, invoke, db_path, prom,
                                                                      monkeypatch):
    damaged(base, rng)
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    r = invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, "--cache", "nosuch", expect=2)
    assert "--cache names no registry" in r.output
    assert _metrics_after_failure(prom)[("regindex_last_run_id", "")] == 2
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    assert parse_prom(prom.read_text())[("regindex_last_run_success", "")] == 1

    from regindex import checks

    def interrupted(*_a: Any, **_k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(checks, "run_checks", interrupted)
    r = invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=2)
    assert "run 4 interrupted, nothing changed" in r.output
    assert _metrics_after_failure(prom)[("regindex_last_run_id", "")] == 4


def test_partial_run_metrics_name_the_failed_registry(base, rng, invoke, db_path, prom):
    damaged(base, rng)
    (base / "other/docker/registry/v2/blobs").rename(base / "moved")
    os.symlink(base / "moved", base / "other/docker/registry/v2/blobs")
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=2)
    m = parse_prom(prom.read_text())
    assert m[("regindex_last_run_status", lbl(status="partial"))] == 1
    assert m[("regindex_registry_scan_success", lbl(registry="private"))] == 1
    assert m[("regindex_registry_scan_success", lbl(registry="other"))] == 0
    assert m[("regindex_registry_last_success_timestamp_seconds", lbl(registry="other"))] == 0
    assert m[("regindex_last_success_timestamp_seconds", "")] == 0


def test_metrics_label_values_are_escaped(base, rng, invoke, db_path, prom):
    StorageWriter(base / 'we"ird\\name').push_image("a", rng)
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=0)
    m = parse_prom(prom.read_text())
    assert m[("regindex_registry_scan_success", '{registry="we\\"ird\\\\name"}')] == 1


# -- --log-format json (item 19) ------------------------------------------------------------------------------


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = stderr.splitlines()
    recs = [json.loads(line) for line in lines]  # every line is one JSON object
    for rec in recs:
        assert isinstance(rec, dict) and {"ts", "level", "event", "run"} <= set(rec), rec
    return recs


def test_log_format_json(base, rng, db_path):
    damaged(base, rng)
    (base / "other/docker/registry/v2/blobs").rename(base / "moved")
    os.symlink(base / "moved", base / "other/docker/registry/v2/blobs")
    r = CliRunner().invoke(cli, ["scan", str(base), "--db", str(db_path), "-q", "--log-format", "json"])
    assert r.exit_code == 2 and r.stdout == ""
    recs = _json_lines(r.stderr)
    assert {rec["run"] for rec in recs} == {1}
    assert any(rec["event"] == "progress" and rec["message"] == "checking" for rec in recs)
    [err] = [rec for rec in recs if rec["event"] == "error"]
    assert err["level"] == "error" and "other: blobs is a symlink" in err["message"]
    [summary] = [rec for rec in recs if rec["event"] == "summary"]
    assert summary["status"] == "partial" and summary["failed_registries"] == ["other"]
    assert summary["findings_new"] > 0 and summary["open_errors"] > 0 and summary["blobs"] > 0


def test_log_format_json_on_a_failed_run_and_bad_input(base, tmp_path, db_path):
    r = CliRunner().invoke(cli, ["scan", str(tmp_path / "nowhere"), "--db", str(db_path), "--log-format", "json"])
    assert r.exit_code == 2
    recs = _json_lines(r.stderr)
    assert recs[-1]["event"] == "error" and "does not exist" in recs[-1]["message"] and recs[-1]["run"] == 1
    assert [rec["status"] for rec in recs if rec["event"] == "summary"] == ["failed"]
    r = CliRunner().invoke(cli, ["scan", str(base), "--db", str(tmp_path / "no/such/dir.db"), "--log-format", "json"])
    assert r.exit_code == 2
    [rec] = _json_lines(r.stderr)
    assert rec["event"] == "error" and "does not exist" in rec["message"] and rec["run"] is None


# -- output files (items 6 and 13) ------------------------------------------------------------------------------


@pytest.fixture
def scanned(base, rng, invoke, db_path):
    StorageWriter(base / "private").push_image("a", rng)
    invoke("scan", base, "--db", db_path, "-q")
    return db_path


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "directory"])
def test_outputs_are_only_ever_regular_files(kind, scanned, base, invoke, tmp_path):
    """Item 6: run as root against /dev/stdout or /dev/null, os.replace would destroy the device node."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    targets = {"metrics": tmp_path / "m.prom", "report": tmp_path / "r.html", "csv": tmp_path / "c.html"}
    for name, target in targets.items():
        path = target.with_suffix(".csv") if name == "csv" else target
        if kind == "symlink":
            os.symlink(victim, path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "device":
            if os.geteuid() != 0:
                pytest.skip("creating a device node needs root")
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # a character device: /dev/null's numbers
        else:
            path.mkdir()
    r = invoke("scan", base, "--db", scanned, "-q", "--metrics", targets["metrics"], expect=2)
    assert "regular file" in r.output or "directory" in r.output
    r = invoke("report", "--db", scanned, "--out", targets["report"], expect=2)
    assert ("report:" in r.output and "regular file" in r.output) or "is a directory" in r.output
    r = invoke("report", "--db", scanned, "--out", targets["csv"], expect=2)
    assert "c.csv" in r.output
    for name, target in targets.items():
        path = target.with_suffix(".csv") if name == "csv" else target
        if kind == "symlink":
            assert path.is_symlink() and victim.read_text() == "keep me"
        elif kind == "fifo":
            import stat

            assert stat.S_ISFIFO(os.lstat(path).st_mode)
        elif kind == "device":
            import stat

            assert stat.S_ISCHR(os.lstat(path).st_mode)
        else:
            assert path.is_dir()
    assert not list(tmp_path.glob(".regindex-*"))


def test_failed_metrics_write_names_the_path_and_leaves_no_temp_file(scanned, base, invoke, tmp_path, monkeypatch):
    """Item 13."""
    prom = tmp_path / "m.prom"
    real = os.replace

    def full_disk(src: Any, dst: Any) -> None:
        if str(dst) == str(prom):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    r = invoke("scan", base, "--db", scanned, "-q", "--metrics", prom, expect=2)
    assert f"cannot write {prom}: No space left on device" in r.output
    assert not list(tmp_path.glob(".regindex-*")) and not prom.exists()


# -- error lines (item 9) ---------------------------------------------------------------------------------------


def test_error_lines_escape_storage_names(base, rng, invoke, db_path):
    """Item 9: a newline in a name must not make two lines; an escape sequence must not reach the terminal."""
    StorageWriter(base / "ok").push_image("a", rng)
    evil = StorageWriter(base / "ev\nil\x1b[31m")
    evil.push_image("a", rng)
    (evil.v2 / "blobs").rename(base / "moved")
    os.symlink(base / "moved", evil.v2 / "blobs")
    r = invoke("scan", base, "--db", db_path, "-q", expect=2)
    [line] = r.stderr.splitlines()
    assert line.startswith("error: ev\\nil\\x1b[31m: blobs is a symlink") and "\x1b" not in r.stderr


# -- databases and arguments (items 10, 11, 12, 14, 15, 16, 17) -------------------------------------------------


def test_two_paths_to_one_database_take_one_lock(scanned, tmp_path):
    """Item 10: a symlinked directory gave the same SQLite file a second lock file: two scans at once."""
    from regindex import db as dbmod
    from regindex.errors import LockError
    from regindex.scan import scan_lock

    alias = tmp_path / "elsewhere" / "nightly.db"
    alias.parent.mkdir()
    os.symlink(scanned, alias)  # another name for the same file
    first = dbmod.make_engine(dbmod.resolve_url(str(scanned)))
    second = dbmod.make_engine(dbmod.resolve_url(str(alias)))
    with scan_lock(first):
        with pytest.raises(LockError):
            with scan_lock(second):
                pass
    first.dispose()
    second.dispose()


def test_db_current_on_a_newer_database_says_upgrade_regindex(scanned, invoke):
    """Item 11: it used to say to run `db upgrade`, which then refuses."""
    import sqlite3

    con = sqlite3.connect(scanned)
    con.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    con.commit()
    con.close()
    out = invoke("db", "current", "--db", scanned).output
    assert "9999_from_the_future" in out and "newer than this regindex: upgrade regindex" in out
    assert "db upgrade" not in out


def test_another_user_can_read_the_nightly_database(world, rng):
    """Item 12: read commands failed with 'attempt to write a readonly database' when the database's
    directory is not writable by the reader (SQLite could not create the WAL index)."""
    from .test_hostile import _cli, run_unprivileged

    base, db_dir = world / "storage", world / "db"
    damaged(base, rng)
    db_dir.chmod(0o755)  # the reader may not create files here
    db = db_dir / "r.db"
    code, out = _cli("scan", base, "--db", db, "-q")
    assert code == 1, out

    def read() -> list[tuple[int, str]]:
        return [_cli("findings", "--db", db, "--format", "json"), _cli("runs", "--db", db),
                _cli("history", "sha256:" + "0" * 64, "--db", db), _cli("db", "current", "--db", db)]

    results = run_unprivileged(read)
    (c1, findings_out), (c2, runs_out), (c3, history_out), (c4, current_out) = results
    assert c1 == 0 and json.loads(findings_out), findings_out
    assert c2 == 0 and "complete" in runs_out, runs_out
    assert c3 == 2 and "readonly" not in history_out, history_out  # an unknown digest, said as such
    assert c4 == 0 and "up to date" in current_out, current_out
    assert sorted(p.name for p in db_dir.iterdir()) == ["r.db", "r.db.lock"]  # the reader left nothing


def test_malformed_config_is_an_error_even_with_db(scanned, invoke, tmp_path):
    """Item 14."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("db = [unclosed\n")
    for cmd in (["findings"], ["runs"], ["report", "--out", tmp_path / "r.html"], ["db", "current"],
                ["gc-preview"]):
        r = invoke(*cmd, "--db", scanned, "--config", cfg, expect=2)
        assert "not valid TOML" in r.output, (cmd, r.output)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_database_is_refused(url, base, rng, invoke, tmp_path, monkeypatch):
    """Item 15: it exited 0, kept nothing and left lock files."""
    StorageWriter(base / "private").push_image("a", rng)
    monkeypatch.chdir(tmp_path)
    r = invoke("scan", base, "--db", url, expect=2)
    assert "in-memory SQLite database keeps nothing" in r.output
    assert not list(tmp_path.glob("*.lock"))


def test_database_paths_with_url_characters_open_that_file(base, rng, invoke, tmp_path):
    """Item 16: '#', '%' and '?' in the path opened another file in some commands."""
    StorageWriter(base / "private").push_image("a", rng)
    odd = tmp_path / "a#b%20c?d=e"
    odd.mkdir()
    db = odd / "x?y#z%41.db"
    invoke("scan", base, "--db", db, "-q")
    assert db.is_file() and sorted(p.name for p in odd.iterdir()) == ["x?y#z%41.db", "x?y#z%41.db.lock"]
    assert json.loads(invoke("runs", "--db", db, "--format", "json").output)[0]["status"] == "complete"
    invoke("findings", "--db", db)
    invoke("db", "current", "--db", db)
    invoke("report", "--db", db, "--out", tmp_path / "r.html")
    assert {p.name for p in odd.iterdir()} <= {"x?y#z%41.db", "x?y#z%41.db.lock", "x?y#z%41.db-wal",
                                               "x?y#z%41.db-shm"}
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".db"]


def test_huge_limit_and_non_utf8_arguments_are_one_line_errors(scanned, base, invoke, tmp_path):
    """Item 17: tracebacks before."""
    r = invoke("runs", "--db", scanned, "--limit", "9223372036854775808", expect=2)
    assert "Traceback" not in r.output and "--limit" in r.output
    bad = os.fsdecode(b"/tmp/\xff\xfe")
    r = CliRunner().invoke(cli, ["scan", bad, "--db", str(tmp_path / "n.db")])
    assert r.exit_code == 2 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(cli, ["runs", "--db", os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.db")])
    assert r.exit_code == 2 and "not valid UTF-8" in r.output, r.output
    r = CliRunner().invoke(cli, ["findings", "--db", str(scanned), "--registry", os.fsdecode(b"\xff")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_non_utf8_base_is_scanned(tmp_path, rng, invoke):
    base = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xfforage"))
    StorageWriter(base / "private").push_image("a", rng)
    r = CliRunner().invoke(cli, ["scan", str(base), "--db", str(tmp_path / "n.db"), "-q"])
    assert r.exit_code == 0, r.output
    runs = json.loads(invoke("runs", "--db", tmp_path / "n.db", "--format", "json").output)
    assert runs[0]["status"] == "complete" and "st\\xfforage" in runs[0].get("base", "st\\xfforage")


def test_metrics_are_rewritten_after_a_bad_config_file(base, rng, invoke, db_path, prom, tmp_path):
    """Item 18: a malformed config file left yesterday's `regindex_last_run_success 1` in place."""
    damaged(base, rng)
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("caches = [unclosed\n")
    r = invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, "--config", cfg, expect=2)
    assert "not valid TOML" in r.output
    m = _metrics_after_failure(prom)
    assert m[("regindex_last_run_id", "")] == 2
    runs = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    assert runs[0]["status"] == "failed" and "not valid TOML" in runs[0]["error"]
