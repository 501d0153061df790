"""`findings`, `runs` and `history` as engineers use them after an incident: filters, states relative to a chosen
run, a table that fits a terminal, the stable key in JSON, UTC timestamps, open errors, tags."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from regindex.history import SEVERITY_ORDER

from .test_checks import build_world

LONG_REPO = "platform/observability/collectors/very-long-repository-name-for-the-table"
LONG_TAG = "release-2026.11.30-build.123456789-with-a-long-suffix"


@pytest.fixture
def story(base, scan):
    """Run 1: a dangling tag and an orphan layer; run 2: the tag repaired, a long-named repository breaks;
    run 3: failed (a missing root); run 4: unchanged."""
    world = build_world(base)
    w = world.w
    w.remove_blob(world.base_img.layers[0])
    w.remove_tag_current("library/base", "latest")
    w.put_blob(b"nobody links this")  # info: unreferenced
    w.upload("team/app/web", "0b5e-old", datetime.now(timezone.utc) - timedelta(hours=200))  # warning
    assert scan().exit_code == 1
    w.remove_tag("library/base", "latest")
    img = w.push_image(LONG_REPO, world.rng)
    w.tag(LONG_REPO, LONG_TAG, img.digest)
    w.remove_tag_current(LONG_REPO, LONG_TAG)
    assert scan().exit_code == 1
    return world


def test_json_carries_the_key_and_findings_sort_by_severity_registry_repository(story, findings):
    fs = findings("--state", "all")
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["key"]) for f in fs)
    assert len({f["key"] for f in fs}) == len(fs)
    order = [(SEVERITY_ORDER.index(f["severity"]), f["registry"], f["repository"] or "") for f in fs]
    assert order == sorted(order) and {f["severity"] for f in fs} == {"error", "warning", "info"}


def test_filters(story, findings):
    every = findings("--state", "all")
    team = findings("--repository", "team/*")
    assert team and {f["repository"] for f in team} == {r for r in (f["repository"] for f in findings())
                                                       if r and r.startswith("team/")}
    assert {f["repository"] for f in findings("--repository", "*/ap?")} == {"team/app/api"}
    assert findings("--repository", "team/%") == []  # LIKE's wildcards are plain characters in a glob
    assert [f["kind"] for f in findings("--tag", LONG_TAG)] == ["dangling_tag"]
    some = next(f for f in every if f["digest"])
    hex_ = some["digest"].split(":")[1]
    by_prefix = findings("--state", "all", "--digest", hex_[:10])
    assert some["key"] in {f["key"] for f in by_prefix}
    assert all(hex_[:10] in (f["digest"] or "") + (f["parent_digest"] or "") for f in by_prefix)
    assert findings("--state", "all", "--digest", "sha256:" + hex_[:10]) == by_prefix
    assert findings("--state", "all", "--digest", "sha512:" + hex_[:10]) == []
    assert [f["key"] for f in findings("--state", "all", "--limit", "3")] == [f["key"] for f in every[:3]]


def test_bad_filters_are_one_line(story, invoke, db_path):
    for args, message in ((["--digest", "sha256:xyz"], "not a digest"), (["--run", "99"], "no such run"),
                          (["--since", "last tuesday"], "expected a date"), (["--limit", "0"], "--limit")):
        r = invoke("findings", "--db", db_path, *args, expect=2)
        assert message in r.output and "Traceback" not in r.output


def test_states_relative_to_a_run(story, base, invoke, db_path, findings, monkeypatch):
    from regindex import checks

    latest = findings("--state", "all")
    tag_fixed = next(f for f in latest if f["kind"] == "dangling_tag" and f["repository"] == "library/base")
    assert tag_fixed["resolved_run"] == 2
    assert [f["severity"] for f in findings("--state", "all") if f["key"] == tag_fixed["key"]] == ["error"]
    # resolved = resolved in the selected run; resolved-ever = up to it
    assert [f["key"] for f in findings("--state", "resolved")] == [tag_fixed["key"]]
    with monkeypatch.context() as m:
        m.setattr(checks, "run_checks", lambda *a, **k: 1 / 0)
        invoke("scan", base, "--db", db_path, "-q", expect=2)  # run 3 fails
    invoke("scan", base, "--db", db_path, "-q", expect=1)  # run 4 changes nothing
    assert findings("--state", "resolved") == []  # the latest run resolved nothing ...
    assert [f["key"] for f in findings("--state", "resolved-ever")] == [tag_fixed["key"]]  # ... run 2 did
    assert [f["key"] for f in findings("--state", "resolved", "--run", "2")] == [tag_fixed["key"]]
    # as of run 1 the tag finding was open and new; the long repository did not exist yet
    at1 = findings("--run", "1")
    assert tag_fixed["key"] in {f["key"] for f in at1} and {f["state"] for f in at1} == {"new"}
    assert all(f["first_seen_run"] == 1 for f in at1)
    assert findings("--run", "1", "--state", "resolved") == []
    at2_new = findings("--run", "2", "--state", "new")
    assert {f["repository"] for f in at2_new if f["severity"] == "error"} == {LONG_REPO}
    assert {f["state"] for f in findings("--run", "2", "--state", "persisting")} == {"persisting"}
    r = invoke("findings", "--db", db_path, "--run", "3", expect=2)
    assert "run 3" in r.output and "failed" in r.output


def test_since_a_date_or_a_duration(story, db_path, findings):
    assert findings("--since", "1d") == findings()
    assert findings("--since", "2999-01-01") == []
    with sqlite3.connect(db_path) as c:
        c.execute("UPDATE runs SET started_at = '2026-01-01 03:30:00.000000' WHERE id = 1")
    since = findings("--since", "2026-06-01")
    assert since and all(f["first_seen_run"] == 2 for f in since)
    assert findings("--since", "2026-01-01T03:30Z") == findings()
    assert findings("--since", "2026-01-01T03:31:00+00:00") == since


def test_table_fits_120_columns_with_short_digests_and_hints_with_v(story, invoke, db_path, findings):
    for state in ("open", "all", "resolved-ever"):
        out = invoke("findings", "--db", db_path, "--state", state).output
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 120, state
    out = invoke("findings", "--db", db_path, "--state", "all").output
    assert lines[0].split()[:3] == ["severity", "state", "kind"]
    full = [f for f in findings("--state", "all") if f["digest"]]
    assert not any(f["digest"] in out for f in full)  # short forms only ...
    assert all(f["digest"].split(":")[1][:12] in out for f in full)
    verbose = invoke("findings", "--db", db_path, "--state", "all", "-v").output
    assert all(f["digest"] in verbose and f["key"] in verbose for f in full)  # ... full ones with -v
    assert "    hint: " in verbose and "team/app/api" in verbose
    assert max(len(line) for line in verbose.splitlines()) <= 120  # hints wrap; a 71-character digest fits


def test_runs_show_utc_times_and_open_errors(story, base, invoke, db_path, findings):
    r = invoke("scan", base, "--db", db_path, expect=1)
    summary_errors = int(re.search(r"(\d+) open errors", r.output).group(1))
    runs = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", x["started_at"]) for x in runs)
    assert runs[0]["open_errors"] == summary_errors == len(findings("--severity", "error"))
    assert runs[0]["findings_open"] == len(findings())
    assert runs[0]["open_errors"] < runs[0]["findings_open"]  # the info findings are not errors
    assert runs[-1]["open_errors"] == len(findings("--run", "1", "--severity", "error"))
    table = invoke("runs", "--db", db_path).output.splitlines()
    assert "open_errors" in table[0].split() and table[2].split()[1].endswith("Z")


def test_history_of_a_malformed_digest_says_so(story, invoke, db_path):
    r = invoke("history", "sha256:zz", "--db", db_path, expect=2)
    assert r.output.strip() == "Error: not a digest or digest prefix: 'sha256:zz'"  # not "unknown tag sha256:zz"


def test_history_of_a_tag_and_as_json(story, invoke, db_path):
    text_ = invoke("history", f"{LONG_REPO}:{LONG_TAG}", "--db", db_path).output
    assert text_.startswith(f"{LONG_REPO}:{LONG_TAG} → sha256:") and "dangling_tag" in text_
    assert "Tag episodes:" in text_
    data = json.loads(invoke("history", f"{LONG_REPO}:{LONG_TAG}", "--db", db_path, "--format", "json").output)
    assert data["tag"] == f"{LONG_REPO}:{LONG_TAG}" and data["digest"].startswith("sha256:")
    assert [f["kind"] for f in data["findings"]] == ["dangling_tag"]
    assert data["findings"][0]["timeline"][0]["event"] == "open" and data["tag_links"]
    by_digest = json.loads(invoke("history", data["digest"], "--db", db_path, "--format", "json").output)
    assert by_digest["digest"] == data["digest"] and by_digest["tag"] is None
    r = invoke("history", "library/nothing:here", "--db", db_path, expect=2)
    assert r.output.startswith("Error: unknown tag library/nothing:here")


@pytest.mark.postgres
def test_postgres_findings_runs_history(pg_url, base, invoke):  # noqa: F811
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])
    world.w.remove_tag_current("library/base", "latest")
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    world.w.remove_tag("library/base", "latest")
    invoke("scan", base, "--db", pg_url, "-q", expect=1)

    def fs(*args: str) -> list[dict]:
        return json.loads(invoke("findings", "--db", pg_url, "--format", "json", *args).output)

    assert [f["kind"] for f in fs("--state", "resolved")] == ["dangling_tag"]
    assert fs("--run", "1", "--state", "resolved") == []
    assert {f["repository"] for f in fs("--repository", "team/*")} == {"team/app/api", "team/app/web"}
    assert fs("--since", "1d") == fs() and fs("--since", "2999-01-01") == []
    some = next(f for f in fs() if f["digest"])
    assert some["key"] in {f["key"] for f in fs("--digest", some["digest"][:19])}
    runs = json.loads(invoke("runs", "--db", pg_url, "--format", "json").output)
    assert runs[0]["started_at"].endswith("Z") and runs[0]["open_errors"] == len(fs("--severity", "error"))
    data = json.loads(invoke("history", "library/base:latest", "--db", pg_url, "--format", "json").output)
    assert [f["kind"] for f in data["findings"] if f["tag"] == "latest"] == ["dangling_tag"]


def test_runs_keep_the_open_errors_each_summary_printed(story, base, invoke, db_path, findings, tmp_path):
    """A later policy re-grade or acknowledgement does not rewrite what an earlier run's summary said."""
    printed = []
    for _ in range(2):
        r = invoke("scan", base, "--db", db_path, expect=1)
        printed.append(int(re.search(r"(\d+) open errors", r.output).group(1)))
    err = next(f for f in findings("--severity", "error") if f["kind"] == "dangling_tag")
    invoke("ack", err["key"], "--db", db_path, "--reason", "known")
    cfg = tmp_path / "policy.toml"
    cfg.write_text('[[severity]]\nkind = "orphan_layer_link"\nseverity = "info"\n')
    r = invoke("scan", base, "--db", db_path, "--config", cfg, expect=None)
    printed.append(int(re.search(r"(\d+) open errors", r.output).group(1)))
    assert printed[2] < printed[1]  # the ack and the re-grade took effect ...
    runs = json.loads(invoke("runs", "--db", db_path, "--format", "json").output)
    by_id = {x["id"]: x["open_errors"] for x in runs}
    latest = max(by_id)
    # ... and each run still shows what its own summary line printed
    assert [by_id[latest - 2], by_id[latest - 1], by_id[latest]] == printed


def test_tag_also_finds_what_breaks_the_pull_of_that_tag(base, scan, findings):
    """`findings --tag v2` after an API DELETE of a child of the v2 index: the orphan child breaks that pull."""
    world = build_world(base)
    child = world.web.children[1].digest
    world.w.delete_revision_link("team/app/web", child)
    world.w.remove_tag_current("library/base", "latest")
    scan()
    (f,) = findings("--tag", "v2")
    assert (f["kind"], f["repository"], f["digest"]) == ("orphan_index_child", "team/app/web", child)
    assert [x["kind"] for x in findings("--tag", "latest")] == ["dangling_tag"]  # its own tag, as before
    assert len(findings("--tag", "v2", "--tag", "latest")) == 2
    assert len(findings("--tag", "v2", "--tag", "latest", "--limit", "1")) == 1
    assert findings("--tag", "v1") == []
