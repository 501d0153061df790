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
    lines += [
        "# HELP regindex_findings_open Open findings by registry, kind and severity.",
        "# TYPE regindex_findings_open gauge",
    ]
    rows = conn.execute(
        text("SELECT registry, kind, severity, COUNT(*) AS n FROM findings WHERE resolved_run IS NULL "
             "GROUP BY registry, kind, severity ORDER BY registry, kind, severity")
    ).mappings()
    for r in rows:
        lines.append(
            f'regindex_findings_open{{registry="{_esc(r["registry"])}",kind="{r["kind"]}",'
            f'severity="{r["severity"]}"}} {r["n"]}'
        )
    lines += [
        "# TYPE regindex_findings_new gauge", f"regindex_findings_new {run['findings_new'] or 0}",
        "# TYPE regindex_findings_resolved gauge", f"regindex_findings_resolved {run['findings_resolved'] or 0}",
    ]
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def write(path: Path, body: str) -> None:
    atomic_write(path, body)
