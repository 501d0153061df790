import pytest

from regindex.layout import (
    BlobDataPath,
    LayerLinkPath,
    LinkState,
    RevisionLinkPath,
    TagCurrentLinkPath,
    TagIndexLinkPath,
    UploadDataPath,
    UploadStartedAtPath,
    is_digest,
    is_empty_digest,
    parse_link,
    path_for,
    valid_repo_component,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "spec, expected",
    [
        (BlobDataPath(D), f"blobs/sha256/ab/{'ab' * 32}/data"),
        (LayerLinkPath("team/app", D), f"repositories/team/app/_layers/sha256/{'ab' * 32}/link"),
        (RevisionLinkPath("a", D), f"repositories/a/_manifests/revisions/sha256/{'ab' * 32}/link"),
        (TagCurrentLinkPath("a/b", "v1.0"), "repositories/a/b/_manifests/tags/v1.0/current/link"),
        (TagIndexLinkPath("a", "latest", D), f"repositories/a/_manifests/tags/latest/index/sha256/{'ab' * 32}/link"),
        (UploadDataPath("a", "u-1"), "repositories/a/_uploads/u-1/data"),
        (UploadStartedAtPath("a", "u-1"), "repositories/a/_uploads/u-1/startedat"),
        (BlobDataPath("sha512:" + "cd" * 64), f"blobs/sha512/cd/{'cd' * 64}/data"),
    ],
)
def test_paths(spec, expected):
    assert str(path_for(spec)) == expected


@pytest.mark.parametrize(
    "raw, state, target",
    [
        (D.encode(), LinkState.OK, D),
        (b"", LinkState.EMPTY, None),
        (D.encode() + b"\n", LinkState.WHITESPACE, D),
        (b" " + D.encode(), LinkState.WHITESPACE, D),
        (b"sha256:xyz", LinkState.GARBAGE, None),
        (b"\xff\xfe", LinkState.GARBAGE, None),
        (("sha256:" + "AB" * 32).encode(), LinkState.GARBAGE, None),  # digests are lowercase
        (("sha384:" + "a" * 96).encode(), LinkState.OK, "sha384:" + "a" * 96),
        (("sha256:" + "a" * 63).encode(), LinkState.GARBAGE, None),
    ],
)
def test_parse_link(raw, state, target):
    parsed = parse_link(raw)
    assert parsed.state is state
    assert parsed.target == target


def test_garbage_preview_is_printable_and_bounded():
    parsed = parse_link(b"\x00<script>" + b"x" * 500)
    assert parsed.preview is not None and parsed.preview.isprintable() and len(parsed.preview) < 80


def test_digests():
    assert is_digest(D)
    assert not is_digest("sha256:" + "ab" * 31)
    assert not is_digest("md5:" + "ab" * 16)
    assert is_empty_digest("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert not is_empty_digest(D)


@pytest.mark.parametrize("name, ok", [("app", True), ("my-app", True), ("a__b", True), ("a.b", True),
                                       ("App", False), ("-a", False), ("a_", False), ("<script>", False)])
def test_repo_component(name, ok):
    assert valid_repo_component(name) is ok


def test_names_with_trailing_newline_are_refused():
    from regindex.layout import is_hex_for, valid_tag

    assert not valid_repo_component("app\n")
    assert not valid_tag("v1\n")
    assert not valid_tag("vé")
    assert not is_hex_for("sha256", "ab" * 31 + "a\n")
