"""Walking storage: discovery, link states, symlinks never followed, uploads, hostile names."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone

import pytest

from regindex.crawl import crawl, discover, parse_rfc3339, read_blob, BlobTooLarge
from regindex.errors import StorageError
from regindex.layout import TagCurrentLinkPath


def test_discover_base_of_registries_and_single_roots(tmp_path, private, rng, base):
    private.push_image("a", rng)
    assert [(r.name, r.v2) for r in discover(base)] == [("private", private.v2)]
    assert [r.name for r in discover(base / "private")] == ["private"]
    assert [r.name for r in discover(private.v2)] == ["private"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="no registry storage"):
        discover(tmp_path / "empty")
    with pytest.raises(StorageError, match="does not exist"):
        discover(tmp_path / "missing")


def test_link_states_and_nesting(private, rng):
    img = private.push_image("team/app/api", rng)
    private.push_image("team/app", rng)  # a repository that also holds a child repository
    private.write_layer_link("team/app/api", img.config, b"")
    private.write_revision_link("team/app/api", img.digest, img.digest.encode() + b"\n")
    private.tag("team/app/api", "v1", img.digest)
    private.remove_tag_current("team/app/api", "v1")
    (private.v2 / "repositories/team/app/api/_layers/sha256" / ("9" * 64)).mkdir()  # API-deleted: no link
    result = crawl(discover(private.root)[0])
    assert sorted(r.name for r in result.repositories) == ["team/app", "team/app/api"]
    states = {(link.kind, link.path_digest, link.tag): link.state for link in result.links
              if link.repository == "team/app/api"}
    assert states[("layer", img.config, None)] == "empty"
    assert states[("revision", img.digest, None)] == "whitespace"
    assert states[("tag_current", None, "v1")] == "absent"
    assert states[("layer", "sha256:" + "9" * 64, None)] == "absent"
    assert states[("tag_index", img.digest, "v1")] == "ok"


def test_symlinks_are_never_followed(tmp_path, private, rng):
    """A symlink where content would be is never followed, and what lies behind it is unknown: the crawl fails
    (tests/test_hostile.py checks that nothing is resolved)."""
    private.push_image("a", rng)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x" * 10)
    data = private.v2 / "blobs/sha256/aa" / ("a" * 64)
    data.mkdir(parents=True)
    os.symlink(outside / "secret", data / "data")
    with pytest.raises(StorageError, match=f"blobs/sha256/aa/{'a' * 64}/data is a symlink"):
        crawl(discover(private.root)[0])


def test_odd_names_are_indexed_and_flagged_not_skipped(private, rng):
    private.push_image("ok", rng)
    weird = private.v2 / "repositories" / "<script>alert(1)<" / "_layers"
    weird.mkdir(parents=True)
    (private.v2 / "repositories" / "notarepo" / "_manifests").mkdir(parents=True)
    (private.v2 / "blobs/sha256/zz").mkdir(parents=True)
    result = crawl(discover(private.root)[0])
    assert "<script>alert(1)<" in {r.name for r in result.repositories}
    reasons = {a.path: a.reason for a in result.anomalies}
    assert "refuse" in reasons["repositories/<script>alert(1)<"]
    assert "underscore entry outside a repository" in reasons["repositories/notarepo/_manifests"]


def test_uploads(private, rng):
    private.upload("a", "u1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), size=42)
    up_dir = private.v2 / "repositories/a/_uploads/u2"
    up_dir.mkdir(parents=True)
    (up_dir / "startedat").write_text("not a time")
    result = crawl(discover(private.root)[0])
    ups = {u.uuid: u for u in result.uploads}
    assert ups["u1"].started_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc) and ups["u1"].size == 42
    assert ups["u2"].started_at is None and ups["u2"].started_raw == "not a time" and ups["u2"].size is None


@pytest.mark.parametrize("text, expected", [
    ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("2026-01-02T03:04:05.123456789Z", datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)),
    ("2026-01-02T04:04:05+01:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("garbage", None),
    ("", None),
])
def test_rfc3339(text, expected):
    assert parse_rfc3339(text) == expected


def test_blob_reads_are_whole_or_refused(private):
    d = private.put_blob(b"x" * 5000)
    assert read_blob(private.v2, d, cap=10_000) == b"x" * 5000
    with pytest.raises(BlobTooLarge):
        read_blob(private.v2, d, cap=4000)
    assert read_blob(private.v2, "sha256:" + "0" * 64) is None


@pytest.mark.parametrize("size", [0, 1, 4, 5, 6, 12, (1 << 20) + 3])
def test_read_capped_reads_whole_or_one_byte_past_the_cap(size):
    """The one bounded whole-file read (crawl.read_blob, safefs.read_at): a pipe, so the size is not known up front
    (a file that grows while read)."""
    from regindex.storage import read_capped

    cap = 5 if size < 100 else 1 << 20
    r, w = os.pipe()

    def write() -> None:
        try:
            os.write(w, b"y" * size)
        except BrokenPipeError:
            pass  # the reader stopped one byte past the cap and left
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        got = read_capped(r, cap)
    finally:
        os.close(r)
        writer.join()
    assert got == b"y" * min(size, cap + 1)


def test_unlistable_directory_fails_the_registry(private, rng, unlistable):
    private.push_image("a", rng)
    unlistable(lambda path: path.endswith("_layers"))
    with pytest.raises(StorageError, match="cannot list repositories/a/_layers"):
        crawl(discover(private.root)[0])


def test_link_files_are_read_bounded(private, rng):
    img = private.push_image("a", rng)
    private.write_layer_link("a", img.config, img.config.encode() + b"x" * 10_000_000)
    [link] = [l for l in crawl(discover(private.root)[0]).links if l.path_digest == img.config]
    assert link.state == "garbage" and len(link.preview or "") < 100


def test_symlinked_registry_is_reported_not_followed(tmp_path, base, private, rng, invoke):
    private.push_image("a", rng)
    elsewhere = tmp_path / "other-disk"
    from regindex.sample import StorageWriter

    StorageWriter(elsewhere).push_image("b", rng)
    os.symlink(elsewhere, base / "mirror")
    roots = {r.name: r.problem for r in discover(base)}
    assert roots["private"] is None and "symlink" in roots["mirror"]
    r = invoke("scan", base, "--db", tmp_path / "x.db", expect=2)
    assert "mirror" in r.output and "never follows symlinks" in r.output


@pytest.mark.parametrize("where", ["docker", "docker/registry/v2/blobs", "docker/registry/v2/repositories",
                                   "docker/registry/v2/repositories/a/_layers",
                                   "docker/registry/v2/repositories/a/_manifests"])
def test_symlinked_structure_fails_the_registry_instead_of_looking_deleted(where, tmp_path, base, rng, invoke):
    """Following it would leave the root; skipping it would make its content look deleted. Neither."""
    import shutil

    from regindex.sample import StorageWriter

    w = StorageWriter(base / "private")
    img = w.push_image("a", rng)
    w.tag("a", "v1", img.digest)
    invoke("scan", base, "--db", tmp_path / "x.db", "-q")
    real = base / "private" / where
    moved = tmp_path / "elsewhere"
    shutil.move(real, moved)
    os.symlink(moved, real)
    r = invoke("scan", base, "--db", tmp_path / "x.db", expect=2)
    assert "never follows symlinks" in r.output
    import json

    runs = json.loads(invoke("runs", "--db", tmp_path / "x.db", "--format", "json").output)
    assert runs[0]["findings_resolved"] in (None, 0) and runs[0]["status"] in ("partial", "failed")


def test_symlinked_tag_current_is_not_followed(tmp_path, private, rng):
    img = private.push_image("a", rng)
    private.tag("a", "v1", img.digest)
    cur = private.path(TagCurrentLinkPath("a", "v1")).parent
    outside = tmp_path / "out"
    outside.mkdir()
    (outside / "link").write_text(img.digest)
    import shutil

    shutil.rmtree(cur)
    os.symlink(outside, cur)
    with pytest.raises(StorageError, match="tags/v1/current is a symlink"):
        crawl(discover(private.root)[0])


def test_the_read_pool_gives_the_rows_one_thread_gives(private, rng, monkeypatch):
    """Links and blob stats handed to the pool (as when the disk is slow: forced here) come back complete and
    judged the same as read in the walking thread, in batches that span directories and repositories; a
    symlink among them still fails the crawl."""
    from regindex import crawl as crawl_mod

    for i in range(12):
        img = private.push_image(f"team/app{i}", rng)
        private.tag(f"team/app{i}", "v1", img.digest)
    private.write_layer_link("team/app3", "sha256:" + "ab" * 32, b"garbage")
    private.write_revision_link("team/app5", "sha256:" + "cd" * 32, b"")
    for i in range(8):  # one prefix directory with enough data files for its stats to go to the pool
        blob = private.v2 / "blobs" / "sha256" / "ee" / f"ee{i:062x}" / "data"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(b"x" * i)
    root = discover(private.root)[0]

    def rows(readers: int) -> list[object]:
        out: list[object] = []
        crawl_mod.crawl_into(root, out.append, readers=readers, helper=False)  # threads of this process
        return sorted(out, key=repr)

    alone = rows(1)
    monkeypatch.setattr(crawl_mod, "_SLOW", 0.0)  # every batch looks like it waits on the disk
    monkeypatch.setattr(crawl_mod, "_READ_BATCH", 11)
    threads: dict[str, set[str]] = {"read": set(), "stat": set()}
    read, stat_many = crawl_mod.FileSystem.read, crawl_mod.FileSystem.stat_many
    monkeypatch.setattr(crawl_mod.FileSystem, "read", lambda self, p, n: (
        threads["read"].add(threading.current_thread().name), read(self, p, n))[1])
    monkeypatch.setattr(crawl_mod.FileSystem, "stat_many", lambda self, ps: (
        threads["stat"].add(threading.current_thread().name), stat_many(self, ps))[1])
    pooled = rows(3)
    assert any(t.startswith("regindex-read") for t in threads["read"])  # the pool did read
    assert any(t.startswith("regindex-read") for t in threads["stat"])  # ... and stat (blob data files)
    assert pooled == alone
    assert sum(type(r).__name__ == "LinkRow" for r in pooled) > 60
    link = private.v2 / "repositories" / "team" / "app7" / "_layers"
    target = next(link.rglob("link"))
    target.unlink()
    target.symlink_to("/etc/hostname")
    with pytest.raises(StorageError, match="is a symlink"):
        rows(8)


@pytest.mark.parametrize("helper", [False, True])
def test_progress_hears_of_every_2000_files_and_the_count_is_exact(private, helper):
    """The progress display is told the files seen as the walk crosses each multiple of 2,000 (the crawl counts
    a directory's worth of files at once), and the final count is every file; a blob walk in a helper process
    is counted when it is collected."""
    from regindex.crawl import crawl_into

    for i in range(4100):
        blob = private.v2 / "blobs" / "sha256" / f"{i % 256:02x}" / f"{i % 256:02x}{i:062x}" / "data"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"")
    heard: list[int] = []
    stats = crawl_into(discover(private.root)[0], lambda row: None, heard.append, helper=helper)
    assert stats.files_seen == 4100
    assert heard == ([4100] if helper else heard) and heard == sorted(heard) and heard[-1] <= 4100
    assert helper or [n // 2000 for n in heard] == [1, 2]


def test_what_is_not_a_digest_directory_is_flagged_in_layers_revisions_and_blobs(private, rng):
    """Beside the digest directories the walk tests in one call each, every other entry is judged: a directory
    with another name (upper case, short, wrong prefix) or a file is an anomaly, a name that is not UTF-8 is
    flagged, a symlink fails the crawl; the real digest directories are all still indexed."""
    img = private.push_image("app", rng)
    good = "ab" * 32
    layers = private.v2 / "repositories" / "app" / "_layers" / "sha256"
    revisions = private.v2 / "repositories" / "app" / "_manifests" / "revisions" / "sha256"
    prefix = private.v2 / "blobs" / "sha256" / "ab"
    (layers / good.upper()).mkdir()
    (layers / good[:-1]).mkdir()
    (layers / "stray").write_text("x")
    (revisions / os.fsdecode(b"\xff" + b"a" * 63)).mkdir()
    (prefix / ("cd" + good[2:])).mkdir(parents=True)  # a digest directory in the wrong prefix
    (prefix / good).mkdir()
    (prefix / good / "data").write_bytes(b"")
    result = crawl(discover(private.root)[0])
    reasons = {a.path: a.reason for a in result.anomalies}
    assert reasons == {
        f"repositories/app/_layers/sha256/{good.upper()}": "not a digest directory name",
        f"repositories/app/_layers/sha256/{good[:-1]}": "not a digest directory name",
        "repositories/app/_layers/sha256/stray": "unexpected file",
        "repositories/app/_manifests/revisions/sha256/\\xff" + "a" * 63: "name is not UTF-8 (the registry cannot serve it)",
        f"blobs/sha256/ab/cd{good[2:]}": "not a blob directory name",
    }
    assert {r.path_digest for r in result.links if r.kind == "layer"} == {*img.layers, img.config}
    assert {r.path_digest for r in result.links if r.kind == "revision"} == {img.digest}
    assert "sha256:" + good in {b.digest for b in result.blobs}
    os.symlink("/etc", layers / ("ef" * 32))
    with pytest.raises(StorageError, match="is a symlink"):
        crawl(discover(private.root)[0])


def _rows(root, helper: bool) -> list[object]:
    from regindex.crawl import crawl_into

    out: list[object] = []
    stats = crawl_into(root, out.append, helper=helper)
    return sorted(out, key=repr) + [(stats.stat, stats.read, stats.files_seen)]


def test_a_blob_walk_in_a_helper_process_gives_the_rows_and_counts_of_the_inline_walk(private, rng):
    """The blob walk forked off to a second CPU: every row (blobs, anomalies among them) and every count
    reaches this process as the inline walk gives them."""
    for i in range(6):
        private.push_image(f"app{i}", rng)
    (private.v2 / "blobs" / "sha256" / "ab" / "not-hex").mkdir(parents=True)
    (private.v2 / "blobs" / "sha256" / "zz" / ("zz" + "0" * 62)).mkdir(parents=True)
    for i in range(5000):  # more rows than one pickled batch
        blob = private.v2 / "blobs" / "sha256" / f"{i % 256:02x}" / f"{i % 256:02x}{i:062x}" / "data"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"x" * (i % 7))
    root = discover(private.root)[0]
    inline = _rows(root, helper=False)
    assert _rows(root, helper=True) == inline
    assert sum(type(r).__name__ == "BlobRow" for r in inline) > 5000
    assert sum(type(r).__name__ == "Anomaly" for r in inline) == 2


def _known_from(rows) -> dict[str, dict]:
    """The known links an inventory would hold after a crawl gave ``rows``: those read when settled."""
    from regindex.crawl import KnownLink, LinkRow

    known: dict[str, dict] = {}
    for i, r in enumerate(rows):
        if isinstance(r, LinkRow) and r.changed is not None:
            known.setdefault(r.repository, {})[(r.kind, r.tag, r.path_digest)] = KnownLink(r.changed, i)
    return known


def _split(monkeypatch, who: str) -> None:
    """Who claims the repositories' runs: "race" (whoever is free), "helper" (all of them), "parent"."""
    from regindex import crawl as crawl_mod

    real, walk = crawl_mod._Runs.__iter__, os.getpid()
    if who != "race":
        monkeypatch.setattr(crawl_mod._Runs, "__iter__",
                            lambda self: real(self) if (os.getpid() == walk) == (who == "parent") else iter(()))


@pytest.mark.parametrize("who", ["race", "helper", "parent"])
def test_the_helper_walks_repositories_too_and_every_row_is_the_inline_walks(private, rng, monkeypatch, who):
    """The helper claims runs of the repositories' subtrees as the walk's process claims its own. A first
    crawl, and an incremental one after every kind of link change (the helper cannot see the inventory: it
    stats its links, and this process judges them), give the inline walk's rows and counts, whoever walks
    which repositories."""
    import time as time_mod

    from regindex import crawl as crawl_mod
    from regindex.crawl import crawl_into

    images = {}
    for i in range(40):
        repo = f"ns{i % 7}/app{i}" if i % 3 else f"top{i}"
        images[repo] = private.push_image(repo, rng)
        private.tag(repo, "v1", images[repo].digest)
    private.upload("top0", "u1", datetime(2020, 1, 1, tzinfo=timezone.utc))
    (private.v2 / "repositories" / "_stray").mkdir()  # judged once, at the top, by the walk's process
    root = discover(private.root)[0]
    settled = time_mod.time() + 5

    def rows(known=None, helper=True, sums=None):
        out: list[object] = []
        stats = crawl_into(root, out.append, settled=settled, helper=helper, known_sums=sums,
                           known=None if known is None else (lambda names: {r: dict(known.get(r, {})) for r in names}))
        return sorted(out, key=repr), (stats.read, stats.skipped, stats.files_seen)

    inline = rows(helper=False)
    _split(monkeypatch, who)
    assert rows() == inline
    assert sum(type(r).__name__ == "Anomaly" for r in inline[0]) == 1

    known = _known_from(inline[0])
    assert sum(map(len, known.values())) >= 200
    a, b, c = (images[k] for k in ("ns1/app1", "top3", "ns5/app5"))
    private.write_layer_link("ns1/app1", a.config, b"")  # emptied
    private.write_revision_link("top3", b.digest, ("sha256:" + "0" * 64).encode())  # same length, rewritten
    private.remove_layer_link("ns5/app5", c.layers[0])  # removed inside its digest directory
    private.write_tag_link("ns5/app5", "v1", b"x")
    new = private.push_image("ns2/app2", rng)  # links the inventory never saw, in a known repository
    private.tag("ns2/app2", "v2", new.digest)
    private.push_image("ns6/brand-new", rng)  # a repository it never saw
    settled = time_mod.time() + 5
    settles: list[int] = []  # links the helper stat'ed and this process judged
    collecting = [False]
    real_defer, real_collect = crawl_mod._Walker.defer, crawl_mod.Helper.collect

    def collect(self, walker):
        collecting[0] = True
        try:
            real_collect(self, walker)
        finally:
            collecting[0] = False

    monkeypatch.setattr(crawl_mod.Helper, "collect", collect)
    monkeypatch.setattr(crawl_mod._Walker, "defer", lambda self, repo, seen: (
        settles.extend(seen) if collecting[0] else None, real_defer(self, repo, seen)))
    inline = rows(known, helper=False)
    assert not settles
    assert rows(known) == inline
    assert inline[1][1] > 150 and sum(type(r).__name__ == "LinkRecheck" for r in inline[0]) == 4
    if who != "race":  # the helper's links (all of them, or none) were judged here
        assert (len(settles) > 150) == (who == "helper")
    # The next night each repository's link files stat as its LinkSum says, but two: those two alone are
    # judged against the known links (rows or rechecks), the others are clean, whoever walks them.
    sums = {r.repository: (r.links, r.checksum) for r in inline[0] if type(r).__name__ == "LinkSum"}
    assert len(sums) == len({r.name for r in inline[0] if type(r).__name__ == "RepoRow"}) == 41
    time_mod.sleep(0.05)
    private.write_tag_link("top3", "v1", images["top3"].digest.encode())  # rewritten with the same bytes
    private.link_layer("ns2/app2", images["top0"].config)  # a link added to a known repository
    settles.clear()
    inline = rows(known, helper=False, sums=sums)
    assert rows(known, sums=sums) == inline
    judged = {r.repository for r in inline[0] if type(r).__name__ in ("LinkRow", "LinkSum")}
    judged |= {"?" for r in inline[0] if type(r).__name__ == "LinkRecheck"}
    assert judged == {"top3", "ns2/app2", "?"}
    clean = {r.repository for r in inline[0] if type(r).__name__ == "CleanRepository"}
    assert clean == set(sums) - {"top3", "ns2/app2"}
    reread = sum(type(r).__name__ == "LinkRow" for r in inline[0])
    assert 2 <= reread < 40 and inline[1][0] == reread + 1  # and the upload's startedat
    assert inline[1][1] == sum(n for n, _ck in sums.values()) + 1 - reread  # the rest were skipped


@pytest.mark.parametrize("damage", ["unlistable", "symlink"])
def test_a_storage_error_in_the_helper_fails_the_crawl_as_inline(private, rng, unlistable, damage, tmp_path):
    img = private.push_image("a", rng)
    data = private.v2 / "blobs" / "sha256" / img.config[7:9] / img.config[7:] / "data"
    if damage == "unlistable":
        unlistable(lambda path: path.endswith("/blobs/sha256/" + img.config[7:9]))
        match = f"cannot list blobs/sha256/{img.config[7:9]}"
    else:
        data.unlink()
        data.symlink_to(tmp_path)
        match = "data is a symlink"
    root = discover(private.root)[0]
    for helper in (False, True):
        with pytest.raises(StorageError, match=match):
            crawl(root) if not helper else _rows(root, helper=True)


def test_a_helper_that_dies_fails_the_crawl_in_one_line(private, rng, monkeypatch):
    """A helper killed before it reports (OOM killer, a signal) fails the registry's crawl; it never looks
    like a registry without blobs."""
    from regindex import crawl as crawl_mod

    private.push_image("a", rng)
    monkeypatch.setattr(crawl_mod._Walker, "walk_blobs", lambda self, blobs: os.kill(os.getpid(), 9))
    with pytest.raises(StorageError, match="helper process ended without its result"):
        _rows(discover(private.root)[0], helper=True)


def test_a_cold_walk_reads_ahead_and_gives_the_same_rows(private, rng, monkeypatch, tmp_path):
    """When the repositories' listings wait on the disk (forced here: every listing counts as slow), threads
    list and stat ahead of the walk: the rows are the walk's own, the threads are gone when the crawl ends,
    and they never open anything through a symlink (a symlinked repository directory fails the crawl)."""
    from regindex import crawl as crawl_mod

    for i in range(30):  # listings enough, past the first window, for the threads to run ahead of the walk
        img = private.push_image(f"team/app{i}", rng)
        private.tag(f"team/app{i}", "v1", img.digest)
    root = discover(private.root)[0]
    cold = _rows(root, helper=False)
    monkeypatch.setattr(crawl_mod, "_COLD_LIST", -1.0)
    opened: list[tuple[str, str]] = []
    real_open = os.open

    def watched_open(path, flags, *a, **k):
        opened.append((threading.current_thread().name, str(path)))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", watched_open)
    assert _rows(root, helper=False) == cold
    ahead = {p for name, p in opened if name.startswith("regindex-readahead")}
    assert any(p.endswith("/_layers/sha256") for p in ahead) and len(ahead) > 64
    assert not [t for t in threading.enumerate() if t.name.startswith("regindex-readahead")]

    outside = tmp_path / "outside"
    (outside / "_layers" / "sha256").mkdir(parents=True)
    (outside / "secret").write_text("x")
    os.symlink(outside, private.v2 / "repositories" / "team" / "zz-linked")
    os.symlink(outside / "secret", private.v2 / "repositories" / "team" / "app3" / "_layers" / "file-link")
    opened.clear()
    with pytest.raises(StorageError, match="is a symlink"):
        _rows(root, helper=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("regindex-readahead")]
    # run to its end on its own: every real directory listed, nothing through either symlink
    opened.clear()
    ahead = crawl_mod.ReadAhead([str(private.v2 / "repositories")], 3)
    for t in ahead.threads:
        t.join()
    dirs = {str(p) for p in (private.v2 / "repositories").rglob("*") if p.is_dir() and not p.is_symlink()
            and p.parent.name != "sha256"}  # digest directories are not listed: their link is stat'ed
    assert {p for _n, p in opened} == dirs | {str(private.v2 / "repositories")}
    assert ahead.listed == len(dirs) + 1
