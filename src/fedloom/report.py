"""Plots and summaries of a run, read back from its ``metrics.jsonl``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedloom.runs import RunDirectory


def write_plots(run: RunDirectory) -> list[Path]:
    """Accuracy and loss per round as PNGs under ``report/``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in run.records() if "accuracy" in r]
    if not records:
        return []
    rounds = [r["round"] for r in records]
    run.report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label in (("accuracy", "test accuracy"), ("loss", "test loss")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot(rounds, [r[metric] for r in records], marker="o", ms=3, label=label)
        fed = [(r["round"], r[f"fed_{metric}"]) for r in records if f"fed_{metric}" in r]
        if fed:
            ax.plot(*zip(*fed, strict=True), marker="s", ms=3, label=f"client hold-out {metric}")
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.set_title(f"{run.path.name}: {metric} per round")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = run.report_dir / f"{metric}.png"
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written


def summary_rows(run: RunDirectory) -> list[tuple[str, str]]:
    """Key facts of a run as (label, value) rows for a table."""
    records = run.records()
    evals = [r for r in records if "accuracy" in r]
    rounds = [r for r in records if r.get("event") == "round"]
    stop: dict[str, Any] = next((r for r in records if r.get("event") == "stop"), {})
    rows = [("run directory", str(run.path)), ("rounds", str(len(rounds)))]
    if evals:
        best = max(evals, key=lambda r: r["accuracy"])
        rows += [
            ("final test accuracy", f"{evals[-1]['accuracy']:.4f}"),
            ("final test loss", f"{evals[-1]['loss']:.4f}"),
            ("best test accuracy", f"{best['accuracy']:.4f} (round {best['round']})"),
        ]
        if "fed_accuracy" in evals[-1]:
            rows.append(("client hold-out accuracy", f"{evals[-1]['fed_accuracy']:.4f}"))
            rows.append(("  10th percentile client", f"{evals[-1]['fed_accuracy_p10']:.4f}"))
    if rounds:
        wall = sum(r["wall_s"] for r in rounds)
        rows.append(("training wall time", f"{wall:.2f} s ({wall / len(rounds):.3f} s/round)"))
        rejected = sum(r["rejected"] for r in rounds)
        rows.append(("rejected updates", str(rejected)))
    if stop:
        rows.append(("stopped", f"{stop['reason']}: {stop['detail']}"))
    return [(k, v if not (isinstance(v, float) and math.isnan(v)) else "n/a") for k, v in rows]
