"""The command line's console and its one way of reporting a user error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from fedloom.errors import FedloomError

console = Console(soft_wrap=True)  # never break paths or commands across lines


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a ``FedloomError`` as one line naming the problem and exit with status 2."""
    try:
        yield
    except FedloomError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
