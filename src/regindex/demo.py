"""``regindex demo``: a sample storage tree, two nights of scans, a database to explore."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from regindex import db as dbmod
from regindex.errors import ConfigError
from regindex.sample import Image, Index, StorageWriter
from regindex.scan import ScanOptions, run_scan

MARKER = ".regindex-demo"


@dataclass
class DemoResult:
    storage: Path
    db_path: Path
    report_path: Path | None


def build_night1(base: Path, rng: random.Random) -> dict[str, object]:
    """Three registries as a platform team runs them, with what GC --delete-untagged and tag cleanup leave."""
    private = StorageWriter(base / "private")
    hub = StorageWriter(base / "dockerhub")
    ghcr = StorageWriter(base / "ghcr")
    base_layer = rng.randbytes(4096)  # one base layer shared by every private image

    base_img = private.push_image("library/base", rng, [base_layer])
    private.tag("library/base", "3.19", base_img.digest)
    private.tag("library/base", "latest", base_img.digest)

    api = private.push_index("team/app/api", rng, shared_layers=[base_layer])
    private.tag("team/app/api", "v1", api.digest)
    private.tag("team/app/api", "latest", api.digest)
    private.tag("team/app/api", "v1-amd64", api.children[0].digest)

    web = private.push_index("team/app/web", rng, fmt="docker", attestations=False, shared_layers=[base_layer])
    private.tag("team/app/web", "v2", web.digest)

    worker = private.push_index("team/app/worker", rng, with_media_type=False, shared_layers=[base_layer])
    private.tag("team/app/worker", "1.0", worker.digest)

    # An older release of api whose children GC --delete-untagged removed: revision directories gone,
    # child manifests kept (the index marks them), their own layers swept, _layers links left behind.
    old = private.push_index("team/app/api", rng, shared_layers=[base_layer])
    private.tag("team/app/api", "v0", old.digest)
    for child in old.children:
        private.remove_revision("team/app/api", child.digest)
    private.sweep()

    # Tag cleanup that stopped half-way: the tag directory stays, current/link is gone.
    canary = private.push_image("team/app/api", rng, [base_layer, rng.randbytes(900)])
    private.tag("team/app/api", "canary", canary.digest)
    private.remove_tag_current("team/app/api", "canary")

    private.upload("team/app/web", "7d3c1a3e-0b7e-4c55-9d1e-6c1f4a6b2e10", datetime.now(timezone.utc) - timedelta(days=9))

    # Pull-through caches: only what somebody pulled is there; missing children are expected.
    nginx = hub.push_index("library/nginx", rng, platforms=[("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")])
    hub.tag("library/nginx", "1.27", nginx.digest)
    for child in nginx.children[4:]:  # s390x and its attestation were never pulled through the cache
        hub.remove_revision("library/nginx", child.digest)
        hub.remove_blob(child.digest)
        for blob in child.blobs:
            if hub.path_exists_blob(blob):
                hub.remove_layer_link("library/nginx", blob)
                hub.remove_blob(blob)
    tool = ghcr.push_image("org/tool", rng)
    ghcr.tag("org/tool", "v3", tool.digest)
    return {"private": private, "hub": hub, "api": api, "web": web, "worker": worker, "old": old,
            "base_layer": base_layer, "base_img": base_img}


def apply_night2(state: dict[str, object], rng: random.Random) -> None:
    """Some repairs, some new damage: what a night of traffic and maintenance does."""
    private: StorageWriter = state["private"]  # type: ignore[assignment]
    web: Index = state["web"]  # type: ignore[assignment]
    worker: Index = state["worker"]  # type: ignore[assignment]
    old: Index = state["old"]  # type: ignore[assignment]
    # repaired: the half-deleted tag is cleaned up; the orphan layer links of the old release are removed.
    private.remove_tag("team/app/api", "canary")
    for child in old.children:
        for blob in child.blobs:
            if not private.path_exists_blob(blob):
                private.remove_layer_link("team/app/api", blob)
    # broken: an API DELETE of a child still named by the web index,
    private.delete_revision_link("team/app/web", web.children[1].digest)
    # a layer blob of the worker's arm64 image lost on disk,
    arm: Image = worker.children[2]
    private.remove_blob(arm.layers[-1])
    # and a new push that succeeded.
    new = private.push_image("team/app/cli", rng)
    private.tag("team/app/cli", "0.1", new.digest)


def run_demo(directory: Path, force: bool = False, echo: Callable[[str], None] = print) -> DemoResult:
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise ConfigError(f"{directory} exists and is not a regindex demo directory; choose another")
        if not force:
            raise ConfigError(f"{directory} already holds a demo; pass --force to rebuild it")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("built by regindex demo\n")
    storage = directory / "storage"
    db_path = directory / "regindex.db"
    rng = random.Random(2026)
    state = build_night1(storage, rng)
    engine = dbmod.open_writer(str(db_path))
    opts = ScanOptions(base=storage, caches=frozenset({"dockerhub", "ghcr"}))
    try:
        first = run_scan(engine, opts)
        echo(f"night 1: run {first.run_id}: {first.counts.new} findings, {first.open_errors} open errors")
        apply_night2(state, rng)
        second = run_scan(engine, opts)
        c = second.counts
        echo(f"night 2: run {second.run_id}: {c.new} new, {c.persisting} persisting, {c.resolved} resolved, "
             f"{second.open_errors} open errors")
        from regindex import render

        report_path: Path | None = Path(render.write_dated(engine, directory / "reports"))
    finally:
        engine.dispose()
    return DemoResult(storage, db_path, report_path)
