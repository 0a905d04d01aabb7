"""``fedloom sweep [CONFIG] --set key=v1,v2,...``: one run per point of a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from fedloom.console import console, user_errors


def sweep(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here
        typer.Argument(help="TOML config; omit for the built-in experiment"),
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="a swept setting and its values, e.g. --set client.lr=0.01,0.1 (TOML "
            "values split at commas outside brackets and quotes: --set "
            "'model.hidden=[64,32],[128]'); one value: a plain override; repeat for a grid",
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the sweep's folder name (default: the config's name)"),
    ] = None,
) -> None:
    """Run the experiment at every combination of the --set values (their cartesian
    product), each point a normal run directory under a new folder
    <output_dir>/sweeps/NAME (NAME-2 ... when taken), then write sweep.json (strict JSON:
    infinity as "inf", NaN as null) and the comparison plots."""
    from fedloom.cli_compare import outcome_table
    from fedloom.errors import RunInterrupted
    from fedloom.sweep import describe_axes, grid, parse_axes, run_sweep, sweep_root

    with user_errors():
        axes = parse_axes(set_)
        points = grid(config, axes)
        base = points[0].config
        swept = [a.key for a in axes if len(a.texts) > 1]
        console.print(f"{len(points)} runs: {', '.join(swept) or 'one point (nothing swept)'}")
        try:
            result = run_sweep(
                points,
                sweep_root(base),
                name or base.name,
                description={
                    "config": None if config is None else str(config),
                    "axes": describe_axes(axes),
                },
                on_point=lambda row: console.print(_line(row)),
            )
        except RunInterrupted as err:
            console.print(
                f"[bold yellow]stopped:[/] {escape(str(err))}; the sweep's sweep.json "
                "lists the points done"
            )
            raise typer.Exit(143 if err.signal_name == "SIGTERM" else 130) from None
    for row in result.rows:
        row["label"] = _settings(row["settings"]) or f"point {row['point']}"
    console.print(outcome_table(f"sweep {result.folder.name}", result.rows))
    console.print(f"table: {result.table}")
    for png in result.plots:
        console.print(f"plot: {png}")


def _settings(settings: dict[str, Any]) -> str:
    from fedloom.compare import show_value

    return ", ".join(f"{k}={show_value(v)}" for k, v in settings.items())


def _line(row: dict[str, Any]) -> str:
    what = escape(_settings(row["settings"]))
    if row["error"]:
        return f"point {row['point']} ({what}): [bold red]refused:[/] {escape(row['error'])}"
    return f"point {row['point']} ({what}): {row['metric']} {row['final']:.4g}, run {row['run']}"
