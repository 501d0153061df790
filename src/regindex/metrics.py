"""Prometheus textfile-collector output: written to a temp file and renamed into place, no timestamps."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, text

from regindex.files import atomic_write


def render(conn: Connection, run_id: int) -> str:
    run = conn.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": run_id}).mappings().one()
    lines = [
        "# HELP regindex_last_run_success 1 if the last scan completed over every registry.",
        "# TYPE regindex_last_run_success gauge",
        f"regindex_last_run_success {1 if run['status'] == 'complete' else 0}",
        "# HELP regindex_last_run_id Id of the last scan.",
        "# TYPE regindex_last_run_id gauge",
        f"regindex_last_run_id {run_id}",
        "# HELP regindex_last_run_duration_seconds Wall time of the last scan.",
        "# TYPE regindex_last_run_duration_seconds gauge",
        f"regindex_last_run_duration_seconds {run['duration_seconds'] or 0:.3f}",
    ]
    for name, col in (("repositories", "repositories"), ("links", "links"), ("blobs", "blobs"),
                      ("blob_bytes", "blob_bytes"), ("uploads", "uploads")):
        lines += [f"# TYPE regindex_inventory_{name} gauge", f"regindex_inventory_{name} {run[col] or 0}"]
    from regindex.ack import active

    acked = set(active(conn))
    counts: dict[tuple[str, str, str], list[int]] = {}
    for fid, registry, kind, severity in conn.execute(
            text("SELECT id, registry, kind, severity FROM findings WHERE resolved_run IS NULL")):
        counts.setdefault((registry, kind, severity), [0, 0])[fid in acked] += 1
    for metric, i, help_ in (
            ("regindex_findings_open", 0, "Open findings by registry, kind and severity (not acknowledged)."),
            ("regindex_findings_acknowledged", 1, "Open findings acknowledged as known (regindex ack).")):
        lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} gauge"]
        for (registry, kind, severity), n in sorted(counts.items()):
            if n[i]:
                lines.append(f'{metric}{{registry="{_esc(registry)}",kind="{kind}",severity="{severity}"}} {n[i]}')
    lines += [
        "# TYPE regindex_findings_new gauge", f"regindex_findings_new {run['findings_new'] or 0}",
        "# TYPE regindex_findings_resolved gauge", f"regindex_findings_resolved {run['findings_resolved'] or 0}",
    ]
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def write(path: Path, body: str) -> None:
    atomic_write(path, body)
