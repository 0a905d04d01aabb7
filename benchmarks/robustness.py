"""Byzantine robustness: an attack x defence accuracy table on digits, a backdoor
experiment and the anomaly screening's quarantine times.

Setup. Digits (standardized), 25 clients, all 25 in every round, of which clients 0-4
(20%) are malicious from round 1. Two partitions: IID (``partition.method = "iid"``) and
label-skewed non-IID (``"dirichlet"``, alpha 0.3 over the labels). The default MLP
64-32-10, 15 rounds of 2 local epochs of SGD (batch 32, lr 0.1)
with client momentum 0.9 or 0: the heavy-ball momentum of each client's local SGD within
a round (reset every round; no momentum is carried across rounds), the server applying
the aggregate with FedAvg's learning rate 1. Seeds 0, 1, 2; every run of a seed has the
same data, partition and initialization. A run's accuracy is its final model's test
accuracy (359 digits).

Attacks at their package defaults (``fedloom.attacks``; each its paper's setting):
sign flipping (-1 x own update), scaling (x10), Gaussian (N(0, 1) rows), label
flipping (label l -> 9 - l on every malicious example), ALIE (z_max of Baruch et al. for
n = 25, f = 5: z = 0.47), IPM (epsilon 0.1), min-max and min-sum (Shejwalkar &
Houmansadr: the benign mean plus gamma times the inverse-std perturbation, gamma by
halving search from 10); every omniscient attack sees the round's honest updates; the backdoor
(Bagdasaryan et al.: a 3x3 corner trigger at the data's largest value on half of each
malicious client's examples, label 0, update boosted x25). Three strong variants besides:
sign flipping x100 (-100 x own update, the attack the robustness guide opens with),
scaling x100, and IPM with epsilon 100 (past (n - f) / f = 4, where the mean turns
against the honest direction).

Defences (``[aggregation]``): mean (FedAvg), median, trimmed_mean (beta 0.2), krum
(f = 5), bulyan (f = 5), geometric_median (package defaults), centered_clip (tau 10,
3 iterations: the package defaults), centered_clip, median and geometric_median with
bucketing s = 2 (Karimireddy et al., 2022), norm_bound and fltrust (100 root examples).
norm_bound's ``max_norm`` is the median L2 norm of the honest updates of the
no-attack FedAvg runs of the same partition and momentum (all rounds, clients and
seeds; measured by a probe that records the updates, before the grid), so the bound
clips about half of the honest updates a little and a boosted one a lot.

Targets (per momentum, on IID data; accuracy differences in points): for every attack
the best robust defence (every defence but the mean) is within 5 points of the
no-attack FedAvg accuracy; FedAvg loses at least 20 points to each of ALIE, IPM, sign
flipping and scaling (at their default strengths, and separately to the strong
variants); centered clipping with bucketing under ALIE is within 3 points of
the no-attack FedAvg accuracy; on non-IID data with no attack, bucketing recovers at
least half of what median and geometric median lose against the mean
(``recovered >= lost / 2``).

Backdoor (IID, momentum 0.9, seeds 0-2): main-task accuracy and backdoor accuracy (the
share of the test digits whose label is not the target that the final model, given the
trigger, classifies as the target) with no defence (mean), norm bounding (the max_norm
above), median, and anomaly screening + reputation (mean with ``[anomaly] enabled`` at
its defaults); and without any attack (the trigger's natural rate).

Anomaly screening (IID, momentum 0.9, seeds 0-2): the scaling attack with ``[anomaly]
enabled`` at its defaults (``AnomalyConfig``'s, recorded in the JSON) and the mean. From
the round records' reputation decisions: the round by which every malicious client has
been quarantined, and the share of honest clients ever quarantined. Targets: <= 5
rounds; < 0.05.

Usage: ``uv run python benchmarks/robustness.py --json benchmarks/results/robustness.json``
(``--quick``: a smoke run of 2 rounds, one seed and a subset of the grid). Runs are
independent and deterministic; ``--workers`` (2) processes play them, each with one
thread for torch and numpy's BLAS (one pool for every part: each worker imports
once). Two heatmaps (IID, non-IID) go next to the JSON.

References: Baruch et al., "A Little Is Enough", NeurIPS 2019 (ALIE); Xie et al.,
"Fall of Empires", UAI 2019 (IPM); Shejwalkar & Houmansadr, NDSS 2021 (min-max,
min-sum); Bagdasaryan et al., AISTATS 2020 (backdoor); Blanchard et al., NeurIPS 2017
(Krum); El Mhamdi et al., ICML 2018 (Bulyan); Yin et al., ICML 2018 (median, trimmed
mean); Pillutla et al., 2022 (geometric median); Karimireddy et al., ICML 2021 (centered
clipping) and ICLR 2022 (bucketing); Sun et al., 2019 (norm bounding); Cao et al., NDSS
2021 (FLTrust).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # numpy's BLAS spins on a shared 2-core machine otherwise

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing as mp  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from multiprocessing.pool import Pool  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from targets import finish  # noqa: E402

from fedloom.config import ATTACKS as KINDS  # noqa: E402

HERE = Path(__file__).resolve().parent
CLIENTS = 25
MALICIOUS = [0, 1, 2, 3, 4]
ROUNDS = 15
LOCAL_EPOCHS = 2
LR = 0.1
ALPHA = 0.3  # Dirichlet concentration of the non-IID partition
PARTITIONS = ("iid", "noniid")
MOMENTA = (0.9, 0.0)
ATTACKS = (
    *(kind for kind in KINDS if kind != "backdoor"),  # the backdoor has its own experiment
    "sign_flip_x100",
    "scaling_x100",
    "ipm_eps100",
)
# strong variants (name -> kind, params): -100x an update (the attack that wrecks plain
# FedAvg in the robustness guide), a x100 boost, and IPM with an epsilon past
# (n - f) / f = 4, beyond which the mean points against the honest direction
STRONG: dict[str, tuple[str, dict[str, float]]] = {
    "sign_flip_x100": ("sign_flip", {"scale": 100.0}),
    "scaling_x100": ("scaling", {"factor": 100.0}),
    "ipm_eps100": ("ipm", {"epsilon": 100.0}),
}
# name -> [aggregation] settings; norm_bound's max_norm is filled in from the probe
DEFENCES: dict[str, dict[str, Any]] = {
    "mean": {"rule": "mean"},
    "median": {"rule": "median"},
    "trimmed_mean": {"rule": "trimmed_mean", "params": {"beta": 0.2}},
    "krum": {"rule": "krum", "params": {"f": 5}},
    "bulyan": {"rule": "bulyan", "params": {"f": 5}},
    "geometric_median": {"rule": "geometric_median"},
    "centered_clip": {"rule": "centered_clip", "params": {"tau": 10.0, "iters": 3}},
    "centered_clip+bucketing": {
        "rule": "centered_clip",
        "params": {"tau": 10.0, "iters": 3},
        "bucketing": 2,
    },
    "median+bucketing": {"rule": "median", "bucketing": 2},
    "geometric_median+bucketing": {"rule": "geometric_median", "bucketing": 2},
    "norm_bound": {"rule": "norm_bound"},
    "fltrust": {"rule": "fltrust", "root_examples": 100},
}
QUICK_ATTACKS = ("none", "sign_flip", "scaling", "alie", "ipm")
QUICK_DEFENCES = (
    "mean",
    "median",
    "geometric_median",
    "centered_clip+bucketing",
    "median+bucketing",
    "geometric_median+bucketing",
)
BACKDOOR_DEFENCES = ("mean", "norm_bound", "median", "anomaly+reputation")
FEDAVG_LOSERS = ("alie", "ipm", "sign_flip", "scaling")  # FedAvg must lose >= 20 points


# ------------------------------------------------------------------------------ configs


def run_config(
    out: Path,
    name: str,
    *,
    partition: str,
    momentum: float,
    seed: int,
    rounds: int,
    attack: str = "none",
    aggregation: dict[str, Any] | None = None,
    anomaly: bool = False,
) -> Any:
    """The run's ``RunConfig`` (built in the parent, pickled to a worker)."""
    from fedloom.config import RunConfig

    part: dict[str, Any] = {"num_clients": CLIENTS, "method": "iid"}
    if partition == "noniid":
        part = {"num_clients": CLIENTS, "method": "dirichlet", "alpha": ALPHA}
    return RunConfig.model_validate(
        {
            "name": name,
            "seed": seed,
            "rounds": rounds,
            "output_dir": str(out),
            "threads": 1,
            "partition": part,
            "server": {"clients_per_round": CLIENTS},
            "client": {"momentum": momentum, "local_epochs": LOCAL_EPOCHS, "lr": LR},
            "evaluation": {"every": rounds},
            "checkpoint": {"every": 0},
            "simulation": {"executor": "vectorized"},
            "aggregation": aggregation or {"rule": "mean"},
            "attack": attack_settings(attack),
            "anomaly": {"enabled": anomaly},
        }
    )


