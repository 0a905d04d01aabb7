"""Plots and summaries of a run, read back from its ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedloom.atomic import atomic_write
from fedloom.runs import RunDirectory


def task_metrics(records: list[dict[str, Any]]) -> tuple[list[str], set[str]]:
    """The run's metric names (the task's, first one first; a run recorded before tasks
    were named reports accuracy) and those where higher is better."""
    start = next((r for r in records if r.get("event") == "start"), {})
    task = start.get("task") or {"metrics": ["accuracy"], "maximize": ["accuracy"]}
    return list(task["metrics"]), set(task["maximize"])


def is_asynchronous(records: list[dict[str, Any]]) -> bool:
    """Whether the run was asynchronous: its round records are server steps carrying
    their contributors' ``staleness`` histogram."""
    return any(r.get("event") == "round" and "staleness" in r for r in records)


def staleness_totals(records: list[dict[str, Any]]) -> dict[int, int]:
    """Aggregated updates per staleness value, summed over every server step."""
    totals: dict[int, int] = {}
    for r in records:
        if r.get("event") != "round":
            continue
        for value, count in (r.get("staleness") or {}).items():
            totals[int(value)] = totals.get(int(value), 0) + int(count)
    return dict(sorted(totals.items()))


def write_plots(run: RunDirectory) -> list[Path]:
    """Every task metric and the loss per round as PNGs under ``report/`` (and the first
    metric against virtual time, and against uploaded bytes when the rounds count them);
    an asynchronous run's rounds are server steps, and it adds the histogram of its
    updates' staleness; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_records = run.records()
    names, _ = task_metrics(all_records)
    primary = names[0] if names else "loss"
    records = [r for r in all_records if "loss" in r and primary in r]
    if not records:
        return []
    rounds = [r["round"] for r in records]
    asynchronous = is_asynchronous(all_records)
    step = "server step" if asynchronous else "round"
    run.report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label in [*((n, f"test {n}") for n in names), ("loss", "test loss")]:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot(rounds, [r[metric] for r in records], marker="o", ms=3, label=label)
        fed = [(r["round"], r[f"fed_{metric}"]) for r in records if f"fed_{metric}" in r]
        if fed:
            ax.plot(*zip(*fed, strict=True), marker="s", ms=3, label=f"client hold-out {metric}")
        ax.set_xlabel(step)
        ax.set_ylabel(metric)
        ax.set_title(f"{run.path.name}: {metric} per {step}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        written.append(save_figure(fig, run.report_dir / f"{metric}.png"))
    timed = [r for r in records if "virtual_time" in r]
    if timed:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        end = timed[-1]["virtual_time"]
        unit, scale = ("s", 1.0) if end < 120 else ("min", 60.0) if end < 7200 else ("h", 3600.0)
        ax.plot(
            [r["virtual_time"] / scale for r in timed],
            [r[primary] for r in timed],
            marker="o",
            ms=3,
        )
        ax.set_xlabel(f"virtual time ({unit})")
        ax.set_ylabel(f"test {primary}")
        ax.set_title(f"{run.path.name}: {primary} against virtual time")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(save_figure(fig, run.report_dir / f"{primary}_vs_time.png"))
    sent = [(b, v) for b, v in _bytes_up_curve(all_records, primary) if b > 0]  # log axis
    if sent:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.plot([b / 1e6 for b, _ in sent], [v for _, v in sent], marker="o", ms=3)
        ax.set_xscale("log")
        ax.set_xlabel("uploaded, cumulative (MB)")
        ax.set_ylabel(f"test {primary}")
        ax.set_title(f"{run.path.name}: {primary} against uploaded bytes")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        written.append(save_figure(fig, run.report_dir / f"{primary}_vs_bytes.png"))
    if asynchronous:
        written.append(_staleness_plot(run, all_records))
    return written


def _staleness_plot(run: RunDirectory, records: list[dict[str, Any]]) -> Path:
    """Bars of aggregated updates per staleness value (every step summed); the title
    counts the updates dropped as too stale."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    totals = staleness_totals(records)
    dropped = sum(int(r.get("dropped_stale") or 0) for r in records if r.get("event") == "round")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.bar(list(totals), list(totals.values()), width=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("staleness (versions published since the update's base)")
    ax.set_ylabel("aggregated updates")
    ax.set_title(f"{run.path.name}: staleness ({dropped} dropped as too stale)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, run.report_dir / "staleness.png")


def save_figure(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Write ``fig`` as a PNG atomically and close it (also used by ``fedloom.compare``)."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda fh: fig.savefig(fh, format="png"), fsync=False)
    plt.close(fig)
    return path


def write_client_plots(
    run: RunDirectory,
    rows: list[dict[str, Any]],
    reputation: list[dict[str, Any]] | None = None,
    quarantine_below: float | None = None,
) -> list[Path]:
    """Participation, reliability and speed of every client as PNGs under ``report/``,
    and their reputation over rounds when ``reputation`` (the registry's
    ``reputation_history()``) has rows, with the quarantine threshold ``quarantine_below``
    if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run.report_dir.mkdir(parents=True, exist_ok=True)
    selected = np.array([r["selected"] for r in rows])
    completed = np.array([r["completed"] for r in rows])
    reliability = np.array([r["reliability"] for r in rows])
    duration = np.array([r["duration"] for r in rows], dtype=np.float64)
    tier = np.array([r["tier"] for r in rows])
    written = []

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    order = np.argsort(-selected, kind="stable")
    ax.bar(np.arange(len(rows)), selected[order], width=1.0, label="selected")
    ax.bar(np.arange(len(rows)), completed[order], width=1.0, label="aggregated")
    ax.set_xlabel("clients (by times selected)")
    ax.set_ylabel("rounds")
    ax.set_title(f"{run.path.name}: participation")
    ax.legend()
    fig.tight_layout()
    written.append(save_figure(fig, run.report_dir / "clients_participation.png"))

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    seen = selected > 0
    points = ax.scatter(selected[seen], reliability[seen], c=tier[seen], s=12, cmap="viridis")
    ax.set_xlabel("times selected")
    ax.set_ylabel("reliability (discounted completion rate)")
    ax.set_title(f"{run.path.name}: reliability")
    fig.colorbar(points, ax=ax, label="device tier")
    fig.tight_layout()
    written.append(save_figure(fig, run.report_dir / "clients_reliability.png"))

    known = np.isfinite(duration)
    if known.any():
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        ax.hist(duration[known], bins=40)
        ax.set_xlabel("smoothed round-trip time (virtual s)")
        ax.set_ylabel("clients")
        ax.set_title(f"{run.path.name}: client speed")
        fig.tight_layout()
        written.append(save_figure(fig, run.report_dir / "clients_speed.png"))
    if reputation:
        written.append(_reputation_plot(run, reputation, quarantine_below))
    return written


_QUARANTINE_ACTIONS = ("quarantine", "requarantine")


def _reputation_plot(
    run: RunDirectory, history: list[dict[str, Any]], quarantine_below: float | None
) -> Path:
    """Each client's reputation as a step line from 1 (before its first change); clients
    ever quarantined in red with a cross where it happened, the others in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    clients = np.array([h["client_id"] for h in history], dtype=np.int64)
    rounds = np.array([h["round"] for h in history], dtype=np.float64)
    values = np.array([h["reputation"] for h in history], dtype=np.float64)
    caught = np.array([h["action"] in _QUARANTINE_ACTIONS for h in history], dtype=bool)
    order = np.lexsort((rounds, clients))
    clients, rounds, values, caught = clients[order], rounds[order], values[order], caught[order]
    starts = np.flatnonzero(np.r_[True, clients[1:] != clients[:-1]])
    bad_clients = np.unique(clients[caught])
    end = float(rounds.max()) + 1  # every line runs to the end of the logged rounds
    segments, colours = [], []
    for lo, hi in zip(starts, [*starts[1:], len(clients)], strict=True):
        x = np.r_[rounds[lo] - 1, rounds[lo:hi]]
        y = np.r_[1.0, values[lo:hi]]
        steps = np.stack([np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]], axis=1)
        segments.append(np.vstack([steps, [[end, y[-1]]]]))
        colours.append("tab:red" if clients[lo] in bad_clients else "0.6")

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=1.0, alpha=0.8))
    ax.scatter(
        rounds[caught],
        values[caught],
        marker="x",
        color="tab:red",
        zorder=3,
        label=f"quarantined ({len(bad_clients)} clients)",
    )
    if quarantine_below is not None:
        ax.axhline(
            quarantine_below,
            color="black",
            linestyle="--",
            linewidth=1.0,
            label=f"quarantine below {quarantine_below:g}",
        )
    ax.set_xlim(float(rounds.min()) - 1, end)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("reputation")
    ax.set_title(f"{run.path.name}: reputation of {len(starts)} clients that lost trust")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return save_figure(fig, run.report_dir / "clients_reputation.png")


