"""Privacy attacks against fedloom's defences: membership inference and gradient inversion.

Membership inference. Digits scaled to [0, 1]; 200 examples are each a whole client (one
example per client; 300 rounds of 40 clients), 200 others are never trained on. The global
model (MLP 64-64-10) is trained with ``fedloom.simulate``: no defence, and central DP-FedAvg at
target epsilon 1 and 8. Central DP is user-level (add/remove one client); with one example
per client it is exactly the example-level guarantee the attack tests. The attacks: loss
threshold (Yeom et al.) and online LiRA (Carlini et al.; shadows trained centrally on random
halves of the 400-example population, non-privately: the attacker's best guess of a
model that learned its data, whatever the target's training). Secure aggregation does not
change the released model, so its membership numbers are those of no defence (not re-run).
Each DP run's ROC curves are checked against ``TPR <= e^eps FPR + delta`` and its symmetric
form; the bound is violated only if it is exceeded beyond 95% Clopper-Pearson error.

Gradient inversion. A fresh MLP 64-64-10 (a round's global model); each of ``K`` clients
holds one image and sends a one-step SGD delta (lr 0.1), from which the server inverts the
gradient (Geiping et al.: cosine distance, TV prior, iDLG label). Defences: DP (the delta
clipped to the median client norm and Gaussian noise of the analytic sigma for (eps, 1e-5)
of that single release), secure aggregation (the server sees only the sum of the ``K``
deltas; the reconstruction is scored against every client's image, and the best match
counts), top-k 10% (``fedloom.compression.sparse.TopK``).

Targets: every defence measurably reduces the attack: membership, the DP run's LiRA AUC is
below no defence's by more than twice the AUC's standard error (Hanley & McNeil); inversion,
the mean PSNR drops by at least 3 dB. No DP run's ROC curve exceeds its epsilon bound.

Usage: ``uv run python benchmarks/privacy_attacks.py [--json PATH] [--quick]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import finish  # noqa: E402

import fedloom  # noqa: E402
from fedloom.compression.sparse import TopK  # noqa: E402
from fedloom.data.federated import FederatedData  # noqa: E402
from fedloom.models.mlp import MLP  # noqa: E402
from fedloom.privacy.attacks import (  # noqa: E402
    InversionSpec,
    ShadowSpec,
    attack_metrics,
    dp_bound_excess,
    example_gradient,
    gradient_from_delta,
    invert_gradient,
    lira_attack,
    loss_threshold_scores,
    psnr,
    ssim,
)
from fedloom.privacy.calibration import analytic_gaussian_sigma  # noqa: E402
from fedloom.privacy.mechanisms import clip_rows  # noqa: E402

SHAPE = (1, 8, 8)
HIDDEN = 64
EPSILONS = (1.0, 8.0)
CLIENT_LR = 0.1
INVERSION_DELTA = 1e-5
TOPK_FRACTION = 0.1
PSNR_DROP_DB = 3.0


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, *SHAPE)
    return x, torch.tensor(d.target, dtype=torch.int64)


def auc_stderr(auc: float, members: int, non_members: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (members - 1) * (q1 - auc**2) + (non_members - 1) * (q2 - auc**2)
    return math.sqrt(max(var, 0.0) / (members * non_members))


# ------------------------------------------------------------------ membership inference


def train_target(x, y, members, non_members, rounds: int, epsilon: float | None, delta: float):
    data = FederatedData.from_clients(
        [(x[i : i + 1].numpy(), y[i : i + 1].numpy()) for i in members],
        test=(x[non_members].numpy(), y[non_members].numpy()),
        num_classes=10,
    )
    cfg: dict = {
        "rounds": rounds,
        "seed": 0,
        "server": {"clients_per_round": len(members) // 5},
        "client": {"local_epochs": 5, "batch_size": 1, "lr": 0.5},
        "model": {"kind": "mlp", "hidden": [HIDDEN]},
        "evaluation": {"every": rounds},
        "checkpoint": {"every": 0},
    }
    if epsilon is not None:
        cfg["privacy"] = {
            "mode": "central",
            "target_epsilon": epsilon,
            "delta": delta,
            "clip_norm": 1.0,
        }
    summary = fedloom.simulate(cfg, data=data, in_memory=True, progress=False)
    model = MLP(SHAPE, [HIDDEN], 10)
    model.load_state_dict(summary.state_dict)
    return model, summary.value


def membership(quick: bool) -> dict:
    x, y = digits()
    n = 60 if quick else 200
    order = np.random.default_rng(0).permutation(len(x))
    members, non_members = order[:n], order[n : 2 * n]
    population = np.concatenate([members, non_members])
    is_member = np.arange(2 * n) < n
    px, py = x[population], y[population]
    delta = 1.0 / n**1.1
    rounds = 5 if quick else 300
    shadows, spec = (4, ShadowSpec(steps=40)) if quick else (16, ShadowSpec(steps=300))
    runs: dict[str, dict] = {}
    for name, eps in [("none", None), *((f"dp_eps{e:g}", e) for e in EPSILONS)]:
        t = time.perf_counter()
        model, accuracy = train_target(x, y, members, non_members, rounds, eps, delta)
        scores = {
            "loss": loss_threshold_scores(model, px, py),
            "lira": lira_attack(model, px, py, 10, shadows=shadows, spec=spec, seed=0),
        }
        run: dict = {"epsilon": eps, "test_accuracy": round(accuracy, 4)}
        for attack, s in scores.items():
            m = attack_metrics(s, is_member)
            row = {
                "auc": round(m.auc, 4),
                "auc_stderr": round(auc_stderr(m.auc, n, n), 4),
                "advantage": round(m.advantage, 4),
                "balanced_accuracy": round(m.balanced_accuracy, 4),
                "tpr_at_1pct_fpr": round(m.tpr_at_low_fpr, 4),
            }
            if eps is not None:
                b = dp_bound_excess(s, is_member, eps, delta)
                row["bound_excess"] = round(b.excess, 4)
                row["bound_excess_lower95"] = round(b.excess_lower, 4)
                row["bound_violated"] = b.violated
            run[attack] = row
        run["seconds"] = round(time.perf_counter() - t, 1)
        runs[name] = run
        print(f"membership {name}: " + str(run), flush=True)
    runs["secagg"] = {"same_as": "none", "note": "SecAgg releases the same model"}
    return {
        "members": n,
        "non_members": n,
        "delta": delta,
        "rounds": rounds,
        "shadows": shadows,
        "lira_variant": "online, fixed (global) variances",
        "runs": runs,
    }


# ------------------------------------------------------------------ gradient inversion


def _scores(model, deltas: np.ndarray, images: torch.Tensor, spec: InversionSpec) -> dict:
    """Invert each row of ``deltas`` and score it against ``images`` (row i against image i,
    or a single row against every image, keeping the best match)."""
    shapes = [p.shape for p in model.parameters()]
    sizes = [math.prod(s) for s in shapes]
    p, s = [], []
    for i, row in enumerate(deltas):
        parts = torch.split(torch.from_numpy(row), sizes)
        update = gradient_from_delta(
            [t.reshape(sh) for t, sh in zip(parts, shapes, strict=True)], CLIENT_LR
        )
        rec = invert_gradient(model, update, SHAPE, spec, seed=i).x
        truths = images[i : i + 1] if len(deltas) == len(images) else images
        best = max(range(len(truths)), key=lambda j: psnr(rec, truths[j : j + 1]))
        p.append(psnr(rec, truths[best : best + 1]))
        s.append(ssim(rec, truths[best : best + 1]))
    return {"psnr": round(float(np.mean(p)), 2), "ssim": round(float(np.mean(s)), 4)}


def inversion(quick: bool) -> dict:
    x, y = digits()
    k = 3 if quick else 10
    spec = InversionSpec(steps=60 if quick else 400)
    torch.manual_seed(0)
    model = MLP(SHAPE, [HIDDEN], 10)
    images, labels = x[-k:], y[-k:]  # the test end of digits, one image per client
    deltas = np.stack(
        [
            -CLIENT_LR
            * torch.cat([g.flatten() for g in example_gradient(model, xi[None], yi[None])])
            .numpy()
            .astype(np.float32)
            for xi, yi in zip(images, labels, strict=True)
        ]
    )
    clip = float(np.median(np.linalg.norm(deltas, axis=1)))
    rng = np.random.default_rng(0)
    cases: dict[str, np.ndarray] = {"none": deltas}
    clipped, _ = clip_rows(deltas, clip)
    for eps in EPSILONS:
        sigma = analytic_gaussian_sigma(eps, INVERSION_DELTA, clip)
        noise = rng.normal(0.0, sigma, clipped.shape).astype(np.float32)
        cases[f"dp_eps{eps:g}"] = clipped + noise
    cases["secagg"] = deltas.sum(axis=0, keepdims=True)
    topk = TopK(TOPK_FRACTION)
    rngs = [np.random.default_rng(i) for i in range(k)]
    _, cases[f"topk{TOPK_FRACTION:g}"], _ = topk.encode(deltas, np.full(k, TOPK_FRACTION), rngs, {})
    results = {}
    for name, rows in cases.items():
        t = time.perf_counter()
        results[name] = _scores(model, rows, images, spec)
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"inversion {name}: {results[name]}", flush=True)
    return {
        "clients": k,
        "client_lr": CLIENT_LR,
        "steps": spec.steps,
        "dp_clip_norm": round(clip, 6),
        "dp_delta": INVERSION_DELTA,
        "topk_fraction": TOPK_FRACTION,
        "results": results,
    }


# ------------------------------------------------------------------ targets


def targets_of(mia: dict, inv: dict) -> list[dict]:
    out = []
    runs = mia["runs"]
    base = runs["none"]["lira"]
    for eps in EPSILONS:
        r = runs[f"dp_eps{eps:g}"]["lira"]
        drop = base["auc"] - r["auc"]
        need = 2 * math.hypot(base["auc_stderr"], r["auc_stderr"])
        out.append(
            {
                "name": f"membership: DP epsilon {eps:g} lowers LiRA AUC",
                "value": {"none": base["auc"], "dp": r["auc"], "drop": round(drop, 4)},
                "goal": f"drop > 2 standard errors ({need:.4f})",
                "met": drop > need,
            }
        )
    base_psnr = inv["results"]["none"]["psnr"]
    for name, r in inv["results"].items():
        if name == "none":
            continue
        drop = round(base_psnr - r["psnr"], 2)
        out.append(
            {
                "name": f"inversion: {name} lowers PSNR",
                "value": {"none": base_psnr, "defended": r["psnr"], "drop_db": drop},
                "goal": f"drop >= {PSNR_DROP_DB} dB",
                "met": drop >= PSNR_DROP_DB,
            }
        )
    for eps in EPSILONS:
        r = runs[f"dp_eps{eps:g}"]
        worst = max(r["loss"]["bound_excess_lower95"], r["lira"]["bound_excess_lower95"])
        out.append(
            {
                "name": f"membership: DP epsilon {eps:g} ROC within the (eps, delta) bound",
                "value": worst,
                "goal": "<= 0 (max of TPR - e^eps FPR - delta at 95% lower confidence)",
                "met": worst <= 0,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    mia = membership(args.quick)
    inv = inversion(args.quick)
    result = {"quick": args.quick, "membership": mia, "inversion": inv}
    result["total_s"] = round(time.perf_counter() - start, 1)
    result["targets"] = targets_of(mia, inv)
    finish(result, args.json)


if __name__ == "__main__":
    main()
