"""The round engine: one synchronous round's lifecycle, written once for every runtime.

A runtime (the simulator in virtual time, the gRPC deployment on the network) is only an
event source: it tells the engine who is online, delivers the updates and dropouts it
observes to ``engine.server`` (a ``SyncServer``), and calls the engine to open and close
each round. The engine owns everything else: the cohort policy, the client registry,
the privacy ledger (budget refusal before a release, charging after it, replays after a
resume), audit canaries, evaluation, convergence, the round records and checkpoints. It
does no networking and no sleeping; the clock (``now``) and the evaluator are injected,
and what it writes goes through the run store it is given (``RunDirectory``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedloom.client.evaluation import Evaluation
from fedloom.client.schedule import steps_for_each
from fedloom.errors import RejectionKind, UpdateRejected
from fedloom.privacy.accounting import MechanismEvent, compose_epsilon
from fedloom.privacy.audit import AuditResult, audit, canary_scores
from fedloom.privacy.central import Replay
from fedloom.privacy.ledger import PrivacyLedger
from fedloom.records import Dispatch, RoundReport, RoundResult
from fedloom.secagg.cohort import SecureAggregator
from fedloom.server.anomaly import Decision
from fedloom.server.cohort import CohortPolicy
from fedloom.server.convergence import StopDecision
from fedloom.server.local_work import LocalWorkPlanner
from fedloom.server.privacy_plan import PrivacyPlan
from fedloom.server.registry import ClientRegistry, Completion
from fedloom.server.sync import SyncServer
from fedloom.transforms.privacy import AuditCanaries

log = logging.getLogger("fedloom")

REGISTRY_PREFIX = "registry."  # checkpoint arrays holding the registry's snapshot

# A run stops once this many rounds in a row had every delivered update refused: with
# the model unchanged, later rounds would be refused alike (a diverging client.lr).
REFUSED_ROUNDS_STOP = 3


class RunStore(Protocol):
    """Where the engine writes (``fedloom.runs.RunDirectory``)."""

    path: Path

    def append(self, record: dict[str, Any]) -> None: ...

    def records(self) -> list[dict[str, Any]]: ...

    def save_checkpoint(self, round: int, state: dict, keep: int) -> Path: ...


@dataclass(frozen=True)
class EngineSettings:
    """The run's lifecycle settings (from ``RunConfig`` via ``fedloom.assemble``)."""

    rounds: int
    seed: int
    deadline_s: float | None = None  # a round's deadline, in the clock's seconds
    evaluate_every: int = 1
    federated_every: int = 0  # clients' hold-outs every N rounds (0: only at the last)
    checkpoint_every: int = 5
    checkpoint_keep: int = 3
    secagg_min_clients: int = 2
    config_text: str = ""  # the resolved config a checkpoint keeps (to notice edits)


Evaluate = Callable[[np.ndarray, bool], Evaluation]


