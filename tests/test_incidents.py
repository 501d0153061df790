"""Incidents: findings that share a cause (registry, run, inventory change) are one thing to act on."""

from __future__ import annotations

import json
import re

import pytest

from .test_checks import CASES, R, build_world


def incidents(invoke, db_path, *extra):
    return json.loads(invoke("incidents", "--db", db_path, "--format", "json", *extra).output)


def test_one_gc_run_is_one_incident_with_its_tags_and_command(base, scan, invoke, db_path, findings):
    world = build_world(base)
    scan()  # a clean first night
    CASES["gc_delete_untagged"](world)
    CASES["tag_without_current_link"](world)  # another cause in the same run
    assert scan().exit_code == 1
    got = incidents(invoke, db_path)
    gc = got[0]
    errors = [f for f in findings() if f["severity"] == "error"]
    gc_keys = {f["key"] for f in errors if f["kind"] in ("orphan_index_child", "orphan_layer_link")}
    assert set(gc["finding_keys"]) == gc_keys and gc["errors"] == len(gc_keys)
    assert gc["run"] == 2 and gc["registry"] == R and gc["family"] == "gc"
    assert gc["kinds"] == {"orphan_index_child": 6, "orphan_layer_link": 12}
    assert "6 revision links of index children removed, blob data kept" in gc["title"]
    assert "12 _layers links whose blob data was removed" in gc["title"]
    assert "garbage-collect --delete-untagged" in gc["title"]
    assert re.fullmatch(r"run 2 saw \d+ blob data directories, 6 revision links disappear", gc["cause"]), gc["cause"]
    assert gc["tags"] == ["team/app/api:v1", "team/app/web:v2"]
    assert gc["command"] == f"regindex repair --incident {gc['id']} --apply"
    tag = next(i for i in got if i["kinds"] == {"dangling_tag": 1})
    assert tag["errors"] == 1 and tag["tags"] == ["library/base:latest"] and tag["command"] is None
    assert got.index(gc) < got.index(tag)  # most errors first
    # every open finding is in exactly one incident
    keys = [k for i in got for k in i["finding_keys"]]
    assert sorted(keys) == sorted(f["key"] for f in findings())
    table = invoke("incidents", "--db", db_path).output
    assert gc["id"] in table.splitlines()[2]


def test_first_scan_damage_is_said_to_predate_regindex_and_ids_are_stable(base, scan, invoke, db_path):
    world = build_world(base)
    CASES["shared_layer_gone"](world)
    scan()
    first = incidents(invoke, db_path)
    (layer,) = [i for i in first if i["errors"]]
    assert "found by the first scan" in layer["cause"] and layer["run"] == 1
    assert "3 _layers links whose blob data was removed in 3 repositories" in layer["title"]
    scan()
    assert [i["id"] for i in incidents(invoke, db_path)] == [i["id"] for i in first]


def test_repair_and_ack_by_incident(base, scan, invoke, db_path, findings):
    world = build_world(base)
    scan()
    CASES["gc_delete_untagged"](world)
    CASES["shared_layer_gone"](world)
    scan()
    gc = incidents(invoke, db_path)[0]
    out = invoke("repair", "--db", db_path, "--incident", gc["id"]).output
    assert f"{gc['kinds']['orphan_layer_link']} to do, 0 skipped, {gc['kinds']['orphan_index_child']} refused" in out
    r = invoke("repair", "--db", db_path, "--incident", "i9-000000", expect=2)
    assert "no open incident" in r.output
    invoke("ack", "--incident", gc["id"], "--db", db_path, "--reason", "GC of the 1st, rebuild planned")
    acked = {f["key"] for f in findings() if f["ack"]}
    assert acked == set(gc["finding_keys"])
    again = next(i for i in incidents(invoke, db_path) if i["id"] == gc["id"])
    assert again["errors"] == 0 and again["acknowledged"] == len(gc["finding_keys"])


def test_report_opens_with_incidents_and_folds_their_cards(base, scan, invoke, db_path, tmp_path):
    world = build_world(base)
    scan()
    CASES["gc_delete_untagged"](world)
    scan()
    out = tmp_path / "r.html"
    invoke("report", "--db", db_path, "--out", out)
    html = out.read_text()
    first = html.index('id="first"')
    assert first < html.index('id="summary"')
    gc = incidents(invoke, db_path)[0]
    block = html[html.index(f'data-incident="{gc["id"]}"'):]
    block = block[:block.index("</ol><!-- /incidents -->")].split('<li class="incident')[0]
    assert block.count('class="finding ') == 18 and "<details" in block and "<details open" not in block
    assert f"regindex repair --incident {gc['id']} --apply" in block
    new = html[html.index('<section class="block" id="new"'):html.index('<section class="block" id="persisting"')]
    assert 'class="finding ' not in new  # folded under the incident, not repeated
    assert 'data-under-incidents="24"' in new  # 18 under the GC incident, 6 unreferenced blobs under theirs
    assert html.count('data-finding="') == len(set(re.findall(r'data-finding="(\d+)"', html)))


def test_report_csv_names_each_open_finding_s_incident(base, scan, invoke, db_path, tmp_path):
    import csv

    world = build_world(base)
    scan()
    CASES["gc_delete_untagged"](world)
    scan()
    invoke("ack", "--kind", "orphan_layer_link", "--registry", R, "--repository", "team/app/web", "--db", db_path,
           "--reason", "known")
    out = tmp_path / "r.html"
    invoke("report", "--db", db_path, "--out", out)
    import io

    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text(encoding="utf-8"))))
    by_incident = {i["id"]: set(i["finding_keys"]) for i in incidents(invoke, db_path)}
    open_rows = [r for r in rows if r["state"] != "resolved"]
    assert open_rows and all(r["incident"] in by_incident for r in open_rows)
    gc = next(i for i in incidents(invoke, db_path) if i["family"] == "gc")
    assert sum(1 for r in open_rows if r["incident"] == gc["id"]) == gc["findings"] == 18
    assert {r["acknowledged"].split(":")[1].strip() for r in open_rows
            if r["kind"] == "orphan_layer_link" and r["repository"] == "team/app/web"} == {"known"}
    assert all(r["policy"] == "" for r in rows)


@pytest.mark.postgres
def test_incidents_on_postgres_match_sqlite(pg_url, base, invoke, tmp_path):
    world = build_world(base)
    invoke("scan", base, "--db", pg_url, "-q")
    lite = tmp_path / "lite.db"
    invoke("scan", base, "--db", lite, "-q")
    CASES["gc_delete_untagged"](world)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    invoke("scan", base, "--db", lite, "-q", expect=1)
    pg, sq = incidents(invoke, pg_url), incidents(invoke, lite)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "started_at"} for r in rows]  # noqa: E731
    assert strip(pg) == strip(sq) and pg[0]["errors"] == 18
    out = tmp_path / "r.html"
    invoke("report", "--db", pg_url, "--out", out)
    assert f'data-incident="{pg[0]["id"]}"' in out.read_text()


def test_an_unknown_registry_is_one_line_not_an_empty_list(base, scan, invoke, db_path):
    world = build_world(base)
    CASES["shared_layer_gone"](world)
    scan()
    assert incidents(invoke, db_path)  # there are incidents ...
    r = invoke("incidents", "--db", db_path, "--registry", "privat", expect=2)  # ... but not in a typo
    assert r.output.strip().splitlines() == ["Error: unknown registry 'privat'; registries: private"]
