"""What an audit reports: findings with a severity, the setting they name and a remedy.

A finding is ``high`` when it breaks a protection the run relies on (no TLS, an
unrecoverable secure sum, a ledger that does not add up), ``medium`` when a protection
is missing or weaker than it looks, ``low`` for hygiene and ``info`` for what was
checked and holds. ``fedloom audit`` exits non-zero when any finding is high.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low", "info")


@dataclass(frozen=True)
class Finding:
    """One observation: ``check`` is a stable id (``secagg.dropout``), ``detail`` names
    the setting and its value, ``remedy`` says what to change."""

    check: str
    severity: Severity
    title: str
    detail: str
    remedy: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r}: expected one of {SEVERITIES}")


@dataclass
class AuditReport:
    """Every finding about one target: a config file (``kind = "config"``) or a run
    directory (``kind = "run"``)."""

    target: Path
    kind: Literal["config", "run"]
    findings: list[Finding] = field(default_factory=list)

    def sorted(self) -> list[Finding]:
        """Findings by severity (high first), then by check id."""
        return sorted(self.findings, key=lambda f: (SEVERITIES.index(f.severity), f.check))

    def counts(self) -> dict[str, int]:
        seen = Counter(f.severity for f in self.findings)
        return {s: seen.get(s, 0) for s in SEVERITIES}

    def has_high(self) -> bool:
        return any(f.severity == "high" for f in self.findings)

    def checks(self, severity: Severity | None = None) -> set[str]:
        """The check ids found (of one severity, or all)."""
        return {f.check for f in self.findings if severity in (None, f.severity)}

    def summary(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.counts().items())

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "kind": self.kind,
            "findings": [asdict(f) for f in self.sorted()],
            "counts": self.counts(),
        }
