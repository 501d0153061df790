"""`regindex scan`'s policy called directly (no click): options settled from the command line, the config file
and the defaults; output targets; metrics and the report after a run; the exit code."""

from __future__ import annotations

import io
import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
from sqlalchemy import text

from regindex import config, db, job, rules
from regindex.errors import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, ConfigError, OutputError, StorageError
from regindex.logs import ScanLog
from regindex.policy import Rule
from regindex.scan import ScanOptions
from .worlds import build_world


def _run(base: Path, db_path: Path, log: ScanLog | None = None, **given) -> job.JobOutcome:
    return job.run(job.ScanRequest(base=base, db=str(db_path), **given), log or ScanLog("json", io.StringIO()))


def _statuses(db_path: Path) -> list[str]:
    with db.reader(str(db_path)) as conn:
        return list(conn.execute(text("SELECT status FROM runs ORDER BY id")).scalars())


@pytest.fixture
def orphans(base):
    world = build_world(base)
    world.w.remove_blob(world.base_img.layers[0])  # 3 orphan layer links (errors)
    return world


# -- settling: the command line, then the config file, then the defaults -----------------------------------------


def test_defaults_when_nothing_is_given(base):
    plan = job.settle(job.ScanRequest(base=base), config.Settings())
    assert plan.options == ScanOptions(base=base)
    assert plan.options.stale_upload_hours == rules.UPLOAD_PURGE_HOURS == 168.0
    assert plan.options.verify_content is False and plan.options.caches == frozenset()
    assert (plan.db, plan.fail_on, plan.report_dir, plan.metrics) == (None, "open", None, None)


FILE = config.Settings(db="file.db", caches=["hub"], stale_upload_hours=24.0, fail_on="never", verify_content=True,
                       report_dir=Path("/file/reports"), metrics=Path("/file/m.prom"),
                       severity=[Rule(kind="orphan_layer_link", severity="warning")])


def test_the_config_file_fills_what_the_command_line_did_not_give(base):
    plan = job.settle(job.ScanRequest(base=base), FILE)
    assert plan.options.stale_upload_hours == 24.0 and plan.options.verify_content is True
    assert plan.options.caches == {"hub"} and plan.options.severity_rules == tuple(FILE.severity)
    assert (plan.db, plan.fail_on, plan.report_dir, plan.metrics) == (
        "file.db", "never", Path("/file/reports"), Path("/file/m.prom"))


def test_the_command_line_wins_over_the_config_file(base):
    request = job.ScanRequest(base=base, db="flag.db", caches=("ghcr",), stale_upload_hours=2.0, fail_on="new",
                              verify_content=False, report_dir=Path("/flag/r"), metrics=Path("/flag/m.prom"),
                              allow_empty=True)
    plan = job.settle(request, FILE)
    assert plan.options.stale_upload_hours == 2.0
    assert plan.options.verify_content is False  # a flag given as False still wins over the file's True
    assert plan.options.caches == {"hub", "ghcr"}  # caches add up
    assert plan.options.allow_empty is True
    assert (plan.db, plan.fail_on, plan.report_dir, plan.metrics) == (
        "flag.db", "new", Path("/flag/r"), Path("/flag/m.prom"))


def test_every_request_field_reaches_the_scan_or_the_job():
    """settle copies by name: a field that matched neither would be dropped without a word."""
    receivers = {f.name for f in fields(ScanOptions)} | {f.name for f in fields(job.ScanPlan)}
    assert {f.name for f in fields(job.ScanRequest)} - {"config_path"} <= receivers
    settings = {f.name for f in fields(config.Settings)} - {"severity"}
    assert settings <= {f.name for f in fields(job.ScanRequest)}, "a config key the command line cannot override"


def test_the_config_file_is_read_through_the_request(base, tmp_path, db_path, orphans):
    cfg = tmp_path / "c.toml"
    cfg.write_text('fail_on = "never"\n')
    assert _run(base, db_path, config_path=str(cfg)).exit_code == EXIT_OK
    assert _run(base, db_path, config_path=str(cfg), fail_on="open").exit_code == EXIT_FINDINGS
    cfg.write_text('fail_on = "sometimes"\n')
    with pytest.raises(ConfigError, match="fail_on must be new, open or never"):
        _run(base, db_path, config_path=str(cfg))
    assert _statuses(db_path) == ["complete", "complete"]  # no metrics asked for: nothing recorded


