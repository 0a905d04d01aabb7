"""General sweeps: one experiment at every point of a grid of settings.

``fedloom sweep CONFIG --set client.lr=0.01,0.1 --set server.clients_per_round=10,20``
runs the cartesian product of the values (4 runs here). Values are read as TOML, as
``--set`` reads them, and split at the commas outside brackets, braces and quotes, so a
list is one value: ``--set 'model.hidden=[64,32],[128]'`` is two points; a string with a
comma is quoted: ``--set 'data.path="a,b.csv","c.csv"'``. A ``--set`` with one value is a
plain override of every point.

Every sweep gets a new folder, ``<output_dir>/sweeps/<name>`` (``<name>-2``, ``-3`` ...
when taken: an earlier sweep is never overwritten), holding one normal run directory per
point, ``sweep.json`` (the table: each point's settings, run directory and outcome) and
the comparison plots of :mod:`fedloom.compare`. A tracked sweep's points share one
MLflow experiment (W&B project) named after the sweep's folder, unless the config names
one. ``sweep.json`` is strict JSON: an
infinite value is written as the string ``"inf"`` (or ``"-inf"``), NaN (a metric never
evaluated) as ``null``. The privacy sweep (``fedloom privacy sweep``) is a sweep whose
points are target epsilons.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedloom.compare import dump_json, fresh_folder, label_runs, load_runs, write_plots
from fedloom.config import RunConfig, load_config
from fedloom.errors import ConfigError, FedloomError, RunInterrupted, StorageError

if TYPE_CHECKING:
    from fedloom.sim.runtime import Simulation

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CLOSE = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class Axis:
    """One swept setting: its key and its values as written (TOML text)."""

    key: str
    texts: tuple[str, ...]

    @property
    def values(self) -> list[Any]:
        return [parse_value(t) for t in self.texts]


def parse_value(text: str) -> Any:
    """A value as ``--set`` reads it: TOML, else the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_values(text: str) -> list[str]:
    """``text`` split at the commas outside ``[]``, ``{}`` and quotes."""
    parts, depth, quote, current = [], [], "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in _CLOSE:
            depth.append(_CLOSE[ch])
        elif depth and ch == depth[-1]:
            depth.pop()
        elif ch == "," and not depth:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quote or depth:
        raise ConfigError(f"--set {text!r}: an unclosed {quote or '[ or {'}")
    parts.append("".join(current).strip())
    return parts


def parse_axes(items: list[str]) -> list[Axis]:
    """``key=v1,v2,...`` options as axes (``ConfigError`` naming the option at fault)."""
    axes: list[Axis] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(
                f"--set {item!r}: expected key=value[,value...], e.g. client.lr=0.01,0.1"
            )
        texts = split_values(raw) if raw.strip() else [""]
        if any(not t for t in texts):
            raise ConfigError(f"--set {item!r}: an empty value (two commas, or one at an end)")
        shown = [repr(parse_value(t)) for t in texts]
        if len(set(shown)) != len(shown):
            raise ConfigError(f"--set {item!r}: a value is given twice")
        if key == "output_dir" and len(texts) > 1:
            raise ConfigError(
                f"--set {item!r}: output_dir cannot be swept (every point runs in the "
                "sweep's folder)"
            )
        if any(a.key == key for a in axes):
            raise ConfigError(f"--set {key}=...: the key is given twice; list its values in one")
        axes.append(Axis(key, tuple(texts)))
    return axes


@dataclass(frozen=True)
class SweepPoint:
    """One experiment of a sweep: what it sets (key -> value) and its whole config."""

    index: int
    settings: dict[str, Any]
    config: RunConfig


def grid(config: Path | None, axes: list[Axis]) -> list[SweepPoint]:
    """Every combination of the axes' values, each a validated config (all checked
    before anything runs: a bad point is refused with the values that make it)."""
    points = []
    combos = itertools.product(*(a.texts for a in axes))
    for index, texts in enumerate(combos, start=1):
        overrides = [f"{a.key}={t}" for a, t in zip(axes, texts, strict=True)]
        try:
            cfg = load_config(config, overrides)
        except ConfigError as err:
            swept = " ".join(o for o, a in zip(overrides, axes, strict=True) if len(a.texts) > 1)
            raise ConfigError(f"sweep point {swept or index}: {err}") from None
        settings = {  # what tells the points apart: the swept keys
            a.key: parse_value(t) for a, t in zip(axes, texts, strict=True) if len(a.texts) > 1
        }
        points.append(SweepPoint(index, settings, cfg))
    return points


