"""The tracker: one observer of the records a run writes, fanned out to its backends.

The round engine writes every record of a run (start, resume, round, stop, interrupt,
audit) through its run store; ``fedloom.assemble`` hands it a :class:`TrackedStore` when
``[tracking] backends`` names any, so the simulator, the asynchronous runtimes and the
gRPC deployment are tracked alike without knowing of it. Each record goes to
``metrics.jsonl`` first, then to the :class:`Tracker`, which turns it into scalars with
step = round and passes them to each :class:`Backend`. A backend that fails is reported
once (a :class:`TrackingWarning`) and switched off: tracking never loses a run.

Resume: the tracker keeps each backend's run identity in ``<run>/tracking.json``, so a
resumed run continues the same MLflow / W&B run and the same TensorBoard log; rounds
replayed after the checkpoint are not logged twice (each backend is told the round the
run continues from).
"""

from __future__ import annotations

import json
import math
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedloom.atomic import atomic_write_text
from fedloom.compare import flatten, summarize
from fedloom.config import RunConfig, to_toml
from fedloom.runs import RunDirectory

STATE_FILE = "tracking.json"


class TrackingWarning(UserWarning):
    """A tracking backend failed; the run goes on without it."""


class Backend(Protocol):
    """One tracking service. ``state`` is the backend's part of ``tracking.json`` (empty
    for a new run; what :meth:`start` returned on resume)."""

    name: str

    def start(
        self, params: dict[str, Any], config_text: str, resumed_at: int | None, state: dict
    ) -> dict[str, Any]:
        """Open (or, with ``resumed_at``, reopen) the run; log the config; return the state
        to keep for a resume. ``resumed_at``: the round the run continues after (steps
        above it may have been logged before and are replaced or skipped)."""
        ...

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def summary(self, values: dict[str, float], tags: dict[str, str]) -> None: ...

    def finish(self, status: str) -> None:
        """``status``: FINISHED (the run ended), KILLED (interrupted) or FAILED."""
        ...


