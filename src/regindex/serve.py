"""``regindex serve``: the database in Datasette, read-only, with its documentation and the post-mortem queries.

Datasette (``pip install '.[web]'``) opens a SQLite file read-only (``mode=ro``); the metadata shipped here
describes every table, view and column in the README's words, facets the lists on kind, severity, registry
and state, and offers ``cookbook.CANNED`` as canned queries with parameters.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from regindex.cookbook import CANNED
from regindex.errors import ConfigError

FACETS = ("kind", "severity", "registry", "state", "status")
HIDDEN = ("alembic_version", "sqlite_stat1")

# Words used for the same column in many tables.
_EPISODE_FIRST = "the first run that saw the row"
_EPISODE_GONE = "the first run that no longer saw it (NULL while present)"
_COMMON = {
    "id": "row id",
    "registry_id": "the registry (registries.id)",
    "registry": "the registry's name (the directory under BASE)",
    "registry_role": "authoritative or cache",
    "repository": "the repository name (names nest, e.g. team/app/api)",
    "first_run": _EPISODE_FIRST,
    "gone_run": _EPISODE_GONE,
    "digest": "the content digest (alg:hex)",
    "size": "size in bytes",
    "mtime": "when the data file last changed: the later of its modification and status-change times (seconds since the epoch; a client can set the first back, not the second)",
    "tag": "the tag name",
}

# table or view -> (description: the README's words, {column: description})
DOCS: dict[str, tuple[str, dict[str, str]]] = {
    "runs": (
        "one per scan: `started_at`, `finished_at`, `status` (`running`, `complete`, `partial`, `failed`), "
        "`base`, `options` (JSON), counts (`registries`, `repositories`, `links`, `blobs`, `blob_bytes`, "
        "`manifests_parsed`, `uploads`, `inventory_changes`, `findings_open`, `findings_new`, "
        "`findings_resolved`), `open_errors` (the unacknowledged open errors the summary line printed), "
        "`duration_seconds`, `error`, storage work (`files_stat`, `files_read`, `files_skipped`: link files not "
        "read because unchanged), `full_scan` (every link file read: `--full`, `full_scan_every`, a first scan; "
        "NULL before it was recorded)",
        {
            "id": "the run number",
            "started_at": "when the scan started (UTC)",
            "finished_at": "when it finished (UTC)",
            "status": "running, complete, partial (a registry could not be read: none of its findings resolved) "
                      "or failed (changed nothing)",
            "base": "the BASE directory scanned",
            "options": "the scan's options (JSON)",
            "tool_version": "the regindex version that ran it",
            "registries": "registries scanned",
            "repositories": "repositories seen",
            "links": "link files seen",
            "blobs": "blob data files seen",
            "blob_bytes": "bytes of blob data",
            "manifests_parsed": "manifests parsed in this run (new content only)",
            "uploads": "upload directories seen",
            "inventory_changes": "inventory rows that appeared or vanished",
            "findings_open": "findings open after the run, every severity",
            "open_errors": "unacknowledged open errors after the run, as its summary line printed them",
            "findings_new": "findings opened in the run (re-opened included)",
            "findings_resolved": "findings resolved in the run",
            "duration_seconds": "how long it took",
            "error": "why it failed or was partial",
            "files_stat": "files and directories stat'ed or listed",
            "files_read": "files read",
            "files_skipped": "link files not read: unchanged since a scan read them (incremental)",
            "full_scan": "the run read every link file (--full, full_scan_every, or before 0006)",
        },
    ),
    "registries": (
        "`name` (the directory under BASE), `root`, `role` (`authoritative` or `cache`), `first_run`, "
        "`last_scanned_run`, `checks_fingerprint` (what its open findings were last derived under: an unchanged "
        "night under the same one carries them forward), `reached_run` (the run that last recorded its "
        "`manifest_reach`; NULL: the next scan walks its manifests from every root)",
        {
            "name": "the directory under BASE",
            "root": "its docker/registry/v2 directory",
            "role": "authoritative or cache (a pull-through cache: a missing index child is info)",
            "last_scanned_run": "the last run that scanned it completely",
            "checks_fingerprint": "checks code, schema, role, options and severity rules its findings were "
            "derived under",
            "reached_run": "the run that last recorded its manifest_reach (NULL: never)",
        },
    ),
    "run_registries": (
        "per run and registry: `status` (`complete`/`failed`), `error`, counts, `inventory_added`, "
        "`inventory_removed`",
        {
            "run_id": "the run (runs.id)",
            "status": "complete or failed",
            "error": "why it failed",
            "repositories": "repositories seen",
            "links": "link files seen",
            "blobs": "blob data files seen",
            "blob_bytes": "bytes of blob data",
            "uploads": "upload directories seen",
            "files_seen": "files read or listed",
            "inventory_added": "inventory rows that appeared",
            "inventory_removed": "inventory rows that vanished",
        },
    ),
    "repositories": (
        "episodes of repositories (a directory holding `_layers`, names nest): `name`, `has_manifests`, "
        "`has_tags_dir`",
        {
            "name": "the repository name (names nest)",
            "has_manifests": "it has a _manifests directory",
            "has_tags_dir": "it has _manifests/tags",
        },
    ),
    "links": (
        "episodes of link files: `repository`, `kind` (`layer`, `revision`, `tag_current`, `tag_index`), `tag`, "
        "`path_digest` (the digest spelled by the path; NULL for `tag_current`), `target_digest` (the digest in "
        "the file), `state` (`ok`, `empty`, `whitespace`, `garbage`, `unreadable`, `absent` = the directory "
        "without its `link`, the trace of an API DELETE), `preview` (printable bad bytes), `changed` (the "
        "file's change time, epoch seconds, when read if settled: what an incremental scan compares; NULL = read "
        "it next time)",
        {
            "kind": "layer, revision, tag_current or tag_index",
            "tag": "the tag (tag links only)",
            "path_digest": "the digest spelled by the path; NULL for tag_current",
            "target_digest": "the digest in the file",
            "state": "ok, empty, whitespace, garbage, unreadable, absent = the directory without its link, the "
                     "trace of an API DELETE",
            "preview": "printable bad bytes",
            "changed": "the file's change time (epoch seconds) when read, kept when settled: an incremental scan "
                       "that stats the same time reuses the row without reading the file",
        },
    ),
    "blobs": (
        "episodes of blob data: `digest`, `size`, `mtime` (a change of size is a new episode; `mtime` is when the "
        "data file last changed, the later of its mtime and ctime, which no client can set back)",
        {"size": "size in bytes (a change of size is a new episode)"},
    ),
    "uploads": (
        "episodes of `_uploads/<uuid>`: `started_at`, `started_raw`, `size`",
        {
            "uuid": "the upload's directory name",
            "started_at": "the upload's start time (its startedat file, UTC)",
            "started_raw": "the startedat file as read",
            "size": "bytes of its data file",
        },
    ),
    "anomalies": (
        "episodes of entries regindex did not index: `path`, `reason`",
        {"path": "the entry, relative to the registry root", "reason": "why regindex did not index it"},
    ),
    "manifests": (
        "one per parsed (digest, size): `kind` (`image`, `index`, `schema1`, `unknown`, `invalid`), "
        "`media_type`, `artifact_type`, `parse_error`, `bad_refs`, `parsed_run`",
        {
            "kind": "image, index, schema1, unknown or invalid",
            "media_type": "the manifest's media type",
            "artifact_type": "its artifactType, if any",
            "parse_error": "why it is not a valid manifest",
            "bad_refs": "descriptors that could not be read",
            "parsed_run": "the run that parsed it",
        },
    ),
    "manifest_reach": (
        "per registry, every `digest` its current tree names as a manifest, since `first_run`: the targets of "
        "revision and tag links, the revisions' path digests, the children and subjects of the reached manifests "
        "(as their data reads) and the targets of `_layers` aliases. A stored parse counts for a registry only at "
        "the digests it reaches: findings depend on the tree, not on what was ever parsed",
        {
            "registry_id": "the registry (registries.id)",
            "digest": "a digest its tree names as a manifest",
            "first_run": "the run since which it has been reached without a break",
        },
    ),
    "manifest_refs": (
        "descriptors in a manifest: `role` (`child`, `config`, `layer`, `subject`), `position`, `digest`, "
        "`media_type`, `size`, `platform` (`os/arch[/variant]`), `is_foreign`",
        {
            "manifest_id": "the manifest (manifests.id)",
            "role": "child, config, layer or subject",
            "position": "its place in the manifest",
            "digest": "the digest it names",
            "media_type": "its media type",
            "size": "the size it declares",
            "platform": "os/arch[/variant]",
            "is_foreign": "a foreign (non-distributable) layer",
        },
    ),
    "blob_buckets": (
        "scan bookkeeping, not findings or inventory: per registry and `bucket` (`sha256:` and four hex digits), "
        "what the last scan saw of those blobs (`blobs`, `bytes`, `checksum` of their digest, size and change time), so "
        "the next one skips the buckets that stat the same",
        {
            "bucket": "an algorithm and the first four hex digits of the digests it holds",
            "blobs": "how many blobs the last scan saw in it",
            "bytes": "their data's bytes",
            "checksum": "of the blobs' digest, size and mtime, sorted (blake2b-128)",
        },
    ),
    "link_sums": (
        "scan bookkeeping, not findings or inventory: per registry and `repository`, what the last scan saw of its "
        "link files (`links`: how many; `checksum` of each one's kind, tag, path digest and change time), kept "
        "when every one had a settled change time, so the next scan asks nothing about a repository whose link "
        "files stat the same",
        {
            "repository": "the repository's name",
            "links": "how many link files the last scan saw in it",
            "checksum": "of each link file's kind, tag, path digest and change time, sorted (blake2b-128)",
        },
    ),
    "blob_verifications": (
        "content hashes, one per registry and digest, recomputed only when size or change time change (manifests "
        "whenever read; every blob with `--verify-content`): `digest`, `size`, `mtime`, `computed_digest`, "
        "`parse_error` (for manifest data that is not its digest's content), `verified_run`",
        {
            "computed_digest": "the hash of the data as read",
            "parse_error": "for manifest data that is not its digest's content",
            "verified_run": "the run that hashed it",
        },
    ),
    "findings": (
        "episodes of problems: `key` (stable identity), `episode` (>1 = re-opened), `kind`, `severity`, "
        "`registry`, `repository`, `digest`, `tag`, `parent_digest`, `detail` (JSON evidence), `hint`, "
        "`first_run`, `last_seen_run`, `resolved_run`, `policy` (the severity policy rule that graded it; "
        "NULL for the built-in default)",
        {
            "key": "stable identity (the same problem keeps its key across episodes)",
            "episode": ">1 = re-opened",
            "kind": "the finding kind (see the README's table of kinds)",
            "severity": "error (a pull fails now), warning or info",
            "registry": "the registry's name",
            "digest": "the digest the finding is about",
            "parent_digest": "the index or manifest that names it",
            "detail": "JSON evidence",
            "hint": "what to do",
            "first_run": "the run that opened this episode",
            "last_seen_run": "the last run that saw it",
            "resolved_run": "the run that no longer saw it (NULL while open)",
            "policy": "the config rule that graded its severity (NULL: the built-in default)",
        },
    ),
    # Tables other branches add (issue 7: run phases; issue 8: repairs and acknowledgements): described here so
    # that the metadata covers them once they land; entries for tables a database lacks are ignored.
    "run_phases": (
        "wall time of each phase of a run (discover, crawl, load, manifests, verify, scope, checks, history), "
        "summed over its registries",
        {"run_id": "the run (runs.id)",
         "phase": "discover, crawl, load, manifests, verify, scope (a part of checks), checks or history",
         "position": "the phase's order in the run", "seconds": "wall time spent in it",
         "items": "what the phase worked through (files, inventory changes, manifests, repositories derived in "
                  "scope, findings)"},
    ),
    "repair_actions": (
        "what `repair --apply` / `--undo` did: `batch`, `at`, `os_user`, `based_on_run`, `finding_id`, `finding_key`, `kind`, `registry`, `repository`, `digest`, `action` (`quarantine`, `restore_revision_link`, `undo`), `path` (relative to the registry's v2 root), `quarantine_path`, `outcome` (`done`, `skipped`, `refused`, `failed`), `reason`, `detail` (JSON: files, modes, directories created), `undone_by`",
        {"batch": "the repair run it belongs to", "at": "when (UTC)", "os_user": "who ran it",
         "based_on_run": "the scan whose findings it acted on", "finding_id": "the finding episode (findings.id)",
         "finding_key": "the finding's stable key", "kind": "the finding kind",
         "action": "quarantine, restore_revision_link or undo", "path": "relative to the registry's v2 root",
         "quarantine_path": "where the quarantined directory went (absolute)",
         "outcome": "done, skipped (the condition no longer held), refused or failed", "reason": "why",
         "detail": "JSON: files moved, modes, directories created", "undone_by": "the undo action, if any"},
    ),
    "acknowledgements": (
        "`regindex ack`: `finding_id` (the episode), `finding_key`, `reason`, `until`, `os_user`, `created_at`, `ended_at` / `ended_by` (`unack`, or a replacing ack); active while not ended, not expired and the finding open",
        {"finding_id": "the finding episode (findings.id)", "finding_key": "the finding's stable key",
         "reason": "why it is accepted", "until": "when the acknowledgement lapses (UTC; NULL: for good)",
         "os_user": "who acknowledged it", "created_at": "when (UTC)", "ended_at": "when unack ended it",
         "ended_by": "who ended it"},
    ),
    "current_repositories": ("the inventory as of each registry's latest scan, with the registry name", {
        "has_manifests": "it has a _manifests directory", "has_tags_dir": "it has _manifests/tags"}),
    "current_links": ("the inventory as of each registry's latest scan, with the registry name", {
        "kind": "layer, revision, tag_current or tag_index",
        "path_digest": "the digest spelled by the path; NULL for tag_current",
        "target_digest": "the digest in the file",
        "state": "ok, empty, whitespace, garbage, unreadable, absent = the directory without its link",
        "preview": "printable bad bytes"}),
    "current_blobs": ("the inventory as of each registry's latest scan, with the registry name", {}),
    "current_uploads": ("the inventory as of each registry's latest scan, with the registry name", {
        "uuid": "the upload's directory name", "started_at": "the upload's start time (UTC)",
        "started_raw": "the startedat file as read", "size": "bytes of its data file"}),
    "manifest_children": (
        "every child of every parsed index: `index_digest`, `position`, `child_digest`, `platform`, `child_size`",
        {
            "index_digest": "the index", "index_kind": "the index's manifest kind",
            "index_media_type": "the index's media type", "position": "the child's place in the index",
            "child_digest": "the child manifest's digest", "child_media_type": "the media type the index declares",
            "child_size": "the size the index declares", "platform": "os/arch[/variant]",
        },
    ),
    "manifest_serving": (
        "how repo X answers GET of a manifest digest: `via` (`revision`, or `layer` when there is no revision "
        "link file), `link_state`, `data_size`, `manifest_kind`, `status` (`ok`, `corrupt_link`, `data_missing`, "
        "`data_empty`, `unparsable`, `digest_mismatch`, `misdirected` (the link names another digest: 200 with the "
        "wrong bytes), `not_parsed`)",
        {
            "digest": "the manifest digest asked for", "via": "revision, or layer when there is no revision link file",
            "link_state": "the state of the link used", "target_digest": "the digest in that link",
            "data_size": "bytes of the data it leads to", "manifest_id": "the parsed manifest (manifests.id)",
            "manifest_kind": "image, index, schema1, unknown or invalid", "media_type": "the manifest's media type",
            "parse_error": "why the data is not a valid manifest",
            "status": "ok, corrupt_link, data_missing, data_empty, unparsable, digest_mismatch, misdirected (the link "
                      "names another digest: 200 with the wrong bytes), not_parsed",
        },
    ),
    "tag_serving": (
        "how repo X answers GET of a tag: `status` (`ok`, `no_current_link`, `corrupt_link`, `target_not_linked`, "
        "or the target's status)",
        {
            "link_state": "the state of the tag's current link", "target_digest": "the digest it names",
            "via": "how the target is served", "target_status": "the target's manifest_serving status",
            "status": "ok, no_current_link, corrupt_link, target_not_linked, or the target's status",
        },
    ),
    "orphan_layer_links": ("`_layers` links whose blob data is gone", {
        "link_id": "the link (links.id)", "digest": "the digest spelled by the path",
        "target_digest": "the digest in the file", "link_state": "the link's state",
        "link_first_run": "the first run that saw the link"}),
    "orphan_index_children": (
        "children an index in repo X names that X cannot serve, with `index_status`, `child_status`, "
        "`child_revision_link`, `child_data_size`",
        {
            "index_digest": "the index", "index_status": "how the repository serves the index",
            "child_digest": "the child it names", "platform": "os/arch[/variant]",
            "position": "the child's place in the index", "declared_size": "the size the index declares",
            "child_via": "how the child would be served", "child_link_state": "the state of that link",
            "child_status": "how the repository answers GET of the child",
            "child_data_size": "bytes of the child's data, if present",
            "child_revision_link": "the state of the child's revision link, if any",
        },
    ),
    "open_findings": ("findings not resolved", {
        "kind": "the finding kind", "severity": "error, warning or info", "parent_digest": "the index or manifest "
        "that names it", "first_run": "the run that opened this episode", "last_seen_run": "the last run that saw "
        "it", "episode": ">1 = re-opened", "detail": "JSON evidence", "hint": "what to do"}),
    "finding_trend": ("per finished run, kind and severity: `open`, `new`, `resolved`", {
        "run_id": "the run", "started_at": "when it started (UTC)", "kind": "the finding kind",
        "severity": "error, warning or info", "open": "open at the end of the run", "new": "opened in it",
        "resolved": "resolved in it"}),
}


def column_doc(table: str, column: str) -> str | None:
    return DOCS.get(table, ("", {}))[1].get(column) or _COMMON.get(column)


def metadata(db_name: str, columns: dict[str, list[str]]) -> dict[str, Any]:
    """Datasette metadata for a database whose tables and views have these columns."""
    tables: dict[str, Any] = {}
    for name, cols in columns.items():
        if name in HIDDEN:
            tables[name] = {"hidden": True}
            continue
        entry: dict[str, Any] = {"columns": {c: d for c in cols if (d := column_doc(name, c))}}
        if name in DOCS:
            entry["description"] = DOCS[name][0]
        facets = [c for c in FACETS if c in cols]
        if facets:
            entry["facets"] = facets
        tables[name] = entry
    queries = {
        c.name: {"title": c.title, "description": c.description, "sql": c.sql, "params": c.params}
        for c in CANNED
    }
    return {
        "title": "regindex",
        "description": "Registry storage inventory, integrity findings and their history (read-only).",
        "databases": {db_name: {"tables": tables, "queries": queries}},
    }


def schema_columns(path: Path) -> dict[str, list[str]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_autoindex%'")]
        return {n: [r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (n,))] for n in names}
    finally:
        conn.close()


def app(path: Path) -> Any:
    """The Datasette ASGI app for this SQLite database, read-only, with the shipped metadata."""
    try:
        from datasette.app import Datasette
    except ImportError:
        raise ConfigError("regindex serve needs Datasette: pip install 'regindex[web]' (or '.[web]')") from None
    meta = metadata(path.stem, schema_columns(path))
    ds = Datasette(
        [str(path)],
        metadata=meta,
        settings={"sql_time_limit_ms": 5000, "allow_download": False},
    )
    asyncio.run(ds.invoke_startup())
    return ds.app()


def run(asgi: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(asgi, host=host, port=port, log_level="warning", lifespan="on", workers=1)
