"""The command line's console and its one way of reporting a user error."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from fedloom.errors import FedloomError

console = Console(soft_wrap=True)  # never break paths or commands across lines


# the machine's problems, not the program's: a full disk, a read-only or forbidden folder
_ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_SQLITE_ENVIRONMENT = ("disk is full", "readonly database", "unable to open database")


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a ``FedloomError`` as one line naming the problem and exit with status 2; so
    too an error of the machine (disk full, read-only or forbidden folder), naming the
    file, since no traceback helps with those."""
    try:
        yield
    except FedloomError as err:
        _fail(str(err))
    except OSError as err:
        if err.errno not in _ENVIRONMENT:
            raise
        where = f" ({err.filename})" if err.filename else ""
        _fail(f"{err.strerror or err}{where}")
    except sqlite3.OperationalError as err:
        if not any(text in str(err) for text in _SQLITE_ENVIRONMENT):
            raise
        _fail(f"the client registry (clients.sqlite) cannot be written: {err}")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2) from None
