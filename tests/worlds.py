"""The generated registry every offline test starts from: one builder, one World (the check, gc-preview,
parity, PostgreSQL and reference tests all damage copies of it)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from regindex.sample import Image, Index, StorageWriter

BASE, API, WEB = "library/base", "team/app/api", "team/app/web"
ORPHAN_BYTES = b"left behind by an interrupted push"


@dataclass
class World:
    w: StorageWriter
    rng: random.Random
    base_layer: bytes  # shared by library/base and the amd64 children of both indexes
    base_img: Image  # library/base:latest
    api: Index  # team/app/api:v1, an OCI index with attestations
    web: Index  # team/app/web:v2, a Docker manifest list
    orphan: str | None = None  # blob data no link and no manifest names (build_world(orphan=True))

    @property
    def children(self) -> dict[str, list[Image]]:
        return {API: self.api.children, WEB: self.web.children}

    def repos_linking(self, digest: str) -> list[str]:
        repos = []
        for link in (self.w.v2 / "repositories").rglob("_layers/*/*/link"):
            if link.read_text() == digest:
                repos.append(str(link.parent.parent.parent.parent.relative_to(self.w.v2 / "repositories")))
        return sorted(repos)


def build_world(base: Path, name: str = "private", orphan: bool = False) -> World:
    """A healthy registry ``base/name``; the same name-independent digests every time (seed 11)."""
    rng = random.Random(11)
    w = StorageWriter(base / name)
    base_layer = rng.randbytes(3000)
    base_img = w.push_image(BASE, rng, [base_layer])
    w.tag(BASE, "latest", base_img.digest)
    api = w.push_index(API, rng, shared_layers=[base_layer])
    w.tag(API, "v1", api.digest)
    web = w.push_index(WEB, rng, fmt="docker", attestations=False, shared_layers=[base_layer])
    w.tag(WEB, "v2", web.digest)
    world = World(w, rng, base_layer, base_img, api, web)
    if orphan:
        world.orphan = w.put_blob(ORPHAN_BYTES)
    return world
