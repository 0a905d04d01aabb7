"""Weights & Biases, when the ``wandb`` package is installed (it is not a dependency).

``tracking.wandb_mode = "offline"`` (the default) keeps the run under ``<run>/wandb`` for
``wandb sync``; ``"online"`` needs a login. A resumed run continues the same W&B run
(its id is kept in ``tracking.json``); W&B refuses steps below its last one, so rounds
replayed after the checkpoint are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WandbBackend:
    name = "wandb"

    def __init__(self, project: str, run_name: str, mode: str, run_dir: Path) -> None:
        self.project = project
        self.run_name = run_name
        self.mode = mode
        self.run_dir = Path(run_dir)
        self.run: Any = None
        self.last_step = -1
        self._done = True

    def start(
        self, params: dict[str, Any], config_text: str, resumed_at: int | None, state: dict
    ) -> dict[str, Any]:
        import wandb

        self._done = False
        run_id = state.get("id") if resumed_at is not None else None
        self.run = wandb.init(
            project=self.project,
            name=self.run_name,
            id=run_id or wandb.util.generate_id(),
            resume="allow",
            dir=str(self.run_dir),
            mode=self.mode,
            config=params,
        )
        self.last_step = int(self.run.step) - 1 if run_id else -1
        return {"id": self.run.id}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.last_step:
            self.run.log(metrics, step=step)
            self.last_step = step

    def summary(self, values: dict[str, float], tags: dict[str, str]) -> None:
        self.run.summary.update({**values, **tags})

    def finish(self, status: str) -> None:
        if not self._done and self.run is not None:
            self._done = True
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
