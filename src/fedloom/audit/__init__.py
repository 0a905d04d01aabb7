"""``fedloom audit``: a security and privacy audit of a config before a run, or of a
finished run directory (simulation or deployment), as findings with severities and
remedies (docs/audit.md)."""

from __future__ import annotations

from pathlib import Path

from fedloom.audit.cert_checks import certs_findings
from fedloom.audit.config_checks import config_findings
from fedloom.audit.findings import SEVERITIES, AuditReport, Finding, Severity
from fedloom.audit.run_checks import run_findings
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.runs import RunDirectory

__all__ = ["SEVERITIES", "AuditReport", "Finding", "Severity", "audit"]


def audit(
    target: Path,
    *,
    certs: Path | None = None,
    insecure: bool = False,
    byzantine_fraction: float | None = None,
) -> AuditReport:
    """Audit ``target``: a config file (TOML) or a run directory (its ``config.toml``,
    ledger, files, registry and records). ``certs``: the ``fedloom certs`` folder the
    deployment uses; ``insecure``: the server runs without TLS; ``byzantine_fraction``:
    the share of clients assumed Byzantine (default: ``attack.clients`` of an enabled
    attack)."""
    target = Path(target)
    if target.is_dir():
        run = RunDirectory.open(target)
        config = run.load_config()
        findings, survival, source = run_findings(run)
        report = AuditReport(target, "run", findings)
    elif target.is_file():
        config = load_config(target)
        survival, source = None, ""
        report = AuditReport(target, "config")
    else:
        raise ConfigError(f"{str(target)!r}: no such config file or run directory")
    report.findings += config_findings(
        config,
        insecure=insecure,
        certs_given=certs is not None,
        byzantine_fraction=byzantine_fraction,
        survival=survival,
        survival_source=source,
    )
    if certs is not None:
        report.findings += certs_findings(certs)
    return report
