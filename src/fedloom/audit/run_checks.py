"""Checks of a finished run directory: the privacy ledger recomputed from its events,
file permissions, the clients' measured reliability under secure aggregation, and where
the randomness that protects someone came from.

The ledger check recomputes the headline epsilon from ``privacy.json``'s events (the
releases' mechanisms, with ``fedloom.privacy.accounting.compose_epsilon`` for the central
release view, or a fresh in-memory ledger replaying them for the per-client views) and
compares it with what the run recorded: the ledger's own figure and the last round
record's ``epsilon`` in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import stat
from typing import Any

import numpy as np

from fedloom.audit.findings import Finding
from fedloom.privacy.accounting import MechanismEvent, compose_epsilon
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.runs import RunDirectory

MISMATCH = 1e-6  # relative
_EVENT_FIELDS = ("kind", "noise_multiplier", "sampling_rate", "count", "sampling", "population")
_DDG = ("tau", "dim")  # distributed discrete Gaussian releases only


def recomputed_epsilon(data: dict[str, Any]) -> float:
    """The headline epsilon of ``privacy.json``'s events, computed anew."""
    events = [_event(raw) for raw in data["events"]]
    view = data.get("view", "release")
    if view == "release":
        return compose_epsilon(events, data["delta"], data["accountant"])
    budget = None if data["budget"] is None else Budget(**data["budget"])
    ledger = PrivacyLedger(None, budget, data["accountant"], data["delta"], view)
    for raw, event in zip(data["events"], events, strict=True):
        ledger.record(raw["round"], event, raw["note"], clients=raw.get("clients"))
    return ledger.epsilon()


def _event(raw: dict[str, Any]) -> MechanismEvent:
    extra = {name: raw[name] for name in _DDG if name in raw}
    return MechanismEvent(**{name: raw[name] for name in _EVENT_FIELDS}, **extra)


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= MISMATCH * max(abs(a), abs(b), 1e-12)


def ledger_findings(run: RunDirectory, records: list[dict[str, Any]]) -> list[Finding]:
    """The recorded epsilon against the recomputed one, and the budget."""
    path = run.path / "privacy.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        spent = recomputed_epsilon(data)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [
            Finding(
                "ledger.unreadable",
                "high",
                "privacy ledger unreadable",
                f"{path}: {err}",
                "the spent budget cannot be verified; restore privacy.json from a backup",
            )
        ]
    claims = [("privacy.json epsilon", data.get("epsilon"))]
    if data["events"]:
        claims.append(
            ("privacy.json last event's epsilon_after", data["events"][-1].get("epsilon_after"))
        )
    rounds = [r for r in records if r.get("event") == "round" and "epsilon" in r]
    if rounds:
        claims.append((f"metrics.jsonl round {rounds[-1]['round']} epsilon", rounds[-1]["epsilon"]))
    out: list[Finding] = []
    for what, value in claims:
        if not isinstance(value, int | float) or not _close(float(value), spent):
            out.append(
                Finding(
                    "ledger.mismatch",
                    "high",
                    "reported epsilon differs from the ledger's events",
                    f"{what} = {value!r}, recomputed from {len(data['events'])} events: "
                    f"{spent:.6g}",
                    "the ledger or the log was altered or damaged; trust neither until explained",
                )
            )
    budget = data.get("budget")
    if budget is not None and spent > budget["epsilon"] * (1 + MISMATCH):
        out.append(
            Finding(
                "ledger.over_budget",
                "high",
                "privacy budget exceeded",
                f"recomputed epsilon {spent:.6g} > privacy.budget_epsilon = {budget['epsilon']}",
                "do not release the model; set privacy.budget_policy = 'stop' for later runs",
            )
        )
    if not out:
        out.append(
            Finding(
                "ledger.consistent",
                "info",
                "ledger adds up",
                f"epsilon {spent:.6g} at delta {data['delta']:.3g} ({data.get('view', 'release')} "
                f"view), recomputed from {len(data['events'])} events, matches the run's records",
            )
        )
    return out


