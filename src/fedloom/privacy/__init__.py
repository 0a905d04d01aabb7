"""Differential privacy: accounting, calibration of noise scales, and the run's ledger.

Importing this package is cheap: dp-accounting and scipy are imported inside the functions
that need them.

References: see ``accounting``, ``calibration`` and ``ledger``.
"""

from fedloom.privacy.accounting import (
    Accountant,
    MechanismEvent,
    Sampling,
    compose_epsilon,
    epsilon,
    noise_multiplier_for,
)
from fedloom.privacy.calibration import analytic_gaussian_sigma, gaussian_delta, laplace_scale
from fedloom.privacy.ledger import Budget, PrivacyBudgetExceeded, PrivacyLedger

__all__ = [
    "Accountant",
    "Budget",
    "MechanismEvent",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "Sampling",
    "analytic_gaussian_sigma",
    "compose_epsilon",
    "epsilon",
    "gaussian_delta",
    "laplace_scale",
    "noise_multiplier_for",
]
