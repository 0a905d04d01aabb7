"""Differential privacy: accounting, noise calibration, mechanisms, the run's ledger, audits.

Importing this package is cheap: dp-accounting and scipy are imported inside the functions
that need them.

``sweep`` and ``plan`` (``tradeoff``) run an experiment at several privacy settings
through a runner (``fedloom.assemble.trial_runner``).

References: see ``accounting``, ``calibration``, ``mechanisms``, ``central``, ``ledger``
and ``audit``.
"""

from fedloom.privacy.accounting import (
    Accountant,
    MechanismEvent,
    Sampling,
    compose_epsilon,
    epsilon,
    noise_multiplier_for,
)
from fedloom.privacy.audit import AuditResult, audit, epsilon_lower_bound
from fedloom.privacy.calibration import analytic_gaussian_sigma, gaussian_delta, laplace_scale
from fedloom.privacy.ledger import Budget, PrivacyBudgetExceeded, PrivacyLedger
from fedloom.privacy.tradeoff import (
    PlanResult,
    PlanRow,
    SweepResult,
    SweepRow,
    Trial,
    TrialOutcome,
    TrialRunner,
    plan,
    sweep,
)

__all__ = [
    "Accountant",
    "AuditResult",
    "Budget",
    "MechanismEvent",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "Sampling",
    "analytic_gaussian_sigma",
    "audit",
    "epsilon_lower_bound",
    "compose_epsilon",
    "epsilon",
    "gaussian_delta",
    "laplace_scale",
    "noise_multiplier_for",
    "plan",
    "PlanResult",
    "PlanRow",
    "sweep",
    "SweepResult",
    "SweepRow",
    "Trial",
    "TrialOutcome",
    "TrialRunner",
]
