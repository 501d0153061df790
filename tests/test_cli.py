"""The command line: formats, read-only SQL, exit codes, one-line errors, config files."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from regindex.cli import cli


FINDING_KEYS = {"key", "kind", "severity", "registry", "repository", "digest", "tag", "parent_digest", "state",
                "first_seen_run", "last_seen_run", "resolved_run", "detail", "ack", "policy"}


def test_findings_json_has_exactly_the_documented_keys(damaged_world, findings):
    fs = findings()
    assert fs and all(set(f) == FINDING_KEYS for f in fs)
    assert all(f["digest"] is None or f["digest"].startswith("sha256:") for f in fs)
    assert {f["state"] for f in fs} == {"new"}


def test_findings_filters_and_formats(damaged_world, invoke, db_path, findings):
    assert {f["kind"] for f in findings("--kind", "dangling_tag")} == {"dangling_tag"}
    r = invoke("findings", "--db", db_path, "--registry", "elsewhere", expect=2)
    assert "unknown registry" in r.output
    out = invoke("findings", "--db", db_path, "--format", "csv").output
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == len(findings()) and set(table[0]) == FINDING_KEYS
    out = invoke("findings", "--db", db_path).output
    assert "orphan_layer_link" in out.splitlines()[2] or "orphan_layer_link" in out
    r = invoke("findings", "--db", db_path, "--kind", "nonsense", expect=2)
    assert "unknown kind" in r.output


def test_runs(damaged_world, invoke, db_path):
    out = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    assert [r["status"] for r in out] == ["complete"] and out[0]["repositories"] == 3


def test_sql_reads_and_refuses_writes(damaged_world, invoke, db_path):
    out = invoke("sql", "SELECT repository, COUNT(*) AS n FROM orphan_layer_links GROUP BY repository "
                        "ORDER BY repository", "--db", db_path, "--format", "json").output
    assert json.loads(out) == [{"repository": r, "n": 1} for r in ("library/base", "team/app/api", "team/app/web")]
    for stmt in ("DELETE FROM findings", "DROP TABLE runs", "INSERT INTO runs (id) VALUES (99)",
                 "UPDATE findings SET resolved_run = 1"):
        r = invoke("sql", stmt, "--db", db_path, expect=2)
        assert "read-only" in r.output and "Traceback" not in r.output
    out = json.loads(invoke("sql", "SELECT COUNT(*) AS n FROM findings", "--db", db_path, "--format", "json").output)
    assert out[0]["n"] == 4
    r = invoke("sql", "SELECT nope FROM nowhere", "--db", db_path, expect=2)
    assert r.output.startswith("Error: SQL error") and len(r.output.strip().splitlines()) == 1


def test_db_commands(invoke, db_path):
    r = invoke("db", "current", "--db", db_path, expect=2)  # no database yet
    assert "no database" in r.output
    invoke("db", "upgrade", "--db", db_path)
    assert "up to date" in invoke("db", "current", "--db", db_path).output


def test_env_var_names_the_database(damaged_world, invoke, db_path, monkeypatch):
    monkeypatch.setenv("REGINDEX_DB", str(db_path))
    assert json.loads(invoke("findings", "--format", "json").output)


@pytest.mark.parametrize(
    "args, message",
    [
        (["scan", "/nonexistent/storage"], "does not exist"),
        (["findings", "--db", "/nonexistent/dir/x.db"], "does not exist"),
        (["scan", "{base}", "--cache", "nosuch"], "--cache names no registry"),
        (["scan", "{base}", "--config", "/nonexistent.toml"], "does not exist"),
        (["scan", "{base}", "--config", "{fifo}"], "is not a regular file"),
        (["scan", "{base}", "--config", "/dev/zero"], "is not a regular file"),
        (["scan", "{base}", "--config", "{big}"], "is larger than"),
        (["findings", "--db", "{notadb}"], "database"),
    ],
)
def test_errors_are_one_line_exit_2(args, message, base, tmp_path, invoke, private, rng):
    private.push_image("a", rng)
    notadb = tmp_path / "junk.db"
    notadb.write_bytes(b"this is not sqlite" * 100)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # no writer: reading it would block the job forever
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    argv = [a.format(base=base, notadb=notadb, fifo=fifo, big=big) for a in args]
    if argv[0] == "scan":
        argv += ["--db", str(tmp_path / "x.db")]
    r = invoke(*argv, expect=2)
    assert message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.mark.parametrize("hours", ["nan", "inf", "-1", "0", "1e300"])
def test_stale_upload_hours_must_be_finite(hours, base, private, rng, invoke, tmp_path):
    private.push_image("a", rng)
    r = invoke("scan", base, "--db", tmp_path / "x.db", "--stale-upload-hours", hours, expect=2)
    assert "hours" in r.output and "Traceback" not in r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"stale_upload_hours = {hours if hours not in ('nan', 'inf') else hours}\n")
    r = invoke("scan", base, "--db", tmp_path / "x.db", "--config", cfg, expect=2)
    assert "stale_upload_hours" in r.output


def test_internal_errors_are_one_line_and_mark_the_run_failed(base, private, rng, invoke, db_path, monkeypatch):
    from regindex import checks

    private.push_image("a", rng)

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(checks, "run_checks", broken)
    r = invoke("scan", base, "--db", db_path, expect=2)
    assert "internal error ZeroDivisionError" in r.output and len(r.output.strip().splitlines()) == 1
    monkeypatch.undo()
    runs = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    assert [x["status"] for x in runs] == ["failed"]


def test_storage_root_that_is_a_file(tmp_path, invoke):
    f = tmp_path / "file"
    f.write_text("x")
    r = invoke("scan", f, "--db", tmp_path / "x.db", expect=2)
    assert "not a directory" in r.output


def test_config_file(base, tmp_path, invoke, private, rng):
    idx = private.push_index("lib/x", rng, attestations=False)
    private.tag("lib/x", "1", idx.digest)
    private.remove_revision("lib/x", idx.children[0].digest)
    cfg = tmp_path / "regindex.toml"
    db = tmp_path / "cfg.db"
    cfg.write_text(f'db = "{db}"\ncaches = ["private"]\nfail_on = "open"\n')
    invoke("scan", base, "--config", cfg, "-q", expect=0)  # a cache: the missing child is info
    out = json.loads(invoke("findings", "--config", cfg, "--format", "json", "--kind", "orphan_index_child").output)
    assert [f["severity"] for f in out] == ["info"]
    cfg.write_text('colour = "blue"\n')
    r = invoke("scan", base, "--config", cfg, expect=2)
    assert "unknown key" in r.output


def test_metrics_file(damaged_world, invoke, base, db_path, tmp_path):
    prom = tmp_path / "m" / "regindex.prom"
    r = invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=2)  # checked before scanning
    assert "does not exist" in r.output
    prom.parent.mkdir()
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    text = prom.read_text()
    assert "regindex_last_run_success 1" in text
    assert 'regindex_findings_open{registry="private",kind="orphan_layer_link",severity="error"} 3' in text


def test_summary_line_and_quiet_progress(base, invoke, db_path, private, rng):
    private.push_image("a", rng)
    r = invoke("scan", base, "--db", db_path)
    assert r.output.startswith("run 1 complete: 1 registries, 1 repositories")
    assert "\r" not in r.output  # no progress display when not on a terminal


def test_every_command_has_help_and_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, cmd in cli.commands.items():
        assert cmd.help, name
        assert f"regindex {name}" in readme, name


def test_lock_refuses_a_second_scan(base, db_path, private, rng, invoke):
    import fcntl

    private.push_image("a", rng)
    invoke("scan", base, "--db", db_path, "-q")
    with open(str(db_path) + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = invoke("scan", base, "--db", db_path, expect=2)
    assert "another regindex scan" in r.output


@pytest.mark.parametrize("stmt", ["ATTACH DATABASE '{tmp}/att.db' AS a", "PRAGMA query_only=0",
                                  "PRAGMA journal_mode=DELETE"])
def test_sql_refuses_attach_and_pragma_writes(stmt, damaged_world, invoke, db_path, tmp_path):
    r = invoke("sql", stmt.format(tmp=tmp_path), "--db", db_path, expect=2)
    assert "read-only" in r.output or "returned none" in r.output
    assert not (tmp_path / "att.db").exists()
    assert invoke("sql", "PRAGMA query_only", "--db", db_path, "--format", "json").output  # reading a pragma is fine


def test_db_that_is_a_directory(tmp_path, invoke):
    r = invoke("runs", "--db", tmp_path, expect=2)
    assert "is a directory" in r.output
