"""The privacy ledger: every noisy release of a run and the epsilon spent so far.

A run's privacy guarantee is the composition of everything it released, so the ledger is
written to ``privacy.json`` (atomically) after every record and re-opened with
:meth:`PrivacyLedger.load` on resume. It is append-only: a release made before a crash
stays charged, and a round redone after resume is charged again unless its release is
bit-for-bit one already charged (each entry keeps the round attempt it belongs to and the
SHA-256 of what was released, so an identical replay, which reveals nothing new, is
recognised). A budget turns the ledger into a guard: a whole-run plan or the next release
is checked before any noise is drawn.

What the headline epsilon means depends on the ledger's *view* (who the guarantee is
against; see docs/privacy.md):

- ``"release"`` (central DP): the released models, under add/remove of one client, with
  amplification by the sampling the trusted server keeps secret.
- ``"server"`` (distributed DP): against the server, which sees every round's cohort, so
  without amplification by sampling; the amplified number is a labelled secondary view.
- ``"local"`` (local DP): against the server, which sees each client's upload: the worst
  client's composition of its own uploads (each ``local_epsilon``-LDP, replace-one); the
  amplified central number of the released models is a labelled secondary view.
- ``"participation"`` (central DP of asynchronous training): the released models, under
  add/remove of one client, without amplification (nobody is sampled: clients get work
  when they are idle); each client's epsilon composes only the releases its updates
  entered, and the headline is the worst client's. Charging by realised participation
  is valid because the runtime never lets a client contribute past the budget (an
  individual privacy filter: a fully adaptive composition of at most n Gaussian
  releases, Smith & Thakurta 2022; Feldman & Zrnic 2021 in Renyi DP).

References: McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018 (accounting a DP-FedAvg run); Feldman & Zrnic, "Individual
Privacy Accounting via a Renyi Filter", NeurIPS 2021, and Smith & Thakurta, "Fully Adaptive
Composition for Gaussian Differential Privacy", 2022 (per-client accounting); the accountants of
``fedloom.privacy.accounting``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

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


View = Literal["release", "server", "local", "participation"]

HEADLINES: dict[str, str] = {
    "release": (
        "central DP of the released models (add/remove one client; the server is trusted "
        "and keeps each round's cohort secret, so sampling amplifies)"
    ),
    "server": (
        "distributed DP against the server, which sees each round's cohort: no "
        "amplification by sampling (add/remove one client's update)"
    ),
    "local": (
        "local DP against the server, which sees every upload: the worst client's "
        "composition over its own uploads (each upload replace-one local DP)"
    ),
    "participation": (
        "central DP of the released models (add/remove one client), the worst client's "
        "composition over the asynchronous steps its updates entered; no amplification"
    ),
}
MODEL_VIEW = (
    "model_epsilon: the released models only, to observers who see neither uploads nor "
    "cohorts (amplified by sampling); not a guarantee against the server"
)


def release_digest(*parts: np.ndarray | float | int | None) -> str:
    """SHA-256 of a release (arrays by their bytes, numbers by their float64 bytes): how
    a replayed round is told apart from the release already charged for it."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"none")
            continue
        arr = np.ascontiguousarray(part if isinstance(part, np.ndarray) else np.float64(part))
        h.update(arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes())
    return h.hexdigest()


def local_event(event: MechanismEvent) -> MechanismEvent:
    """One upload of a local-DP run as the server sees it: unsampled, replace-one.

    A local run's events carry the add/remove multiplier ``sigma / C`` (Laplace:
    ``scale / C``); replacing a client's update moves its upload by ``2C``, so one upload
    is the unsampled mechanism with half that multiplier: exactly ``local_epsilon``.
    """
    return MechanismEvent(event.kind, event.noise_multiplier / 2, 1.0, 1)


