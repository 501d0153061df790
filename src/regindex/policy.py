"""Severity policy: the config file re-grades findings per kind, registry, repository glob and, for index
children, platform. The first matching rule wins; without rules the built-in severities stand.

    [[severity]]
    name = "attestations"              # optional: how the report and findings name the rule
    kind = "orphan_index_child"
    platform = "unknown/unknown"       # BuildKit attestation children
    severity = "warning"               # error | warning | info
    # registry = "private"             # optional, exact name
    # repository = "team/*"            # optional, glob

A policy change re-grades open findings at the next scan without re-opening them (a finding's identity does not
include its severity); each finding records which rule graded it (``findings.policy``; NULL: built-in).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from regindex.errors import ConfigError

SEVERITIES = ("error", "warning", "info")
RULE_KEYS = {"name", "kind", "registry", "repository", "platform", "severity"}


@dataclass(frozen=True)
class Rule:
    severity: str
    kind: str | None = None
    registry: str | None = None
    repository: str | None = None  # glob
    platform: str | None = None  # os/arch[/variant] of an index child (detail.platform)
    name: str | None = None
    position: int = 0

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        conds = [f"{k}={v}" for k, v in (("kind", self.kind), ("registry", self.registry),
                                          ("repository", self.repository), ("platform", self.platform)) if v]
        return f"severity rule {self.position} ({', '.join(conds) or 'every finding'})"

    def matches(self, kind: str, registry: str, repository: str | None, detail: dict[str, Any]) -> bool:
        if self.kind is not None and kind != self.kind:
            return False
        if self.registry is not None and registry != self.registry:
            return False
        if self.repository is not None and not fnmatch.fnmatchcase(repository or "", self.repository):
            return False
        if self.platform is not None and detail.get("platform") != self.platform:
            return False
        return True


def parse(rules: Any, source: str) -> list[Rule]:
    """``[[severity]]`` tables from the config file, validated; errors name the rule."""
    from regindex.checks import KINDS

    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ConfigError(f"{source}: severity must be a list of tables ([[severity]])")
    out = []
    for i, r in enumerate(rules, 1):
        where = f"{source}: [[severity]] rule {i}"
        unknown = set(r) - RULE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for k in RULE_KEYS:
            if k in r and not isinstance(r[k], str):
                raise ConfigError(f"{where}: {k} must be a string")
        if r.get("severity") not in SEVERITIES:
            raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        if "kind" in r and r["kind"] not in KINDS:
            raise ConfigError(f"{where}: unknown kind {r['kind']!r}")
        if "platform" in r and r.get("kind") not in (None, "orphan_index_child"):
            raise ConfigError(f"{where}: platform applies to orphan_index_child findings only")
        out.append(Rule(r["severity"], r.get("kind"), r.get("registry"), r.get("repository"), r.get("platform"),
                        r.get("name"), i))
    return out


def grade(found: Iterable[Any], rules: Sequence[Rule]) -> int:
    """Set ``severity`` and ``policy`` of each finding row from the first matching rule; returns how many
    matched. Rows no rule matches keep the check's built-in severity (``policy`` None)."""
    n = 0
    if not rules:
        return 0
    for f in found:
        for rule in rules:
            if rule.matches(f.kind, f.registry, f.repository, f.detail):
                f.severity, f.policy = rule.severity, rule.label
                n += 1
                break
    return n