def attack_settings(name: str) -> dict[str, Any]:
    """The ``[attack]`` table of an attack name (a kind at its defaults, or ``STRONG``)."""
    kind, params = STRONG.get(name, (name, {}))
    return {"kind": kind, "clients": MALICIOUS, "params": params}


def with_bound(defence: str, max_norm: float) -> dict[str, Any]:
    """``DEFENCES[defence]``, with norm_bound's ``max_norm`` set."""
    agg = json.loads(json.dumps(DEFENCES[defence]))
    if agg["rule"] == "norm_bound":
        agg["params"] = {"max_norm": max_norm}
    return agg


# ------------------------------------------------------------------------------ workers


class NormProbe:
    """Stands in for the adversary of a no-attack run: records the L2 norm of every
    update the round trained, and changes nothing."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def act(self, updates: list[Any], round: int) -> list[Any]:
        self.norms += [float(np.linalg.norm(u.delta)) for u in updates]
        return updates


def backdoor_rate(sim: Any, trigger_value: float, target: int) -> float:
    """The share of test examples whose label is not ``target`` that the final model
    classifies as ``target`` once triggered."""
    import torch

    from fedloom.attacks import Backdoor

    attack = sim.adversary.attack if sim.adversary is not None else None
    if not isinstance(attack, Backdoor):
        attack = Backdoor(trigger_value=trigger_value, target=target)
    test = sim.data.test
    keep = np.asarray(test.y) != attack.target
    x = torch.as_tensor(attack.apply_trigger(np.asarray(test.x)[keep]), dtype=torch.float32)
    model = sim.trainer.model
    sim.trainer.flat.load(sim.server.params)
    model.eval()
    with torch.inference_mode():
        predicted = model(x).argmax(dim=1).numpy()
    return float(np.mean(predicted == attack.target))


def run_job(job: tuple[str, Any, Any]) -> tuple[Any, dict[str, Any]]:
    """One run in a worker: ``(key, numbers)`` by the job's kind (grid: accuracy; probe:
    honest update norms; backdoor: accuracy and backdoor rate; anomaly: accuracy and the
    round records' reputation decisions)."""
    import torch

    from fedloom.assemble import start_simulation

    kind, key, cfg = job
    torch.set_num_threads(1)
    started = time.perf_counter()
    sim = start_simulation(cfg)
    probe = None
    if kind == "probe":
        probe = NormProbe()
        sim.adversary = probe
    summary = sim.run()
    out: dict[str, Any] = {"accuracy": float(summary.value)}
    if probe is not None:
        out["norms"] = probe.norms
    if kind == "backdoor":
        out["backdoor"] = backdoor_rate(sim, float(np.max(sim.data.train.x)), 0)
    if kind == "anomaly":
        out["decisions"] = [
            {"round": d["round"], "client": d["client"], "action": d["action"]}
            for r in sim.run_dir.records()
            if r.get("event") == "round"
            for d in r.get("reputation") or []
        ]
    out["wall_s"] = time.perf_counter() - started
    shutil.rmtree(sim.run_dir.path, ignore_errors=True)
    return key, out


