"""Several runs in one figure and one table: the comparison researchers draw most.

:func:`load_runs` reads each run directory's ``metrics.jsonl`` and ``config.toml``;
:func:`differing` finds the config keys whose values differ between them, which label
the runs in the legend (``client.lr=0.1, server.clients_per_round=20``);
:func:`write_comparison` plots each run's primary metric and loss against rounds, virtual
time (when recorded) and bytes moved (uploaded + downloaded, when counted), and writes
the table as strict JSON. Runs whose tasks report different metrics are compared on
each metric in its own panel; a run without a metric is left out of that panel.
``fedloom compare`` and ``fedloom sweep`` are its faces.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedloom.atomic import atomic_write_text
from fedloom.console import strict
from fedloom.errors import ConfigError, FedloomError
from fedloom.runs import RunDirectory

# keys that differ between any two runs without telling them apart
_IGNORED = ("name", "output_dir")
_MAX_LABEL_KEYS = 4


@dataclass(frozen=True)
class RunFacts:
    """A run's outcome, read from its records. ``final`` and ``best`` are the primary
    metric's last and best evaluated values (in the task's direction); NaN when the run
    evaluated nothing; ``bytes_total`` is uploads + downloads (None when not counted)."""

    metric: str
    maximize: bool
    final: float
    best: float
    best_round: int
    rounds: int
    loss: float
    bytes_total: int | None
    virtual_time: float | None
    wall_s: float
    epsilon: float | None
    stop_reason: str


def summarize(records: list[dict[str, Any]]) -> RunFacts:
    """The outcome of the run whose records these are."""
    from fedloom.report import task_metrics

    names, maximize = task_metrics(records)
    metric = names[0] if names else "loss"
    rounds = [r for r in records if r.get("event") == "round"]
    evals = [r for r in records if _number(r.get(metric))]
    sign = 1.0 if metric in maximize else -1.0
    best = max(evals, key=lambda r: sign * r[metric]) if evals else {}
    counted = any(r.get("bytes_up") is not None or r.get("bytes_down") is not None for r in rounds)
    moved = sum(int(r.get("bytes_up") or 0) + int(r.get("bytes_down") or 0) for r in rounds)
    timed = [r["virtual_time"] for r in rounds if _number(r.get("virtual_time"))]
    spent = [r["epsilon"] for r in rounds if _number(r.get("epsilon"))]
    stop = next((r for r in reversed(records) if r.get("event") == "stop"), {})
    losses = [r["loss"] for r in evals if _number(r.get("loss"))]
    return RunFacts(
        metric=metric,
        maximize=metric in maximize,
        final=float(evals[-1][metric]) if evals else math.nan,
        best=float(best[metric]) if best else math.nan,
        best_round=int(best.get("round", 0)),
        rounds=max((int(r["round"]) for r in rounds), default=0),
        loss=float(losses[-1]) if losses else math.nan,
        bytes_total=moved if counted else None,
        virtual_time=float(timed[-1]) if timed else None,
        wall_s=round(sum(float(r.get("wall_s") or 0.0) for r in rounds), 3),
        epsilon=float(spent[-1]) if spent else None,
        stop_reason=str(stop.get("reason", "unfinished")),
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"section.key": value}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{name}.")
        elif not isinstance(value, dict):
            out[name] = value
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class LoadedRun:
    """One run to compare: its directory, records, flattened config and outcome."""

    path: Path
    records: list[dict[str, Any]]
    config: dict[str, Any]
    facts: RunFacts
    label: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def load_runs(paths: list[Path]) -> list[LoadedRun]:
    """Each run directory in ``paths``, a sweep's folder standing for the runs of its
    points (``CheckpointError`` for a path that is neither; ``FedloomError`` for a run
    that recorded nothing yet)."""
    if not paths:
        raise ConfigError("give at least one run directory to compare")
    seen: set[Path] = set()
    runs = []
    for path in [p for given in paths for p in _expand(Path(given))]:
        run = RunDirectory.open(Path(path))
        if run.path.resolve() in seen:
            raise ConfigError(f"run directory {str(path)!r} is given twice")
        seen.add(run.path.resolve())
        records = run.records()
        if not any(r.get("event") == "start" for r in records):
            raise FedloomError(f"run {str(path)!r} has recorded nothing yet (no start record)")
        config = flatten(run.load_config().model_dump(mode="json", exclude_none=True))
        runs.append(LoadedRun(run.path, records, config, summarize(records)))
    label_runs(runs)
    return runs


def _expand(path: Path) -> list[Path]:
    """``path``, or the run directories of the sweep whose folder it is (sweep.json)."""
    table = path / "sweep.json"
    if (path / "config.toml").is_file() or not table.is_file():
        return [path]
    try:
        points = json.loads(table.read_text(encoding="utf-8"))["points"]
        return [Path(p["run"]) for p in points if p.get("run")]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FedloomError(f"{str(table)!r} is not a sweep's table: {err}") from None


def differing(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every config (a key missing
    from some counts as differing), sorted; the run's name and output folder left out."""
    keys = sorted({k for c in configs for k in c if k not in _IGNORED})
    missing = object()
    return [k for k in keys if len({show_value(c.get(k, missing)) for c in configs}) > 1]


