"""Item 8 of issue 9: regindex reads manifest JSON exactly as docker-registry 2.8.2 does. Every case of
tests/gojson_cases.py is stored as a manifest and fetched by digest: 200 where regindex finds a manifest, a
refusal where it records an invalid one."""

from __future__ import annotations

import pytest

from regindex.manifests import parse_manifest
from regindex.sample import StorageWriter

from ..gojson_cases import CASES, CFG, LAY
from . import registry as rg

pytestmark = pytest.mark.realreg


def test_registry_and_regindex_agree_on_every_json_case(tmp_path):
    rg.require_registry()
    root = tmp_path / "reg"
    w = StorageWriter(root)
    digests = {}
    for name, (raw, _served) in CASES.items():
        digests[name] = w.put_blob(raw)
        w.link_revision("t/a", digests[name])
    for d in (CFG, LAY):
        w.link_layer("t/a", d)
    with rg.Registry(root) as reg:
        answers = {name: reg.get_manifest("t/a", d)[0] for name, d in digests.items()}
    for name, (raw, served) in CASES.items():
        pm = parse_manifest(raw)
        ours = pm.kind == "image" and pm.error is None
        assert (answers[name] == 200) == served == ours, (name, answers[name], pm)
