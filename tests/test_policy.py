"""Severity policy from the config file: re-grades findings (next run, without re-opening them), names itself."""

from __future__ import annotations

import json

import pytest

from .test_checks import R, build_world


def write_config(path, rules: str) -> None:
    path.write_text(rules)


ATTESTATIONS = '''
[[severity]]
name = "attestations are not pulled"
kind = "orphan_index_child"
platform = "unknown/unknown"
severity = "warning"
'''


def test_policy_regrades_attestation_children_without_reopening(base, invoke, db_path, findings, tmp_path):
    world = build_world(base)
    atts = [c for c in world.api.children if c.platform and c.platform["os"] == "unknown"]
    for c in atts:
        world.w.remove_revision("team/app/api", c.digest)
    invoke("scan", base, "--db", db_path, "-q", expect=1)  # built-in: every orphan child is an error
    before = {f["key"]: f for f in findings()}
    assert {(f["severity"], f["policy"]) for f in before.values() if f["kind"] == "orphan_index_child"} == {
        ("error", None)}
    cfg = tmp_path / "regindex.toml"
    write_config(cfg, ATTESTATIONS)
    invoke("scan", base, "--db", db_path, "-q", "--config", cfg, expect=0)  # only warnings left: exit 0
    after = {f["key"]: f for f in findings()}
    assert set(after) == set(before)
    for k, f in after.items():
        if f["kind"] == "orphan_index_child":
            assert (f["severity"], f["policy"], f["state"]) == ("warning", "attestations are not pulled",
                                                               "persisting")
            assert f["first_seen_run"] == before[k]["first_seen_run"] == 1
    # policy removed: back to the built-in severity, still the same episodes
    invoke("scan", base, "--db", db_path, "-q", expect=1)
    assert {(f["severity"], f["policy"], f["state"]) for f in findings() if f["kind"] == "orphan_index_child"} == {
        ("error", None, "persisting")}
    # the report says which policy graded it
    invoke("scan", base, "--db", db_path, "-q", "--config", cfg, expect=0)
    out = tmp_path / "r.html"
    invoke("report", "--db", db_path, "--out", out)
    html = out.read_text()
    assert html.count('data-policy="attestations are not pulled"') == len(atts)


def test_first_match_wins_and_globs(base, invoke, db_path, findings, tmp_path):
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])  # orphan layer links in 3 repositories
    cfg = tmp_path / "c.toml"
    write_config(cfg, f'''
[[severity]]
kind = "orphan_layer_link"
repository = "team/*"
severity = "info"

[[severity]]
kind = "orphan_layer_link"
registry = "{R}"
severity = "warning"
''')
    invoke("scan", base, "--db", db_path, "-q", "--config", cfg, expect=0)
    got = {(f["repository"], f["severity"], f["policy"]) for f in findings("--kind", "orphan_layer_link")}
    assert got == {
        ("team/app/api", "info", "severity rule 1 (kind=orphan_layer_link, repository=team/*)"),
        ("team/app/web", "info", "severity rule 1 (kind=orphan_layer_link, repository=team/*)"),
        ("library/base", "warning", f"severity rule 2 (kind=orphan_layer_link, registry={R})"),
    }


@pytest.mark.parametrize("rules,message", [
    ('[[severity]]\nkind = "orphan_layer_link"\nseverity = "fatal"\n', "severity must be one of"),
    ('[[severity]]\nkind = "nonsense"\nseverity = "info"\n', "unknown kind"),
    ('[[severity]]\nkind = "orphan_layer_link"\nplatform = "linux/amd64"\nseverity = "info"\n', "platform applies"),
    ('[[severity]]\nseverity = "info"\ncolour = "red"\n', "unknown key(s) colour"),
    ('severity = "info"\n', "list of tables"),
])
def test_bad_policy_is_one_line(base, invoke, db_path, tmp_path, rules, message):
    build_world(base)
    cfg = tmp_path / "c.toml"
    write_config(cfg, rules)
    r = invoke("scan", base, "--db", db_path, "-q", "--config", cfg, expect=2)
    assert message in r.output and "Traceback" not in r.output


def test_options_of_the_run_record_the_policy(base, invoke, db_path, tmp_path):
    build_world(base)
    cfg = tmp_path / "c.toml"
    write_config(cfg, ATTESTATIONS)
    invoke("scan", base, "--db", db_path, "-q", "--config", cfg)
    runs = json.loads(invoke("sql", "SELECT options FROM runs", "--db", db_path, "--format", "json").output)
    assert runs[0]["options"]["severity_rules"][0]["platform"] == "unknown/unknown"  # sql emits JSON columns as JSON


@pytest.mark.postgres
def test_policy_regrade_on_postgres(pg_url, base, invoke, tmp_path):
    world = build_world(base)
    for c in world.api.children:
        if c.platform and c.platform["os"] == "unknown":
            world.w.remove_revision("team/app/api", c.digest)
    invoke("scan", base, "--db", pg_url, "-q", expect=1)
    cfg = tmp_path / "regindex.toml"
    write_config(cfg, ATTESTATIONS)
    invoke("scan", base, "--db", pg_url, "-q", "--config", cfg, expect=0)
    fs = json.loads(invoke("findings", "--db", pg_url, "--format", "json", "--kind", "orphan_index_child").output)
    assert {(f["severity"], f["policy"], f["first_seen_run"]) for f in fs} == {
        ("warning", "attestations are not pulled", 1)}