def show_value(value: object) -> str:
    """A config value as ``--set`` would write it; ``-`` for a key the run lacks."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float | list | dict):
        return json.dumps(value)
    return "-"


def label_runs(runs: list[LoadedRun]) -> list[str]:
    """Set each run's ``settings`` (its values of the differing keys) and ``label``
    (``key=value, ...``; the directory name when nothing differs or labels collide)."""
    keys = differing([r.config for r in runs])
    for run in runs:
        run.settings = {k: run.config.get(k, "-") for k in keys}
        parts = [f"{k}={show_value(v)}" for k, v in run.settings.items()]
        if len(parts) > _MAX_LABEL_KEYS:
            parts = [*parts[:_MAX_LABEL_KEYS], f"+{len(parts) - _MAX_LABEL_KEYS} more"]
        run.label = ", ".join(parts) or run.path.name
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.path.name})"
    return keys


def fresh_folder(root: Path, name: str) -> Path:
    """A new folder ``root/name`` (``name-2``, ``name-3`` ... when taken): an earlier
    comparison or sweep is never overwritten."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{str(root)!r} is a file, expected a folder")
    root.mkdir(parents=True, exist_ok=True)
    path, n = root / name, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{name}-{n}"


def dump_json(path: Path, data: Any) -> Path:
    """Write ``data`` as strict JSON (:func:`strict`), atomically."""
    atomic_write_text(path, json.dumps(strict(data), indent=2, allow_nan=False) + "\n")
    return path


def table_rows(runs: list[LoadedRun]) -> list[dict[str, Any]]:
    """One row per run: its directory, label, differing settings and outcome."""
    return [
        {"run": str(r.path), "label": r.label, "settings": r.settings, **asdict(r.facts)}
        for r in runs
    ]


def _curve(records: list[dict[str, Any]], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) at each record evaluating ``y``: x = round, virtual time or cumulative bytes
    (uploads + downloads of every round attempt so far)."""
    out, moved = [], 0
    if x == "time" and not any(
        r.get("event") == "round" and _number(r.get("virtual_time")) for r in records
    ):
        return []  # a deployment: wall-clock rounds, no virtual timeline
    for r in records:
        if r.get("event") == "round":
            moved += int(r.get("bytes_up") or 0) + int(r.get("bytes_down") or 0)
        if r.get("event") not in ("start", "round") or not _number(r.get(y)):
            continue
        if x == "round":
            out.append((float(r["round"]), float(r[y])))
        elif x == "time":
            t = 0.0 if r.get("event") == "start" else r.get("virtual_time")
            if _number(t):
                out.append((float(t), float(r[y])))
        elif moved > 0:
            out.append((float(moved), float(r[y])))
    return out


_AXES = {
    "round": ("round", "rounds"),
    "time": ("virtual time (s)", "time"),
    "bytes": ("bytes moved, cumulative (up + down)", "bytes"),
}


def write_plots(runs: list[LoadedRun], folder: Path, title: str) -> list[Path]:
    """``compare_rounds.png``, ``compare_time.png`` (when any run recorded virtual time)
    and ``compare_bytes.png`` (when any run counted bytes): one panel per primary metric
    of the runs and one for the loss, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedloom.report import save_figure

    metrics = list(dict.fromkeys(r.facts.metric for r in runs if r.facts.metric != "loss"))
    panels = [*metrics, "loss"]
    written = []
    for x, (xlabel, suffix) in _AXES.items():
        curves = {(r.path, y): _curve(r.records, x, y) for r in runs for y in panels}
        if x != "round" and not any(curves.values()):
            continue
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(5.5 * len(panels), 3.6 + 0.22 * len(runs)),
            dpi=110,
            squeeze=False,
            layout="constrained",
        )
        for ax, y in zip(axes[0], panels, strict=True):
            for r in runs:
                points = curves[(r.path, y)]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=r.label)
            if x == "bytes":
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"test {y}")
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[0][-1].get_legend_handles_labels()
        fig.suptitle(title)
        fig.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False)
        written.append(save_figure(fig, folder / f"compare_{suffix}.png"))
    return written


@dataclass(frozen=True)
class Comparison:
    """What :func:`write_comparison` wrote."""

    folder: Path
    keys: list[str]
    rows: list[dict[str, Any]]
    plots: list[Path]
    table: Path


def write_comparison(runs: list[LoadedRun], folder: Path, title: str = "") -> Comparison:
    """The plots and ``comparison.json`` of ``runs`` in ``folder``."""
    keys = label_runs(runs)
    plots = write_plots(runs, folder, title or f"{len(runs)} runs")
    rows = table_rows(runs)
    table = dump_json(folder / "comparison.json", {"differing": keys, "runs": rows})
    return Comparison(folder, keys, rows, plots, table)
