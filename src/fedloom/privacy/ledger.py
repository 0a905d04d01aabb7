"""The privacy ledger: every noisy release of a run and the epsilon spent so far.

A run's privacy guarantee is the composition of everything it released, so the ledger is
written to ``privacy.json`` (atomically) after every record and re-opened with
:meth:`PrivacyLedger.load` on resume; a resumed run drops the releases after its checkpoint
(:meth:`PrivacyLedger.truncate`), since those rounds are redone. A budget turns the ledger
into a guard: a whole-run plan or the next release can be checked before any noise is drawn.

References: McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018 (accounting a DP-FedAvg run); the accountants of
``fedloom.privacy.accounting``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

from fedloom.atomic import atomic_write_text
from fedloom.errors import CheckpointError, ConfigError, FedloomError
from fedloom.privacy.accounting import (
    Accountant,
    MechanismEvent,
    _check_choice,
    _check_count,
    _check_delta,
    _check_positive,
    compose_epsilon,
)


@dataclass(frozen=True)
class Budget:
    """The most a run may spend: (epsilon, delta)-DP for the whole run.

    References: Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014.
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        _check_positive("budget.epsilon", self.epsilon)
        _check_delta(self.delta, "budget.delta")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        object.__setattr__(self, "delta", float(self.delta))


_DDG_FIELDS = ("tau", "dim")  # written only for distributed discrete Gaussian releases


def _event_json(event: MechanismEvent) -> dict[str, Any]:
    fields = asdict(event)
    if event.kind != "distributed_dg":
        for name in _DDG_FIELDS:
            del fields[name]
    return fields


class PrivacyBudgetExceeded(FedloomError):
    """A plan or release would spend more epsilon than the run's budget."""

    def __init__(self, planned: float, budget: Budget) -> None:
        super().__init__(
            f"planned epsilon {planned:.4g} exceeds the budget epsilon {budget.epsilon:.4g} "
            f"(delta = {budget.delta:g})"
        )
        self.planned = planned
        self.budget = budget


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded release: its round, mechanism, note and the run's epsilon after it."""

    round: int
    event: MechanismEvent
    note: str
    epsilon_after: float


