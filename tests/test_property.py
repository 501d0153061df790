"""Property (issue 9): random storage trees with random damage, odd names and odd bytes. For every one:
- the scan finishes with exit 0, 1 or 2, never a traceback, and says at most one error line per registry;
- no finding of a registry regindex could not fully read is resolved;
- a second scan of the unchanged tree changes nothing (no new, no resolved finding, no inventory change).

CI runs a bounded number of examples; REGINDEX_HYPOTHESIS_EXAMPLES=500 runs more.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from regindex.cli import cli
from regindex.layout import BlobDataPath, LayerLinkPath, TagCurrentLinkPath
from regindex.sample import StorageWriter

EXAMPLES = int(os.environ.get("REGINDEX_HYPOTHESIS_EXAMPLES", "12"))


def _hex(d: str) -> str:
    return d.split(":", 1)[1]


def damage(w: StorageWriter, imgs: list[Any], op: str, arg: int, outside: Path) -> None:
    """One kind of damage, applied to image ``arg % len(imgs)`` where it needs one."""
    img = imgs[arg % len(imgs)]
    repo = img.repo
    v2 = w.v2
    rel_blob = f"blobs/sha256/{_hex(img.digest)[:2]}"
    if op == "remove_layer_blob" and w.path_exists_blob(img.layers[0]):
        w.remove_blob(img.layers[0])
    elif op == "remove_manifest_blob" and w.path_exists_blob(img.digest):
        w.remove_blob(img.digest)
    elif op == "truncate_manifest" and w.path_exists_blob(img.digest):
        w.truncate_blob(img.digest, arg % 50)
    elif op == "garbage_link":
        w.write_layer_link(repo, img.config, bytes([arg % 256]) * (arg % 9))
    elif op == "remove_tag_current" and w.path(TagCurrentLinkPath(repo, "v1")).exists():
        w.remove_tag_current(repo, "v1")
    elif op == "symlink_dir":
        target = [v2 / rel_blob, v2 / "repositories" / repo / "_layers" / "sha256",
                  v2 / "repositories" / repo.split("/")[0]][arg % 3]
        if target.is_dir() and not target.is_symlink():
            moved = outside / f"moved-{arg}-{len(list(outside.iterdir()))}"
            shutil.move(target, moved)
            os.symlink(moved, target)
    elif op == "symlink_link_file":
        p = w.path(LayerLinkPath(repo, img.config))
        if p.is_file() and not p.is_symlink():
            p.unlink()
            os.symlink(outside, p)
    elif op == "fifo_link":
        p = w.path(LayerLinkPath(repo, img.layers[0]))
        if p.is_file() and not p.is_symlink():
            p.unlink()
            os.mkfifo(p)
    elif op == "odd_name":
        name = [b"bad\xff", b"new\nline", b"\x1b[31mred", b"-rf", b"a" * 200][arg % 5]
        where = [b"repositories/", b"repositories/" + repo.encode() + b"/_manifests/tags/",
                 b"blobs/sha256/", b"repositories/" + repo.encode() + b"/_uploads/"][arg % 4]
        os.makedirs(os.fsencode(v2) + b"/" + where + name, exist_ok=True)
    elif op == "odd_manifest":
        body = [b"\xef\xbb\xbf{}", b'{"schemaVersion": 2.0}', b'{"schemaVersion": 2, "layers": [{"size": 1e400}]}',
                b'{"schemaVersion": 2, "x": "\\ud800\\u0000"}', b'{"schemaVersion": 2, "config": {"size": '
                + b"9" * 5000 + b"}}", b"[" * 3000 + b"]" * 3000][arg % 6]
        d = w.put_blob(body)
        w.link_revision(repo, d)
        w.tag(repo, f"odd{arg % 3}", d)
    elif op == "odd_upload":
        d = v2 / "repositories" / repo / "_uploads" / f"u{arg % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "startedat").write_bytes([b"9999-12-31T23:59:59-23:59", b"\xff\xfe", b"", b"2020-01-01T00:00:00Z"][arg % 4])
    elif op == "stray_file":
        (v2 / rel_blob).mkdir(parents=True, exist_ok=True)
        (v2 / rel_blob / f"stray{arg}").write_bytes(b"x")


OPS = ["remove_layer_blob", "remove_manifest_blob", "truncate_manifest", "garbage_link", "remove_tag_current",
       "symlink_dir", "symlink_link_file", "fifo_link", "odd_name", "odd_manifest", "odd_upload", "stray_file"]


def _scan(base: Path, db: Path) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["scan", str(base), "--db", str(db), "-q"])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.stdout, r.stderr


def _state(db: Path) -> dict[str, Any]:
    con = sqlite3.connect(db)
    try:
        last = con.execute("SELECT id, status, inventory_changes FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        failed = {n for (n,) in con.execute(
            "SELECT g.name FROM run_registries rr JOIN registries g ON g.id = rr.registry_id "
            "WHERE rr.run_id = ? AND rr.status = 'failed'", (last[0],))}
        resolved = [(k, r) for k, r in con.execute(
            "SELECT kind, registry FROM findings WHERE resolved_run = ?", (last[0],))]
        new = con.execute("SELECT COUNT(*) FROM findings WHERE first_run = ?", (last[0],)).fetchone()[0]
        registries = con.execute("SELECT COUNT(*) FROM registries").fetchone()[0]
        return {"run": last[0], "status": last[1], "changes": last[2], "failed": failed, "resolved": resolved,
                "new": new, "registries": registries}
    finally:
        con.close()


# Shrinking rebuilds storage trees hundreds of times: only on request (the unshrunk example is still printed).
PHASES = [Phase.explicit, Phase.generate] + ([Phase.shrink] if os.environ.get("REGINDEX_HYPOTHESIS_SHRINK") else [])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          phases=PHASES)
@given(seed=st.integers(0, 2**16), registries=st.integers(1, 2),
       ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1000)), min_size=1, max_size=5))
def test_random_damage_never_aborts_never_wrongly_resolves_and_is_stable(seed, registries, ops):
    top = Path(tempfile.mkdtemp(prefix="regindex-prop-"))
    try:
        rng = random.Random(seed)
        base, db, outside = top / "storage", top / "r.db", top / "outside"
        outside.mkdir()
        writers, imgs = [], []
        for i in range(registries):
            w = StorageWriter(base / f"reg{i}")
            writers.append(w)
            for repo in ("team/app", "lib/x")[: rng.randint(1, 2)]:
                img = w.push_image(repo, rng)
                img.repo = repo  # type: ignore[attr-defined]
                w.tag(repo, "v1", img.digest)
                imgs.append((w, img))
            w.upload("team/app", "u0", __import__("datetime").datetime(2020, 1, 1,
                                                                         tzinfo=__import__("datetime").timezone.utc))
        code, _out, err = _scan(base, db)
        assert code in (0, 1), err
        for op, arg in ops:
            w, _img = imgs[arg % len(imgs)]
            try:
                damage(w, [i for ww, i in imgs if ww is w], op, arg, outside)
            except OSError:
                pass  # damage that earlier damage made impossible (writing through a symlink to a directory)

        code, _out, err = _scan(base, db)
        s = _state(db)
        assert code in (0, 1, 2) and "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) <= max(1, s["registries"]), err
        assert all(line.startswith(("error: ", "Error: ")) for line in lines), err
        assert s["status"] in ("complete", "partial", "failed")
        if s["status"] != "failed":
            # nothing of a registry that could not be fully read is resolved
            assert not [r for r in s["resolved"] if r[1] in s["failed"]], s
        else:
            assert s["resolved"] == [], s

        code2, _out2, err2 = _scan(base, db)
        s2 = _state(db)
        assert code2 == code and s2["status"] == s["status"], (err, err2)
        if s2["status"] != "failed":
            assert s2["new"] == 0 and s2["resolved"] == [] and s2["changes"] == 0, (s2, err2)
    finally:
        for dirpath, dirnames, _files in os.walk(top):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(top)


def test_property_examples_are_configurable():
    assert EXAMPLES >= 1
    assert json.dumps(EXAMPLES)