def _moved(record: dict[str, Any]) -> int:
    return int(record.get("bytes_up") or 0) + int(record.get("bytes_down") or 0)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    """Turns a run's records into tracked scalars for every backend (see the module)."""

    def __init__(self, config: RunConfig, run: RunDirectory, backends: list[Backend]) -> None:
        self.config = config
        self.run = run
        self.backends = list(backends)
        self.metric_names: list[str] = []
        self.bytes_total = 0
        self.finished = False
        self._finalizer = weakref.finalize(self, _close_all, self.backends)

    # the records --------------------------------------------------------------
    def observe(self, record: dict[str, Any]) -> None:
        """One record the run has just written."""
        event = record.get("event")
        if event == "start":
            self._begin(record, resumed_at=-1 if self._state() else None)  # -1: restarted
            self._log(0, self._evaluation(record))
        elif event == "resume":
            self._begin(record, resumed_at=int(record["round"]))
        elif event == "round":  # a retried attempt moved bytes but is no step
            self.bytes_total += _moved(record)
            if record.get("status") != "retry":
                self._log(int(record["round"]), self.round_metrics(record))
        elif event == "audit":
            self._log(
                int(record["round"]), {"privacy/audit_epsilon_lower": record["epsilon_lower"]}
            )
        elif event == "stop":
            self._finish(record)
        elif event == "interrupt":
            self._each(lambda b: b.finish("KILLED"))
            self.finished = True

    def round_metrics(self, record: dict[str, Any]) -> dict[str, float]:
        """A round record's scalars: evaluation, training, communication (this round's,
        and every attempt's since the start), time, privacy and the cohort's outcome."""
        up, down = record.get("bytes_up"), record.get("bytes_down")
        values: dict[str, Any] = self._evaluation(record) | {
            "train/loss": record.get("train_loss"),
            "train/update_norm": record.get("update_norm"),
            "comm/bytes_up": up,
            "comm/bytes_down": down,
            "time/virtual_s": record.get("virtual_time"),
            "time/wall_s": record.get("wall_s"),
            "privacy/epsilon": record.get("epsilon"),
            "clients/selected": record.get("selected"),
            "clients/completed": record.get("completed"),
            "clients/failed": record.get("failed"),
            "clients/rejected": record.get("rejected"),
        }
        if up is not None or down is not None:
            values["comm/bytes_total"] = self.bytes_total
        return {k: float(v) for k, v in values.items() if _finite(v)}

    def _evaluation(self, record: dict[str, Any]) -> dict[str, Any]:
        names = ["loss", *self.metric_names]
        keys = [*names, *(f"fed_{n}" for n in names)]
        if self.metric_names:
            first = self.metric_names[0]
            keys += [f"fed_{first}_p10", f"fed_{first}_p90"]
        return {f"eval/{k}": record[k] for k in keys if _finite(record.get(k))}

    # lifecycle ----------------------------------------------------------------
    def _begin(self, record: dict[str, Any], resumed_at: int | None) -> None:
        records = self.run.records()
        start = next((r for r in records if r.get("event") == "start"), record)
        self.metric_names = list((start.get("task") or {"metrics": ["accuracy"]})["metrics"])
        self.bytes_total = sum(
            _moved(r)
            for r in records
            if r.get("event") == "round" and resumed_at is not None and r["round"] <= resumed_at
        )
        params = flatten(self.config.model_dump(mode="json", exclude_none=True))
        params["task.metrics"] = ",".join(self.metric_names)  # what eval/* will hold
        text = to_toml(self.config)
        saved = self._state()
        for backend in list(self.backends):
            state = self._call(
                backend,
                lambda b: b.start(params, text, resumed_at, saved.get(b.name, {})),
            )
            if state is not None:
                saved[backend.name] = state
        self._save_state(saved)
        self.finished = False

    def _finish(self, stop: dict[str, Any]) -> None:
        s = summarize(self.run.records())
        values = {
            f"summary/final_{s.metric}": s.final,
            f"summary/best_{s.metric}": s.best,
            "summary/best_round": s.best_round,
            "summary/rounds": s.rounds,
            "summary/bytes_total": s.bytes_total,
            "summary/virtual_time_s": s.virtual_time,
        }
        tags = {"stop_reason": str(stop.get("reason")), "stop_detail": str(stop.get("detail"))}
        finite = {k: float(v) for k, v in values.items() if _finite(v)}
        self._each(lambda b: b.summary(finite, tags))
        self._each(lambda b: b.finish("FINISHED"))
        self.finished = True

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if metrics:
            self._each(lambda b: b.log(step, metrics))

    # failures -----------------------------------------------------------------
    def _each(self, action: Callable[[Backend], object]) -> None:
        for backend in list(self.backends):
            self._call(backend, action)

    def _call(self, backend: Backend, action: Callable[[Backend], Any]) -> Any:
        """``action(backend)``; on any error warn once and drop the backend."""
        try:
            return action(backend)
        except Exception as err:  # noqa: BLE001 - tracking must never stop the run
            self.backends.remove(backend)
            warnings.warn(
                f"tracking: the {backend.name} backend failed ({type(err).__name__}: {err}); "
                "it is switched off and the run continues (its records are in metrics.jsonl)",
                TrackingWarning,
                stacklevel=2,
            )
            return None

    # tracking.json ------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.run.path / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.run.path / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _close_all(backends: list[Backend]) -> None:
    """At exit or collection, a run that never recorded its end is marked FAILED."""
    for backend in backends:
        try:
            backend.finish("FAILED")
        except Exception:  # noqa: BLE001, S110 - nothing left to report to
            pass


class TrackedStore:
    """The run directory as the round engine sees it, with every appended record also
    passed to the tracker (``fedloom.server.engine.RunStore``)."""

    def __init__(self, run: RunDirectory, tracker: Tracker) -> None:
        self.run = run
        self.tracker = tracker

    @property
    def path(self) -> Path:
        return self.run.path

    def append(self, record: dict[str, Any]) -> None:
        self.run.append(record)
        self.tracker.observe(record)

    def records(self) -> list[dict[str, Any]]:
        return self.run.records()

    def save_checkpoint(self, round: int, state: dict, keep: int) -> Path:
        return self.run.save_checkpoint(round, state, keep)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)