Extra = Callable[["SweepPoint", "Simulation"], dict[str, Any]]


@dataclass
class SweepResult:
    """A finished sweep: its folder, one row per point (settings, run, outcome; ``error``
    for a point whose run was refused), the comparison plots and ``sweep.json``."""

    folder: Path
    rows: list[dict[str, Any]]
    differing: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    table: Path | None = None


def run_sweep(
    points: list[SweepPoint],
    root: Path,
    name: str,
    *,
    description: dict[str, Any] | None = None,
    extra: Extra | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    runner: Callable[[RunConfig], Simulation] | None = None,
) -> SweepResult:
    """Run every point in a new folder ``root/name`` (never an earlier one) and write the
    table and plots. ``description``: what ``sweep.json`` says of the sweep (axes, base
    config); ``extra(point, sim)``: more columns per point; ``on_point`` sees each row as
    it finishes; ``runner``: builds a point's simulation (default: a new run). A point
    refused at run time is recorded with its error and the sweep goes on; an interrupted
    run (Ctrl-C, SIGTERM) or a full disk stops the sweep, ``sweep.json`` holding the
    points done (``"complete": false``)."""
    from fedloom.compare import summarize

    if not points:
        raise ConfigError("a sweep needs at least one point")
    if runner is None:
        from fedloom.assemble import start_simulation as runner
    folder = fresh_folder(root, name)
    head = {"name": folder.name, **(description or {})}
    width = len(str(len(points)))
    distinct = len({p.config.name for p in points}) == len(points)  # else: -p1, -p2 ...
    rows: list[dict[str, Any]] = []
    _write(folder, head, rows, complete=False)
    for point in points:
        run_name = (
            point.config.name if distinct else f"{point.config.name}-p{point.index:0{width}d}"
        )
        tracking = point.config.tracking  # one experiment (project) per sweep, if unnamed
        if tracking.backends:
            tracking = tracking.model_copy(
                update={
                    "mlflow_experiment": tracking.mlflow_experiment or folder.name,
                    "wandb_project": tracking.wandb_project or folder.name,
                }
            )
        cfg = point.config.model_copy(
            update={"output_dir": folder, "name": run_name, "tracking": tracking}
        )
        row: dict[str, Any] = {"point": point.index, "settings": point.settings}
        try:
            sim = runner(cfg)
            sim.run()
        except (RunInterrupted, StorageError):  # the user stopped it, or the disk is full
            raise
        except FedloomError as err:  # refused at run time (e.g. over a privacy budget)
            row |= {"run": None, "error": str(err)}
        else:
            facts = summarize(sim.run_dir.records())
            row |= {"run": str(sim.run_dir.path), "error": None, **asdict(facts)}
            if extra is not None:
                row |= extra(point, sim)
        rows.append(row)
        _write(folder, head, rows, complete=False)
        if on_point is not None:
            on_point(row)
    done = [Path(r["run"]) for r in rows if r["run"] is not None]
    result = SweepResult(folder, rows)
    if done:
        runs = load_runs(done)
        result.differing = label_runs(runs)
        result.plots = write_plots(runs, folder, f"sweep {folder.name}")
    result.table = _write(folder, head, rows, complete=True, differing=result.differing)
    return result


def _write(
    folder: Path,
    head: dict[str, Any],
    rows: list[dict[str, Any]],
    complete: bool,
    differing: list[str] | None = None,
) -> Path:
    """``sweep.json``, rewritten after every point (``complete`` once all have run)."""
    data = {
        **head,
        "complete": complete,
        "non_finite": 'infinity is written "inf" / "-inf", NaN (not evaluated) null',
        "differing": differing or [],
        "points": rows,
    }
    return dump_json(folder / "sweep.json", data)


def sweep_root(config: RunConfig) -> Path:
    """Where sweeps of ``config`` go: ``<output_dir>/sweeps``."""
    return Path(config.output_dir) / "sweeps"


def describe_axes(axes: list[Axis]) -> dict[str, list[Any]]:
    return {a.key: a.values for a in axes}
