"""A run's progress bar: rounds done and the task's first metric, in a terminal or in
Jupyter (rich renders to both), shared by ``fedloom run`` and ``fedloom.simulate``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedloom.console import console

if TYPE_CHECKING:
    from fedloom.records import RoundReport
    from fedloom.sim.runtime import RunSummary, Simulation


def run_with_progress(
    sim: Simulation, on_round: Callable[[RoundReport], None] | None = None
) -> RunSummary:
    """Run ``sim`` to its end behind a progress bar; ``on_round`` still gets every report."""
    metric = sim.trainer.task.primary
    columns = (
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn(f"{metric} {{task.fields[value]}}  loss {{task.fields[loss]}}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            "rounds", total=sim.config.rounds, completed=sim.server.round, value="-", loss="-"
        )

        def update(report: RoundReport) -> None:
            value, loss = report.metrics.get(metric), report.metrics.get("loss")
            fields = {}
            if value is not None and loss is not None:
                fields = {"value": f"{value:.4f}", "loss": f"{loss:.4f}"}
            progress.update(bar, completed=report.round, **fields)
            if on_round is not None:
                on_round(report)

        return sim.run(update)
