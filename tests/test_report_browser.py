"""The report in a real browser: Debian's headless Chromium renders it without console errors, and its charts
have one mark per run and series.

Skipped when Chromium is missing, unless REGINDEX_REQUIRE_BROWSER=1 (CI). With REGINDEX_UPDATE_SCREENSHOT=1 the
screenshot of a longer, realistic history is also written to docs/report.png for the README.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from regindex.sample import Index, StorageWriter

from .test_report import Page, Story, build_story, cli_run

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        if os.environ.get("REGINDEX_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (REGINDEX_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium is not installed")
    return found


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def console_lines(stderr: str) -> list[str]:
    """What the page logged: Chromium writes console messages as ``...:CONSOLE(line)] "message"``."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return build_story(tmp_path_factory.mktemp("story"))


def test_report_renders_in_chromium_with_one_mark_per_run(story: Story, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert cli_run("report", "--db", story.db, "--out", out).exit_code == 0
    dumped = headless(tmp_path, "--dump-dom", out.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert console_lines(dumped.stderr) == []
    dom = Page(dumped.stdout)  # the DOM after the browser parsed and laid it out
    assert "Report for run 7" in " ".join(dom.texts)
    finished = [r for (r,) in story.sql("SELECT id FROM runs WHERE status IN ('complete', 'partial') ORDER BY id")]
    for chart_id in ("trend-open", "trend-flow"):
        figure = dom.one("figure", id=chart_id)
        marks = [m for m in dom.all("rect", within=figure) if "data-run" in m["attrs"]]
        series = sorted({m["attrs"]["data-series"] for m in marks})
        assert series, chart_id
        for s in series:
            assert [int(m["attrs"]["data-run"]) for m in marks if m["attrs"]["data-series"] == s] == finished
    # hostile names stayed text in the browser's DOM too
    assert not dom.all("script") and not dom.all("img")

    shot = tmp_path / "report.png"
    taken = headless(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", out.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert console_lines(taken.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_index_renders_in_chromium(story: Story, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    base = tmp_path / "storage"
    StorageWriter(base / "main").push_image("team/app", random.Random(3))
    for _ in range(2):
        assert cli_run("scan", base, "--db", tmp_path / "r.db", "-q", "--report", reports).exit_code == 0
    dumped = headless(tmp_path, "--dump-dom", (reports / "index.html").as_uri())
    assert dumped.returncode == 0 and console_lines(dumped.stderr) == []
    dom = Page(dumped.stdout)
    assert [r["attrs"]["data-report"] for r in dom.all("tr") if "data-report" in r["attrs"]] == ["2", "1"]


# ---------------------------------------------------------------------------------------------
# The README's screenshot: a platform team's registries over two weeks of nights.


def build_showcase(root: Path) -> Path:
    """Relative to the current directory, so the page shows ``storage``, not a temporary path."""
    rng = random.Random(2026)
    base, db = Path("storage"), root / "regindex.db"
    private, hub = StorageWriter(base / "private"), StorageWriter(base / "dockerhub")
    shared = rng.randbytes(4096)
    images: dict[str, Index] = {}
    for repo in ("team/app/api", "team/app/web", "team/app/worker", "platform/ingress", "platform/metrics"):
        images[repo] = private.push_index(repo, rng, shared_layers=[shared])
        private.tag(repo, "v1", images[repo].digest)
    nginx = hub.push_index("library/nginx", rng)
    hub.tag("library/nginx", "1.27", nginx.digest)
    api, web, worker, ingress = (images[r].children for r in ("team/app/api", "team/app/web", "team/app/worker",
                                                                "platform/ingress"))
    nights: list[Callable[[], None]] = [
        lambda: None,
        lambda: private.remove_revision("team/app/api", api[0].digest),
        lambda: private.remove_blob(web[0].layers[-1]),
        lambda: None,
        lambda: private.link_revision("team/app/api", api[0].digest),
        lambda: private.write_layer_link("platform/ingress", ingress[0].config, b"sha256:\n"),
        lambda: private.remove_tag_current("platform/metrics", "v1"),
        lambda: None,
        lambda: private.remove_revision("team/app/worker", worker[2].digest),
        lambda: private.link_layer("platform/ingress", ingress[0].config),
        lambda: None,
        lambda: private.remove_blob(ingress[2].layers[-1]),
        lambda: private.remove_revision("team/app/api", api[0].digest),
    ]
    for night in nights:
        night()
        cli_run("scan", base, "--db", db, "-q", "--cache", "dockerhub")
    # nightly at 03:30 UTC, as cron would have run them (the scans above ran seconds apart)
    import sqlite3

    with sqlite3.connect(db) as c:
        for (run,) in c.execute("SELECT id FROM runs").fetchall():
            c.execute("UPDATE runs SET started_at = datetime('2026-11-17 03:30:00', ? || ' days'), "
                      "finished_at = datetime('2026-11-17 03:30:04', ? || ' days') WHERE id = ?", (run, run, run))
    return db


@pytest.mark.skipif(os.environ.get("REGINDEX_UPDATE_SCREENSHOT") != "1", reason="set REGINDEX_UPDATE_SCREENSHOT=1")
def test_update_readme_screenshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = build_showcase(tmp_path)
    out = tmp_path / "report.html"
    assert cli_run("report", "--db", db, "--out", out).exit_code == 0
    shot = tmp_path / "report.png"
    taken = headless(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", out.as_uri())
    assert taken.returncode == 0 and console_lines(taken.stderr) == []
    (REPO / "docs").mkdir(exist_ok=True)
    shutil.copyfile(shot, REPO / "docs" / "report.png")
