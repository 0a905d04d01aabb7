"""TensorBoard: event files under ``<run>/tensorboard`` (``tensorboard --logdir runs``).

Scalars per round (step = round), the resolved config as hyperparameters (the HParams
dashboard, with the task's metrics) and as text, the summary as text at the end. A
resumed run appends to the same folder and purges the steps after its checkpoint, so a
round replayed after a crash is shown once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def _open(self, purge_step: int | None = None) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=30)
        return self._writer

    def start(
        self, params: dict[str, Any], config_text: str, resumed_at: int | None, state: dict
    ) -> dict[str, Any]:
        if resumed_at is not None:  # hide what the stopped session logged after the checkpoint
            self._open(purge_step=resumed_at + 1)
            return {"log_dir": str(self.log_dir)}
        writer = self._open()
        from torch.utils.tensorboard.summary import hparams

        values = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()
        }
        metrics = {f"eval/{m}": 0.0 for m in ("loss", *str(params["task.metrics"]).split(","))}
        for summary in hparams(values, metrics):
            writer.file_writer.add_summary(summary)
        writer.add_text("config", "```toml\n" + config_text + "\n```", 0)
        writer.flush()
        return {"log_dir": str(self.log_dir)}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        writer = self._open()
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
        writer.flush()

    def summary(self, values: dict[str, float], tags: dict[str, str]) -> None:
        lines = ["| | |", "|---|---|"]
        lines += [f"| {k} | {v:g} |" for k, v in values.items()]
        lines += [f"| {k} | {v} |" for k, v in tags.items()]
        step = int(values.get("summary/rounds", 0))
        self._open().add_text("summary", "\n".join(lines), step)

    def finish(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
