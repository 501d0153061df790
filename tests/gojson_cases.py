"""Manifest bytes and what docker-registry 2.8.2 answers for each when it is stored and fetched by digest
(observed: 200 served, 500 refused; tests/realreg/test_gojson_agreement.py re-checks it against the binary)."""

from __future__ import annotations

import json

OCI = "application/vnd.oci.image.manifest.v1+json"
CFG = "sha256:" + "c" * 64
LAY = "sha256:" + "d" * 64


def doc(**over: object) -> bytes:
    d: dict[str, object] = {
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": CFG, "size": 78},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAY, "size": 11}]}
    d.update(over)
    return json.dumps(d).encode()


BASE = doc()
MT = b'"mediaType": "' + OCI.encode() + b'"'


def _tail(extra: bytes) -> bytes:
    return BASE[:-1] + b", " + extra + b"}"


# name -> (bytes, served by the registry?)
CASES: dict[str, tuple[bytes, bool]] = {
    "plain": (BASE, True),
    "bom": (b"\xef\xbb\xbf" + BASE, False),
    "utf16": (BASE.decode().encode("utf-16"), False),
    "utf16le-nobom": (BASE.decode().encode("utf-16-le"), False),
    "nan-in-unknown-field": (_tail(b'"x": NaN'), False),
    "infinity-in-unknown-field": (_tail(b'"x": -Infinity'), False),
    "float-size": (BASE.replace(b'"size": 11', b'"size": 11.0'), False),
    "exponent-size": (BASE.replace(b'"size": 11', b'"size": 1.1e1'), False),
    "string-size": (BASE.replace(b'"size": 11', b'"size": "11"'), False),
    "negative-size": (BASE.replace(b'"size": 11', b'"size": -11'), True),
    "size-beyond-int64": (BASE.replace(b'"size": 11', b'"size": 18446744073709551616'), False),
    "schemaVersion-2.0": (BASE.replace(b'"schemaVersion": 2', b'"schemaVersion": 2.0'), False),
    "schemaVersion-string": (BASE.replace(b'"schemaVersion": 2', b'"schemaVersion": "2"'), False),
    "mediaType-number": (BASE.replace(MT, b'"mediaType": 5'), False),
    "mediaType-null": (BASE.replace(MT, b'"mediaType": null'), True),
    "MEDIATYPE-other-case": (BASE.replace(MT, b'"MEDIATYPE": "application/x-bogus"'), False),
    "duplicate-mediaType-last-wins": (_tail(b'"mediaType": "application/x-bogus"'), False),
    "long-s-key": (BASE.replace(b'"schemaVersion"', '"\u017fchemaVersion"'.encode()), True),
    "nesting-5000": (_tail(b'"x": ' + b"[" * 5000 + b"]" * 5000), True),
    "nesting-9990": (_tail(b'"x": ' + b"[" * 9990 + b"]" * 9990), True),
    "nesting-10001": (_tail(b'"x": ' + b"[" * 10001 + b"]" * 10001), False),
    "objects-nesting-9000": (_tail(b'"x": ' + b'{"a":' * 9000 + b"1" + b"}" * 9000), True),
    "invalid-utf8-in-string": (_tail(b'"x": "a\xff\xfeb"'), True),
    "invalid-utf8-in-annotation": (_tail(b'"annotations": {"k": "a\xffb"}'), True),
    "invalid-utf8-outside-strings": (_tail(b'"x": \xff'), False),
    "lone-surrogate": (_tail(b'"annotations": {"k": "\\ud800"}'), True),
    "annotation-number": (_tail(b'"annotations": {"k": 5}'), False),
    "layers-number": (BASE.replace(b'"layers": [', b'"layers": 5, "y": ['), False),
    "layers-null": (BASE.replace(b'"layers": [', b'"layers": null, "y": ['), True),
    "trailing-garbage": (BASE + b" x", False),
    "trailing-whitespace": (BASE + b" \n\t", True),
    "leading-whitespace": (b" \n" + BASE, True),
    "urls-number": (BASE.replace(b'"size": 11', b'"size": 11, "urls": [5]'), False),
    "platform-number": (BASE.replace(b'"size": 11', b'"size": 11, "platform": 5'), False),
    "digest-number": (BASE.replace(b'"size": 78', b'"size": 78, "digest": 5'), False),
    "config-null": (doc(config=None), True),
    "config-array": (doc(config=[]), False),
    "empty-object-layers": (doc(layers=[{}] * 3), True),
    "subject-number (not a 2.8.2 field)": (_tail(b'"subject": 5'), True),
    "control-character-in-string": (_tail(b'"x": "a\x01b"'), False),
}