class RoundEngine:
    """One run's rounds, from opening a cohort to the checkpoint after it."""

    def __init__(
        self,
        server: SyncServer,
        registry: ClientRegistry,
        cohort: CohortPolicy,
        settings: EngineSettings,
        run: RunStore,
        evaluate: Evaluate,
        has_holdout: bool,
        now: Callable[[], float],
        privacy: PrivacyPlan,
        secure: SecureAggregator | None = None,
        canaries: tuple[np.ndarray, np.ndarray] | None = None,
        writer: bool = True,
        checkpoint_meta: Callable[[], dict[str, Any]] | None = None,
        checkpoint_arrays: Callable[[], dict[str, np.ndarray]] | None = None,
        local_work: LocalWorkPlanner | None = None,
    ) -> None:
        """``now``: the clock (virtual seconds, or ``time.time``); ``writer``: this
        process writes the run directory (under torchrun only rank 0 does);
        ``checkpoint_meta``: the runtime's own state for each checkpoint (the simulator's
        virtual clock); ``checkpoint_arrays``: the runtime's own arrays for it (their
        names must not clash with the server's); ``local_work``: who can hold the model and
        each dispatch fitted to its device (``server/local_work.py``)."""
        self.server = server
        self.local_work = local_work
        self.registry = registry
        self.cohort = cohort
        self.settings = settings
        self.run_dir = run
        self.evaluator = evaluate
        self.has_holdout = has_holdout
        self.now = now
        self.privacy = privacy
        self.secure = secure
        self.canaries = canaries
        self.writer = writer
        self.checkpoint_meta = checkpoint_meta
        self.checkpoint_arrays = checkpoint_arrays
        self.ledger: PrivacyLedger | None = None
        self.initial_params = server.params.copy()
        self.attempts = 0  # round attempts, retries included: the registry's round counter
        self.refused_rounds = 0  # consecutive rounds whose every update was refused
        self.stopped: StopDecision | None = None
        self.last_report: RoundReport | None = None  # the last recorded round, typed
        self._budget_stop: str | None = None  # a release refused for the privacy budget
        self.release_digest = ""  # distributed / local DP: this attempt's release
        self._reputation: list[Decision] = []  # this round's decisions, for its record
        self._screening: dict[str, Any] | None = None

    # opening a round -----------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.server.round >= self.settings.rounds

    def open_round(self, available: np.ndarray) -> list[Dispatch]:
        """Availability -> registry -> cohort policy -> dispatch: the round's cohort drawn
        from ``available`` (the clients online now), counted as one more attempt."""
        now = self.now()
        self.registry.observe_availability(now, available)
        available = self.admit(available)
        stats = self.registry.stats()
        k = self.cohort.size(stats)
        deadline = None if self.settings.deadline_s is None else now + self.settings.deadline_s
        pool = self.cohort.pool(available, stats)
        dispatches = self.server.begin_round(pool, stats, now, k=k, deadline=deadline)
        self.attempts += 1
        return self.fit(dispatches)

    def fit(self, dispatches: list[Dispatch]) -> list[Dispatch]:
        """Each dispatch's plan fitted to its device (batch, precision, QAT), and the
        local steps each client may report for it bounded by what that plan asks of its
        registered data (a runtime's later ``max_steps`` only lowers the count)."""
        if self.local_work is not None:
            dispatches = self.local_work.fit(dispatches)
        if dispatches:
            ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
            sizes = self.registry.data_sizes(ids)
            known = sizes > 0  # a client that has not reported its data is not bounded
            plans = [d.plan for d in dispatches]
            bounds = steps_for_each(np.maximum(sizes, 1), plans)
            self.server.bound_steps(ids[known], bounds[known])
        return dispatches

    def admit(self, available: np.ndarray) -> np.ndarray:
        """``available`` without the devices that cannot hold the model and the
        quarantined clients (``[anomaly]``), releasing those whose quarantine is served,
        for the next attempt."""
        ids = np.asarray(available, dtype=np.int64)
        if self.local_work is not None:
            ids = ids[self.local_work.eligible(ids)]
        guard = self.server.guard
        if guard is None:
            return ids
        blocked, releases = self.registry.admit(self.attempts + 1, guard.policy)
        self._reputation += releases
        return ids[~blocked[ids]]

    def enough(self, dispatched: int) -> int | None:
        """Deliveries that make the rest of ``dispatched`` surplus (``CohortPolicy.enough``)."""
        return self.cohort.enough(dispatched)

    def too_small_for_secagg(self, cohort: list[int]) -> bool:
        """A secure round whose cohort cannot hide one input (see skip_small_secure_round)."""
        return self.secure is not None and len(cohort) < self.settings.secagg_min_clients

    def release_refusal(self, cohort: list[int], shares: int | None = None) -> str | None:
        """Why this attempt's release would take the ledger's headline epsilon past the
        budget (None: it fits, or there is no budget), checked before anything is released.

        Central DP: the round's release (its noisy quorum count included), known before
        anyone trains. Local DP: one more upload from every client of ``cohort``, before
        dispatch. Distributed DP: a sum of ``shares`` noise shares split over ``cohort``,
        once the masked inputs are in and before the server unmasks the sum.
        """
        ledger, plan = self.ledger, self.privacy
        if ledger is None or ledger.budget is None:
            return None
        if plan.local:
            over = ledger.would_exceed([plan.event()], clients=cohort)
        elif plan.distributed is not None:
            if not shares:
                return None
            over = ledger.would_exceed([plan.event(shares=shares, cohort=len(cohort))])
        else:
            over = ledger.would_exceed([plan.event()])
        if not over:
            return None
        return (
            f"privacy budget: this round's release would take epsilon past the budget "
            f"{ledger.budget.epsilon:g} (spent {ledger.epsilon():.4g}); nothing was released"
        )

    def refuse_release(self, reason: str) -> None:
        """The open round releases nothing (the budget): it closes as skipped and the run
        stops with reason ``"privacy_budget"``. The runtime fails the pending clients."""
        self.server.skip_round(reason)
        self._budget_stop = reason

    def _record_nobody(self) -> None:
        none = np.zeros(0, dtype=np.int64)
        empty = Completion(none, none * 0.0, none * 0.0, none * 0.0, none, none, none * 0.0)
        self.registry.record_round(self.attempts, self.now(), none, empty, {}, {})

    def withhold_round(self, cohort: list[int], reason: str) -> tuple[RoundResult, dict[str, Any]]:
        """Close a freshly selected round before anyone is told (:meth:`release_refusal`):
        nothing trains, nothing is released, the run stops. Returns the result and the
        round record's extra fields for :meth:`finish_round`."""
        for cid in cohort:
            self.server.fail(cid, "privacy budget")
        self.refuse_release(reason)
        result = self.server.close_round()
        self._record_nobody()
        return result, {"attempt": self.attempts, "dispatched": 0, "withheld": reason}

    def skip_small_secure_round(self, cohort: list[int]) -> tuple[RoundResult, dict[str, Any]]:
        """Close a secure round whose cohort is below ``secagg.min_clients`` (empty, or one
        client: a sum of one input is that input) before anyone trains: status "skipped",
        nothing released, model unchanged, and the registry counts the clients neither
        as done nor as failed. Both runtimes call it right after selection; returns the
        result and the round record's extra fields for :meth:`finish_round`."""
        need = self.settings.secagg_min_clients
        reason = f"cohort of {len(cohort)} is below secagg.min_clients = {need}"
        for cid in cohort:
            self.server.fail(cid, "secure sum too small")
        self.server.skip_round(reason)
        result = self.server.close_round()
        self._record_nobody()
        extra = {
            "attempt": self.attempts,
            "dispatched": 0,
            "secagg": {"included": 0, "cohort": len(cohort), "aborted": reason},
        }
        return result, extra

    # closing a round ------------------------------------------------------------
    def inject_canaries(self) -> None:
        """Included canaries join this round like any client: w.p. the sampling rate."""
        assert self.canaries is not None
        directions, included = self.canaries
        canaries = AuditCanaries(
            directions,
            included,
            self.privacy.clip_norm,
            self.privacy.sampling_rate,
            self.settings.seed,
        )
        self.server.add_canaries(canaries.contribution(self.attempts))

    def arm_replay(self) -> None:
        """Before central DP's release: if this attempt was released (and charged) before a
        resume, tell the mechanism, so that a release that differs is drawn afresh."""
        dp = self.server.dp
        if dp is None or dp.noise_on_clients or self.ledger is None:
            return
        charged = self.ledger.charged(self.attempts)
        dp.replay = Replay(self.attempts, frozenset(e.digest for e in charged)) if charged else None

    def close_round(self, combine: Callable[[np.ndarray], np.ndarray] | None = None) -> RoundResult:
        """Canaries, replay arming, then ``SyncServer.close_round`` (``combine``: the
        cross-process sum under torchrun)."""
        if self.canaries is not None:
            self.inject_canaries()
        self.arm_replay()
        return self.server.close_round(combine)

    def record_round(
        self,
        asked: np.ndarray,
        result: RoundResult,
        duration: np.ndarray,
        failed: dict[int, str],
        rejected: dict[int, UpdateRejected],
        now: float | None = None,
    ) -> None:
        """Tell the registry who was asked, who delivered (``duration`` per completed
        client, in ``result.clients.ids`` order), who failed why and whose update was
        refused. Surplus clients belong to none of these."""
        c = result.clients
        completion = Completion(
            ids=c.ids,
            duration=duration,
            loss=c.train_loss,
            loss_sq=c.train_loss_sq,
            num_examples=c.num_examples,
            steps=c.steps,
            contribution=c.contribution,
        )
        when = self.now() if now is None else now
        refused = {  # the server's own refusals at close (anomaly screening)
            e.client_id: UpdateRejected(e.client_id, e.detail, e.kind)  # type: ignore[arg-type]
            for e in result.excluded
            if e.kind == RejectionKind.ANOMALY
        }
        rejected = {**rejected, **refused}
        self.registry.record_round(self.attempts, when, asked, completion, failed, rejected)
        self._record_screening(result)

    def _record_screening(self, result: RoundResult) -> None:
        """The round's anomaly screening into the registry's reputations (a clamped
        example count counts as a flag) and, with their decisions, into its record."""
        guard, screening = self.server.guard, self.server.last_screening
        if guard is None or screening is None:
            return
        screening = replace(screening, round=self.attempts)  # the registry's round
        clamped = [c for c, _, _ in result.clamped]
        self._reputation += self.registry.record_screening(
            self.attempts, screening, guard.policy, clamped
        )
        self._screening = screening.record()

    def finish_round(
        self,
        result: RoundResult,
        started: float,
        extra: dict[str, Any],
        uploaded: list[int] | None = None,
    ) -> dict[str, Any]:
        """Evaluate, charge the privacy ledger, record and checkpoint a closed round: what
        every runtime does after ``close_round``. ``started``: ``time.perf_counter()`` at
        the round's start; ``extra``: the runtime's own fields for the round record;
        ``uploaded``: clients whose uploads the server saw besides the completed ones
        (refused ones: local DP charges them too)."""
        rnd = result.round
        s = self.settings
        metrics: dict[str, Any] = {}
        last = rnd >= s.rounds
        if result.status != "retry" and (rnd % s.evaluate_every == 0 or last):
            every = s.federated_every
            fed = self.has_holdout and (last or (every and rnd % every == 0))
            metrics = self.evaluate(federated=bool(fed))
            self.stopped = self.server.observe(metrics)
        if self.stopped is None and self.refused_rounds >= REFUSED_ROUNDS_STOP:
            self.stopped = StopDecision(
                "updates_refused",
                rnd,
                f"every update of the last {self.refused_rounds} rounds was refused (e.g. "
                "training diverged: lower client.lr); see the round records' rejections",
            )
        if self._budget_stop is not None:
            self.stopped = StopDecision("privacy_budget", rnd, self._budget_stop)
            self._budget_stop = None
        wall_s = time.perf_counter() - started
        record = round_record(result, metrics, wall_s)
        if self.ledger is not None:
            record |= self._charge(result, uploaded or [])
        record |= extra
        if self._screening is not None:
            record["anomaly"] = self._screening
        if self._reputation:
            record["reputation"] = [d.record() for d in self._reputation]
        self._screening, self._reputation = None, []
        epsilon = record.get("epsilon")
        self.last_report = RoundReport(
            result,
            self.attempts,
            {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            None if epsilon is None else float(epsilon),
            wall_s,
        )
        self.append(record)
        every = s.checkpoint_every
        if result.status != "retry" and ((every and rnd % every == 0) or self.finished):
            self.checkpoint(self.stopped)
        return record

    def _charge(self, result: RoundResult, uploaded: list[int]) -> dict[str, Any]:
        """Charge this attempt's release to the ledger (nothing if it repeats, bit for bit,
        a release charged before a resume); the round record's privacy fields.

        Central DP: the noisy average (with its noisy quorum count), or the noisy count
        alone below the quorum. Distributed DP: every sum the server unmasked, whatever
        the quorum then decided. Local DP: every upload the server saw, per client.
        """
        assert self.ledger is not None
        plan, release = self.privacy, self.server.last_release
        digest, self.release_digest = self.release_digest, ""
        event: MechanismEvent | None = None
        clients: list[int] | None = None
        if plan.local:
            clients = sorted(set(result.completed) | set(uploaded))
            event = plan.event() if clients else None
        elif result.skip_reason is not None:
            event = None
        elif plan.distributed is not None:
            if result.completed:
                event = plan.event(shares=len(result.completed), cohort=len(result.selected))
        elif release is not None:
            event = plan.event() if release.passes else plan.count_event()
            digest = release.digest
            if plan.per_client:  # asynchronous: charged to the clients whose updates it holds
                clients = sorted(result.completed)
        out: dict[str, Any] = {}
        if event is not None:
            if self.ledger.is_charged(self.attempts, digest):
                out["replayed"] = "identical to the release charged before the resume"
            else:
                self.ledger.record(
                    result.round, event, attempt=self.attempts, digest=digest, clients=clients
                )
            out["epsilon"] = self.ledger.epsilon()
            out |= self.ledger.secondary()
        if release is not None:
            out["clip_norm"] = self.server.dp.clip_norm if self.server.dp else None
            if release.count is not None:
                out["quorum_count"] = release.count
        return out

    # evaluation, records, checkpoints ----------------------------------------------
    def evaluate(self, federated: bool = False) -> dict[str, float]:
        """The global model's metrics (the injected evaluator); per-client hold-out
        results go to the registry."""
        found = self.evaluator(self.server.params, federated)
        if found.clients is not None:
            self.registry.record_evaluation(self.attempts, *found.clients)
        return dict(found.metrics)

    def append(self, record: dict[str, Any]) -> None:
        if self.writer:
            self.run_dir.append(record)

    def checkpoint(self, stop: StopDecision | None) -> None:
        """The server (with the selector), the runtime's state, the registry's snapshot
        and the config, atomically in ``checkpoints/round-NNNNNN.npz``."""
        keep = self.settings.checkpoint_keep
        self.registry.snapshot(self.attempts, keep)  # every rank keeps its registry copy
        if not self.writer:
            return
        state = self.server.state_dict()
        state["meta"]["stopped"] = stop.__dict__ if stop else None
        if self.checkpoint_meta is not None:
            state["meta"] |= self.checkpoint_meta()
        if self.checkpoint_arrays is not None:
            state["arrays"] |= self.checkpoint_arrays()
        state["meta"]["attempts"] = self.attempts
        state["meta"]["config"] = self.settings.config_text
        state["arrays"] |= {
            REGISTRY_PREFIX + name: blob for name, blob in self.registry.snapshot_arrays().items()
        }
        state["meta"]["refused_rounds"] = self.refused_rounds
        self.run_dir.save_checkpoint(self.server.round, state, keep)

    def load_state(self, state: dict) -> None:
        """The engine's counters and stop decision as of a checkpoint (the server's state
        and the registry are restored by the caller)."""
        self.attempts = int(state["meta"]["attempts"])
        self.refused_rounds = int(state["meta"].get("refused_rounds", 0))
        stop = state["meta"].get("stopped")
        self.stopped = StopDecision(**stop) if stop else None

    def audit(self) -> tuple[AuditResult, float, float] | None:
        """The one-run empirical lower bound on epsilon from the canaries (None without),
        the delta it is stated at, and the accountant's epsilon at that same delta.

        Steinke et al.'s bound charges 2·m·delta for m canaries, so it is evaluated at
        ``delta_a = min(delta, 0.01 / m)``; the accountant's epsilon at ``delta_a`` is what
        it must never exceed.
        """
        if self.canaries is None or self.ledger is None:
            return None
        directions, included = self.canaries
        scores = canary_scores(self.initial_params, self.server.params, directions)
        delta_a = min(self.privacy.delta, 0.01 / len(included))
        found = audit(scores, included, delta=delta_a)
        return found, delta_a, compose_epsilon(self.ledger.events, delta_a, self.privacy.accountant)

    def conclude(self) -> None:
        """The run is over: its stop record (and the canaries' audit), written once."""
        if not self.writer or any(r.get("event") == "stop" for r in self.run_dir.records()):
            return
        reason = self.stopped or StopDecision(
            "max_rounds", self.server.round, f"completed {self.settings.rounds} rounds"
        )
        self.append(
            {
                "event": "stop",
                "round": self.server.round,
                "reason": reason.reason,
                "detail": reason.detail,
                "stop_round": reason.round,
            }
        )
        audited = self.audit()
        if audited is not None:
            found, delta_a, accountant_eps = audited
            self.append(
                {
                    "event": "audit",
                    "round": self.server.round,
                    "epsilon_lower": found.epsilon_lower,
                    "delta": delta_a,
                    "accountant_epsilon": accountant_eps,
                    "confidence": found.confidence,
                    "canaries": found.num_canaries,
                    "guesses": found.num_guesses,
                    "correct": found.num_correct,
                }
            )


def count_reasons(failed: dict[int, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in failed.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def round_record(result: RoundResult, metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The fields of a round record every runtime writes."""
    return {
        "event": "round",
        "round": result.round,
        "status": result.status,
        "selected": len(result.selected),
        "completed": len(result.completed),
        "failed": len(result.failed),
        "rejected": result.rejected,
        # who is not in the aggregate and why (refused updates, failures and dropouts)
        "excluded": [e.to_json() for e in result.excluded],
        "num_examples": result.num_examples,
        "train_loss": result.train_loss,
        "update_norm": result.update_norm,
        "wall_s": wall_s,
        **({} if result.skip_reason is None else {"skip_reason": result.skip_reason}),
        **metrics,
        # example counts clamped to the client's bound: client -> [declared, used]
        **(
            {"clamped_examples": {str(c): [n, m] for c, n, m in result.clamped}}
            if result.clamped
            else {}
        ),
    }
