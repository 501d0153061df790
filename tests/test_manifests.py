import json

import pytest

from regindex.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def doc(**kw):
    return json.dumps({"schemaVersion": 2, **kw}).encode()


@pytest.mark.parametrize("mt", [OCI_INDEX, DOCKER_LIST, None])
def test_index_with_or_without_media_type(mt):
    body = {"manifests": [{"digest": D1, "size": 10, "platform": {"os": "linux", "architecture": "arm64",
                                                                  "variant": "v8"}},
                          {"digest": D2, "size": 5, "platform": {"os": "unknown", "architecture": "unknown"}}]}
    if mt:
        body["mediaType"] = mt
    pm = parse_manifest(doc(**body))
    assert pm.kind == "index" and pm.error is None
    assert [(r.role, r.digest, r.platform) for r in pm.refs] == [
        ("child", D1, "linux/arm64/v8"), ("child", D2, "unknown/unknown")]


@pytest.mark.parametrize("mt", [OCI_MANIFEST, DOCKER_MANIFEST, None])
def test_image(mt):
    body = {"config": {"digest": D1, "size": 3},
            "layers": [{"digest": D2, "size": 4}, {"digest": D3, "size": 9, "urls": ["https://example.com/x"]}],
            "subject": {"digest": D1, "size": 3}}
    if mt:
        body["mediaType"] = mt
    pm = parse_manifest(doc(**body))
    assert pm.kind == "image"
    roles = [(r.role, r.digest, r.is_foreign if hasattr(r, "is_foreign") else r.foreign) for r in pm.refs]
    assert roles == [("config", D1, False), ("layer", D2, False), ("layer", D3, True), ("subject", D1, False)]


def test_schema1():
    pm = parse_manifest(json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": D1}, {"blobSum": D1},
                                                                     {"blobSum": D2}]}).encode())
    assert pm.kind == "schema1" and [r.digest for r in pm.refs] == [D1, D2]


def test_large_index_is_parsed_whole():
    children = [{"digest": D1, "size": 1, "platform": {"os": "linux", "architecture": f"a{i}"}} for i in range(20000)]
    raw = doc(mediaType=OCI_INDEX, manifests=children)
    assert len(raw) > 1024 * 1024
    pm = parse_manifest(raw)
    assert pm.kind == "index" and len(pm.refs) == 20000


@pytest.mark.parametrize(
    "raw, kind, err",
    [
        (b"", "invalid", "empty"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manif', "invalid",
         "not valid JSON"),
        (b"[1, 2]", "invalid", "not an object"),
        (doc(mediaType="application/x-foo"), "unknown", "not a manifest type"),
        (b'{"architecture": "amd64", "os": "linux"}', "unknown", "schemaVersion None"),  # an image config
        (b"{}", "unknown", "schemaVersion"),
        (json.dumps({"schemaVersion": 3, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode(), "unknown",
         "schemaVersion 3"),
    ],
)
def test_bad_manifests_are_named_not_skipped(raw, kind, err):
    pm = parse_manifest(raw)
    assert pm.kind == kind and err in (pm.error or "")


def test_bad_descriptors_are_counted():
    pm = parse_manifest(doc(mediaType=OCI_INDEX, manifests=[{"digest": "sha256:nope"}, {"digest": D1}, {}]))
    assert pm.bad_refs == 2 and [r.digest for r in pm.refs] == [D1]
    # a descriptor that is not an object is a type error for Go's decoder: the registry refuses the manifest
    pm = parse_manifest(doc(mediaType=OCI_INDEX, manifests=[{"digest": D1}, 5]))
    assert pm.kind == "invalid" and "cannot decode number" in (pm.error or "")


def test_schema_version_2_without_media_type_or_structure_is_an_image():
    """Registry 2.8 reads it as an OCI image manifest (and serves it)."""
    pm = parse_manifest(doc(foo=1))
    assert (pm.kind, pm.error, pm.refs) == ("image", None, ())
