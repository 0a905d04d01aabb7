"""``fedloom audit CONFIG|RUN_DIR``: the security and privacy audit as a table (or JSON),
exiting 1 when any finding is high so that a pipeline can gate a run or a release on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedloom.console import console, user_errors

_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def audit(
    target: Annotated[Path, typer.Argument(metavar="CONFIG|RUN_DIR", help="a config or a run")],
    json_out: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation
        typer.Option(
            "--json", metavar="OUT|-", help="also write the findings as JSON (-: stdout only)"
        ),
    ] = None,
    certs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--certs", metavar="DIR", help="the deployment's `fedloom certs` folder"),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="the deployment server runs without TLS")
    ] = False,
    byzantine_fraction: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            metavar="F", help="share of Byzantine clients (default: attack.clients if set)"
        ),
    ] = None,
) -> None:
    """Audit a config before a run, or a finished run, for security and privacy: TLS,
    differential privacy and its ledger, secure aggregation against dropout, robust
    aggregation against Byzantine clients, file permissions. Exits 1 on any high finding."""
    from fedloom.audit import audit as run_audit

    with user_errors():
        report = run_audit(
            target, certs=certs, insecure=insecure, byzantine_fraction=byzantine_fraction
        )
        data = report.to_json()
        if json_out not in (None, "-"):
            Path(json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if json_out == "-":
        typer.echo(json.dumps(data, indent=2))
    else:
        table = Table(title=f"audit of {escape(str(target))} ({report.kind})")
        for column in ("severity", "check", "finding", "detail", "remedy"):
            table.add_column(column, overflow="fold")
        for f in report.sorted():
            style = _STYLE[f.severity]
            table.add_row(
                f"[{style}]{f.severity}[/]",
                f.check,
                escape(f.title),
                escape(f.detail),
                escape(f.remedy),
            )
        console.print(table)
        console.print(report.summary())
        if json_out is not None:
            console.print(f"wrote {escape(json_out)}")
    if report.has_high():
        raise typer.Exit(1)