class PrivacyLedger:
    """Every noisy release of a run, its parameters, and the running (epsilon, delta); saved
    to ``privacy.json`` atomically (``fedloom.atomic.atomic_write_text``) after every record.

    ``delta`` is the delta at which epsilon is reported: the budget's, or given explicitly
    when there is no budget. ``path=None`` keeps the ledger in memory only. A new ledger
    refuses to replace an existing file (that would forget spent budget): re-open it with
    :meth:`load`. Recording never refuses a release, which has already happened; ask
    :meth:`would_exceed` before drawing the noise.

    The running epsilon is recomputed from all releases at each record, identical releases
    grouped (composition is commutative): a run repeating one mechanism costs one accountant
    call per round, milliseconds with ``"rdp"`` and about a second with ``"pld"`` and
    subsampling (dp-accounting builds a fine-grained loss distribution each time).

    References: McMahan et al., ICLR 2018; see ``fedloom.privacy.accounting``.
    """

    def __init__(
        self,
        path: Path | None,
        budget: Budget | None,
        accountant: Accountant = "pld",
        delta: float | None = None,
    ) -> None:
        _check_choice("accountant", accountant, get_args(Accountant))
        if budget is not None and delta is not None and delta != budget.delta:
            raise ConfigError(f"delta = {delta!r}: differs from budget.delta = {budget.delta!r}")
        if budget is None and delta is None:
            raise ConfigError("delta = None: a ledger without a budget needs the delta to report")
        resolved = budget.delta if budget is not None else delta
        assert resolved is not None
        _check_delta(resolved)
        self.path = None if path is None else Path(path)
        self.budget = budget
        self.accountant: Accountant = accountant
        self.delta = resolved
        self._entries: list[LedgerEntry] = []
        if self.path is not None:
            if self.path.exists():
                raise CheckpointError(
                    f"{str(self.path)!r} already exists: re-open it with PrivacyLedger.load "
                    "instead of starting a new ledger over it"
                )
            self._save()

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Re-open the ledger saved at ``path`` (after a restart), to keep recording into it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ledger = cls._from_json(data)
        except OSError as exc:
            raise CheckpointError(f"cannot read privacy ledger {str(path)!r}: {exc}") from exc
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise CheckpointError(f"corrupt privacy ledger {str(path)!r}: {exc}") from exc
        ledger.path = path
        return ledger

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> PrivacyLedger:
        budget = None if data["budget"] is None else Budget(**data["budget"])
        ledger = cls(None, budget, data["accountant"], data["delta"])
        fields = ("kind", "noise_multiplier", "sampling_rate", "count", "sampling", "population")
        for raw in data["events"]:
            extra = {name: raw[name] for name in _DDG_FIELDS if name in raw}
            event = MechanismEvent(**{name: raw[name] for name in fields}, **extra)
            eps = raw["epsilon_after"]
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
                raise ValueError(f"epsilon_after = {eps!r} is not a non-negative number")
            ledger._check_next(raw["round"], raw["note"])
            ledger._entries.append(LedgerEntry(raw["round"], event, raw["note"], float(eps)))
        if data["epsilon"] != ledger.epsilon():
            raise ValueError(
                f"epsilon {data['epsilon']!r} is not the last event's {ledger.epsilon()!r}"
            )
        return ledger

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every recorded release, in order."""
        return tuple(self._entries)

    @property
    def events(self) -> tuple[MechanismEvent, ...]:
        """The recorded mechanisms, in order (what the running epsilon composes)."""
        return tuple(entry.event for entry in self._entries)

    def _check_next(self, round: int, note: str) -> None:
        """Rounds never go back (truncate first); notes are text."""
        _check_count("round", round)
        last = self._entries[-1].round if self._entries else 0
        if round < last:
            raise ConfigError(
                f"round = {round}: before the last recorded round {last} "
                "(truncate the ledger to resume from an earlier round)"
            )
        if not isinstance(note, str):
            raise ConfigError(f"note = {note!r}: must be a string")

    def record(self, round: int, event: MechanismEvent, note: str = "") -> float:
        """Append a release made in ``round``, save the file, and return the run's epsilon."""
        self._check_next(round, note)
        eps = compose_epsilon([*self.events, event], self.delta, self.accountant)
        self._entries.append(LedgerEntry(int(round), event, note, eps))
        self._save()
        return eps

    def epsilon(self) -> float:
        """The epsilon (at ``self.delta``) spent by everything recorded so far."""
        return self._entries[-1].epsilon_after if self._entries else 0.0

    def remaining(self) -> float | None:
        """The budget's epsilon left (0 when overspent), or ``None`` without a budget."""
        if self.budget is None:
            return None
        return max(0.0, self.budget.epsilon - self.epsilon())

    def _planned(self, events: Sequence[MechanismEvent]) -> float:
        return compose_epsilon([*self.events, *events], self.delta, self.accountant)

    def would_exceed(self, events: Sequence[MechanismEvent]) -> bool:
        """Would releasing ``events`` on top of the recorded ones exceed the budget?"""
        return self.budget is not None and self._planned(events) > self.budget.epsilon

    def check_plan(self, events: Sequence[MechanismEvent]) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if the recorded releases plus the planned
        ``events`` (the rest of the run) would exceed the budget."""
        if self.budget is None:
            return
        planned = self._planned(events)
        if planned > self.budget.epsilon:
            raise PrivacyBudgetExceeded(planned, self.budget)

    def truncate(self, round: int) -> None:
        """Drop the releases recorded after ``round`` (resuming from its checkpoint); save."""
        _check_count("round", round)
        self._entries = [entry for entry in self._entries if entry.round <= round]
        self._save()

    def to_json(self) -> dict[str, Any]:
        """The ledger as saved in ``privacy.json`` (epsilon at ``delta`` after each event)."""
        return {
            "accountant": self.accountant,
            "budget": None if self.budget is None else asdict(self.budget),
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "events": [
                {
                    "round": entry.round,
                    **_event_json(entry.event),
                    "note": entry.note,
                    "epsilon_after": entry.epsilon_after,
                }
                for entry in self._entries
            ],
        }

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")
