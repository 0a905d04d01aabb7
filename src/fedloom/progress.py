"""A run's progress, shared by ``fedloom run`` and ``fedloom.simulate``: a bar (rounds done
and the task's first metric) in a terminal or in Jupyter (rich renders to both); one plain,
flushed line per round anywhere else (a pipe, nohup, Slurm, CI), since a bar there shows
nothing until the run ends. Every round also goes to the ``fedloom.progress`` logger (for
``--log-file``)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedloom.console import console

if TYPE_CHECKING:
    from fedloom.records import RoundReport
    from fedloom.sim.runtime import RunSummary, Simulation

log = logging.getLogger("fedloom.progress")


def _num(value: float | None) -> str:
    """Four significant digits: enough to follow a run, short enough to read."""
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def _elapsed(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def round_line(report: RoundReport, total: int, metric: str, elapsed_s: float) -> str:
    """``round 3/5  accuracy 0.9132  loss 0.3071  elapsed 0:00:04``."""
    value, loss = report.metrics.get(metric), report.metrics.get("loss")
    return (
        f"round {report.round}/{total}  {metric} {_num(value)}  loss {_num(loss)}  "
        f"elapsed {_elapsed(elapsed_s)}"
    )


def run_with_progress(
    sim: Simulation,
    on_round: Callable[[RoundReport], None] | None = None,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> RunSummary:
    """Run ``sim`` to its end showing its progress; ``on_round`` still gets every report.
    ``quiet``: show nothing (the log still gets each round); ``stream``: where plain
    lines go when the console is no terminal (default stdout)."""
    metric = sim.trainer.task.primary
    total = sim.config.rounds
    started = time.perf_counter()

    def logged(report: RoundReport) -> str:
        line = round_line(report, total, metric, time.perf_counter() - started)
        log.info(line)
        if on_round is not None:
            on_round(report)
        return line

    if quiet or not (console.is_terminal or console.is_jupyter):
        out = stream or sys.stdout
        if sim.server.round and not quiet:  # a resumed run: where it goes on from
            print(f"round {sim.server.round}/{total}  resumed from its checkpoint", file=out)

        def plain(report: RoundReport) -> None:
            line = logged(report)
            if not quiet:
                print(line, file=out, flush=True)

        return sim.run(plain)
    columns = (
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn(f"{metric} {{task.fields[value]}}  loss {{task.fields[loss]}}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(
            "rounds", total=total, completed=sim.server.round, value="-", loss="-"
        )

        def update(report: RoundReport) -> None:
            value, loss = report.metrics.get(metric), report.metrics.get("loss")
            fields = {}
            if value is not None and loss is not None:
                fields = {"value": _num(value), "loss": _num(loss)}
            progress.update(bar, completed=report.round, **fields)
            logged(report)

        return sim.run(update)
