"""The post-mortem timeline of a digest or a tag (``regindex history DIGEST|REPO:TAG``): every finding on it
(all episodes, as cards), its inventory episodes, and for a tag which digests it named when. The terminal text
is output.format_timeline; ``as_json`` is ``--format json``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select

from regindex.episodes import ITEM_COLUMNS, Item, Runs, sort_key
from regindex.errors import UnknownDigest
from regindex.models import Blob, Finding, Link, Registry, table
from regindex.output import clip
from regindex.postmortem import Card, cards_for

F, L, B, G = table(Finding), table(Link), table(Blob), table(Registry)


_HEX_RE = re.compile(r"^[0-9a-f]+$")


def resolve_digest(conn: Connection, value: str) -> str:
    """A full ``alg:hex`` digest, or a unique prefix (≥ 8 hex digits) of one the database knows."""
    value = value.strip().lower()
    alg, sep, hex_ = value.rpartition(":")
    if not sep:
        alg, hex_ = "", value
    if not _HEX_RE.match(hex_ or "-") or (alg and alg not in ("sha256", "sha384", "sha512")):
        raise UnknownDigest(f"not a digest or digest prefix: {clip(value)!r}")
    if len(hex_) < 8:
        raise UnknownDigest(f"digest prefix {value!r} is too short: give at least 8 hex digits")
    algs = [alg] if alg else ["sha256", "sha384", "sha512"]
    found: set[str] = set()
    for a in algs:
        low = f"{a}:{hex_}"
        for col in (F.c.digest, F.c.parent_digest, L.c.path_digest, B.c.digest):
            # a range, not LIKE, so the digest indexes answer it ("g" sorts after every hex digit)
            q = select(col).where(col >= low, col < low + "g").distinct().limit(3)
            found.update(d for (d,) in conn.execute(q) if d)
    if not found:
        raise UnknownDigest(f"unknown digest {clip(value)}: no finding, link or blob names it")
    if len(found) > 1:
        raise UnknownDigest(f"digest prefix {value} is ambiguous: {', '.join(sorted(found)[:3])}…")
    return found.pop()


@dataclass
class Timeline:
    digest: str | None
    cards: list[Card]
    links: list[dict[str, Any]]
    blobs: list[dict[str, Any]]
    latest: int | None
    tag: str | None = None  # ``repo:tag`` when the history was asked for a tag
    tag_links: list[dict[str, Any]] = field(default_factory=list)


_DIGEST_LIKE = re.compile(r"^(?:sha256|sha384|sha512):|^[0-9a-fA-F]+$")  # an algorithm prefix: a digest, never REPO:TAG
_TAG_REF = re.compile(r"^(?P<repo>[^:\s]+):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")


def lookup(conn: Connection, value: str) -> Timeline:
    """Every finding whose digest or parent is DIGEST (all episodes), and the digest's inventory episodes.

    ``repo:tag`` instead of a digest: the tag's link episodes (which digest it named, when), the findings about
    the tag, and the history of the digest it names now (or named last)."""
    ref = _TAG_REF.match(value.strip())
    if ref and not _DIGEST_LIKE.match(value.strip()):
        return _of_tag(conn, ref.group("repo"), ref.group("tag"))
    return _of_digest(conn, resolve_digest(conn, value))


def _of_digest(conn: Connection, digest: str | None, extra: Any = None, tag: str | None = None,
                    tag_links: list[dict[str, Any]] | None = None) -> Timeline:
    runs = Runs(conn)
    conds = [] if digest is None else [F.c.digest == digest, F.c.parent_digest == digest]
    if extra is not None:
        conds.append(extra)
    rows = [Item(*r) for r in conn.execute(select(*ITEM_COLUMNS).where(or_(*conds)))] if conds else []
    latest_of_key: dict[str, Item] = {}
    for it in sorted(rows, key=lambda i: i.episode):
        latest_of_key[it.key] = it
    registry_ids = {name: rid for rid, name in conn.execute(select(G.c.id, G.c.name))}
    names = {rid: name for name, rid in registry_ids.items()}
    items = sorted(latest_of_key.values(), key=sort_key)
    cards = cards_for(conn, items, runs, registry_ids)
    links: list[dict[str, Any]] = []
    blobs: list[dict[str, Any]] = []
    if digest is not None:
        links = [dict(r, registry=names.get(r["registry_id"], "?")) for r in conn.execute(
            select(L).where(or_(L.c.path_digest == digest, L.c.target_digest == digest))
            .order_by(L.c.registry_id, L.c.repository, L.c.kind, L.c.tag, L.c.first_run)).mappings()]
        blobs = [dict(r, registry=names.get(r["registry_id"], "?")) for r in conn.execute(
            select(B).where(B.c.digest == digest).order_by(B.c.registry_id, B.c.first_run)).mappings()]
    for r in tag_links or []:
        r["registry"] = names.get(r["registry_id"], "?")
    return Timeline(digest, cards, links, blobs, runs.latest, tag, tag_links or [])


def _of_tag(conn: Connection, repo: str, tag: str) -> Timeline:
    tag_links = [dict(r) for r in conn.execute(
        select(L).where(L.c.repository == repo, L.c.tag == tag, L.c.kind.in_(["tag_current", "tag_index"]))
        .order_by(L.c.registry_id, L.c.kind, L.c.first_run, L.c.path_digest)).mappings()]
    about_tag = (F.c.repository == repo) & (F.c.tag == tag)
    if not tag_links and conn.execute(select(F.c.id).where(about_tag).limit(1)).first() is None:
        raise UnknownDigest(f"unknown tag {clip(repo)}:{clip(tag)}: no link or finding names it")
    current = [r for r in tag_links if r["kind"] == "tag_current" and r["target_digest"]]
    current = current or [r for r in tag_links if r["target_digest"]]  # no readable current link: its index
    # the digest the tag names now, else the one it named last
    current.sort(key=lambda r: (r["gone_run"] is None, r["gone_run"] or 0, r["first_run"]))
    digest = current[-1]["target_digest"] if current else None
    return _of_digest(conn, digest, about_tag, f"{repo}:{tag}", tag_links)


def as_json(h: Timeline) -> dict[str, Any]:
    """``history --format json``: the same facts as the text, as data."""

    def episode(r: dict[str, Any]) -> dict[str, Any]:
        keep = ("registry", "repository", "kind", "tag", "path_digest", "target_digest", "state", "digest", "size",
                "first_run", "gone_run")
        return {k: r[k] for k in keep if k in r}

    findings = []
    for card in h.cards:
        it = card.item
        try:
            detail = json.loads(it.detail)
        except ValueError:
            detail = it.detail
        findings.append({
            "key": it.key, "episode": it.episode, "kind": it.kind, "severity": it.severity,
            "registry": it.registry, "repository": it.repository, "digest": it.digest, "tag": it.tag,
            "parent_digest": it.parent_digest, "first_seen_run": it.first_run, "last_seen_run": it.last_seen_run,
            "resolved_run": it.resolved_run, "hint": it.hint, "detail": detail,
            "timeline": [{"run": s.run, "when": _iso(s.when), "event": s.tone, "text": s.text} for s in card.steps],
            "on_disk": [{"run": c.run, "moment": c.moment, "changes": c.texts} for c in card.changes],
        })
    return {"digest": h.digest, "tag": h.tag, "latest_run": h.latest, "findings": findings,
            "tag_links": [episode(r) for r in h.tag_links], "links": [episode(r) for r in h.links],
            "blobs": [episode(r) for r in h.blobs]}


def _iso(v: datetime | None) -> str | None:
    from regindex.timespec import iso

    return iso(v)
