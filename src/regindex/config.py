"""Settings from a TOML file (``--config`` or ``REGINDEX_CONFIG``); command-line options win.

    db = "/var/lib/regindex/regindex.db"      # or a SQLAlchemy URL
    caches = ["dockerhub", "ghcr"]            # pull-through caches: missing index children are expected
    stale_upload_hours = 168
    fail_on = "open"                          # new | open | never
    verify_content = false
    report_dir = "/var/lib/regindex/reports"
    metrics = "/var/lib/node_exporter/regindex.prom"
    full_scan_every = 7                       # every 7th scan reads every link file (default: only --full)
    settle_seconds = 10                       # links changed this close to a run's start are read again

    [[severity]]                              # severity policy, first match wins (regindex.policy)
    kind = "orphan_index_child"
    platform = "unknown/unknown"
    severity = "warning"
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regindex.errors import ConfigError
from regindex.storage import read_capped

# Defaults of options more than one command or module offers, each defined here once (the 168 h upload age is the
# registry's own: rules.UPLOAD_PURGE_HOURS; the database file is db.DEFAULT_DB).
REPORT_RUNS = 30  # finished runs a report's trend covers
REPORT_FILE = "regindex-report.html"  # `regindex report` without --out
MAX_HOURS = 24 * 365 * 10  # the longest number of hours an option takes (stale_upload_hours, sql --timeout)
FAIL_ON = ("new", "open", "never")

KEYS = {"db", "caches", "stale_upload_hours", "fail_on", "verify_content", "report_dir", "metrics", "severity",
        "full_scan_every", "settle_seconds"}


@dataclass
class Settings:
    db: str | None = None
    caches: list[str] = field(default_factory=list)
    stale_upload_hours: float | None = None
    fail_on: str | None = None
    verify_content: bool | None = None
    report_dir: Path | None = None
    metrics: Path | None = None
    severity: list[Any] = field(default_factory=list)  # regindex.policy.Rule, in order ([[severity]] tables)
    full_scan_every: int | None = None
    settle_seconds: float | None = None


MAX_CONFIG_BYTES = 1 << 20


def _read(p: Path) -> bytes:
    """A regular file of at most MAX_CONFIG_BYTES. Opened without blocking and checked before reading: a FIFO
    would hang the nightly job until a writer came, and a device (``/dev/zero``) would never end."""
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"config file {p} is not a regular file")
        data = read_capped(fd, MAX_CONFIG_BYTES)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes")
    return data


def load(path: str | None) -> Settings:
    path = path or os.environ.get("REGINDEX_CONFIG")
    if not path:
        return Settings()
    p = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(_read(p).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    unknown = set(data) - KEYS
    if unknown:
        raise ConfigError(f"config file {p}: unknown key(s) {', '.join(sorted(unknown))}")
    s = Settings()
    if "db" in data:
        s.db = _typed(p, data, "db", str)
    if "caches" in data:
        caches = data["caches"]
        if not isinstance(caches, list) or not all(isinstance(c, str) for c in caches):
            raise ConfigError(f"config file {p}: caches must be a list of registry names")
        s.caches = caches
    if "stale_upload_hours" in data:
        v = data["stale_upload_hours"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 < v <= MAX_HOURS):
            raise ConfigError(f"config file {p}: stale_upload_hours must be a number of hours between 0 and {MAX_HOURS}")
        s.stale_upload_hours = float(v)
    if "fail_on" in data:
        s.fail_on = _typed(p, data, "fail_on", str)
        if s.fail_on not in FAIL_ON:
            raise ConfigError(f"config file {p}: fail_on must be {', '.join(FAIL_ON[:-1])} or {FAIL_ON[-1]}")
    if "verify_content" in data:
        s.verify_content = _typed(p, data, "verify_content", bool)
    if "report_dir" in data:
        s.report_dir = Path(_typed(p, data, "report_dir", str))
    if "metrics" in data:
        s.metrics = Path(_typed(p, data, "metrics", str))
    if "full_scan_every" in data:
        v = data["full_scan_every"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10000:
            raise ConfigError(f"config file {p}: full_scan_every must be a whole number of scans from 1 to 10000")
        s.full_scan_every = v
    if "settle_seconds" in data:
        v = data["settle_seconds"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= 86400):
            raise ConfigError(f"config file {p}: settle_seconds must be a number of seconds from 0 to 86400")
        s.settle_seconds = float(v)
    if "severity" in data:
        from regindex.policy import parse

        s.severity = parse(data["severity"], f"config file {p}")
    return s


def database(db: str | None, path: str | None) -> str | None:
    """The database a command opens: ``--db``, else the config file's (else ``db``'s default). The config file is
    read either way: a malformed one is an error even when ``--db`` wins."""
    settings = load(path)
    return db or settings.db


def _typed(p: Path, data: dict[str, Any], key: str, typ: type) -> Any:
    v = data[key]
    if not isinstance(v, typ):
        raise ConfigError(f"config file {p}: {key} must be a {typ.__name__}")
    return v
