"""`regindex sql`: sqlite-utils' conventions (parameters, query from a file or stdin, output shorthands, JSON
columns), streamed rows in constant memory, a time limit and a clean stop on Ctrl-C, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regindex.queries import pg_placeholders

from .test_checks import build_world

NEVER_RETURNS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c WHERE x < 0"
PG_NEVER_RETURNS = "SELECT pg_sleep(600)"


def rows_of(n: int) -> str:
    return (f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {n}) "
            "SELECT x, 'row ' || x AS s, '{\"n\": ' || x || '}' AS detail FROM c")


def run_cli(*args: object, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "regindex", *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout, check=False)


def peak_rss_kib(*args: object) -> int:
    """Run regindex in a child process, discard its output, return the child's own peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "regindex", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # until the child closes it, i.e. exits
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    assert proc.returncode == 0, err
    return usage.ru_maxrss


def interrupted(*args: object, after: float = 2.0) -> tuple[int, str, float]:
    """Start regindex, send SIGINT once it is busy, return (exit status, stderr, seconds it took to stop)."""
    proc = subprocess.Popen([sys.executable, "-m", "regindex", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    assert proc.poll() is None, "the query ended before it could be interrupted"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("Ctrl-C did not stop the query within 60 s")
    return proc.returncode, err, time.monotonic() - sent


# ---------------------------------------------------------------------------------------------
# sqlite-utils' conventions


def test_parameters_are_bound_never_interpolated(damaged_world, invoke, db_path):
    out = invoke("sql", "SELECT repository FROM orphan_layer_links WHERE repository = :repo", "-p", "repo",
                 "team/app/api", "--db", db_path, "--json").output
    assert json.loads(out) == [{"repository": "team/app/api"}]
    # a value that would be SQL if pasted in stays a value
    hostile = "x' OR '1'='1"
    out = invoke("sql", "SELECT COUNT(*) AS n FROM findings WHERE repository = :r", "--param", "r", hostile,
                 "--db", db_path, "--json").output
    assert json.loads(out) == [{"n": 0}]
    out = invoke("sql", "SELECT :a AS a, :b AS b", "-p", "a", "1", "-p", "b", "two; DROP TABLE runs", "--db",
                 db_path, "--json").output
    assert json.loads(out) == [{"a": "1", "b": "two; DROP TABLE runs"}]
    r = invoke("sql", "SELECT :missing", "--db", db_path, expect=2)
    assert "missing" in r.output and len(r.output.strip().splitlines()) == 1


def test_query_from_a_file_or_stdin(damaged_world, invoke, db_path, tmp_path):
    query = "-- open errors per kind\nSELECT kind, COUNT(*) AS n FROM open_findings WHERE severity = :sev\n" \
            "GROUP BY kind ORDER BY kind;\n"
    f = tmp_path / "q.sql"
    f.write_text(query)
    from_file = json.loads(invoke("sql", "--file", f, "-p", "sev", "error", "--db", db_path, "--json").output)
    assert from_file == [{"kind": "dangling_tag", "n": 1}, {"kind": "orphan_layer_link", "n": 3}]
    for args in (["-"], ["-f", "-"]):
        r = run_cli("sql", *args, "-p", "sev", "error", "--db", db_path, "--json", stdin=query.encode())
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == from_file
    r = invoke("sql", "SELECT 1", "--file", f, "--db", db_path, expect=2)
    assert "not both" in r.output
    r = invoke("sql", "--db", db_path, expect=2)
    assert "no query" in r.output
    r = invoke("sql", "--file", tmp_path / "nope.sql", "--db", db_path, expect=2)
    assert "cannot read query file" in r.output
    (tmp_path / "latin1.sql").write_bytes(b"SELECT '\xe9'")
    r = invoke("sql", "-f", tmp_path / "latin1.sql", "--db", db_path, expect=2)
    assert "not UTF-8" in r.output
    (tmp_path / "huge.sql").write_bytes(b"SELECT 1 -- " + b"x" * (2 << 20))
    r = invoke("sql", "-f", tmp_path / "huge.sql", "--db", db_path, expect=2)
    assert "larger than" in r.output


def test_a_non_utf8_argument_is_one_line(damaged_world, db_path):
    r = subprocess.run([sys.executable, "-m", "regindex", "sql", b"SELECT '\xff'", "--db", str(db_path)],
                       capture_output=True, check=False)
    assert r.returncode == 2 and r.stderr.decode().strip() == "Error: the query is not valid UTF-8"


def test_output_shorthands_and_json_columns(damaged_world, invoke, db_path):
    q = "SELECT id, kind, detail, '{\"x\": 1}' AS looks_like_json FROM findings ORDER BY id"
    as_json = json.loads(invoke("sql", q, "--db", db_path, "--json").output)
    assert len(as_json) == 4 and all(isinstance(r["detail"], dict) for r in as_json)  # JSON, not a string
    assert {r["looks_like_json"] for r in as_json} == {'{"x": 1}'}  # other text stays text ...
    detected = json.loads(invoke("sql", q, "--db", db_path, "--json", "--json-cols").output)
    assert {json.dumps(r["looks_like_json"]) for r in detected} == {'{"x": 1}'}  # ... unless asked to detect
    assert json.loads(invoke("sql", q, "--db", db_path, "--format", "json").output) == as_json
    nl = invoke("sql", q, "--db", db_path, "--nl").output.splitlines()
    assert [json.loads(line) for line in nl] == as_json
    table = list(csv.DictReader(io.StringIO(invoke("sql", q, "--db", db_path, "--csv").output)))
    assert [int(r["id"]) for r in table] == [r["id"] for r in as_json]
    assert json.loads(table[0]["detail"]) == as_json[0]["detail"]
    tsv = invoke("sql", q, "--db", db_path, "--tsv").output.splitlines()
    assert tsv[0].split("\t") == ["id", "kind", "detail", "looks_like_json"] and len(tsv) == 5
    bare = invoke("sql", q, "--db", db_path, "--tsv", "--no-headers").output.splitlines()
    assert bare == tsv[1:]
    tab = invoke("sql", "SELECT kind, severity FROM findings ORDER BY id", "--db", db_path, "--table").output
    lines = tab.splitlines()
    assert lines[0].split() == ["kind", "severity"] and set(lines[1]) <= {"-", " "} and len(lines) == 6
    no_head = invoke("sql", "SELECT kind, severity FROM findings ORDER BY id", "--db", db_path, "--no-headers")
    assert [line.split() for line in no_head.output.splitlines()] == [line.split() for line in lines[2:]]
    assert invoke("sql", "SELECT 1 AS a WHERE 0", "--db", db_path, "--json").output == "[]\n"
    assert invoke("sql", "SELECT 1 AS a WHERE 0", "--db", db_path, "--csv").output == "a\n"
    r = invoke("sql", "SELECT 1", "--db", db_path, "--json", "--csv", expect=2)
    assert "choose one output format" in r.output


def test_still_read_only_and_one_statement(damaged_world, invoke, db_path):
    for stmt in ("DELETE FROM findings", "SELECT 1; DELETE FROM findings", "PRAGMA query_only = 0"):
        r = invoke("sql", stmt, "--db", db_path, expect=2)
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert json.loads(invoke("sql", "SELECT COUNT(*) AS n FROM findings", "--db", db_path, "--json").output) == \
        [{"n": 4}]


def test_a_huge_value_is_one_line_not_a_memory_error(damaged_world, db_path):
    r = run_cli("sql", "SELECT randomblob(1000000000) AS b", "--db", db_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.startswith("Error: SQL error: a value is larger than") and len(err.splitlines()) == 1


def test_output_to_a_closed_pipe_stops_quietly(damaged_world, db_path):
    shell = (f"{sys.executable} -m regindex sql \"{rows_of(200_000)}\" --db {db_path} --csv | head -n 3")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines()[0] == "x,s,detail" and len(r.stdout.splitlines()) == 3
    assert r.stderr == ""


# ---------------------------------------------------------------------------------------------
# streamed, time-limited, interruptible


@pytest.mark.slow
def test_rows_are_streamed_in_constant_memory(damaged_world, db_path):
    small = peak_rss_kib("sql", rows_of(1_000), "--db", db_path, "--json")
    big = peak_rss_kib("sql", rows_of(1_000_000), "--db", db_path, "--json")
    # holding a million rows as dicts took about 1 GB; streamed, the peak is the interpreter's
    assert big - small < 20 * 1024, (small, big)
    for fmt in ("--table", "--csv", "--nl"):
        assert peak_rss_kib("sql", rows_of(300_000), "--db", db_path, fmt) - small < 20 * 1024, fmt


def test_timeout_stops_a_query_that_never_returns(damaged_world, db_path):
    started = time.monotonic()
    r = run_cli("sql", NEVER_RETURNS, "--db", db_path, "--timeout", "1")
    assert time.monotonic() - started < 60
    assert r.returncode == 2
    assert r.stderr.decode() == "Error: the query ran longer than --timeout 1s and was stopped\n"
    r = run_cli("sql", "SELECT 1 AS one", "--db", db_path, "--timeout", "-1")
    assert r.returncode == 2 and b"Traceback" not in r.stderr


def test_timeout_default_is_a_few_minutes():
    from regindex.cli import sql

    timeout = next(p for p in sql.params if p.name == "timeout")
    assert 60 <= timeout.default <= 600  # type: ignore[operator]


def test_ctrl_c_stops_a_query_that_never_returns(damaged_world, db_path):
    code, err, took = interrupted("sql", NEVER_RETURNS, "--db", db_path)
    assert (code, err) == (2, "Error: interrupted\n")
    assert took < 10, took


def test_ctrl_c_stops_a_query_that_is_streaming(damaged_world, db_path):
    code, err, _ = interrupted("sql", rows_of(100_000_000), "--db", db_path, "--nl", after=1.5)
    assert (code, err) == (2, "Error: interrupted\n")


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def test_placeholders_for_psycopg():
    q = ("SELECT '50%' AS p, ':lit' AS l, \"a:b\" , x::int, $$ :dq $$, E'it\\'s :e', /* :c */ y -- :d\n"
         "FROM t WHERE a = :a AND b LIKE :b || '%'")
    assert pg_placeholders(q) == (
        "SELECT '50%%' AS p, ':lit' AS l, \"a:b\" , x::int, $$ :dq $$, E'it\\'s :e', /* :c */ y -- :d\n"
        "FROM t WHERE a = %(a)s AND b LIKE %(b)s || '%%'")


@pytest.mark.postgres
def test_postgres_parameters_formats_and_refusals(pg_url, base, invoke):  # noqa: F811
    build_world(base).w.remove_tag_current("library/base", "latest")
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    out = invoke("sql", "SELECT kind, detail, '50%' AS pct, ':x' AS lit FROM findings WHERE kind = :k", "-p", "k",
                 "dangling_tag", "--db", pg_url, "--json").output
    rows = json.loads(out)
    assert len(rows) == 1 and isinstance(rows[0]["detail"], dict) and rows[0]["pct"] == "50%" and rows[0]["lit"] == ":x"
    out = invoke("sql", "SELECT COUNT(*) AS n, SUM(id) AS s FROM runs WHERE id <= :id", "-p", "id", "1",
                 "--db", pg_url, "--json").output
    assert json.loads(out) == [{"n": 1, "s": 1}]
    assert invoke("sql", "SELECT 1 AS a WHERE false", "--db", pg_url, "--csv").output == "a\n"
    assert invoke("sql", "EXPLAIN SELECT * FROM runs", "--db", pg_url, "--csv").output.startswith("QUERY PLAN\n")
    for stmt in ("DELETE FROM findings", "SELECT 1; DELETE FROM findings",
                 "WITH d AS (DELETE FROM findings RETURNING id) SELECT * FROM d", "SET statement_timeout = 0"):
        r = invoke("sql", stmt, "--db", pg_url, expect=2)
        assert len(r.output.strip().splitlines()) == 1, stmt
    assert json.loads(invoke("sql", "SELECT COUNT(*) AS n FROM findings WHERE kind = 'dangling_tag'", "--db",
                             pg_url, "--json").output) == [{"n": 1}]


@pytest.mark.postgres
def test_postgres_streams_times_out_and_stops_on_ctrl_c(pg_url, invoke):  # noqa: F811
    invoke("db", "upgrade", "--db", pg_url)
    q = "SELECT g AS x, 'row ' || g AS s FROM generate_series(1, {n}) g"
    small = peak_rss_kib("sql", q.format(n=1_000), "--db", pg_url, "--json")
    big = peak_rss_kib("sql", q.format(n=300_000), "--db", pg_url, "--json")
    assert big - small < 20 * 1024, (small, big)
    r = run_cli("sql", PG_NEVER_RETURNS, "--db", pg_url, "--timeout", "1")
    assert (r.returncode, r.stderr.decode()) == (2, "Error: the query ran longer than --timeout 1s and was stopped\n")
    code, err, took = interrupted("sql", PG_NEVER_RETURNS, "--db", pg_url)
    assert (code, err) == (2, "Error: interrupted\n") and took < 10