def _unsampled(event: MechanismEvent) -> MechanismEvent:
    """One release a client's update entered, as that client's composition sees it."""
    return MechanismEvent(event.kind, event.noise_multiplier, 1.0, 1)


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded release: its round, mechanism, note and the run's epsilon after it.

    ``attempt``: the run's round-attempt counter (retries and replays after a resume
    share a round number, never an attempt and replay); ``digest``: SHA-256 of what was
    released (empty when not kept); ``replay``: how many releases of the same attempt
    were charged before this one; ``clients``: whose uploads the server saw (local DP).
    """

    round: int
    event: MechanismEvent
    note: str
    epsilon_after: float
    attempt: int = 0
    digest: str = ""
    replay: int = 0
    clients: tuple[int, ...] | None = None


class PrivacyLedger:
    """Every noisy release of a run, its parameters, and the running (epsilon, delta); saved
    to ``privacy.json`` atomically (``fedloom.atomic.atomic_write_text``) after every record.

    ``delta`` is the delta at which epsilon is reported: the budget's, or given explicitly
    when there is no budget. ``path=None`` keeps the ledger in memory only. A new ledger
    refuses to replace an existing file (that would forget spent budget): re-open it with
    :meth:`load`. Recording never refuses a release, which has already happened; ask
    :meth:`would_exceed` before drawing the noise. ``view`` says whom the headline epsilon
    is against (module docstring); the budget applies to the headline.

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
        view: View = "release",
    ) -> None:
        _check_choice("accountant", accountant, get_args(Accountant))
        _check_choice("view", view, get_args(View))
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
        self.view: View = view
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
            ledger = cls.from_json(data)
        except OSError as exc:
            raise CheckpointError(f"cannot read privacy ledger {str(path)!r}: {exc}") from exc
        except (ValueError, KeyError, TypeError, ConfigError, RecursionError) as exc:
            # RecursionError: nesting deeper than json can parse ("[" * 100000)
            raise CheckpointError(f"corrupt privacy ledger {str(path)!r}: {exc}") from exc
        ledger.path = path
        return ledger

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyLedger:
        """A ledger (in memory) from :meth:`to_json`'s layout; raises on anything malformed."""
        budget = None if data["budget"] is None else Budget(**data["budget"])
        ledger = cls(None, budget, data["accountant"], data["delta"], data.get("view", "release"))
        fields = ("kind", "noise_multiplier", "sampling_rate", "count", "sampling", "population")
        for raw in data["events"]:
            extra = {name: raw[name] for name in _DDG_FIELDS if name in raw}
            event = MechanismEvent(**{name: raw[name] for name in fields}, **extra)
            eps = raw["epsilon_after"]
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
                raise ValueError(f"epsilon_after = {eps!r} is not a non-negative number")
            ledger._check_entry(raw["round"], raw["note"])
            attempt, replay = raw.get("attempt", 0), raw.get("replay", 0)
            _check_count("attempt", attempt)
            _check_count("replay", replay)
            digest = raw.get("digest", "")
            if not isinstance(digest, str):
                raise ValueError(f"digest = {digest!r} is not a string")
            clients = raw.get("clients")
            if clients is not None:
                for c in clients:
                    _check_count("clients", c)
                clients = tuple(int(c) for c in clients)
            ledger._entries.append(
                LedgerEntry(
                    raw["round"], event, raw["note"], float(eps), attempt, digest, replay, clients
                )
            )
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
        """The recorded mechanisms, in order (what the model view composes)."""
        return tuple(entry.event for entry in self._entries)

    def _check_entry(self, round: int, note: str) -> None:
        """Rounds are counts (a replay after resume may repeat an earlier one); notes text."""
        _check_count("round", round)
        if not isinstance(note, str):
            raise ConfigError(f"note = {note!r}: must be a string")

    def charged(self, attempt: int) -> tuple[LedgerEntry, ...]:
        """The releases already charged for round attempt ``attempt`` (before a resume)."""
        return tuple(e for e in self._entries if e.attempt == attempt and attempt > 0)

    def is_charged(self, attempt: int, digest: str) -> bool:
        """Was exactly this release (same attempt, same SHA-256) charged already?"""
        return bool(digest) and any(e.digest == digest for e in self.charged(attempt))

    def record(
        self,
        round: int,
        event: MechanismEvent,
        note: str = "",
        *,
        attempt: int = 0,
        digest: str = "",
        clients: Sequence[int] | None = None,
    ) -> float:
        """Append a release made in ``round`` (attempt ``attempt``), save the file, and return
        the run's headline epsilon. ``clients``: whose uploads the server saw (local DP)."""
        self._check_entry(round, note)
        _check_count("attempt", attempt)
        ids = None if clients is None else tuple(sorted(int(c) for c in clients))
        entry = LedgerEntry(
            int(round), event, note, 0.0, int(attempt), digest, len(self.charged(attempt)), ids
        )
        eps = self._headline([*self._entries, entry])
        self._entries.append(replace(entry, epsilon_after=eps))
        self._save()
        return eps

    def epsilon(self) -> float:
        """The headline epsilon (at ``self.delta``) spent by everything recorded so far."""
        return self._entries[-1].epsilon_after if self._entries else 0.0

    def secondary(self) -> dict[str, float]:
        """Labelled secondary views (``MODEL_VIEW``): empty for central DP."""
        if self.view in ("release", "participation"):
            return {}
        return {"model_epsilon": compose_epsilon(self.events, self.delta, self.accountant)}

    def participations(self) -> Counter[int]:
        """How many of each client's uploads the server saw (local DP), or releases its
        updates entered (participation)."""
        counts: Counter[int] = Counter()
        for entry in self._entries:
            counts.update(entry.clients or ())
        return counts

    def _headline(self, entries: Sequence[LedgerEntry]) -> float:
        """The headline epsilon of ``entries`` in this ledger's view. In the local view an
        entry without ``clients`` (a planned release) charges every client."""
        if self.view == "release":
            return compose_epsilon([e.event for e in entries], self.delta, self.accountant)
        if self.view == "server":
            unsampled = [
                replace(e.event, sampling_rate=1.0, sampling="poisson", population=None)
                for e in entries
            ]
            return compose_epsilon(unsampled, self.delta, self.accountant)
        # per client: its own releases (local DP: each upload, replace-one)
        own = local_event if self.view == "local" else _unsampled
        per_client: dict[int, Counter[MechanismEvent]] = {}
        everyone: Counter[MechanismEvent] = Counter()
        for e in entries:
            if e.clients is None:
                everyone[own(e.event)] += e.event.count
            else:
                for c in e.clients:
                    per_client.setdefault(c, Counter())[own(e.event)] += 1
        signatures = {
            frozenset((per_client.get(c, Counter()) + everyone).items()) for c in per_client
        } or {frozenset(everyone.items())}
        # unsampled uploads: PLD composes Gaussians exactly (closed form), also for "rdp" runs
        return max(
            compose_epsilon(
                [replace(ev, count=n) for ev, n in sorted(sig, key=repr)], self.delta, "pld"
            )
            for sig in signatures
        )

    def remaining(self) -> float | None:
        """The budget's epsilon left (0 when overspent), or ``None`` without a budget."""
        if self.budget is None:
            return None
        return max(0.0, self.budget.epsilon - self.epsilon())

    def _planned(
        self, events: Sequence[MechanismEvent], clients: Sequence[int] | None = None
    ) -> float:
        ids = None if clients is None else tuple(int(c) for c in clients)
        planned = [LedgerEntry(0, e, "", 0.0, clients=ids) for e in events]
        return self._headline([*self._entries, *planned])

    def would_exceed(
        self, events: Sequence[MechanismEvent], clients: Sequence[int] | None = None
    ) -> bool:
        """Would releasing ``events`` on top of the recorded ones exceed the budget?
        ``clients`` (local view): whose uploads they are (None: every client's)."""
        return self.budget is not None and self._planned(events, clients) > self.budget.epsilon

    def check_plan(self, events: Sequence[MechanismEvent]) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if the recorded releases plus the planned
        ``events`` (the rest of the run) would exceed the budget."""
        if self.budget is None:
            return
        planned = self._planned(events)
        if planned > self.budget.epsilon:
            raise PrivacyBudgetExceeded(planned, self.budget)

    def to_json(self) -> dict[str, Any]:
        """The ledger as saved in ``privacy.json`` (headline epsilon at ``delta`` after each
        event; labelled secondary views beside it)."""
        out: dict[str, Any] = {
            "accountant": self.accountant,
            "budget": None if self.budget is None else asdict(self.budget),
            "view": self.view,
            "headline": HEADLINES[self.view],
            "epsilon": self.epsilon(),
            "delta": self.delta,
        }
        if self.view not in ("release", "participation"):
            out["secondary"] = {**self.secondary(), "label": MODEL_VIEW}
        if self.view in ("local", "participation"):
            counts = self.participations()
            out["participations"] = {
                "clients": len(counts),
                "max_per_client": max(counts.values(), default=0),
            }
            if self._entries and self.view == "local":  # one upload's (local_epsilon)
                one = local_event(self._entries[-1].event)
                out["per_upload_epsilon"] = compose_epsilon([one], self.delta, "pld")
        out["events"] = [_entry_json(entry) for entry in self._entries]
        return out

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")


def _entry_json(entry: LedgerEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"round": entry.round, **_event_json(entry.event), "note": entry.note}
    if entry.attempt:
        out |= {"attempt": entry.attempt, "replay": entry.replay}
    if entry.digest:
        out["digest"] = entry.digest
    if entry.clients is not None:
        out["clients"] = list(entry.clients)
    out["epsilon_after"] = entry.epsilon_after
    return out