# -- the exit code ------------------------------------------------------------------------------------------------


def test_exit_codes_of_a_healthy_and_a_damaged_registry(base, db_path):
    world = build_world(base)
    done = _run(base, db_path)
    assert (done.exit_code, done.scan.status, done.scan.open_errors) == (EXIT_OK, "complete", 0)
    world.w.remove_blob(world.base_img.layers[0])
    done = _run(base, db_path)
    assert (done.exit_code, done.scan.open_errors, done.scan.counts.new_errors) == (EXIT_FINDINGS, 3, 3)
    assert _run(base, db_path, fail_on="never").exit_code == EXIT_OK
    # new: only error findings that appeared in this run count; the three are persisting now
    assert _run(base, db_path, fail_on="new").exit_code == EXIT_OK
    assert _run(base, db_path, fail_on="open").exit_code == EXIT_FINDINGS


def test_fail_on_new_counts_the_run_that_found_them(base, db_path, orphans):
    assert _run(base, db_path, fail_on="new").exit_code == EXIT_FINDINGS


def test_a_registry_that_could_not_be_read_is_exit_2_whatever_fail_on_says(base, db_path, orphans):
    build_world(base, "other")
    v2 = base / "other/docker/registry/v2"
    (v2 / "blobs").rename(base / "moved")
    os.symlink(base / "moved", v2 / "blobs")
    stream = io.StringIO()
    done = _run(base, db_path, ScanLog("json", stream), fail_on="never")
    assert (done.exit_code, done.scan.status, sorted(done.scan.failures)) == (EXIT_ERROR, "partial", ["other"])
    recs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["failed_registries"] for r in recs if r["event"] == "summary"] == [["other"]]
    assert any(r["event"] == "error" and "other: blobs is a symlink" in r["message"] for r in recs)


def test_exit_code_rules():
    from regindex.scan import ScanOutcome

    outcome = ScanOutcome(run_id=1, status="complete", open_errors=2)
    assert [job.exit_code(outcome, m) for m in config.FAIL_ON] == [EXIT_OK, EXIT_FINDINGS, EXIT_OK]
    outcome.counts.new_errors = 1
    assert [job.exit_code(outcome, m) for m in config.FAIL_ON] == [EXIT_FINDINGS, EXIT_FINDINGS, EXIT_OK]
    outcome.failures["x"] = "unreadable"
    assert [job.exit_code(outcome, m) for m in config.FAIL_ON] == [EXIT_ERROR] * 3


# -- outputs: checked before the run, written after it ----------------------------------------------------------------


def test_an_output_that_cannot_be_written_stops_the_job_before_a_run_is_recorded(base, db_path, tmp_path, orphans):
    with pytest.raises(OutputError, match="--metrics: directory .* does not exist"):
        _run(base, db_path, metrics=tmp_path / "no/m.prom")
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="--report: .* is not a directory"):
        _run(base, db_path, report_dir=tmp_path / "afile")
    assert not db_path.exists()


def test_metrics_and_report_after_a_run(base, db_path, tmp_path, orphans):
    prom, reports = tmp_path / "m.prom", tmp_path / "reports"
    reports.mkdir()
    done = _run(base, db_path, metrics=prom, report_dir=reports)
    assert done.report == reports / done.report.name and done.report.is_file()
    assert f"-run{done.scan.run_id}.html" in done.report.name and (reports / "index.html").is_file()
    assert "regindex_last_run_success 1" in prom.read_text()


def test_a_failed_run_still_writes_the_metrics(tmp_path, db_path, base, orphans):
    prom = tmp_path / "m.prom"
    _run(base, db_path)
    with pytest.raises(StorageError, match="does not exist") as caught:
        _run(tmp_path / "nowhere", db_path, metrics=prom)
    assert caught.value.run_id == 2 and _statuses(db_path) == ["complete", "failed"]
    assert "regindex_last_run_success 0" in prom.read_text() and "regindex_last_run_id 2" in prom.read_text()


def test_a_bad_config_file_is_recorded_when_metrics_and_a_database_are_named(base, tmp_path, db_path):
    cfg, prom = tmp_path / "c.toml", tmp_path / "m.prom"
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown key"):
        _run(base, db_path, config_path=str(cfg), metrics=prom)
    assert _statuses(db_path) == ["failed"] and "regindex_last_run_success 0" in prom.read_text()
