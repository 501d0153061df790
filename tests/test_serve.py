"""`regindex serve`: the demo's database (built by real scans) in Datasette, read-only, documented, with the
post-mortem questions as canned queries that render rows in headless Chromium without console errors."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from regindex.cookbook import CANNED
from regindex.demo import run_demo
from regindex.serve import DOCS, HIDDEN, metadata, schema_columns

from .test_report import Page

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_demo(tmp_path_factory.mktemp("demo") / "regindex-demo", echo=lambda _m: None).db_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback only
        return resp.read()


@pytest.fixture(scope="module")
def server(demo_db: Path) -> Iterator[str]:
    pytest.importorskip("datasette")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "regindex", "serve", "--db", str(demo_db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base + "/-/versions.json")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out, err = proc.communicate(timeout=10)
                    pytest.fail(f"regindex serve did not start: {err[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def readme_descriptions() -> dict[str, str]:
    """table/view name -> the README's description cell (Tables and Views sections)."""
    readme = (REPO / "README.md").read_text()
    out: dict[str, str] = {}
    section = readme[readme.index("## Tables"):readme.index("### Ad-hoc SQL")]
    for line in section.splitlines():
        m = re.match(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| (.+) \|$", line)
        if m:
            for name in re.findall(r"`([a-z_]+)`", m.group(1)):
                out[name] = m.group(2)
    return out


def test_every_table_view_and_column_is_described_in_the_readmes_words(demo_db: Path) -> None:
    columns = schema_columns(demo_db)
    meta = metadata("regindex", columns)["databases"]["regindex"]["tables"]
    readme = readme_descriptions()
    for name, cols in columns.items():
        if name in HIDDEN:
            assert meta[name] == {"hidden": True}
            continue
        assert meta[name].get("description"), name
        if name in readme:
            assert meta[name]["description"] == readme[name], name  # the same words as the README
        missing = [c for c in cols if not meta[name]["columns"].get(c)]
        assert not missing, (name, missing)
    assert set(readme) <= set(DOCS) and set(readme) <= set(columns)
    assert meta["findings"]["facets"] == ["kind", "severity", "registry"]
    assert meta["links"]["facets"] == ["kind", "state"]
    assert "state" in meta["current_links"]["facets"] and "registry" in meta["current_links"]["facets"]


def test_serve_refuses_what_it_cannot_open(tmp_path: Path, invoke) -> None:
    r = invoke("serve", "--db", tmp_path / "none.db", expect=2)
    assert "no database" in r.output
    r = invoke("serve", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x", expect=2)
    assert "SQLite" in r.output


def query_url(base: str, name: str, params: dict[str, str], fmt: str = "") -> str:
    return f"{base}/regindex/{name}{fmt}?{urllib.parse.urlencode(params)}"


@pytest.mark.browser
def test_canned_queries_render_rows_in_chromium(server: str, demo_db: Path, tmp_path: Path) -> None:
    from .test_report_browser import console_lines, headless

    before = hashlib.sha256(demo_db.read_bytes()).hexdigest()
    meta = json.loads(get(server + "/-/metadata.json"))
    assert set(meta["databases"]["regindex"]["queries"]) == {c.name for c in CANNED}
    for canned in CANNED:
        data = json.loads(get(query_url(server, canned.name, canned.example, ".json") + "&_shape=array"))
        assert data, canned.name  # rows, as data
        dumped = headless(tmp_path, "--dump-dom", query_url(server, canned.name, canned.example))
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        assert console_lines(dumped.stderr) == [], canned.name
        dom = Page(dumped.stdout)
        table = dom.one("table", **{"class": "rows-and-columns"})
        rows = [r for r in dom.all("tr", within=table) if dom.all("td", within=r)]
        assert len(rows) == len(data), canned.name  # ... and as rows on the page
        assert canned.title in " ".join(dom.texts)
    # a table page with its facets and column descriptions
    dumped = headless(tmp_path, "--dump-dom", server + "/regindex/findings")
    assert dumped.returncode == 0 and console_lines(dumped.stderr) == []
    text_ = " ".join(Page(dumped.stdout).texts)
    assert "episodes of problems" in text_ and "orphan_layer_link" in text_
    facets = json.loads(get(server + "/regindex/links.json?_size=0"))["facet_results"]
    assert {"kind", "state"} <= set(facets)
    assert hashlib.sha256(demo_db.read_bytes()).hexdigest() == before  # read-only
