"""regindex ack / unack: known findings stay listed, marked, but stop failing the nightly job."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from .test_checks import CASES, R, build_world


def _errors(findings):
    return [f for f in findings() if f["severity"] == "error"]


def test_ack_by_key_marks_the_finding_and_it_stops_failing(damaged_world, scan, invoke, db_path, findings):
    tag = next(f for f in findings() if f["kind"] == "dangling_tag")
    out = invoke("ack", tag["key"][:12], "--db", db_path, "--reason", "tag retired, ticket OPS-12").output
    assert "acknowledged 1 open finding until it resolves" in out
    (got,) = [f for f in findings() if f["key"] == tag["key"]]
    assert got["ack"]["reason"] == "tag retired, ticket OPS-12" and got["ack"]["by"] and got["ack"]["until"] is None
    assert got["ack"]["since"].endswith("Z")
    assert all(f["ack"] is None for f in findings() if f["key"] != tag["key"])
    r = scan()
    assert r.exit_code == 1  # the orphan layer links still fail the job
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--db", db_path, "--reason", "GC damage, known")
    r = invoke("scan", db_path.parent / "storage", "--db", db_path, expect=0)  # --fail-on open: nothing counts
    assert "0 open errors (4 more acknowledged)" in r.output
    assert len(_errors(findings)) == 4  # still listed
    table = invoke("findings", "--db", db_path).output
    assert table.splitlines()[0].split()[-1] == "acked" and table.count(" yes") == 4


def test_ack_by_kind_registry_and_repository_glob(damaged_world, invoke, db_path, findings):
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--repository", "team/*", "--db", db_path,
           "--reason", "x")
    acked = {f["repository"] for f in findings() if f["ack"]}
    assert acked == {"team/app/api", "team/app/web"}


def test_ack_expires(damaged_world, scan, invoke, db_path, findings, monkeypatch):
    until = (datetime.now(timezone.utc) + timedelta(days=3)).date().isoformat()
    out = invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--db", db_path, "--reason", "r",
                 "--until", until).output
    assert f"until {until}T00:00" in out
    invoke("ack", "--kind", "dangling_tag", "--registry", R, "--db", db_path, "--reason", "r", "--until", until)
    assert {f["ack"]["until"] for f in findings()} == {f"{until}T00:00:00Z"}
    assert scan().exit_code == 0
    import regindex.ack as ackmod

    later = datetime.now(timezone.utc) + timedelta(days=4)
    monkeypatch.setattr(ackmod, "utcnow", lambda: later)
    assert all(f["ack"] is None for f in findings())
    assert scan().exit_code == 1


def test_ack_ends_when_resolved_and_a_reopened_finding_is_not_acknowledged(damaged_world, base, scan, invoke, db_path,
                                                                           findings):
    w = damaged_world.w
    d = damaged_world.base_img.layers[0]
    f = next(x for x in findings() if x["kind"] == "orphan_layer_link" and x["repository"] == "library/base")
    invoke("ack", f["key"], "--db", db_path, "--reason", "known")
    w.remove_layer_link("library/base", d)  # resolved
    scan()
    assert not [x for x in findings() if x["key"] == f["key"]]
    w.link_layer("library/base", d)  # the same problem again: a new episode
    scan()
    (again,) = [x for x in findings() if x["key"] == f["key"]]
    assert again["state"] == "reopened" and again["ack"] is None


def test_unack(damaged_world, scan, invoke, db_path, findings):
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--db", db_path, "--reason", "r")
    invoke("ack", "--kind", "dangling_tag", "--registry", R, "--db", db_path, "--reason", "r")
    assert scan().exit_code == 0
    out = invoke("unack", "--kind", "dangling_tag", "--registry", R, "--db", db_path).output
    assert "ended 1 acknowledgement" in out
    assert [f["kind"] for f in findings() if not f["ack"] and f["severity"] == "error"] == ["dangling_tag"]
    assert scan().exit_code == 1


def test_metrics_and_report_leave_acknowledged_findings_out_of_the_open_counts(damaged_world, base, invoke, db_path,
                                                                              tmp_path):
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--db", db_path, "--reason", "known <b>x</b>")
    prom = tmp_path / "m.prom"
    invoke("scan", base, "--db", db_path, "-q", "--metrics", prom, expect=1)
    text = prom.read_text()
    assert 'regindex_findings_acknowledged{registry="private",kind="orphan_layer_link",severity="error"} 3' in text
    assert 'regindex_findings_open{registry="private",kind="dangling_tag",severity="error"} 1' in text
    # every known kind has a series (issue 9): the acknowledged ones read 0 open
    assert 'regindex_findings_open{registry="private",kind="orphan_layer_link",severity="error"} 0' in text
    out = tmp_path / "r.html"
    invoke("report", "--db", db_path, "--out", out)
    html = out.read_text()
    assert re.search(r'data-count="open-errors">1<', html)
    assert 'data-count="acknowledged-errors">3<' in html
    assert html.count('data-ack="') == 3  # one mark per acknowledged card
    assert "known &lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


@pytest.mark.parametrize("args,message", [
    ([], "name the findings one way"),
    (["--kind", "orphan_layer_link"], "go together"),
    (["--kind", "nonsense", "--registry", R], "unknown kind"),
    (["--kind", "orphan_layer_link", "--registry", "nope"], "unknown registry"),
    (["--kind", "stale_upload", "--registry", R], "no open finding matches"),
    (["--kind", "orphan_layer_link", "--registry", R, "--until", "2001-01-01"], "not in the future"),
    (["--kind", "orphan_layer_link", "--registry", R, "--until", "soon"], "give a date"),
    (["--kind", "orphan_layer_link", "--registry", R, "--reason", " "], "must say why"),
    (["7b4ee8"], "'7b4ee8' is not a finding key"),  # the KEY argument: no mention of repair's --finding
])
def test_ack_errors_are_one_line(damaged_world, invoke, db_path, args, message):
    if "--reason" not in args:
        args = [*args, "--reason", "r"]
    r = invoke("ack", "--db", db_path, *args, expect=2)
    assert message in r.output and "Traceback" not in r.output


@pytest.mark.postgres
def test_ack_on_postgres(pg_url, base, invoke):
    CASES["shared_layer_gone"](build_world(base))
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    until = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--db", pg_url, "--reason", "pg", "--until", until)
    fs = json.loads(invoke("findings", "--db", pg_url, "--format", "json").output)
    assert {f["ack"]["reason"] for f in fs if f["severity"] == "error"} == {"pg"}
    invoke("scan", base, "--db", pg_url, "-q", expect=0)
    invoke("unack", "--kind", "orphan_layer_link", "--registry", R, "--db", pg_url)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