def write_sweep_plot(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """Final test accuracy against the privacy budget epsilon (no DP drawn as a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    private = [r for r in rows if math.isfinite(r["epsilon"])]
    if private:
        ax.plot(
            [r["epsilon"] for r in private],
            [r["accuracy"] for r in private],
            marker="o",
            label="central DP (DP-FedAvg)",
        )
        ax.set_xscale("log")
    for r in rows:
        if not math.isfinite(r["epsilon"]):
            ax.axhline(r["accuracy"], color="gray", linestyle="--", label="no DP")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("final test accuracy")
    ax.set_title("privacy-utility trade-off")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, folder / "accuracy_vs_epsilon.png")


def summary_rows(run: RunDirectory) -> list[tuple[str, str]]:
    """Key facts of a run as (label, value) rows for a table."""
    records = run.records()
    names, maximize = task_metrics(records)
    primary = names[0] if names else "loss"
    evals = [r for r in records if primary in r]
    rounds = [r for r in records if r.get("event") == "round"]
    stop: dict[str, Any] = next((r for r in records if r.get("event") == "stop"), {})
    asynchronous = is_asynchronous(records)
    step = "step" if asynchronous else "round"
    rows = [("run directory", str(run.path))]
    rows.append(("server steps" if asynchronous else "rounds", str(len(rounds))))
    if asynchronous:
        rows += _staleness_rows(rounds)
    if evals:
        sign = 1.0 if primary in maximize else -1.0
        best = max(evals, key=lambda r: sign * r[primary])
        last = evals[-1]
        rows += [(f"final test {n}", f"{last[n]:.4f}") for n in [*names, "loss"] if n in last]
        rows.append((f"best test {primary}", f"{best[primary]:.4f} ({step} {best['round']})"))
        if f"fed_{primary}" in last:
            rows.append((f"client hold-out {primary}", f"{last[f'fed_{primary}']:.4f}"))
            for pct, label in (("p10", "10th"), ("p90", "90th")):
                if f"fed_{primary}_{pct}" in last:
                    value = last[f"fed_{primary}_{pct}"]
                    rows.append((f"  {label} percentile client", f"{value:.4f}"))
    if rounds and "virtual_time" in rounds[-1]:
        rows.append(("virtual time", human_duration(rounds[-1]["virtual_time"])))
        stopping = run.load_config().stopping
        target = stopping.target
        metric = stopping.metric or primary
        if target is not None and metric in names:
            tta = time_to_target(records, metric, target, metric in maximize)
            shown = human_duration(tta) if tta is not None else "not reached"
            rows.append((f"virtual time to {metric} {target}", shown))
        dropped: dict[str, int] = {}
        for r in rounds:
            for reason, n in r.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
        if dropped:
            rows.append(("dropped clients", ", ".join(f"{n} {k}" for k, n in dropped.items())))
    if any(r.get("bytes_up") is not None for r in rounds):
        rows += _bytes_rows(run, records, rounds, primary, names, maximize)
    if rounds:
        wall = sum(r["wall_s"] for r in rounds)
        rows.append(("training wall time", f"{wall:.2f} s ({wall / len(rounds):.3f} s/{step})"))
        rejected = sum(r["rejected"] for r in rounds)
        rows.append(("rejected updates", str(rejected)))
        rows += _robustness_rows(run, rounds)
    start = next((r for r in records if r.get("event") == "start"), {})
    if start.get("dp_sgd_epsilon") is not None:
        rows.append(
            (
                "DP-SGD sample-level epsilon (planned, worst client)",
                f"{start['dp_sgd_epsilon']:.4g}",
            )
        )
    ledger_path = run.path / "privacy.json"
    if ledger_path.is_file():
        ledger = json.loads(ledger_path.read_text(encoding="utf-8"))
        spent = f"{ledger['epsilon']:.4g} at delta {ledger['delta']:.2g}"
        view = {"server": " against the server", "local": " (local DP, worst client)"}
        rows.append((f"privacy spent (epsilon){view.get(ledger.get('view'), '')}", spent))
        secondary = ledger.get("secondary", {})
        if "model_epsilon" in secondary:  # labelled: never the guarantee against the server
            rows.append(
                (
                    "  released models only (amplified; not against the server)",
                    f"{secondary['model_epsilon']:.4g}",
                )
            )
        if ledger.get("budget"):
            left = max(0.0, ledger["budget"]["epsilon"] - ledger["epsilon"])
            rows.append(
                ("privacy budget remaining", f"{left:.4g} of {ledger['budget']['epsilon']:g}")
            )
    found = next((r for r in records if r.get("event") == "audit"), None)
    if found is not None:
        rows.append(
            (
                "empirical epsilon lower bound",
                f"{found['epsilon_lower']:.3g} at delta {found['delta']:.2g} (accountant: "
                f"{found['accountant_epsilon']:.3g}; {found['correct']}/{found['guesses']} "
                f"canary guesses right, {found['confidence']:.0%} confidence)",
            )
        )
    if stop:
        rows.append(("stopped", f"{stop['reason']}: {stop['detail']}"))
    return [(k, v if not (isinstance(v, float) and math.isnan(v)) else "n/a") for k, v in rows]


def _robustness_rows(run: RunDirectory, rounds: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Summary rows of a run with a robust rule, anomaly screening or simulated attackers:
    the rule, the updates refused as anomalous and the clients quarantined."""
    config = run.load_config()
    rows: list[tuple[str, str]] = []
    agg = config.aggregation
    if agg.robust:
        bucketing = f", buckets of {agg.bucketing}" if agg.bucketing >= 2 else ""
        rows.append(("aggregation rule", f"{agg.rule}{bucketing}"))
    if config.attack.enabled:
        rows.append(("simulated attack", f"{config.attack.kind} ({config.attack.clients})"))
    screened = [r["anomaly"] for r in rounds if r.get("anomaly")]
    if screened:
        flagged = sum(len(a["flagged"]) for a in screened)
        scored = sum(a["screened"] for a in screened)
        rows.append(("updates flagged as anomalous", f"{flagged} of {scored}"))
        decisions = [d for r in rounds for d in r.get("reputation", [])]
        held = {d["client"] for d in decisions if d["action"] in ("quarantine", "requarantine")}
        shown = ", ".join(str(c) for c in sorted(held)[:12]) + (" ..." if len(held) > 12 else "")
        rows.append(("clients quarantined", f"{len(held)}" + (f" ({shown})" if held else "")))
    return rows


def _staleness_rows(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Summary rows of an asynchronous run: updates aggregated, their staleness (mean,
    median, max) and the updates dropped as too stale."""
    totals = staleness_totals(steps)
    n = sum(totals.values())
    rows = [("updates aggregated", str(n))]
    if n:
        mean = sum(s * c for s, c in totals.items()) / n
        seen, median = 0, 0
        for s, c in totals.items():
            seen += c
            if 2 * seen >= n:
                median = s
                break
        rows.append(("staleness (mean / median / max)", f"{mean:.2f} / {median} / {max(totals)}"))
    dropped = sum(int(r.get("dropped_stale") or 0) for r in steps)
    rows.append(("updates dropped as too stale", str(dropped)))
    return rows


def time_to_target(
    records: list[dict[str, Any]], metric: str, target: float, maximize: bool = True
) -> float | None:
    """Virtual seconds until ``metric`` first reached ``target`` (``>=`` when higher is
    better, else ``<=``; None if never)."""
    for r in records:
        if r.get("event") != "round" or r.get(metric) is None:
            continue
        if (r[metric] >= target) if maximize else (r[metric] <= target):
            return float(r["virtual_time"])
    return None


def bytes_to_target(
    records: list[dict[str, Any]], metric: str, target: float, maximize: bool = True
) -> int | None:
    """Bytes the clients had uploaded (all round attempts so far, this one included) when
    ``metric`` first reached ``target`` (``>=`` when higher is better, else ``<=``); None
    if never, or if the rounds do not count their bytes (a run recorded before they did)."""
    for sent, value in _bytes_up_curve(records, metric):
        if (value >= target) if maximize else (value <= target):
            return sent
    return None


def _bytes_up_curve(records: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(cumulative bytes uploaded, ``metric``) at every evaluated round; empty when no
    round counts its bytes."""
    rounds = [r for r in records if r.get("event") == "round"]
    if not any(r.get("bytes_up") is not None for r in rounds):
        return []
    curve, sent = [], 0
    for r in rounds:
        sent += int(r.get("bytes_up") or 0)
        if r.get(metric) is not None:
            curve.append((sent, float(r[metric])))
    return curve


def _bytes_rows(
    run: RunDirectory,
    records: list[dict[str, Any]],
    rounds: list[dict[str, Any]],
    primary: str,
    names: list[str],
    maximize: set[str],
) -> list[tuple[str, str]]:
    """Summary rows of a run whose rounds count their bytes: totals up and down, the
    codec and overall compression ratio (when uploads were compressed) and the bytes
    uploaded until the stopping target (when one is set)."""
    rows = [("bytes uploaded", human_bytes(sum(int(r.get("bytes_up") or 0) for r in rounds)))]
    if any(r.get("bytes_down") is not None for r in rounds):
        down = sum(int(r.get("bytes_down") or 0) for r in rounds)
        rows.append(("bytes downloaded", human_bytes(down)))
    compressed = [r["compression"] for r in rounds if isinstance(r.get("compression"), dict)]
    if compressed:
        codecs = sorted({c["codec"] for c in compressed})
        rows.append(("compression codec", ", ".join(codecs)))
        payload = sum(int(c["payload_bytes"]) for c in compressed)
        raw = sum(int(c["raw_bytes"]) for c in compressed)
        if payload > 0:
            rows.append(
                (
                    "compression ratio (float32 / payload bytes)",
                    f"{raw / payload:.2f}x ({human_bytes(raw)} as float32)",
                )
            )
    stopping = run.load_config().stopping if run.config_path.is_file() else None
    if stopping is not None and stopping.target is not None:
        metric = stopping.metric or primary
        if metric in names:
            sent = bytes_to_target(records, metric, stopping.target, metric in maximize)
            shown = human_bytes(sent) if sent is not None else "not reached"
            rows.append((f"bytes uploaded to {metric} {stopping.target}", shown))
    return rows


def human_bytes(n: int) -> str:
    """Bytes for people (B, kB, MB, GB), shared by summaries and comparison tables."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


def human_duration(seconds: float) -> str:
    """Seconds for people (s, min, h), shared by summaries and comparison tables."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
