"""The simulated adversary: which clients are malicious, what their attack is, and when it
acts.

``build_adversary`` maps the ``[attack]`` settings to an :class:`Adversary` and the
run's data with the malicious clients' examples poisoned; the simulator calls
:meth:`Adversary.act` on each cohort's freshly trained updates, before the clients'
own transform chain. Every draw comes from a stream of the run seed with a tag of its
own, so a resumed run replays the same attack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Protocol

import numpy as np

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
)
from fedloom.data.federated import FederatedData
from fedloom.errors import ConfigError
from fedloom.records import Update

ATTACK_TYPES: dict[str, type[Attack]] = {
    cls.kind: cls
    for cls in (SignFlip, Scaling, GaussianAttack, LabelFlip, Alie, Ipm, MinMax, MinSum, Backdoor)
}
# the generator streams next to the run seed (distinct from the other components' tags)
_CHOOSE_STREAM = 0xA77A0  # which clients are malicious
_POISON_STREAM = 0xA77A1  # which examples the backdoor poisons
_CRAFT_STREAM = 0xA77A2  # a round's crafted rows


class AttackSettings(Protocol):
    """What the adversary reads of the ``[attack]`` section (``config.AttackConfig``)."""

    @property
    def kind(self) -> str: ...

    @property
    def clients(self) -> float | list[int]: ...

    @property
    def params(self) -> Mapping[str, float | int | str]: ...

    @property
    def start_round(self) -> int: ...


def build_attack(kind: str, params: Mapping[str, object]) -> Attack:
    """The attack ``kind`` with ``params``; ``ConfigError`` names ``attack.kind`` or
    ``attack.params.<name>`` and the value (and, for an unknown name, the attack's
    accepted names)."""
    cls = ATTACK_TYPES.get(kind)
    if cls is None:
        raise ConfigError(f"attack.kind = {kind!r}: expected one of {', '.join(ATTACK_TYPES)}")
    accepted = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for name, value in params.items():
        if name not in accepted:
            raise ConfigError(
                f"attack.params.{name} = {value!r}: {kind!r} has no parameter {name!r}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
    return cls(**params)


def malicious_clients(cfg: AttackSettings, num_clients: int, seed: int) -> np.ndarray:
    """The malicious client ids, sorted int64: the listed ids, or ``round(fraction * N)``
    (at least 1) drawn without replacement from stream ``[seed, _CHOOSE_STREAM]``, so the
    choice is reproducible and independent of every other draw of the run."""
    if isinstance(cfg.clients, list):
        ids = np.array(sorted(cfg.clients), dtype=np.int64)
        outside = ids[(ids < 0) | (ids >= num_clients)]
        if outside.size:
            raise ConfigError(
                f"attack.clients = {cfg.clients!r} names client {int(outside[0])}, but the "
                f"run has {num_clients} clients (ids 0..{num_clients - 1})"
            )
        return ids
    k = min(max(1, round(cfg.clients * num_clients)), num_clients)
    rng = np.random.default_rng([seed, _CHOOSE_STREAM])
    return np.sort(rng.choice(num_clients, size=k, replace=False)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Adversary:
    """The attack, the malicious ids (sorted int64) and the round it starts acting from.

    Pure: it holds no state between rounds; each round's draws come from stream
    ``[seed, _CRAFT_STREAM, round, *malicious ids of the cohort]``, so a replayed round
    (a resumed run) crafts the same rows and two cohorts of one round (asynchronous
    training, shards) draw independently.
    """

    attack: Attack
    clients: np.ndarray
    start_round: int
    seed: int

    def act(self, updates: list[Update], round: int) -> list[Update]:
        """``updates`` with the malicious clients' deltas replaced by the attack's rows
        (float32, same shape), crafted from their own and the other updates of the list
        (the honest ones); unchanged before ``start_round`` or for a pure data attack.

        The list is what the runtime trained together: a synchronous round's cohort (a
        rank's share of it under torchrun), or an asynchronous cohort of one model
        version, so omniscient attacks know the honest updates trained with them."""
        if round < self.start_round or not self.attack.crafts or not updates:
            return updates
        ids = np.array([u.client_id for u in updates], dtype=np.int64)
        bad = np.isin(ids, self.clients)
        if not bad.any():
            return updates
        deltas = np.stack([u.delta for u in updates])
        rng = np.random.default_rng([self.seed, _CRAFT_STREAM, round, *ids[bad].tolist()])
        rows = self.attack.craft(deltas[bad], deltas[~bad], rng)
        crafted = iter(np.asarray(rows, dtype=np.float32))
        return [
            replace(u, delta=next(crafted).reshape(u.delta.shape)) if b else u
            for u, b in zip(updates, bad, strict=True)
        ]

    def poison(self, data: FederatedData) -> FederatedData:
        """``data`` with the malicious clients' training examples poisoned (a new
        ``FederatedData`` over copied arrays; ``data`` itself is unchanged)."""
        if not self.attack.poisons:
            return data
        rng = np.random.default_rng([self.seed, _POISON_STREAM])
        return replace(data, train=self.attack.poison(data.train, self.clients, rng))


def build_adversary(
    cfg: AttackSettings, data: FederatedData, seed: int
) -> tuple[Adversary | None, FederatedData]:
    """The run's adversary and its (poisoned) data; ``(None, data)`` without an attack.

    A backdoor without ``trigger_value`` gets the training data's largest value, so
    ``adversary.attack.apply_trigger`` stamps test examples as the poisoned ones were.
    Poisoned data is in place from the first round; ``start_round`` governs the crafted
    updates (the backdoor's boost included).
    """
    if cfg.kind == "none":
        return None, data
    attack = build_attack(cfg.kind, cfg.params)
    if isinstance(attack, Backdoor) and attack.trigger_value is None:
        top = float(data.train.x.max()) if data.train.x.size else 1.0
        attack = replace(attack, trigger_value=top)
    clients = malicious_clients(cfg, data.train.num_clients, seed)
    adversary = Adversary(attack, clients, cfg.start_round, seed)
    return adversary, adversary.poison(data)
