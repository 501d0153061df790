"""The HTML report, rendered from databases built by real scans of generated storage trees.

The numbers on the page are checked against SQL on the same database (and the trend against the
``finding_trend`` view), never against the report's own code.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from regindex import report
from regindex.cli import cli
from regindex.sample import StorageWriter

# Storage names are hostile: a registry directory, a repository and tags that try to become markup.
EVIL_REGISTRY = "evil\"'<script>alert(1)"
EVIL_REPO = 'team/<script>alert("repo")'
EVIL_TAG = 'v1"><img src=x onerror=alert(1)>'
ODD_TAG = "ταγ\u202egnp.exe"  # Greek letters and a right-to-left override


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def cli_run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@dataclass
class Story:
    """Seven scans of two registries, with damage and repairs between them."""

    root: Path
    base: Path
    db: Path
    digests: dict[str, str] = field(default_factory=dict)
    exits: list[int] = field(default_factory=list)

    def scan(self, base: Path | None = None, *extra: Any) -> Result:
        result = cli_run("scan", base or self.base, "--db", self.db, "-q", *extra)
        self.exits.append(result.exit_code)
        return result

    def sql(self, query: str, **params: Any) -> list[Any]:
        engine = create_engine(f"sqlite:///{self.db}")
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query), params))
        finally:
            engine.dispose()

    def scalar(self, query: str, **params: Any) -> Any:
        return self.sql(query, **params)[0][0]

    @property
    def latest(self) -> int:
        return int(self.scalar("SELECT MAX(id) FROM runs WHERE status IN ('complete', 'partial')"))


def build_story(root: Path) -> Story:
    story = Story(root, root / "storage", root / "regindex.db")
    rng = random.Random(4)
    main = StorageWriter(story.base / "main")
    evil = StorageWriter(story.base / EVIL_REGISTRY)
    app = main.push_index("team/app", rng)
    main.tag("team/app", "v1", app.digest)
    web = main.push_image("team/web", rng)
    main.tag("team/web", "latest", web.digest)
    lib = main.push_image("library/base", rng)
    main.tag("library/base", "3.19", lib.digest)
    hostile = evil.push_image(EVIL_REPO, rng)
    evil.tag(EVIL_REPO, EVIL_TAG, hostile.digest)
    evil.tag(EVIL_REPO, ODD_TAG, hostile.digest)
    story.digests.update(child=app.children[0].digest, index=app.digest, web_layer=web.layers[0],
                         lib_layer=lib.layers[0], hostile_layer=hostile.layers[0])
    story.scan()  # run 1

    # night 2: an API DELETE-like loss of a child's revision, a lost layer, a garbage link, a half-deleted tag
    main.remove_revision("team/app", app.children[0].digest)
    main.remove_blob(web.layers[0])
    main.write_layer_link("library/base", lib.layers[0], b"garbage\n")
    evil.remove_tag_current(EVIL_REPO, EVIL_TAG)
    evil.remove_blob(hostile.layers[0])
    story.scan()  # run 2

    # night 3: two repairs
    main.link_revision("team/app", app.children[0].digest)
    main.link_layer("library/base", lib.layers[0])
    story.scan()  # run 3

    # night 4: the hostile registry looks emptied (a failed mount): a partial run that resolves nothing there
    v2 = story.base / EVIL_REGISTRY / "docker" / "registry" / "v2"
    aside = root / "aside"
    shutil.move(v2, aside)
    (v2 / "blobs").mkdir(parents=True)
    (v2 / "repositories").mkdir()
    story.scan()  # run 4: partial
    shutil.rmtree(v2)
    shutil.move(aside, v2)

    # night 5: the child's revision goes again (the problem is re-opened)
    main.remove_revision("team/app", app.children[0].digest)
    story.scan()  # run 5
    story.scan(root / "no-such-storage")  # run 6: failed
    story.scan()  # run 7: a quiet night
    return story


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return build_story(tmp_path_factory.mktemp("story"))


@pytest.fixture(scope="module")
def rendered(story: Story, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("out") / "report.html"
    result = cli_run("report", "--db", story.db, "--out", out)
    assert result.exit_code == 0, result.output
    return out, out.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# A small DOM over html.parser: elements with their attributes, ancestors and text.

VOID = {"meta", "link", "br", "hr", "img", "input", "line", "circle", "rect", "path"}


class Page(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = {"tag": tag, "attrs": dict(attrs), "text": [], "up": list(self.stack)}
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": [], "up": list(self.stack)})

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        for el in self.stack:
            el["text"].append(data)

    def all(self, tag: str | None = None, within: dict[str, Any] | None = None, **attrs: str) -> list[dict[str, Any]]:
        out = []
        for el in self.elements:
            if tag and el["tag"] != tag:
                continue
            if within is not None and not any(u is within for u in el["up"]):
                continue
            if all(el["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(el)
        return out

    def one(self, tag: str | None = None, within: dict[str, Any] | None = None, **attrs: str) -> dict[str, Any]:
        found = self.all(tag, within, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


def text_of(el: dict[str, Any]) -> str:
    return " ".join("".join(el["text"]).split())


def number(el: dict[str, Any]) -> int:
    return int(text_of(el).replace(",", ""))


@pytest.fixture(scope="module")
def page(rendered: tuple[Path, str]) -> Page:
    return Page(rendered[1])


# ---------------------------------------------------------------------------------------------


def test_story_ran_as_planned(story: Story) -> None:
    statuses = [s for (s,) in story.sql("SELECT status FROM runs ORDER BY id")]
    assert statuses == ["complete", "complete", "complete", "partial", "complete", "failed", "complete"]
    assert story.exits[3] == 2 and story.exits[5] == 2


def test_summary_numbers_equal_the_database(story: Story, page: Page) -> None:
    latest = story.latest
    q = "SELECT COUNT(*) FROM findings WHERE "
    expected = {
        "open-errors": story.scalar(q + "resolved_run IS NULL AND severity = 'error'"),
        "open-warnings": story.scalar(q + "resolved_run IS NULL AND severity = 'warning'"),
        "open-info": story.scalar(q + "resolved_run IS NULL AND severity = 'info'"),
        "open": story.scalar(q + "resolved_run IS NULL"),
        "new": story.scalar(q + "resolved_run IS NULL AND first_run = :r", r=latest),
        "reopened": story.scalar(q + "resolved_run IS NULL AND first_run = :r AND episode > 1", r=latest),
        "persisting": story.scalar(q + "resolved_run IS NULL AND first_run <> :r", r=latest),
        "resolved": story.scalar(q + "resolved_run = :r", r=latest),
    }
    tiles = page.one("div", **{"class": "tiles"})
    shown = {k: number(page.one(data_count=k, within=tiles)) for k in expected}
    assert shown == expected
    assert expected["open-errors"] > 0 and expected["persisting"] > 0  # the story is not trivial


def test_by_kind_and_by_registry_equal_the_database(story: Story, page: Page) -> None:
    latest = story.latest
    rows = story.sql(
        "SELECT kind, severity, registry, first_run, resolved_run FROM findings "
        "WHERE resolved_run IS NULL OR resolved_run = :r", r=latest)
    kinds = {k for k, *_ in rows}
    for kind in kinds:
        tr = page.one("tr", data_kind=kind)
        cells = {c["attrs"]["data-count"]: number(c) for c in page.all("td", within=tr) if "data-count" in c["attrs"]}
        assert cells == {
            "open-error": sum(1 for k, s, _g, _f, res in rows if k == kind and s == "error" and res is None),
            "open-warning": sum(1 for k, s, _g, _f, res in rows if k == kind and s == "warning" and res is None),
            "open-info": sum(1 for k, s, _g, _f, res in rows if k == kind and s == "info" and res is None),
            "new": sum(1 for k, _s, _g, f, res in rows if k == kind and res is None and f == latest),
            "persisting": sum(1 for k, _s, _g, f, res in rows if k == kind and res is None and f != latest),
            "resolved": sum(1 for k, *_rest, res in rows if k == kind and res == latest),
        }, kind
    assert len([tr for tr in page.all("tr") if "data-kind" in tr["attrs"]]) == len(kinds)
    for (name,) in story.sql("SELECT name FROM registries"):
        tr = page.one("tr", data_registry=name)
        cells = {c["attrs"]["data-count"]: number(c) for c in page.all("td", within=tr) if "data-count" in c["attrs"]}
        mine = [r for r in rows if r[2] == name]
        assert cells == {
            "open-error": sum(1 for _k, s, _g, _f, res in mine if s == "error" and res is None),
            "open": sum(1 for *_rest, res in mine if res is None),
            "new": sum(1 for *_x, f, res in mine if res is None and f == latest),
            "persisting": sum(1 for *_x, f, res in mine if res is None and f != latest),
            "resolved": sum(1 for *_rest, res in mine if res == latest),
        }, name


def test_trend_has_one_mark_per_run_and_equals_the_finding_trend_view(story: Story, page: Page) -> None:
    finished = [r for (r,) in story.sql("SELECT id FROM runs WHERE status IN ('complete', 'partial') ORDER BY id")]
    view: dict[tuple[int, str, bool], int] = {}
    flow: dict[tuple[str, int], int] = {}
    for run_id, kind, sev, open_, new_, res in story.sql(
            "SELECT run_id, kind, severity, open, new, resolved FROM finding_trend"):
        err = sev == "error"
        view[(run_id, kind, err)] = view.get((run_id, kind, err), 0) + open_
        for name, n in (("new", new_), ("resolved", res)):
            key = (f"{name}-{'error' if err else 'other'}", run_id)
            flow[key] = flow.get(key, 0) + n
    # errors and warnings/info are charted apart
    for chart_id, err in (("trend-open", True), ("trend-open-other", False)):
        chart = page.one("figure", id=chart_id)
        marks = [m for m in page.all("rect", within=chart) if "data-run" in m["attrs"]]
        series = {m["attrs"]["data-series"] for m in marks}
        assert series == {k for (_r, k, e), n in view.items() if n and e == err}, chart_id
        assert series, chart_id
        for s in series:
            mine = [m for m in marks if m["attrs"]["data-series"] == s]
            assert [int(m["attrs"]["data-run"]) for m in mine] == finished  # one mark per run, in order
            assert [int(m["attrs"]["data-value"]) for m in mine] == [view.get((r, s, err), 0) for r in finished], s
        # the partial run is shaded; the failed run is marked, without bars
        assert [int(b["attrs"]["data-band-run"]) for b in page.all("rect", within=chart, **{"class": "band"})] == [4]
        assert [int(b["attrs"]["data-failed-run"]) for b in page.all("rect", within=chart)
                if "data-failed-run" in b["attrs"]] == [6]
        assert sorted(int(m["attrs"]["data-run"]) for m in page.all(within=page.all("svg", within=chart)[0])
                      if "data-run" in m["attrs"]) == sorted(finished * len(series))
    flow_fig = page.one("figure", id="trend-flow")
    for name in ("new-error", "new-other", "resolved-error", "resolved-other"):
        bars = page.all("rect", within=flow_fig, data_series=name)
        assert [int(b["attrs"]["data-run"]) for b in bars] == finished
        assert [int(b["attrs"]["data-value"]) for b in bars] == [flow.get((name, r), 0) for r in finished], name
    assert page.one("tr", data_run_row="4")["attrs"]["data-status"] == "partial"
    assert page.one("tr", data_run_row="6")["attrs"]["data-status"] == "failed"
    assert EVIL_REGISTRY in text_of(page.one("section", id="runs"))  # why run 4 was partial, as text


def test_trend_x_axis_is_the_run_dates_and_hover_gives_run_date_and_counts(story: Story, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "dated.db"
    with sqlite3.connect(story.db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # WAL included
    days = {1: "2026-11-24 03:30:00", 2: "2026-11-25 03:30:00", 3: "2026-11-26 03:30:00",
            4: "2026-11-27 03:30:00", 5: "2026-11-28 03:30:00", 6: "2026-11-28 09:15:00", 7: "2026-11-28 14:05:00"}
    with sqlite3.connect(db) as c:
        for run, when in days.items():
            c.execute("UPDATE runs SET started_at = ? WHERE id = ?", (when + ".000000", run))
    out = tmp_path / "r.html"
    assert cli_run("report", "--db", db, "--out", out).exit_code == 0
    page = Page(out.read_text(encoding="utf-8"))
    chart = page.one("figure", id="trend-open")
    dates = [text_of(t) for t in page.all("text", within=chart, **{"class": "xdate"})]
    times = [text_of(t) for t in page.all("text", within=chart, **{"class": "xtime"})]
    assert dates == ["Nov 24", "Nov 25", "Nov 26", "Nov 27", "Nov 28"]  # one date per day ...
    assert times == ["#5 03:30", "#6 09:15", "#7 14:05"]  # ... and the runs of one day apart (6 failed)
    html = out.read_text(encoding="utf-8")
    hovers = re.findall(r'<rect class="mark" data-run="5" data-series="([a-z_-]+)" data-value="(\d+)"[^>]*>'
                        r'<title>([^<]*)</title>', html)
    assert len(hovers) >= 4  # every chart, every series
    for series, value, hover in hovers:
        assert hover.startswith("run 5 · 2026-11-28 03:30 UTC · ") and f": {value} (open: " in hover, hover
        assert re.search(r"open: \d+ errors, \d+ warnings and info; new \d+, resolved \d+\)$", hover), hover
    failed = re.findall(r'data-failed-run="6"[^>]*><title>([^<]*)</title>', html)
    assert failed and all(t.startswith("run 6 · 2026-11-28 09:15 UTC · failed: ") for t in failed)
    # an incident's window: the report as of run 3, its trend from Nov 25
    out = tmp_path / "window.html"
    r = cli_run("report", "--db", db, "--out", out, "--since", "2026-11-25", "--until", "2026-11-26T12:00Z")
    assert r.exit_code == 0, r.output
    page = Page(out.read_text(encoding="utf-8"))
    assert "Report for run 3" in " ".join(page.texts)
    marks = page.all("rect", within=page.one("figure", id="trend-flow"), data_series="new-error")
    assert [int(m["attrs"]["data-run"]) for m in marks] == [2, 3]
    assert {int(r["attrs"]["data-run-row"]) for r in page.all("tr") if "data-run-row" in r["attrs"]} == {2, 3}
    assert page.all("div", data_period="1")
    # as it was in run 3: what run 5 re-opened later is not new here, and run 3's repairs are resolved
    assert {a["attrs"]["data-state"] for a in page.all("article")} <= {"new", "reopened", "persisting", "resolved"}
    resolved_then = int(page.one("section", id="resolved")["attrs"]["data-total"])
    assert resolved_then == sum(n for (n,) in story.sql("SELECT COUNT(*) FROM findings WHERE resolved_run = 3"))
    for args, message in ((["--until", "2020-01-01"], "no finished scan started by"),
                          (["--since", "2026-12-30", "--until", "2026-12-31"], "no finished scan between"),
                          (["--since", "2026-11-27", "--until", "2026-11-26"], "--since is after --until"),
                          (["--since", "soon"], "expected a date")):
        r = cli_run("report", "--db", db, "--out", tmp_path / "x.html", *args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)


def test_trend_window_is_the_last_n_finished_runs(story: Story, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert cli_run("report", "--db", story.db, "--out", out, "--runs", "3").exit_code == 0
    page = Page(out.read_text(encoding="utf-8"))
    marks = page.all("rect", within=page.one("figure", id="trend-flow"), data_series="new-error")
    assert [int(m["attrs"]["data-run"]) for m in marks] == [4, 5, 7]
    assert {int(r["attrs"]["data-run-row"]) for r in page.all("tr") if "data-run-row" in r["attrs"]} == {4, 5, 6, 7}


def test_every_finding_has_its_section_with_evidence_and_hint(story: Story, page: Page) -> None:
    latest = story.latest
    rows = story.sql("SELECT id, key, first_run, resolved_run, hint, detail FROM findings "
                     "WHERE resolved_run IS NULL OR resolved_run = :r", r=latest)
    articles = {int(a["attrs"]["data-finding"]): a for a in page.all("article")}
    assert set(articles) == {r[0] for r in rows}
    anchors = [a["attrs"]["id"] for a in articles.values()]
    assert len(set(anchors)) == len(anchors)
    for fid, key, first, res, hint, _detail in rows:
        a = articles[fid]
        assert a["attrs"]["id"] == "f-" + key[:16]
        section = next(u for u in a["up"] if u["tag"] == "section")["attrs"]["id"]
        expected = "resolved" if res is not None else "new" if first == latest else "persisting"
        if section == "first":  # an open finding of an incident: folded under it, at the top
            assert expected != "resolved" and any("data-incident" in u["attrs"] for u in a["up"])
        else:
            assert section == expected
        assert hint and " ".join(hint.split()) in text_of(a)
        assert page.all("dl", within=a)  # evidence as a key/value list
    folded = [a["attrs"]["data-state"] for a in page.all("article", within=page.one("section", id="first"))]
    for state in ("new", "persisting", "resolved"):
        sec = page.one("section", id=state)
        under = sum(1 for st in folded if (st if st != "reopened" else "new") == state)
        assert int(sec["attrs"]["data-total"]) == len(page.all("article", within=sec)) + under


def test_post_mortem_timeline_and_what_changed_on_disk(story: Story, page: Page) -> None:
    child = story.digests["child"]
    key = story.scalar("SELECT key FROM findings WHERE kind = 'orphan_index_child' AND digest = :d", d=child)
    card = page.one("article", id="f-" + key[:16])
    body = text_of(card)
    assert "re-opened" in body and "first seen" in body and "resolved after 1 run open (run 2)" in body
    short = child[:19] + "…"
    assert f"revision link of child {short} removed between run 1 and run 2, blob data still present" in body
    assert f"revision link of child {short} appeared between run 2 and run 3, blob data still present" in body
    # run 4 was partial but scanned main: the episode of run 5 is compared with run 4
    assert f"revision link of child {short} removed between run 4 and run 5" in body
    layer = story.digests["web_layer"]
    key = story.scalar("SELECT key FROM findings WHERE kind = 'orphan_layer_link' AND digest = :d", d=layer)
    body = text_of(page.one("article", id="f-" + key[:16]))
    assert f"blob data of layer {layer[:19]}… " in body and "removed between run 1 and run 2" in body


def test_hostile_names_render_as_text(story: Story, rendered: tuple[Path, str], page: Page) -> None:
    html = rendered[1]
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert not any(k.startswith("on") for el in page.elements for k in el["attrs"])
    assert "&lt;script&gt;alert(1)" in html
    text = " ".join(page.texts)
    for name in (EVIL_REGISTRY, EVIL_REPO, EVIL_TAG):
        assert name in text
    # a right-to-left override would show "gnp.exe" as "exe.png": format characters are shown escaped
    assert "\u202e" not in html and "ταγ\\u202egnp.exe" in text
    evil_rows = story.scalar("SELECT COUNT(*) FROM findings WHERE registry = :g AND resolved_run IS NULL",
                             g=EVIL_REGISTRY)
    assert number(page.one("td", within=page.one("tr", data_registry=EVIL_REGISTRY), data_count="open")) == evil_rows


def test_self_contained(page: Page) -> None:
    """No script, and nothing fetched: no src, no stylesheet link, no URL in CSS, links only within the page
    or to the CSV beside it."""
    assert not [el for el in page.elements if el["tag"] in ("script", "link", "img", "iframe", "object", "embed")]
    assert not [el for el in page.elements if {"src", "srcset", "xmlns", "xlink:href"} & set(el["attrs"])]
    hrefs = {el["attrs"]["href"] for el in page.elements if "href" in el["attrs"]}
    assert hrefs and all(h.startswith("#") or h == "./report.csv" for h in hrefs)
    style = text_of(page.one("style"))
    assert "url(" not in style and "@import" not in style and "@media print" in style
    assert len(page.all("svg")) >= 2


def test_csv_beside_the_report_holds_every_finding(story: Story, rendered: tuple[Path, str]) -> None:
    out, html = rendered
    rows = read_csv(out.with_suffix(".csv"))
    latest = story.latest
    expected = story.sql("SELECT id, kind, registry, repository FROM findings "
                         "WHERE resolved_run IS NULL OR resolved_run = :r", r=latest)
    assert len(rows) == len(expected)
    assert sorted((r["kind"], r["registry"], r["repository"]) for r in rows) == sorted(
        (k, g, p or "") for _i, k, g, p in expected)
    assert 'href="./report.csv"' in html


def test_cap_on_finding_sections(story: Story, tmp_path: Path) -> None:
    from regindex import db as dbmod

    with dbmod.reader(str(story.db)) as conn:
        out = report.write(conn, tmp_path / "capped.html", limit=1)
    page = Page(out.read_text(encoding="utf-8"))
    for state in ("new", "persisting", "resolved"):
        sec = page.one("section", id=state)
        total = int(sec["attrs"]["data-total"])
        notes = [p for p in page.all("p", within=sec) if "data-under-incidents" in p["attrs"]]
        total -= int(notes[0]["attrs"]["data-under-incidents"]) if notes else 0  # folded under their incident
        assert len(page.all("article", within=sec)) == min(total, 1)
        if total > 1:
            more = page.one(within=sec, **{"class": "more"})
            assert int(more["attrs"]["data-more"]) == total - 1 and "in the CSV" in text_of(more)
    persisting = page.one("section", id="persisting")
    shown = page.one("article", within=persisting)
    assert shown["attrs"]["class"].split()[-1] == "error"  # most severe first
    csv_rows = read_csv(tmp_path / "capped.csv")
    assert len(csv_rows) == sum(int(page.one("section", id=s)["attrs"]["data-total"])
                                for s in ("new", "persisting", "resolved"))
    # the CSV points at the sections the page has, and only at those
    anchors = {"#" + a["attrs"]["id"] for a in page.all("article")}
    assert {r["anchor"] for r in csv_rows if r["anchor"]} == anchors


def test_render_does_not_scale_with_queries_per_run(story: Story) -> None:
    """The trend is computed in one pass: it equals the per-run count for every run of the window."""
    items = [report.Item(*r) for r in story.sql(
        "SELECT id, key, episode, kind, severity, registry, repository, digest, tag, parent_digest, "
        "first_run, last_seen_run, resolved_run FROM findings")]
    runs = [r for (r,) in story.sql("SELECT id FROM runs WHERE status IN ('complete', 'partial') ORDER BY id")]
    open_by_kind, new, resolved = report.trend(items, runs)
    for i, run in enumerate(runs):
        assert sum(v[i] for v in open_by_kind.values()) == sum(
            1 for it in items if it.first_run <= run and (it.resolved_run is None or it.resolved_run > run))
        assert new[i] == sum(1 for it in items if it.first_run == run)
        assert resolved[i] == sum(1 for it in items if it.resolved_run == run)


# ---------------------------------------------------------------------------------------------
# scan --report DIR, and the history command


def test_scan_report_dir_writes_dated_reports_and_an_index(tmp_path: Path) -> None:
    rng = random.Random(9)
    base, db, reports = tmp_path / "storage", tmp_path / "r.db", tmp_path / "reports"
    w = StorageWriter(base / "main")
    img = w.push_image("team/app", rng)
    w.tag("team/app", "v1", img.digest)
    first = cli_run("scan", base, "--db", db, "--report", reports)
    assert first.exit_code == 0, first.output
    w.remove_blob(img.layers[0])
    second = cli_run("scan", base, "--db", db, "--report", reports)
    assert second.exit_code == 1  # an open error
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    names = sorted(p.name for p in reports.iterdir())
    assert names == sorted([f"regindex-{day}-run1.html", f"regindex-{day}-run1.csv", f"regindex-{day}-run2.html",
                            f"regindex-{day}-run2.csv", "index.html"])
    assert f"report: {reports / f'regindex-{day}-run2.html'}" in second.output
    index = Page((reports / "index.html").read_text(encoding="utf-8"))
    assert [r["attrs"]["data-report"] for r in index.all("tr") if "data-report" in r["attrs"]] == ["2", "1"]
    links = [a["attrs"]["href"] for a in index.all("a")]
    assert links == [f"regindex-{day}-run2.html", f"regindex-{day}-run2.csv",
                     f"regindex-{day}-run1.html", f"regindex-{day}-run1.csv"]
    dated = Page((reports / f"regindex-{day}-run2.html").read_text(encoding="utf-8"))
    assert number(dated.one(data_count="open-errors")) == 1
    csv_rows = read_csv(reports / f"regindex-{day}-run2.csv")
    assert [(r["state"], r["kind"]) for r in csv_rows] == [("new", "orphan_layer_link")]


def test_history_command(story: Story) -> None:
    child = story.digests["child"]
    full = cli_run("history", child, "--db", story.db)
    assert full.exit_code == 0, full.output
    out = full.output
    assert out.splitlines()[0] == child
    assert "orphan_index_child (error, open) · main / team/app" in out
    assert "re-opened (episode 2)" in out and "resolved after 1 run open (run 2)" in out
    assert "removed between run 1 and run 2, blob data still present" in out
    assert "main · team/app · revision link (ok, by path): present from run 1, gone in run 2" in out
    assert "main · blob data" in out
    prefix = cli_run("history", child.split(":")[1][:10], "--db", story.db)
    assert prefix.exit_code == 0 and prefix.output == out


def test_history_names_the_index_of_a_child(story: Story) -> None:
    result = cli_run("history", story.digests["index"], "--db", story.db)
    assert result.exit_code == 0
    assert "as the index" in result.output


def test_history_of_hostile_names_is_printable(story: Story) -> None:
    result = cli_run("history", story.digests["hostile_layer"], "--db", story.db)
    assert result.exit_code == 0, result.output
    assert EVIL_REGISTRY in result.output and "\u202e" not in result.output


@pytest.mark.parametrize(
    "arg, message",
    [
        ("deadbeefdeadbeef", "unknown digest deadbeefdeadbeef"),
        ("sha256:" + "0" * 64, "unknown digest sha256:"),
        ("abc", "too short"),
        ("not-a-digest", "not a digest"),
    ],
)
def test_history_refuses_unknown_digests(story: Story, arg: str, message: str) -> None:
    result = cli_run("history", arg, "--db", story.db)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_report_needs_a_finished_scan(tmp_path: Path) -> None:
    assert cli_run("db", "upgrade", "--db", tmp_path / "empty.db").exit_code == 0
    result = cli_run("report", "--db", tmp_path / "empty.db", "--out", tmp_path / "r.html")
    assert result.exit_code == 2 and "no finished scan" in result.output
    assert not (tmp_path / "r.html").exists()


def test_templates_load_through_importlib_resources() -> None:
    env = report.environment()
    assert env.undefined.__name__ == "StrictUndefined"
    assert env.get_template("report.html.j2").is_up_to_date
    assert env.autoescape("report.html.j2") is True and env.autoescape("index.html.j2") is True


def test_a_failed_run_after_the_reported_one_is_announced(tmp_path):
    """The latest finished run is reported, and a later run that failed is said at the top, not hidden."""
    from click.testing import CliRunner

    from regindex.cli import cli

    rng = random.Random(3)
    w = StorageWriter(tmp_path / "s" / "private")
    w.push_image("a", rng)
    db = tmp_path / "r.db"
    runner = CliRunner()
    assert runner.invoke(cli, ["scan", str(tmp_path / "s"), "--db", str(db), "-q"]).exit_code == 0
    assert runner.invoke(cli, ["scan", str(tmp_path / "missing"), "--db", str(db), "-q"]).exit_code == 2
    out = tmp_path / "weird name #1.html"
    assert runner.invoke(cli, ["report", "--db", str(db), "--out", str(out)]).exit_code == 0
    html = out.read_text()
    assert 'data-later-run="2"' in html and "does not exist" in html
    assert 'href="./weird%20name%20%231.csv"' in html


def test_each_registry_says_which_scan_it_was_compared_with(tmp_path, monkeypatch, unlistable):
    """After a partial run that could not read beta, beta's new/resolved are relative to its own last scan."""
    from click.testing import CliRunner

    from regindex.cli import cli

    rng = random.Random(5)
    for name in ("alpha", "beta"):
        StorageWriter(tmp_path / "s" / name).push_image("a", rng)
    db = tmp_path / "r.db"
    runner = CliRunner()

    def scan() -> int:
        return runner.invoke(cli, ["scan", str(tmp_path / "s"), "--db", str(db), "-q"]).exit_code

    assert scan() == 0
    unlistable(lambda path: "beta" in path and path.endswith("repositories"))
    assert scan() == 2  # run 2: partial, beta failed
    monkeypatch.undo()
    assert scan() == 0  # run 3
    out = tmp_path / "r.html"
    assert runner.invoke(cli, ["report", "--db", str(db), "--out", str(out)]).exit_code == 0
    html = out.read_text()
    compared = dict(re.findall(r'<tr data-registry="(\w+)">.*?data-compared="(\d*)"', html, re.S))
    assert compared == {"alpha": "2", "beta": "1"}
