"""Item 8 of issue 9: manifest JSON is read by Go's rules (distribution 2.8.2), in bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from regindex.manifests import parse_manifest

from .gojson_cases import CASES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_manifest_json_is_read_like_the_registry(name):
    raw, served = CASES[name]
    pm = parse_manifest(raw)
    if served:
        assert pm.kind == "image" and pm.error is None, pm
    else:
        assert pm.kind in ("invalid", "unknown") and pm.error, pm


def test_deep_nesting_is_not_a_false_truncated_manifest(base, private, rng, scan, findings):
    raw, served = CASES["nesting-9990"]
    assert served
    digest = private.put_blob(raw.replace(b"c" * 64, b"e" * 64))
    private.link_revision("a", digest)
    private.tag("a", "deep", digest)
    scan()
    assert [f for f in findings("--kind", "truncated_manifest") if f["digest"] == digest] == []


MEMORY_PROBE = r"""
import resource, sys
from regindex.manifests import parse_manifest
where = sys.argv[1]
body = b"{}," * 21_000_000 + b"{}"
if where == "layers":
    raw = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":['
           + body + b"]}")
else:
    raw = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":[' + body
           + b'],"config":{},"layers":[]}')
del body
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pm = parse_manifest(raw)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(raw), pm.kind, pm.bad_refs, (after - before) // 1024)
"""


@pytest.mark.parametrize("where", ["layers", "unknown-field"])
def test_a_60_mib_manifest_of_empty_objects_is_read_in_bounded_memory(where):
    """Python's json builds 21 million dicts (1.7 GB peak); the registry serves the document (200)."""
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, where], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    size, kind, bad_refs, grew_mib = r.stdout.split()
    assert int(size) > 60_000_000 and kind == "image"
    assert int(bad_refs) == (21_000_002 if where == "layers" else 1)  # empty descriptors and the empty config
    assert int(grew_mib) < 200, f"parsing grew the peak memory by {grew_mib} MiB"


def test_folded_keys_are_remembered_within_bounds_and_still_match_past_them():
    """Keys are folded once and remembered, but a document's keys are hostile: the memo never holds a long
    key nor more than its bound of keys, and past the bound keys still match case-insensitively."""
    from regindex import gojson

    saved = dict(gojson._FOLDED)
    gojson._FOLDED.clear()
    try:
        long_key = "K" * 10_000
        many = ",".join(f'"Key{i}":{i}' for i in range(3 * gojson._FOLDED_MAX))
        doc = gojson.loads(f'{{"{long_key}":1,{many},"MEDIATYPE":"x"}}'.encode())
        assert len(gojson._FOLDED) == gojson._FOLDED_MAX
        assert long_key not in gojson._FOLDED and "MEDIATYPE" not in gojson._FOLDED
        assert doc.get("mediaType") == "x" and "MediaType" in doc
        assert doc.get("k" * 10_000) == 1
        assert doc.get(f"KEY{3 * gojson._FOLDED_MAX - 1}") == 3 * gojson._FOLDED_MAX - 1
    finally:
        gojson._FOLDED.clear()
        gojson._FOLDED.update(saved)
