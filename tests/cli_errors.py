"""Shared check for the CLI's one-line user errors (imported by the test modules beside it)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedloom.cli import app

runner = CliRunner()


def one_line_error(args: list[str], *needles: str) -> str:
    """Run ``fedloom ARGS``: it must exit 2 with exactly one ``error:`` line, last, without
    a traceback, containing every needle; returns that line."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # progress may precede
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