def _init_worker() -> None:
    import torch

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)


def play(
    jobs: list[tuple[str, Any, Any]], pool: Pool | None, label: str
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every job's result (in completion order; in this process without a pool), with a
    progress line every 10%."""
    started, total, step = time.perf_counter(), len(jobs), max(1, len(jobs) // 10)
    results = map(run_job, jobs) if pool is None else pool.imap_unordered(run_job, jobs, 2)
    for done, result in enumerate(results, 1):
        yield result
        if done % step == 0 or done == total:
            spent = time.perf_counter() - started
            eta = spent / done * (total - done)
            print(f"  {label}: {done}/{total} runs, {spent:.0f} s, ~{eta:.0f} s left", flush=True)


# ------------------------------------------------------------------------------ parts


def probe_norms(
    root: Path, pool: Pool | None, rounds: int, seeds: list[int], momenta: list[float]
) -> dict[str, dict[str, Any]]:
    """norm_bound's ``max_norm`` per partition and momentum: the median honest update
    norm of the no-attack FedAvg runs."""
    jobs = [
        (
            "probe",
            (p, m),
            run_config(root, f"probe-{p}-{m}-{s}", partition=p, momentum=m, seed=s, rounds=rounds),
        )
        for p in PARTITIONS
        for m in momenta
        for s in seeds
    ]
    norms: dict[tuple[str, float], list[float]] = {}
    for key, out in play(jobs, pool, "norm probe"):
        norms.setdefault(key, []).extend(out["norms"])
    return {
        f"{p}/momentum={m}": {
            "partition": p,
            "momentum": m,
            "max_norm": round(float(np.median(norms[(p, m)])), 4),
            "honest_norm_p10_p90": [
                round(float(q), 4) for q in np.quantile(norms[(p, m)], [0.1, 0.9])
            ],
            "updates": len(norms[(p, m)]),
        }
        for p in PARTITIONS
        for m in momenta
    }


def bound_of(bounds: dict[str, dict[str, Any]], partition: str, momentum: float) -> float:
    return bounds[f"{partition}/momentum={momentum}"]["max_norm"]


def grid(
    root: Path,
    pool: Pool | None,
    rounds: int,
    seeds: list[int],
    momenta: list[float],
    attacks: list[str],
    defences: list[str],
    bounds: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Final accuracy of every attack x defence x partition x momentum x seed."""
    jobs = []
    for p in PARTITIONS:
        for m in momenta:
            for a in attacks:
                for d in defences:
                    for s in seeds:
                        agg = with_bound(d, bound_of(bounds, p, m))
                        name = f"g-{p}-{m}-{a}-{d.replace('+', '_')}-{s}"
                        cfg = run_config(
                            root,
                            name,
                            partition=p,
                            momentum=m,
                            seed=s,
                            rounds=rounds,
                            attack=a,
                            aggregation=agg,
                        )
                        jobs.append(("grid", (p, m, a, d, s), cfg))
    acc: dict[tuple[str, float, str, str], dict[int, float]] = {}
    wall = 0.0
    for (p, m, a, d, s), out in play(jobs, pool, "grid"):
        acc.setdefault((p, m, a, d), {})[s] = out["accuracy"]
        wall += out["wall_s"]
    tables: dict[str, Any] = {}
    for p in PARTITIONS:
        for m in momenta:
            tables[f"{p}/momentum={m}"] = {
                "partition": p,
                "momentum": m,
                "mean_accuracy": {
                    a: {d: round(statistics.fmean(acc[(p, m, a, d)].values()), 4) for d in defences}
                    for a in attacks
                },
                "accuracy_per_seed": {
                    a: {d: [round(acc[(p, m, a, d)][s], 4) for s in seeds] for d in defences}
                    for a in attacks
                },
            }
    return {"runs": len(jobs), "run_wall_s_sum": round(wall, 1), "tables": tables}


def backdoor(
    root: Path, pool: Pool | None, rounds: int, seeds: list[int], bounds: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Main-task and backdoor accuracy (IID, momentum 0.9) per defence, and without an
    attack."""
    max_norm = bound_of(bounds, "iid", MOMENTA[0])
    rows = [("no attack (mean)", "none", "mean", False)]
    for d in BACKDOOR_DEFENCES:
        if d == "anomaly+reputation":
            rows.append((d, "backdoor", "mean", True))
        else:
            rows.append((d, "backdoor", d, False))
    jobs = [
        (
            "backdoor",
            (label, s),
            run_config(
                root,
                f"bd-{i}-{s}",
                partition="iid",
                momentum=MOMENTA[0],
                seed=s,
                rounds=rounds,
                attack=attack,
                aggregation=with_bound(d, max_norm),
                anomaly=anomaly,
            ),
        )
        for i, (label, attack, d, anomaly) in enumerate(rows)
        for s in seeds
    ]
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for (label, s), out in play(jobs, pool, "backdoor"):
        found.setdefault(label, {})[s] = out
    table = []
    for label, *_ in rows:
        per = [found[label][s] for s in seeds]
        table.append(
            {
                "defence": label,
                "main_accuracy": round(statistics.fmean(o["accuracy"] for o in per), 4),
                "backdoor_accuracy": round(statistics.fmean(o["backdoor"] for o in per), 4),
                "main_accuracy_per_seed": [round(o["accuracy"], 4) for o in per],
                "backdoor_accuracy_per_seed": [round(o["backdoor"], 4) for o in per],
            }
        )
    return {"partition": "iid", "momentum": MOMENTA[0], "max_norm": max_norm, "rows": table}


def anomaly(root: Path, pool: Pool | None, rounds: int, seeds: list[int]) -> dict[str, Any]:
    """Scaling attack with anomaly screening: when every malicious client is quarantined,
    and how many honest ones ever are."""
    jobs = [
        (
            "anomaly",
            s,
            run_config(
                root,
                f"an-{s}",
                partition="iid",
                momentum=MOMENTA[0],
                seed=s,
                rounds=rounds,
                attack="scaling",
                anomaly=True,
            ),
        )
        for s in seeds
    ]
    per_seed = []
    for s, out in sorted(play(jobs, pool, "anomaly"), key=lambda x: x[0]):
        first: dict[int, int] = {}
        for d in out["decisions"]:
            if d["action"] in ("quarantine", "requarantine"):
                first.setdefault(int(d["client"]), int(d["round"]))
        bad = [first.get(c) for c in MALICIOUS]
        honest = sorted(c for c in first if c not in MALICIOUS)
        per_seed.append(
            {
                "seed": s,
                "first_quarantine_round_of_malicious": bad,
                "all_malicious_quarantined_by_round": None if None in bad else max(bad),  # type: ignore[type-var]
                "honest_ever_quarantined": honest,
                "honest_quarantined_fraction": len(honest) / (CLIENTS - len(MALICIOUS)),
                "accuracy": round(out["accuracy"], 4),
            }
        )
    rounds_all = [r["all_malicious_quarantined_by_round"] for r in per_seed]
    return {
        "attack": "scaling",
        "settings": jobs[0][2].anomaly.model_dump(),
        "partition": "iid",
        "momentum": MOMENTA[0],
        "rounds": rounds,
        "per_seed": per_seed,
        "worst_rounds_to_quarantine_all": None if None in rounds_all else max(rounds_all),  # type: ignore[type-var]
        "worst_honest_quarantined_fraction": max(
            r["honest_quarantined_fraction"] for r in per_seed
        ),
    }


# ------------------------------------------------------------------------------ targets


def _points(x: float) -> float:
    return round(100.0 * x, 2)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance checks, computed from the measured tables (a check whose
    inputs the run left out is reported as not run, unmet)."""
    tables = result["grid"]["tables"]
    out: list[dict[str, Any]] = []

    def missing(name: str, goal: str, why: str) -> None:
        out.append({"name": name, "value": f"not run ({why})", "goal": goal, "met": False})

    for m in MOMENTA:
        t = tables.get(f"iid/momentum={m}")
        acc = t["mean_accuracy"] if t else {}
        base = acc.get("none", {}).get("mean")
        tag = f"IID, client momentum {m}"
        name = f"{tag}: every attack, best robust defence's drop from no-attack FedAvg (points)"
        robust = [d for d in (next(iter(acc.values()), {}) if acc else {}) if d != "mean"]
        if base is None or not robust:
            missing(name, "<= 5 for every attack", "no such runs")
        else:
            drops = {
                a: {
                    "best": max(robust, key=lambda d, a=a: acc[a][d]),
                    "drop": _points(base - max(acc[a][d] for d in robust)),
                }
                for a in acc
                if a != "none"
            }
            worst = max((v["drop"] for v in drops.values()), default=0.0)
            out.append(
                {
                    "name": name,
                    "value": drops,
                    "goal": "<= 5 for every attack",
                    "met": bool(drops) and worst <= 5.0,
                }
            )
        for what, attacks in (
            ("ALIE, IPM, sign flip, scaling at their default strengths", FEDAVG_LOSERS),
            ("the strong variants", tuple(STRONG)),
        ):
            name = f"{tag}: FedAvg's drop from no attack under {what} (points)"
            if base is None or any(a not in acc for a in attacks):
                missing(name, ">= 20 for each", "no such runs")
                continue
            losses = {a: _points(base - acc[a]["mean"]) for a in attacks}
            out.append(
                {
                    "name": name,
                    "value": losses,
                    "goal": ">= 20 for each",
                    "met": all(v >= 20.0 for v in losses.values()),
                }
            )
        name = (
            f"{tag}: centered clipping + bucketing under ALIE, drop from no-attack FedAvg (points)"
        )
        cc = acc.get("alie", {}).get("centered_clip+bucketing")
        if base is None or cc is None:
            missing(name, "<= 3", "no such runs")
        else:
            drop = _points(base - cc)
            out.append({"name": name, "value": drop, "goal": "<= 3", "met": drop <= 3.0})
    for m in MOMENTA:
        t = tables.get(f"noniid/momentum={m}")
        none = t["mean_accuracy"].get("none", {}) if t else {}
        for rule in ("median", "geometric_median"):
            name = (
                f"non-IID (Dirichlet {ALPHA}), client momentum {m}, no attack: {rule}'s loss "
                "vs mean, recovered by bucketing (points)"
            )
            needed = ("mean", rule, f"{rule}+bucketing")
            if any(k not in none for k in needed):
                missing(name, "recovered >= lost / 2", "no such runs")
                continue
            lost = _points(none["mean"] - none[rule])
            recovered = _points(none[f"{rule}+bucketing"] - none[rule])
            out.append(
                {
                    "name": name,
                    "value": {"lost": lost, "recovered": recovered},
                    "goal": "recovered >= lost / 2",
                    "met": recovered >= lost / 2,
                }
            )
    an = result["anomaly"]
    worst = an["worst_rounds_to_quarantine_all"]
    out.append(
        {
            "name": "scaling attack, anomaly screening: rounds until every malicious client is "
            f"quarantined (worst of {len(an['per_seed'])} seeds)",
            "value": worst,
            "goal": "<= 5",
            "met": worst is not None and worst <= 5,
        }
    )
    frac = an["worst_honest_quarantined_fraction"]
    out.append(
        {
            "name": "scaling attack, anomaly screening: share of honest clients ever "
            f"quarantined (worst of {len(an['per_seed'])} seeds)",
            "value": round(frac, 4),
            "goal": "< 0.05",
            "met": frac < 0.05,
        }
    )
    return out


# ------------------------------------------------------------------------------ output


def heatmap(path: Path, tables: dict[str, Any], partition: str, momenta: list[float]) -> Path:
    """Mean final accuracy, attack x defence, one panel per momentum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [tables[f"{partition}/momentum={m}"] for m in momenta]
    attacks = list(panels[0]["mean_accuracy"])
    defences = list(panels[0]["mean_accuracy"][attacks[0]])
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(0.75 * len(defences) * len(panels) + 1.5, 0.45 * len(attacks) + 2.5),
        dpi=110,
        squeeze=False,
    )
    for ax, t in zip(axes[0], panels, strict=True):
        grid_ = np.array([[t["mean_accuracy"][a][d] for d in defences] for a in attacks])
        im = ax.imshow(grid_, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(defences)), defences, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
        for i in range(len(attacks)):
            for j in range(len(defences)):
                v = grid_[i, j]
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if v > 0.6 else "white",
                )
        ax.set_title(f"{partition}, client momentum {t['momentum']}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test accuracy")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def print_tables(result: dict[str, Any]) -> None:
    for key, t in result["grid"]["tables"].items():
        acc = t["mean_accuracy"]
        defences = list(next(iter(acc.values())))
        short = [
            d.replace("geometric_median", "gm")
            .replace("centered_clip", "cc")
            .replace("+bucketing", "+b")
            .replace("trimmed_mean", "trim")
            for d in defences
        ]
        print(f"\n{key}: mean final accuracy over seeds {result['seeds']}")
        print(f"{'attack':<11}" + "".join(f"{s:>9}" for s in short))
        for a, row in acc.items():
            print(f"{a:<11}" + "".join(f"{100 * row[d]:>9.1f}" for d in defences))
    print("\nnorm_bound max_norm (median honest update norm):")
    for key, b in result["norm_bound"].items():
        print(f"  {key:<24}{b['max_norm']}  (p10-p90 {b['honest_norm_p10_p90']})")
    bd = result["backdoor"]
    print(f"\nBackdoor (IID, momentum {bd['momentum']}):")
    print(f"{'defence':<22}{'main acc':>10}{'backdoor acc':>14}")
    for r in bd["rows"]:
        print(f"{r['defence']:<22}{r['main_accuracy']:>10.4f}{r['backdoor_accuracy']:>14.4f}")
    an = result["anomaly"]
    print("\nAnomaly screening, scaling attack (IID, momentum 0.9):")
    for r in an["per_seed"]:
        print(
            f"  seed {r['seed']}: malicious first quarantined in rounds "
            f"{r['first_quarantine_round_of_malicious']}, honest ever quarantined "
            f"{r['honest_ever_quarantined']}, accuracy {r['accuracy']}"
        )


def commit() -> str | None:
    """The checked-out commit (with "+changes" when the tree differs from it), None
    outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, help="processes (default 2; 1 with --quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.quick:
        rounds, seeds, momenta = 2, [0], [MOMENTA[0]]
        attacks, defences = list(QUICK_ATTACKS), list(QUICK_DEFENCES)
    else:
        rounds, seeds, momenta = args.rounds, args.seeds, list(MOMENTA)
        attacks, defences = list(ATTACKS), list(DEFENCES)
    workers = args.workers or (1 if args.quick else 2)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores; torch and BLAS one thread per process",
        "workers": workers,
        "quick": args.quick,
        "commit": commit(),
        "setup": {
            "dataset": "digits",
            "clients": CLIENTS,
            "clients_per_round": CLIENTS,
            "malicious": MALICIOUS,
            "rounds": rounds,
            "local_epochs": LOCAL_EPOCHS,
            "batch_size": 32,
            "lr": LR,
            "client_momentum": momenta,
            "noniid": f"dirichlet alpha {ALPHA}",
            "defences": {d: DEFENCES[d] for d in defences},
            "attack_params": "package defaults",
        },
        "seeds": seeds,
    }
    if workers <= 1:
        _init_worker()
    with (
        tempfile.TemporaryDirectory() as tmp,
        (
            mp.get_context("spawn").Pool(workers, initializer=_init_worker)
            if workers > 1
            else contextlib.nullcontext()
        ) as pool,
    ):
        root = Path(tmp)
        t0 = time.perf_counter()
        result["norm_bound"] = probe_norms(root, pool, rounds, seeds, momenta)
        result["norm_bound_wall_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        result["grid"] = grid(
            root, pool, rounds, seeds, momenta, attacks, defences, result["norm_bound"]
        )
        result["grid"]["wall_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        result["backdoor"] = backdoor(root, pool, rounds, seeds, result["norm_bound"])
        result["backdoor"]["wall_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        result["anomaly"] = anomaly(root, pool, rounds, seeds)
        result["anomaly"]["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.json:
        result["plots"] = [
            str(
                heatmap(
                    args.json.with_name(f"{args.json.stem}_{p}.png"),
                    result["grid"]["tables"],
                    p,
                    momenta,
                )
            )
            for p in PARTITIONS
        ]
    print_tables(result)
    checks = targets(result)
    result["load_before"] = round(load, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    result["total_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = checks
    print()
    finish(result, args.json)


if __name__ == "__main__":
    main()
