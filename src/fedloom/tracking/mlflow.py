"""MLflow: one MLflow run per fedloom run, by default in an SQLite store inside the run
directory (``sqlite:///<run>/mlflow.db``; ``mlflow ui --backend-store-uri`` that URI), or
on any tracking server (``tracking.mlflow_uri``).

The resolved config is logged as params (no artifacts: nothing is written outside the
run directory or the tracking server), each round's scalars as metrics with step =
round, the summary as metrics and tags. A resumed run continues the same MLflow run (its
id is kept in ``tracking.json``) and skips the steps it had already logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

_BATCH = 100  # MLflow takes at most this many params in one call
_VALUE_CHARS = 6000  # and values this long
_CHATTY = ("mlflow.store.db.utils", "alembic.runtime.migration")


class MlflowBackend:
    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str, run_name: str, run_dir: Path) -> None:
        self.uri = uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
        self.experiment = experiment
        self.run_name = run_name
        self.run_dir = Path(run_dir)
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # metric -> the last step already logged
        self._done = True

    def start(
        self, params: dict[str, Any], config_text: str, resumed_at: int | None, state: dict
    ) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._done = False
        for name in _CHATTY:  # a new store announces its table migrations at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=state.get("uri", self.uri))
        self.uri = state.get("uri", self.uri)
        if resumed_at is not None and state.get("run_id"):
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            run = self.client.get_run(self.run_id)
            self.logged = {
                key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in run.data.metrics
            }
            return {"uri": self.uri, "run_id": self.run_id}
        found = self.client.get_experiment_by_name(self.experiment)
        experiment = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        run = self.client.create_run(
            experiment,
            run_name=self.run_name,
            tags={"fedloom.run_dir": str(self.run_dir.resolve())},
        )
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_VALUE_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])
        return {"uri": self.uri, "run_id": self.run_id}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [
            Metric(k, v, now, step) for k, v in metrics.items() if step > self.logged.get(k, -1)
        ]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)
            self.logged |= {m.key: step for m in fresh}

    def summary(self, values: dict[str, float], tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        step = int(values.get("summary/rounds", 0))
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in values.items()],
            tags=[RunTag(f"fedloom.{k}", v[:_VALUE_CHARS]) for k, v in tags.items()],
        )

    def finish(self, status: str) -> None:
        if not self._done and self.client is not None and self.run_id is not None:
            self._done = True
            self.client.set_terminated(self.run_id, status)
