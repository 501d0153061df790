"""Real-registry test harness, the probe: ask the running registry (API and ``skopeo copy``) for everything a
world must serve and list what failed; and what ``garbage-collect --delete-untagged`` should remove."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from typing import Iterable

from .images import World, skopeo
from .registry import MANIFEST_ACCEPT, Registry, sha256_digest

# ================================================================================================== probe
@dataclasses.dataclass(frozen=True)
class Failure:
    repository: str
    reference: str  # "sha256:..." or a tag name
    kind: str  # "manifest_digest" | "manifest_tag" | "blob" | "copy_tag"
    detail: str


def _as_expected(world_or_expected) -> dict:
    if isinstance(world_or_expected, World):
        return world_or_expected.expected()
    return world_or_expected


def _probe_manifest(reg: Registry, repo: str, ref: str, want_digest: str | None, kind: str) -> list[Failure]:
    """HEAD + GET one manifest; at most one Failure (its detail names every problem seen)."""
    problems = []
    path = f"/v2/{repo}/manifests/{ref}"
    hdrs = {"Accept": MANIFEST_ACCEPT}
    try:
        status, _, _ = reg.request("HEAD", path, hdrs)
        if status != 200:
            problems.append(f"HEAD {status}")
        status, h, body = reg.request("GET", path, hdrs)
    except OSError as e:
        problems.append(f"request error: {e!r}")
    else:
        got = sha256_digest(body)
        if status != 200:
            problems.append(f"GET {status}: {body[:200]!r}")
        elif want_digest is not None and got != want_digest:
            problems.append(f"GET 200 but body is {got} ({len(body)} bytes), want {want_digest}")
        elif want_digest is None and h.get("docker-content-digest") not in (None, got):
            problems.append(f"GET 200, body {got} != Docker-Content-Digest {h['docker-content-digest']}")
    return [Failure(repo, ref, kind, "; ".join(problems))] if problems else []


def _probe_blob(reg: Registry, repo: str, digest: str, size: int) -> list[Failure]:
    try:
        status, _, body = reg.request("GET", f"/v2/{repo}/blobs/{digest}")
    except OSError as e:
        return [Failure(repo, digest, "blob", f"request error: {e!r}")]
    if status != 200:
        return [Failure(repo, digest, "blob", f"GET {status}: {body[:200]!r}")]
    got = sha256_digest(body)
    if len(body) != size or got != digest:
        return [Failure(repo, digest, "blob", f"GET 200 with {len(body)} bytes hashing to {got}, want {size} bytes")]
    return []


def copy_tag(reg: Registry, repo: str, tag: str) -> subprocess.CompletedProcess:
    """``skopeo copy --all --preserve-digests docker://URL/repo:tag dir:TMP`` (the pull a client would do)."""
    with tempfile.TemporaryDirectory(prefix="regindex-pull-") as tmp:
        return skopeo(
            [
                "copy", "--all", "--preserve-digests", "--quiet", "--src-tls-verify=false",
                f"docker://{reg.url}/{repo}:{tag}", f"dir:{tmp}/img",
            ]
        )


def probe(registry: Registry, world_or_expected, *, copy: bool = True) -> list[Failure]:
    """Ask the registry for everything ``world_or_expected`` says it should serve; return what fails.

    ``world_or_expected`` is a World or its ``expected()`` dict. Per repository: HEAD+GET every manifest by
    digest (body must hash to the digest), HEAD+GET every known tag and every tag ``tags/list`` names (a known
    tag's body must hash to its recorded digest), GET every blob (body length and hash must match), and
    ``skopeo copy --all`` every tag (``copy=False`` skips that, the slow part). Never asserts."""
    expected = _as_expected(world_or_expected)
    failures: list[Failure] = []
    for repo, content in sorted(expected.items()):
        for digest in sorted(content.get("manifests", {})):
            failures += _probe_manifest(registry, repo, digest, digest, "manifest_digest")
        known_tags = dict(content.get("tags", {}))
        try:
            listed = registry.tags(repo) or []
        except OSError:
            listed = []
        all_tags = sorted(set(known_tags) | set(listed))
        for tag in all_tags:
            failures += _probe_manifest(registry, repo, tag, known_tags.get(tag), "manifest_tag")
        for digest, size in sorted(content.get("blobs", {}).items()):
            failures += _probe_blob(registry, repo, digest, size)
        if copy:
            for tag in all_tags:
                try:
                    r = copy_tag(registry, repo, tag)
                except subprocess.TimeoutExpired as e:
                    failures.append(Failure(repo, tag, "copy_tag", f"skopeo timed out: {e}"))
                    continue
                if r.returncode != 0:
                    failures.append(Failure(repo, tag, "copy_tag", f"exit {r.returncode}: {r.stderr.strip()}"))
    return failures


def failure_keys(failures: Iterable[Failure]) -> set[tuple[str, str, str]]:
    """{(repository, reference, kind)}: handy for comparing against predictions."""
    return {(f.repository, f.reference, f.kind) for f in failures}


def predict_gc_delete_untagged(world: World) -> set[tuple[str, str, str]]:
    """failure_keys() that registry-behaviour.md predicts for ``garbage-collect --delete-untagged`` on an
    untouched ``world``: every manifest that is not a tag's target in its repo loses its revision; every
    config/layer that no tagged manifest (in any repo) names directly is swept, in every repo linking it;
    ``skopeo copy`` of a tag fails when anything below it is gone. A tag itself keeps answering."""
    marked: set[str] = set()
    for rc in world.repos.values():
        for dgst in set(rc.tags.values()):
            m = rc.manifests[dgst]
            marked.add(dgst)
            marked.update(m.children)
            marked.update(m.blobs)
    out: set[tuple[str, str, str]] = set()
    for rc in world.repos.values():
        tagged = set(rc.tags.values())
        for dgst in rc.manifests:
            if dgst not in tagged:
                out.add((rc.name, dgst, "manifest_digest"))
        for dgst in rc.blobs:
            if dgst not in marked:
                out.add((rc.name, dgst, "blob"))

        def broken(dgst: str, top: bool) -> bool:
            m = rc.manifests[dgst]
            if not top and dgst not in tagged:
                return True
            return any(b not in marked for b in m.blobs) or any(broken(c, False) for c in m.children)

        for tag, dgst in rc.tags.items():
            if broken(dgst, True):
                out.add((rc.name, tag, "copy_tag"))
    return out