def permission_findings(run: RunDirectory) -> list[Finding]:
    """Group/other-writable run files (high), other-readable keys (high), other-readable
    checkpoints and registry (medium: they hold the model and per-client statistics)."""
    root = run.path
    watched = [root / "clients.sqlite", root / "privacy.json", *sorted(root.rglob("*.key"))]
    if run.checkpoint_dir.is_dir():
        watched += [run.checkpoint_dir, *sorted(run.checkpoint_dir.iterdir())]
    out: list[Finding] = []
    for path in (p for p in watched if p.exists()):
        mode = stat.S_IMODE(path.stat().st_mode)
        where = f"{path}: mode {mode:04o}"
        if mode & 0o022:
            out.append(
                Finding(
                    "files.writable",
                    "high",
                    "run file writable by others",
                    f"{where} lets group or others change it",
                    f"chmod go-w {path}",
                )
            )
        if path.suffix == ".key" and mode & 0o044:
            out.append(
                Finding(
                    "files.key_readable",
                    "high",
                    "private key readable by others",
                    where,
                    f"chmod 600 {path}",
                )
            )
        elif path.is_file() and path.suffix != ".json" and mode & 0o004:
            out.append(
                Finding(
                    "files.readable",
                    "medium",
                    "model or registry readable by everyone",
                    f"{where}: any local user can read the model or per-client statistics",
                    f"chmod o-r {path}",
                )
            )
    return out


def measured_survival(run: RunDirectory) -> tuple[float | None, str]:
    """The share of selections the registry saw completed, pooled over its clients, or
    None. Pooled rather than the mean of each client's ``reliability``: that is a
    Beta(1, 1) posterior mean, dominated by its prior while clients have been selected
    only a few times (a client that finished its one round has reliability 2/3)."""
    path = run.path / "clients.sqlite"
    if not path.is_file():
        return None, "no client registry (clients.sqlite)"
    from fedloom.server.registry import ClientRegistry

    with ClientRegistry(path) as registry:
        stats = registry.stats()
    seen = stats.selected > 0
    selected = int(stats.selected.sum())
    if not selected:
        return None, "the registry has seen no client selected yet"
    pooled = float(stats.completed.sum()) / selected
    mean = float(np.mean(stats.reliability[seen]))
    return pooled, (
        f"registry: {int(stats.completed.sum())} of {selected} selections completed; "
        f"mean reliability {mean:.3g} over {int(seen.sum())} clients"
    )


def randomness_findings(records: list[dict[str, Any]]) -> list[Finding]:
    """A deployment must draw everything that protects someone from the OS."""
    out: list[Finding] = []
    for record in records:
        source = record.get("randomness")
        if record.get("event") not in ("start", "resume") or not isinstance(source, dict):
            continue
        seeded = sorted(k for k, v in source.items() if v == "seed")
        runtime = source.get("runtime")
        where = f"{record['event']} record (round {record.get('round')})"
        if runtime == "deployment" and seeded:
            out.append(
                Finding(
                    "randomness.seeded_deployment",
                    "high",
                    "deployment randomness derived from a seed",
                    f"{where}: randomness {', '.join(f'{k} = seed' for k in seeded)}",
                    "anyone who knows the seed can remove the noise or predict the cohorts; "
                    "run the deployment server of this version (it draws from the OS)",
                )
            )
        elif seeded:
            out.append(
                Finding(
                    "randomness.seeded",
                    "info",
                    "simulation randomness from the seed",
                    f"{where}: {', '.join(f'{k} = seed' for k in seeded)} (reproducible, "
                    "fine for research, no protection against whoever knows the seed)",
                )
            )
    return out


def run_findings(run: RunDirectory) -> tuple[list[Finding], float | None, str]:
    """The run-only checks, and the measured survival probability for the config checks."""
    records = run.records()
    survival, source = measured_survival(run)
    findings = [
        *ledger_findings(run, records),
        *permission_findings(run),
        *randomness_findings(records),
    ]
    return findings, survival, source
