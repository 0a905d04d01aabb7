"""Simulated Byzantine clients: update attacks, data poisoning and the adversary that
applies them in the simulator (``[attack]``, docs/robustness.md)."""

from fedloom.attacks.adversary import (
    ATTACK_TYPES,
    Adversary,
    AttackSettings,
    build_adversary,
    build_attack,
    malicious_clients,
)
from fedloom.attacks.base import Attack
from fedloom.attacks.data import Backdoor, LabelFlip
from fedloom.attacks.model import (
    Alie,
    GaussianAttack,
    Ipm,
    MinMax,
    MinSum,
    Scaling,
    SignFlip,
    alie_z,
    min_max_gamma,
    min_sum_gamma,
    perturbation,
)

__all__ = [
    "ATTACK_TYPES",
    "Adversary",
    "Alie",
    "Attack",
    "AttackSettings",
    "Backdoor",
    "GaussianAttack",
    "Ipm",
    "LabelFlip",
    "MinMax",
    "MinSum",
    "Scaling",
    "SignFlip",
    "alie_z",
    "build_adversary",
    "build_attack",
    "malicious_clients",
    "min_max_gamma",
    "min_sum_gamma",
    "perturbation",
]
