"""The command line's console, its one way of reporting a user error, and how
``fedloom run``, ``server`` and ``client`` report the same way on a terminal and in a pipe,
under nohup, Slurm or CI: ``logging`` for fedloom's loggers (rich's handler on a terminal,
plain lines on stderr elsewhere), ``--quiet``, ``--verbose``, ``--log-file`` and a
``--json`` summary that is then the only thing on stdout."""

from __future__ import annotations

import errno
import json
import logging
import math
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.text import Text

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


# reporting options of run, server and client ------------------------------------------
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="print only errors and the final run directory")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show fedloom's debug logs")]
LogFile = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--log-file",
        help="append every log line (debug level, plain text, rounds included) to this file",
        dir_okay=False,
    ),
]
JsonSummary = Annotated[
    bool,
    typer.Option(
        "--json", help="print one JSON summary object on stdout at the end (logs go to stderr)"
    ),
]

LOGGER = "fedloom"
# what the screen shows by itself (rounds as a bar or plain lines, the command's messages):
# these loggers carry it to --log-file only
PROGRESS_LOGGER = "fedloom.progress"
CLI_LOGGER = "fedloom.cli"
_cli_log = logging.getLogger(CLI_LOGGER)
_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Output:
    """The chosen way of reporting; ``say`` prints what a person reads (not with --quiet),
    ``stream`` is where plain per-round lines go (stderr with --json)."""

    quiet: bool = False
    verbose: bool = False
    log_file: Path | None = None
    json: bool = False

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self.json else sys.stdout

    def say(self, text: str) -> None:
        """A message (rich markup) for the screen, unless --quiet; always for --log-file."""
        _cli_log.info(Text.from_markup(text).plain)
        if not self.quiet:
            console.print(text)

    def note(self, text: str) -> None:
        """A line that must reach the user in every mode (stderr: never mixed into --json),
        such as how to resume an interrupted run."""
        _cli_log.warning(text)
        print(text, file=sys.stderr, flush=True)

    def finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        """The end of a run: the JSON summary (--json), else the run directory alone
        (--quiet); the normal mode shows its summary table itself."""
        _cli_log.info("summary: %s", dumps(summary))
        if self.json:
            print(dumps(summary), file=sys.stdout, flush=True)
        elif self.quiet:
            print(f"run directory: {run_dir}", file=sys.stdout, flush=True)


def reporting_options(quiet: bool, verbose: bool, log_file: Path | None, json_: bool) -> Output:
    """Check the reporting options together (one line naming the conflict)."""
    if quiet and verbose:
        raise FedloomError("--quiet and --verbose contradict each other: choose one")
    if log_file is not None:
        if log_file.is_dir():
            raise FedloomError(f"--log-file {str(log_file)!r} is a folder, expected a file")
        try:  # here, where the error is one line, not when the handler opens it
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.open("a", encoding="utf-8").close()
        except OSError as err:
            raise FedloomError(
                f"--log-file {str(log_file)!r} cannot be written: {err.strerror or err}"
            ) from None
    return Output(quiet, verbose, log_file, json_)


class _NotShownTwice(logging.Filter):
    """The screen shows rounds and the command's messages by itself, never twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name not in (PROGRESS_LOGGER, CLI_LOGGER)


@contextmanager
def reporting(out: Output, default_level: int = logging.INFO) -> Iterator[Output]:
    """Route fedloom's logs for one command: to the screen at ``default_level`` (errors
    only with --quiet, debug with --verbose), every record to --log-file, and with --json
    the console to stderr. Undone on exit, so commands run in one process stay apart."""
    level = logging.ERROR if out.quiet else logging.DEBUG if out.verbose else default_level
    logger = logging.getLogger(LOGGER)
    saved_level, saved_propagate = logger.level, logger.propagate
    if out.json:
        console.stderr = True  # undone on exit
    screen: logging.Handler
    if console.is_terminal:
        screen = RichHandler(console=console, show_path=False, markup=False)
    else:
        screen = logging.StreamHandler(sys.stderr)
        screen.setFormatter(logging.Formatter(_PLAIN))
    screen.setLevel(level)
    screen.addFilter(_NotShownTwice())
    handlers: list[logging.Handler] = [screen]
    if out.log_file is not None:
        to_file = logging.FileHandler(out.log_file, mode="a", encoding="utf-8")
        to_file.setFormatter(logging.Formatter(_PLAIN))
        to_file.setLevel(logging.DEBUG)
        handlers.append(to_file)
    logger.setLevel(logging.DEBUG if out.log_file is not None else level)
    logger.propagate = False  # the root logger's handlers (if any) would print it twice
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield out
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate
        console.stderr = False


def stderr_console() -> Console:
    """A console on stderr, for what must stay off stdout (--csv/--json to stdout)."""
    return Console(file=sys.stderr, soft_wrap=True)


# numbers -------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 4) -> str:
    """A float for people: ``digits`` significant digits, ``-`` for none or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def strict(value: Any, digits: int | None = None) -> Any:
    """``value`` made strictly valid JSON, the one convention of every JSON fedloom writes
    for people (summaries, sweeps, comparisons): +/-infinity as the strings ``"inf"`` /
    ``"-inf"`` (an epsilon of inf means no DP, worth keeping), NaN as null, paths as
    strings; floats rounded to ``digits`` significant digits when given."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not math.isfinite(value):
            return "inf" if value > 0 else "-inf"
        return value if digits is None else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): strict(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v, digits) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(data: Any) -> str:
    """Strictly valid JSON (:func:`strict`), floats to 6 significant digits (the tables
    show 4)."""
    return json.dumps(strict(data, 6), allow_nan=False)


def run_summary(run_dir: Path, plots: list[Path]) -> dict[str, Any]:
    """A finished (or stopped) run as one JSON-ready object, from its records: rounds
    done and planned, how it stopped, the last and best evaluation, privacy spent, the
    plots; plus the summary table's rows as text."""
    from fedloom.report import summary_rows, task_metrics
    from fedloom.runs import RunDirectory

    run = RunDirectory(run_dir)
    records = run.records()
    names, maximize = task_metrics(records)
    primary = names[0] if names else "loss"
    rounds = [r for r in records if r.get("event") == "round"]
    evals = [r for r in rounds if isinstance(r.get(primary), int | float)]
    stop = next((r for r in reversed(records) if r.get("event") == "stop"), None)
    out: dict[str, Any] = {
        "run_dir": str(run.path),
        "rounds": len(rounds),
        "rounds_planned": run.load_config().rounds,
        "stop": None
        if stop is None
        else {"reason": stop.get("reason"), "detail": stop.get("detail"), "round": stop["round"]},
        "metric": primary,
        "final": {},
        "best": None,
        "wall_s": round(sum(float(r.get("wall_s", 0.0)) for r in rounds), 3),
    }
    if evals:
        last = evals[-1]
        keys = [*names, "loss", *(k for k in last if k.startswith("fed_"))]
        out["final"] = {k: last[k] for k in keys if isinstance(last.get(k), int | float)}
        out["final_round"] = last["round"]
        sign = 1.0 if primary in maximize else -1.0
        best = max(evals, key=lambda r: sign * r[primary])
        out["best"] = {"value": best[primary], "round": best["round"]}
    ledger = run.path / "privacy.json"
    if ledger.is_file():
        spent = json.loads(ledger.read_text(encoding="utf-8"))
        out["privacy"] = {"epsilon": spent.get("epsilon"), "delta": spent.get("delta")}
    out["plots"] = [str(p) for p in plots]
    out["summary"] = dict(summary_rows(run))
    return out
