"""The round engine for asynchronous training: server steps instead of rounds.

``AsyncEngine`` is the ``RoundEngine`` (evaluation, convergence, privacy ledger,
records, checkpoints) over an ``AsyncServer``, plus what asynchronous runtimes need
instead of opening rounds: handing work to idle clients as the ``WorkScheduler``
allows (:meth:`AsyncEngine.hand_out`), taking updates and failures as they come
(:meth:`receive`, :meth:`fail`, which back off failing clients), and closing a step
once the buffer is full (:meth:`finish_step`). Each step is one round record, one
registry round and, under DP, one release charged to the clients whose updates it holds.

The per-client limit (:meth:`contribution_limit`) is the privacy filter: a client gets
no more work once one more release would take its own epsilon past the budget, or once
it entered ``max_contributions`` steps. Both runtimes (the simulator and the gRPC
server) drive this class; neither decides any of this itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fedloom.errors import UpdateRejected
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.records import Dispatch, RoundResult, Update
from fedloom.server.asynchronous import AsyncServer
from fedloom.server.cohort import CohortPolicy
from fedloom.server.convergence import StopDecision
from fedloom.server.engine import EngineSettings, Evaluate, RoundEngine, RunStore, count_reasons
from fedloom.server.local_work import LocalWorkPlanner
from fedloom.server.privacy_plan import PrivacyPlan
from fedloom.server.registry import ClientRegistry
from fedloom.server.work_scheduler import WorkScheduler

SCHEDULER_KEY = "scheduler"  # checkpoint meta: the work scheduler's state


class AsyncEngine(RoundEngine):
    """One asynchronous run's steps, from handing out work to the checkpoint."""

    server: AsyncServer  # type: ignore[assignment]

    def __init__(
        self,
        server: AsyncServer,
        registry: ClientRegistry,
        scheduler: WorkScheduler,
        settings: EngineSettings,
        run: RunStore,
        evaluate: Evaluate,
        has_holdout: bool,
        now: Callable[[], float],
        privacy: PrivacyPlan,
        max_contributions: int | None = None,
        writer: bool = True,
        checkpoint_meta: Callable[[], dict[str, Any]] | None = None,
        checkpoint_arrays: Callable[[], dict[str, np.ndarray]] | None = None,
        local_work: LocalWorkPlanner | None = None,
    ) -> None:
        """``max_contributions``: the most steps one client's updates may enter (None: no
        bound); the other arguments are ``RoundEngine``'s."""

        def meta() -> dict[str, Any]:
            extra = {SCHEDULER_KEY: scheduler.state_dict()}
            return extra | (checkpoint_meta() if checkpoint_meta is not None else {})

        super().__init__(
            server,  # type: ignore[arg-type]
            registry,
            CohortPolicy(server.buffer_size),
            settings,
            run,
            evaluate,
            has_holdout,
            now,
            privacy,
            writer=writer,
            checkpoint_meta=meta,
            checkpoint_arrays=checkpoint_arrays,
            local_work=local_work,
        )
        self.scheduler = scheduler
        self.max_contributions = max_contributions
        self.handed_out = 0  # tasks handed out since the last step (its record)
        self._limit: int | None = None  # releases the budget allows one client

    # work ---------------------------------------------------------------------
    def hand_out(self, available: np.ndarray) -> list[Dispatch]:
        """Tasks for idle clients among ``available`` (online now), as many as the
        scheduler's capacity leaves room for; backed-off and quarantined clients, clients
        without data and clients at their contribution limit get none."""
        now = self.now()
        self.registry.observe_availability(now, available)
        available = self.admit(available)
        stats = self.registry.stats()
        free = self.scheduler.capacity(stats) - len(self.server.in_flight)
        if free <= 0:
            return []
        waiting = self.scheduler.waiting(now)
        ids = np.asarray(available, dtype=np.int64)
        ok = stats.data_size[ids] > 0
        limit = self.contribution_limit()
        if limit is not None:
            ok &= self.contributed(ids) < limit
        pool = np.array([c for c in ids[ok].tolist() if c not in waiting], dtype=np.int64)
        deadline = None if self.settings.deadline_s is None else now + self.settings.deadline_s
        out = self.fit(self.server.hand_out(pool, free, stats, now, deadline))
        self.handed_out += len(out)
        return out

    def contribution_limit(self) -> int | None:
        """How many steps a client's updates may enter: ``max_contributions``, lowered to
        what the privacy budget allows one client (None: unbounded)."""
        limit = self.max_contributions
        ledger, plan = self.ledger, self.privacy
        if ledger is None or ledger.budget is None or plan.view not in ("participation", "local"):
            return limit
        if self._limit is None:
            self._limit = allowed_releases(plan, ledger.budget, ledger.accountant, ledger.view)
        return self._limit if limit is None else min(limit, self._limit)

    def contributed(self, ids: np.ndarray) -> np.ndarray:
        """Releases each client's updates entered: the server's count, or the ledger's
        when it charged more (a step redone after a resume is charged again)."""
        counts = self.server.contributions[ids]
        if self.ledger is not None and self.privacy.view in ("participation", "local"):
            charged = self.ledger.participations()
            counts = np.maximum(counts, [charged.get(int(c), 0) for c in ids])
        return counts

    def out_of_contributions(self, has_data: np.ndarray) -> StopDecision | None:
        """Why the run cannot go on (None: it can): no work is out, and every client with
        data (``has_data``, a mask over all clients) that has no update in the buffer is
        at its contribution limit, so the buffer can never fill again. The reason is
        ``"privacy_budget"`` when the budget set the limit, else ``"contributions"``."""
        limit = self.contribution_limit()
        if limit is None or self.server.in_flight:
            return None
        buffered = self.server.buffered
        free = np.array([c for c in np.flatnonzero(has_data) if int(c) not in buffered])
        if free.size and np.any(self.contributed(free) < limit):
            return None
        cap = self.max_contributions
        budget = cap is None or limit < cap
        waiting = len(self.server.buffer)
        detail = (
            f"every client with data reached its limit of {limit} contributed steps"
            + (" (the privacy budget's)" if budget else " (asynchronous.max_contributions)")
            + (f"; {waiting} buffered updates were not released" if waiting else "")
        )
        return StopDecision(
            "privacy_budget" if budget else "contributions", self.server.round, detail
        )

    def receive(self, update: Update) -> None:
        """Buffer one update (``AsyncServer.receive``); a refused or too stale one backs
        its client off. Raises ``UpdateRejected`` as the server does."""
        try:
            self.server.receive(update, self.now())
        except UpdateRejected:
            if isinstance(update.client_id, int | np.integer):
                self.scheduler.strike(int(update.client_id), self.now())
            raise
        self.scheduler.clear(int(update.client_id))

    def fail(self, client_id: int, reason: str) -> None:
        """The client's work will not arrive; it is backed off."""
        self.server.fail(client_id, reason)
        self.scheduler.strike(client_id, self.now())

    # steps --------------------------------------------------------------------
    def close_round(self, combine: Callable[[np.ndarray], np.ndarray] | None = None) -> RoundResult:
        """Close the step (one more attempt, the registry's round counter)."""
        self.attempts += 1
        return super().close_round(combine)

    def finish_step(
        self, result: RoundResult, started: float, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Registry, evaluation, ledger, record and checkpoint of a closed step."""
        facts = self.server.last_step
        assert facts is not None
        rejected = {e.client_id: e for e in result.excluded if e.outcome == "rejected"}
        failed = {e.client_id: e.detail for e in result.excluded if e.outcome == "failed"}
        asked = sorted(set(result.completed) | set(failed) | set(rejected))
        refusals = {
            c: UpdateRejected(c, e.detail, e.kind)  # type: ignore[arg-type]
            for c, e in rejected.items()
        }
        self.record_round(
            np.array(asked, dtype=np.int64), result, facts.durations, failed, refusals
        )
        record = {
            "attempt": self.attempts,
            "dispatched": self.handed_out,
            "staleness": facts.histogram(),
            "dropped_stale": facts.dropped_stale,
            "contributors": [int(c) for c in result.completed],
            "in_flight": len(self.server.in_flight),
            "concurrency": self.scheduler.capacity(self.registry.stats()),
            "dropped": count_reasons(failed),
        } | (extra or {})
        self.handed_out = 0
        return self.finish_round(result, started, record, uploaded=sorted(rejected))

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.scheduler.load_state_dict(state["meta"][SCHEDULER_KEY])


def allowed_releases(plan: PrivacyPlan, budget: Budget, accountant: str, view: str) -> int:
    """The most releases one client may enter within ``budget``: every asynchronous
    release is alike, so a client's epsilon depends only on how many it entered
    (doubling, then bisection, on an empty in-memory ledger of the same view)."""
    probe = PrivacyLedger(None, budget, accountant, view=view)  # type: ignore[arg-type]

    def fits(n: int) -> bool:
        return n == 0 or not probe.would_exceed([replace(plan.event(), count=n)])

    hi = 1
    while fits(hi):
        hi *= 2
    lo = hi // 2  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
