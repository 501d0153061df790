"""Prometheus textfile-collector output, written after every scan that opened the database (a failed or
interrupted one too: metrics must show failure, never go stale). No sample timestamps (the textfile collector
refuses them): the times are gauges of their own. Every metric has HELP and TYPE; every known finding kind has
a series for every registry, 0 included, so a count that drops to 0 reads 0 instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from regindex.checks import KINDS
from regindex.files import atomic_write
from regindex.store import as_utc

SEVERITIES = ("error", "warning", "info")
STATUSES = ("complete", "partial", "failed")


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, help_: str, samples: Iterable[tuple[dict[str, str], float | int]],
               type_: str = "gauge") -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {type_}"]
        for labels, value in samples:
            lbl = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{lbl}}} {_num(value)}" if lbl else f"{name} {_num(value)}")


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.3f}"


def _epoch(v: Any) -> float:
    ts = as_utc(v)
    return ts.timestamp() if isinstance(ts, datetime) else 0.0


def render(conn: Connection, run_id: int) -> str:
    run = conn.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": run_id}).mappings().one()
    success = conn.execute(
        text("SELECT id, finished_at FROM runs WHERE status = 'complete' ORDER BY id DESC LIMIT 1")).mappings().first()
    out = _Lines()
    status = run["status"] if run["status"] in STATUSES else "failed"
    out.metric("regindex_last_run_success", "1 if the last scan completed over every registry, else 0.",
               [({}, 1 if status == "complete" else 0)])
    out.metric("regindex_last_run_status", "1 for the status of the last scan (complete, partial, failed).",
               [({"status": s}, 1 if s == status else 0) for s in STATUSES])
    out.metric("regindex_last_run_id", "Id of the last scan (regindex runs).", [({}, run_id)])
    out.metric("regindex_last_run_timestamp_seconds", "When the last scan ended (Unix time).",
               [({}, _epoch(run["finished_at"] or run["started_at"]))])
    out.metric("regindex_last_success_timestamp_seconds",
               "When the last scan that completed over every registry ended (Unix time; 0: never).",
               [({}, _epoch(success["finished_at"]) if success else 0.0)])
    out.metric("regindex_last_run_duration_seconds", "Wall time of the last scan.",
               [({}, float(run["duration_seconds"] or 0.0))])

    registries = [r["name"] for r in conn.execute(text("SELECT name FROM registries ORDER BY name")).mappings()]
    scanned = {r["name"]: r["status"] for r in conn.execute(text(
        "SELECT g.name, rr.status FROM run_registries rr JOIN registries g ON g.id = rr.registry_id "
        "WHERE rr.run_id = :r"), {"r": run_id}).mappings()}
    out.metric("regindex_registry_scan_success",
               "1 if the last scan read this registry completely, 0 if it failed or was not reached.",
               [({"registry": name}, 1 if scanned.get(name) == "complete" else 0) for name in registries])
    last_ok = {r["name"]: r["finished_at"] for r in conn.execute(text(
        "SELECT g.name, r.finished_at FROM registries g JOIN runs r ON r.id = g.last_scanned_run")).mappings()}
    out.metric("regindex_registry_last_success_timestamp_seconds",
               "When a scan last read this registry completely (Unix time; 0: never).",
               [({"registry": name}, _epoch(last_ok.get(name))) for name in registries])

    inventory = {}
    for key, sql in (
        ("repositories", "SELECT COUNT(*) FROM repositories WHERE gone_run IS NULL"),
        ("links", "SELECT COUNT(*) FROM links WHERE gone_run IS NULL"),
        ("blobs", "SELECT COUNT(*) FROM blobs WHERE gone_run IS NULL"),
        ("blob_bytes", "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE gone_run IS NULL"),
        ("uploads", "SELECT COUNT(*) FROM uploads WHERE gone_run IS NULL"),
    ):
        inventory[key] = int(conn.execute(text(sql)).scalar_one() or 0)
    for key, value in inventory.items():
        out.metric(f"regindex_inventory_{key}", f"Present {key.replace('_', ' ')} in the inventory.", [({}, value)])

    from regindex.ack import active

    acked = set(active(conn))
    counts: dict[tuple[str, str, str], list[int]] = {}
    for fid, registry, kind, severity in conn.execute(
            text("SELECT id, registry, kind, severity FROM findings WHERE resolved_run IS NULL")):
        counts.setdefault((registry, kind, severity), [0, 0])[fid in acked] += 1
    keys = {(reg, kind, sev) for reg in registries for kind in KINDS for sev in SEVERITIES} | set(counts)
    for metric, i, help_ in (
            ("regindex_findings_open", 0,
             "Open findings by registry, kind and severity, not acknowledged (0 included)."),
            ("regindex_findings_acknowledged", 1, "Open findings acknowledged as known (regindex ack; 0 included).")):
        out.metric(metric, help_, [({"registry": reg, "kind": kind, "severity": sev},
                                    counts.get((reg, kind, sev), [0, 0])[i]) for reg, kind, sev in sorted(keys)])
    out.metric("regindex_findings_new", "Findings new (or re-opened) in the last scan.",
               [({}, int(run["findings_new"] or 0))])
    out.metric("regindex_findings_resolved", "Findings resolved by the last scan.",
               [({}, int(run["findings_resolved"] or 0))])
    return "\n".join(out.lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def write(path: Path, body: str) -> None:
    atomic_write(path, body, what="--metrics")
