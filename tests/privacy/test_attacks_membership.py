"""Membership attacks on cases whose answer is known: a model that memorized random-label
members against held-out noise (AUC near 1), an untrained model (AUC near 0.5), LiRA on an
overfit model (better than chance), and the DP-bound check on hand-made ROC points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.errors import ConfigError
from fedloom.privacy.attacks import (
    ShadowSpec,
    attack_metrics,
    dp_bound_excess,
    dp_bound_excess_roc,
    lira_attack,
    lira_online_scores,
    logit_confidence,
    loss_threshold_scores,
)

torch.set_num_threads(1)


def _noise(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.fixture(scope="module")
def overfit() -> tuple[nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    """A model that memorized 60 random-label noise members; 60 held-out noise examples."""
    members, outsiders = _noise(60, 1), _noise(60, 2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(members[0]), members[1]).backward()
        opt.step()
    x = torch.cat([members[0], outsiders[0]])
    y = torch.cat([members[1], outsiders[1]])
    return model, x, y, np.arange(120) < 60


def test_loss_threshold_separates_memorized_members_from_held_out_noise(overfit) -> None:
    model, x, y, is_member = overfit
    m = attack_metrics(loss_threshold_scores(model, x, y), is_member)
    assert m.auc > 0.95 and m.advantage > 0.8
    assert m.balanced_accuracy == pytest.approx((1 + m.advantage) / 2)
    assert (m.members, m.non_members) == (60, 60)


def test_loss_threshold_is_chance_on_an_untrained_model() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = _noise(2000, 4)
    m = attack_metrics(loss_threshold_scores(model, x, y), np.arange(2000) < 1000)
    assert abs(m.auc - 0.5) < 0.05  # 4 standard errors of an AUC on 1000 + 1000


def test_lira_beats_chance_on_an_overfit_model(overfit) -> None:
    model, x, y, is_member = overfit
    spec = ShadowSpec(hidden=128, steps=100, lr=0.02)
    m = attack_metrics(lira_attack(model, x, y, 4, shadows=8, spec=spec), is_member)
    assert m.auc > 0.8 and m.tpr_at_low_fpr > 0.05


def test_lira_scores_follow_the_gaussian_likelihood_ratio() -> None:
    # IN shadows see phi = 2, OUT shadows phi = -2 (+-1): a target phi of 2 is IN
    phi = np.array([[3.0, 3.0], [1.0, 1.0], [-1.0, -1.0], [-3.0, -3.0]])
    mask = np.array([[True, True], [True, True], [False, False], [False, False]])
    scores = lira_online_scores(np.array([2.0, -2.0]), phi, mask)
    assert scores[0] == pytest.approx(8.0) and scores[1] == pytest.approx(-8.0)
    with pytest.raises(ConfigError, match="in_mask"):
        lira_online_scores(np.zeros(2), phi, np.ones_like(mask))


def test_logit_confidence_is_the_log_odds_of_the_true_class() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, -1)[0, 0]
    assert float(logit_confidence(logits, torch.tensor([0]))) == pytest.approx(
        math.log(p / (1 - p)), rel=1e-6
    )


def test_dp_bound_check_on_hand_made_roc_points() -> None:
    eps, delta = math.log(2), 0.01
    inside = dp_bound_excess_roc(
        [0.0, 0.1, 0.3, 1.0], [0.0, 0.2, 0.6, 1.0], eps, delta, members=10**6, non_members=10**6
    )
    # TPR = 2 FPR on the middle points: excess -delta, and the symmetric form is looser
    assert inside.excess == pytest.approx(-delta) and not inside.violated
    above = dp_bound_excess_roc(
        [0.0, 0.1, 1.0], [0.0, 0.5, 1.0], eps, delta, members=10**6, non_members=10**6
    )
    assert above.excess == pytest.approx(0.5 - 0.2 - delta) and above.violated
    # the same point measured on 20 examples each is within sampling error
    few = dp_bound_excess_roc(
        [0.0, 0.1, 1.0], [0.0, 0.5, 1.0], eps, delta, members=20, non_members=20
    )
    assert few.excess == pytest.approx(above.excess) and not few.violated
    # symmetric side: 1 - FPR <= e^eps (1 - TPR) + delta
    sym = dp_bound_excess_roc(
        [0.0, 0.5, 1.0], [0.0, 0.9, 1.0], eps, delta, members=10**6, non_members=10**6
    )
    assert sym.excess == pytest.approx(max(0.9 - 1.0, 0.5 - 0.2) - delta)


def test_dp_bound_of_perfect_scores_is_violated_at_small_epsilon() -> None:
    scores = np.r_[np.ones(500), np.zeros(500)]
    check = dp_bound_excess(scores, np.arange(1000) < 500, epsilon=1.0, delta=1e-5)
    assert check.excess == pytest.approx(1 - 1e-5) and check.violated


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="is_member"):
        attack_metrics(np.zeros(4), np.ones(4))
    with pytest.raises(ConfigError, match="epsilon"):
        dp_bound_excess(np.arange(4.0), np.arange(4) < 2, epsilon=-1.0, delta=0.0)
    with pytest.raises(ConfigError, match="shadow.steps"):
        ShadowSpec(steps=0)
    with pytest.raises(ConfigError, match="shadows"):
        lira_attack(nn.Linear(16, 4), *_noise(4, 0), 4, shadows=1)
