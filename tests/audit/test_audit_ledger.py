"""The audit's recomputation of a ledger's headline epsilon in every view."""

from __future__ import annotations

import pytest

from fedloom.audit.run_checks import recomputed_epsilon
from fedloom.privacy.accounting import MechanismEvent
from fedloom.privacy.ledger import Budget, PrivacyLedger


@pytest.mark.parametrize("view", ["release", "server", "local", "participation"])
def test_recomputed_epsilon_matches_the_ledger(view):
    ledger = PrivacyLedger(None, Budget(50.0, 1e-5), "rdp", view=view)
    event = MechanismEvent("gaussian", 1.5, sampling_rate=0.2)
    for rnd, clients in enumerate(([0, 1], [1, 2], [1, 3]), start=1):
        ledger.record(rnd, event, clients=clients)
    data = ledger.to_json()
    assert recomputed_epsilon(data) == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert ledger.epsilon() > 0
