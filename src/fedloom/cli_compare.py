"""``fedloom compare RUN_DIR...``: several runs in one figure and one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from fedloom.console import console, user_errors


def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="run directories to compare (a sweep's folder: its runs)")
    ],
    out: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            help="folder to write (DIR-2, DIR-3 ... if it exists; default: "
            "comparisons/NAME next to the first run)"
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="the comparison's folder name")] = "comparison",
) -> None:
    """Plot the runs' metric and loss against rounds, virtual time and bytes moved, one
    line per run labelled by the config keys that differ, and tabulate their outcome
    (plots and comparison.json in a new folder: an earlier comparison is never
    overwritten)."""
    from fedloom.compare import fresh_folder, load_runs, write_comparison

    with user_errors():
        runs = load_runs(run_dirs)
        if out is None:
            folder = fresh_folder(runs[0].path.parent / "comparisons", name)
        else:
            folder = fresh_folder(out.parent, out.name)
        result = write_comparison(runs, folder, f"{len(runs)} runs")
    console.print(outcome_table("comparison", result.rows))
    if result.keys:
        console.print(f"differing settings: {escape(', '.join(result.keys))}")
    else:
        console.print("the runs' configs are the same (legend: their directories)")
    console.print(f"table: {result.table}")
    for png in result.plots:
        console.print(f"plot: {png}")


def outcome_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Runs (or sweep points) as a table that fits 80 columns: one column per differing
    setting (headed by the key's last part, unless two keys share it), then the final and
    best metric, bytes, virtual time and stop reason (the rounds run are in the JSON)."""
    from fedloom.compare import show_value
    from fedloom.console import fmt
    from fedloom.report import human_bytes, human_duration

    keys = list(dict.fromkeys(k for r in rows for k in r.get("settings", {})))
    short = [k.rsplit(".", 1)[-1] for k in keys]
    heads = [s if short.count(s) == 1 else k for k, s in zip(keys, short, strict=True)]
    metric = next((r["metric"] for r in rows if not r.get("error")), "final")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    if not keys:
        table.add_column("run", overflow="fold")
    for head in heads:
        table.add_column(head, overflow="fold")
    for col in (metric, "best (round)", "bytes"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("virtual time", justify="right")  # the header may wrap, not values
    table.add_column("stop", no_wrap=True)
    for r in rows:
        first = (
            [escape(show_value(r["settings"].get(k, "-"))) for k in keys]
            if keys
            else [escape(r["label"])]
        )
        if r.get("error"):
            table.add_row(*first, "-", "-", "-", "-", escape(r["error"]))
            continue
        table.add_row(
            *first,
            fmt(r["final"]),
            f"{fmt(r['best'])} ({r['best_round']})",
            "-" if r["bytes_total"] is None else human_bytes(r["bytes_total"]),
            "-" if r["virtual_time"] is None else human_duration(r["virtual_time"]),
            r["stop_reason"],
        )
    return table
