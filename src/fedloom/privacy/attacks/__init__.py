"""Attack-based privacy validation: membership inference (loss threshold, LiRA) and
gradient inversion, with the check of a measured ROC curve against a DP guarantee.

Accounting proves an upper bound on what any attacker learns; these attacks measure what
strong known attackers do learn, for the defences fedloom offers (DP, secure aggregation,
sparsification). See docs/privacy_attacks.md.
"""

from fedloom.privacy.attacks.inversion import (
    Inversion,
    InversionSpec,
    cosine_distance,
    example_gradient,
    gradient_from_delta,
    infer_label,
    invert_gradient,
    psnr,
    relative_error,
    ssim,
    total_variation,
)
from fedloom.privacy.attacks.membership import (
    AttackMetrics,
    BoundCheck,
    ShadowSpec,
    attack_metrics,
    dp_bound_excess,
    dp_bound_excess_roc,
    lira_attack,
    lira_online_scores,
    logit_confidence,
    loss_threshold_scores,
    per_example_loss,
    train_shadow_models,
)

__all__ = [
    "AttackMetrics",
    "BoundCheck",
    "Inversion",
    "InversionSpec",
    "ShadowSpec",
    "attack_metrics",
    "cosine_distance",
    "dp_bound_excess",
    "dp_bound_excess_roc",
    "example_gradient",
    "gradient_from_delta",
    "infer_label",
    "invert_gradient",
    "lira_attack",
    "lira_online_scores",
    "logit_confidence",
    "loss_threshold_scores",
    "per_example_loss",
    "psnr",
    "relative_error",
    "ssim",
    "total_variation",
    "train_shadow_models",
]
