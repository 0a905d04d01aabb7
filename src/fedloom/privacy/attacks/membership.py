"""Membership inference: did this example train the model?

An accountant bounds what any attacker can learn; a membership attack measures what one
attacker does learn. Two attacks, from the weakest useful one to the strongest practical one:

- Loss threshold (Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", CSF 2018): a member's loss is lower, so the score
  is ``-loss``.
- LiRA (Carlini, Chien, Nasr, Song, Terzis & Tramer, "Membership Inference Attacks From
  First Principles", S&P 2022), online variant: shadow models trained on random halves of
  the attacker's population give, for every target example, the distribution of its
  logit-scaled confidence ``phi = log(p / (1 - p))`` when it was IN a training set and when
  it was OUT; the score is the Gaussian likelihood ratio of the target model's ``phi``.
  Shadows are trained together as one batched MLP (one einsum per layer), so N shadows cost
  about one model of N times the width.

A DP guarantee bounds every attack's ROC curve: (epsilon, delta)-DP makes membership a
hypothesis test with ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``
(Kairouz, Oh & Viswanath, "The Composition Theorem for Differential Privacy", ICML 2015).
:func:`dp_bound_excess` measures how far a measured curve goes past it; beyond sampling error
(Clopper-Pearson) that is a bug in the mechanism or in its accounting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedloom.errors import ConfigError

LOW_FPR = 0.01
"""The false-positive rate at which :func:`attack_metrics` reports the true-positive rate."""


@dataclass(frozen=True)
class AttackMetrics:
    """How well scores separate members (label 1) from non-members (label 0).

    ``advantage`` is ``max(TPR - FPR)`` over thresholds (Yeom et al.'s membership advantage),
    ``balanced_accuracy`` the best ``(TPR + 1 - FPR) / 2``, i.e. ``(1 + advantage) / 2``;
    ``tpr_at_low_fpr`` the largest TPR at FPR <= :data:`LOW_FPR`."""

    auc: float
    advantage: float
    balanced_accuracy: float
    tpr_at_low_fpr: float
    members: int
    non_members: int


@dataclass(frozen=True)
class BoundCheck:
    """A measured ROC curve against an (epsilon, delta)-DP guarantee.

    ``excess``: the largest ``TPR - e^eps FPR - delta`` (or its symmetric form) over the curve,
    on the point estimates; ``excess_lower``: the same with each TPR replaced by its lower and
    each FPR by its upper Clopper-Pearson bound (``confidence``, two-sided per rate).
    ``violated`` when ``excess_lower > 0``: the curve is above the bound beyond sampling
    error."""

    epsilon: float
    delta: float
    excess: float
    excess_lower: float
    confidence: float

    @property
    def violated(self) -> bool:
        return self.excess_lower > 0


def _labels_scores(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(is_member, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ConfigError(f"scores has {scores.size} entries, is_member {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise ConfigError("scores: must be finite")
    if labels.all() or not labels.any():
        raise ConfigError("is_member: needs both members and non-members")
    return scores, labels


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> AttackMetrics:
    """AUC, advantage, balanced accuracy and TPR at 1% FPR of membership ``scores`` (higher
    means "member")."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, labels = _labels_scores(scores, is_member)
    fpr, tpr, _ = roc_curve(labels, scores)
    advantage = float(np.max(tpr - fpr))
    return AttackMetrics(
        auc=float(roc_auc_score(labels, scores)),
        advantage=advantage,
        balanced_accuracy=(1 + advantage) / 2,
        tpr_at_low_fpr=float(np.max(tpr[fpr <= LOW_FPR])),
        members=int(labels.sum()),
        non_members=int((~labels).sum()),
    )


def _clopper_pearson(k: np.ndarray, n: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import beta

    alpha = 1 - confidence
    lower = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    upper = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lower, upper


def _excess(fpr: np.ndarray, tpr: np.ndarray, epsilon: float, delta: float) -> float:
    e = math.exp(epsilon)
    return float(np.max(np.maximum(tpr - e * fpr - delta, (1 - fpr) - e * (1 - tpr) - delta)))


def dp_bound_excess_roc(
    fpr: np.ndarray,
    tpr: np.ndarray,
    epsilon: float,
    delta: float,
    *,
    members: int,
    non_members: int,
    confidence: float = 0.95,
) -> BoundCheck:
    """:class:`BoundCheck` of ROC points ``(fpr, tpr)`` measured on ``members`` and
    ``non_members`` examples against (``epsilon``, ``delta``)-DP."""
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError(f"epsilon = {epsilon!r}: must be finite and >= 0")
    if not 0 <= delta < 1:
        raise ConfigError(f"delta = {delta!r}: must be in [0, 1)")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence = {confidence!r}: must be in (0, 1)")
    if members < 1 or non_members < 1:
        raise ConfigError(f"members = {members}, non_members = {non_members}: must be >= 1")
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1 or fpr.size == 0:
        raise ConfigError(f"fpr {fpr.shape} and tpr {tpr.shape}: must be equal 1-d, non-empty")
    if np.any((fpr < 0) | (fpr > 1) | (tpr < 0) | (tpr > 1)):
        raise ConfigError("fpr, tpr: rates must lie in [0, 1]")
    tpr_lo, tpr_hi = _clopper_pearson(np.rint(tpr * members), members, confidence)
    fpr_lo, fpr_hi = _clopper_pearson(np.rint(fpr * non_members), non_members, confidence)
    e = math.exp(epsilon)
    # the lower confidence end of each side: TPR as low and FPR as high as sampling allows
    lower = np.maximum(tpr_lo - e * fpr_hi - delta, (1 - fpr_hi) - e * (1 - tpr_lo) - delta)
    return BoundCheck(
        epsilon=float(epsilon),
        delta=float(delta),
        excess=_excess(fpr, tpr, epsilon, delta),
        excess_lower=float(np.max(lower)),
        confidence=float(confidence),
    )


def dp_bound_excess(
    scores: np.ndarray,
    is_member: np.ndarray,
    epsilon: float,
    delta: float,
    confidence: float = 0.95,
) -> BoundCheck:
    """:class:`BoundCheck` of the ROC curve of membership ``scores``."""
    from sklearn.metrics import roc_curve

    scores, labels = _labels_scores(scores, is_member)
    fpr, tpr, _ = roc_curve(labels, scores)
    return dp_bound_excess_roc(
        fpr,
        tpr,
        epsilon,
        delta,
        members=int(labels.sum()),
        non_members=int((~labels).sum()),
        confidence=confidence,
    )


@torch.no_grad()
def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each example under ``model`` (eval mode), float64 ``[n]``."""
    model.eval()
    return F.cross_entropy(model(x), y, reduction="none").double().numpy()


def loss_threshold_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Yeom et al.'s membership score: ``-loss`` of each example (higher: more likely IN)."""
    return -per_example_loss(model, x, y)


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``phi = log(p_y / (1 - p_y))`` of each row, computed stably as
    ``z_y - logsumexp(z_other)``: the statistic LiRA models as Gaussian."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), -math.inf)
    return true - torch.logsumexp(others, dim=-1)


@dataclass(frozen=True)
class ShadowSpec:
    """The shadow models' architecture and training: a ReLU MLP ``hidden`` wide, full-batch
    Adam for ``steps`` steps at ``lr`` with ``weight_decay``."""

    hidden: int = 64
    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hidden", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"shadow.{name} = {value!r}: must be an integer >= 1")
        if not self.lr > 0:
            raise ConfigError(f"shadow.lr = {self.lr!r}: must be > 0")
        if not self.weight_decay >= 0:
            raise ConfigError(f"shadow.weight_decay = {self.weight_decay!r}: must be >= 0")


def _batched_mlp(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits ``[S, n, classes]`` of S MLPs (weights ``[S, in, out]``) on shared inputs."""
    w1, b1, w2, b2 = params
    h = torch.relu(torch.einsum("nd,sdh->snh", x, w1) + b1[:, None])
    return torch.einsum("snh,shc->snc", h, w2) + b2[:, None]


def train_shadow_models(
    x: torch.Tensor,
    y: torch.Tensor,
    in_mask: torch.Tensor,
    num_classes: int,
    spec: ShadowSpec,
    seed: int,
) -> torch.Tensor:
    """Train one shadow MLP per row of ``in_mask`` (``[S, n]`` bool: which of the ``n``
    population examples it trains on) and return each shadow's ``phi`` on every example,
    ``[S, n]``.

    All S models train at once: their weights are stacked and the loss is the sum of the
    models' masked mean cross-entropies, whose gradient is each model's own gradient."""
    x = x.flatten(1).float()
    mask = in_mask.float()
    if mask.ndim != 2 or mask.shape[1] != len(x):
        raise ConfigError(f"in_mask shape {tuple(mask.shape)}: expected [shadows, {len(x)}]")
    if torch.any(mask.sum(1) == 0):
        raise ConfigError("in_mask: every shadow model needs at least one training example")
    gen = torch.Generator().manual_seed(seed)
    s, d, h = mask.shape[0], x.shape[1], spec.hidden

    def uniform(*shape: int, fan_in: int) -> torch.Tensor:
        bound = 1 / math.sqrt(fan_in)
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * bound).requires_grad_()

    params = [
        uniform(s, d, h, fan_in=d),
        uniform(s, h, fan_in=d),
        uniform(s, h, num_classes, fan_in=h),
        uniform(s, num_classes, fan_in=h),
    ]
    opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    counts = mask.sum(1)
    target = y.expand(s, -1)
    for _ in range(spec.steps):
        opt.zero_grad(set_to_none=True)
        logits = _batched_mlp(params, x)
        losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        ((losses * mask).sum(1) / counts).sum().backward()
        opt.step()
    with torch.no_grad():
        return logit_confidence(_batched_mlp(params, x), target)


def lira_online_scores(
    target_phi: np.ndarray, shadow_phi: np.ndarray, in_mask: np.ndarray
) -> np.ndarray:
    """LiRA's online likelihood ratio ``log N(phi; mu_in, s_in^2) - log N(phi; mu_out,
    s_out^2)`` of each example's target-model ``phi`` (``[n]``), from the shadows' ``phi``
    (``[S, n]``) and which shadows trained on it (``in_mask``, ``[S, n]``).

    Means are per example; the variances are the global IN and OUT variances (the "fixed
    variance" variant Carlini et al. recommend with few shadows, Section VI-A). An example
    with no IN (or no OUT) shadow falls back to the global mean of that side."""
    phi = np.asarray(shadow_phi, dtype=np.float64)
    mask = np.asarray(in_mask, dtype=bool)
    target = np.asarray(target_phi, dtype=np.float64)
    if phi.shape != mask.shape or phi.ndim != 2 or target.shape != (phi.shape[1],):
        raise ConfigError(
            f"shadow_phi {phi.shape}, in_mask {mask.shape}, target_phi {target.shape}: "
            "expected [S, n], [S, n] and [n]"
        )
    if mask.all() or not mask.any():
        raise ConfigError("in_mask: needs both IN and OUT shadow observations")

    def side(m: np.ndarray) -> tuple[np.ndarray, float]:
        count = m.sum(0)
        total = np.where(m, phi, 0.0).sum(0)
        mean = np.where(count > 0, total / np.maximum(count, 1), phi[m].mean())
        var = float(np.mean((phi[m] - np.broadcast_to(mean, phi.shape)[m]) ** 2)) + 1e-12
        return mean, var

    mu_in, var_in = side(mask)
    mu_out, var_out = side(~mask)
    log_in = -0.5 * ((target - mu_in) ** 2 / var_in + math.log(var_in))
    log_out = -0.5 * ((target - mu_out) ** 2 / var_out + math.log(var_out))
    return log_in - log_out


def lira_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    shadows: int = 16,
    spec: ShadowSpec | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Online LiRA scores of the population ``(x, y)`` against ``model``: ``shadows``
    shadow MLPs, each trained on a uniformly random half of the population (every example is
    IN for about half of them), then :func:`lira_online_scores`."""
    if isinstance(shadows, bool) or not isinstance(shadows, int) or shadows < 2:
        raise ConfigError(f"shadows = {shadows!r}: must be an integer >= 2")
    rng = np.random.default_rng(seed)
    n = len(x)
    # each example is IN for exactly half the shadows (balanced, as in Carlini et al.'s code)
    order = np.argsort(rng.random((n, shadows)), axis=1)
    in_mask = (order < shadows // 2).T
    shadow_phi = train_shadow_models(
        x, y, torch.from_numpy(in_mask), num_classes, spec or ShadowSpec(), seed
    )
    model.eval()
    with torch.no_grad():
        target_phi = logit_confidence(model(x), y)
    return lira_online_scores(target_phi.double().numpy(), shadow_phi.double().numpy(), in_mask)
