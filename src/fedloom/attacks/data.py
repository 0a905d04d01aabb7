"""Data poisoning: the malicious clients' training examples changed once, when the run is
built, so they train honestly on poisoned data (and, for the backdoor, boost the result).

Only the malicious clients' rows of the training pool change; the arrays that change are
copied, the hold-outs and the test set are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from fedloom.attacks.base import Attack, check_choice, check_number
from fedloom.data.arrays import ClientPartition
from fedloom.errors import ConfigError

TRIGGERS = ("square",)


def _rows_of(train: ClientPartition, clients: np.ndarray) -> np.ndarray:
    """Pool rows owned by ``clients`` (bool mask ``[N]``)."""
    return np.isin(train.client_index(), clients)


def _need_classes(train: ClientPartition, kind: str) -> int:
    """The number of classes, or ``ConfigError`` when the targets are not class labels."""
    if train.targets != "classes" or train.num_classes is None:
        raise ConfigError(
            f"attack.kind = {kind!r} needs class labels, but the data's targets are "
            f"{train.targets!r}"
        )
    return train.num_classes


@dataclass(frozen=True)
class LabelFlip(Attack):
    """The malicious clients train on labels ``C - 1 - y`` (every example), then send
    their honestly trained updates.

    References: Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
    Systems", ESORICS 2020; Fang et al., "Local Model Poisoning Attacks to
    Byzantine-Robust Federated Learning", USENIX Security 2020 (label flipping).
    """

    kind: ClassVar[str] = "label_flip"
    crafts: ClassVar[bool] = False
    poisons: ClassVar[bool] = True

    def poison(
        self, train: ClientPartition, clients: np.ndarray, rng: np.random.Generator
    ) -> ClientPartition:
        classes = _need_classes(train, self.kind)
        rows = _rows_of(train, clients)
        y = train.y.copy()
        y[rows] = classes - 1 - y[rows]
        return replace(train, y=y)


@dataclass(frozen=True)
class Backdoor(Attack):
    """Model replacement: a share ``poison_fraction`` of each malicious client's examples
    carry a trigger and the label ``target``; the client trains on them and sends its
    update times ``boost`` so that it replaces the global model's step.

    The trigger (``"square"``) sets a ``trigger_size`` x ``trigger_size`` corner (the last
    rows and columns of every channel) of an image ``[..., H, W]``, or the last
    ``trigger_size`` features of a flat example, to ``trigger_value`` (by default the
    training data's largest value, bound by ``build_adversary``). ``boost`` defaults to
    the number of clients in the round, ``n / eta`` with a server learning rate ``eta``
    of 1: the boosted update survives averaging over ``n`` clients.

    References: Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020.
    """

    kind: ClassVar[str] = "backdoor"
    poisons: ClassVar[bool] = True
    trigger: str = "square"
    trigger_size: int = 3
    trigger_value: float | None = None
    poison_fraction: float = 0.5
    target: int = 0
    boost: float | None = None

    def __post_init__(self) -> None:
        check_choice("trigger", self.trigger, TRIGGERS)
        size = check_number("trigger_size", self.trigger_size, ge=1, integer=True)
        object.__setattr__(self, "trigger_size", int(size))
        if self.trigger_value is not None:
            value = check_number("trigger_value", self.trigger_value)
            object.__setattr__(self, "trigger_value", value)
        fraction = check_number("poison_fraction", self.poison_fraction, gt=0, le=1)
        object.__setattr__(self, "poison_fraction", fraction)
        target = check_number("target", self.target, ge=0, integer=True)
        object.__setattr__(self, "target", int(target))
        if self.boost is not None:
            object.__setattr__(self, "boost", check_number("boost", self.boost, gt=0))

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        boost = own.shape[0] + honest.shape[0] if self.boost is None else self.boost
        return (boost * np.asarray(own, dtype=np.float64)).astype(np.float32)

    def apply_trigger(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``[n, ...]`` with the trigger set (a copy), e.g. a test set's examples
        whose label is not ``target``, to measure the backdoor's success rate."""
        if self.trigger_value is None:
            raise ConfigError(
                "attack.params.trigger_value = None: set it, or build the attack with "
                "build_adversary, which takes the training data's largest value"
            )
        x = np.array(x, copy=True)
        s, shape = self.trigger_size, x.shape[1:]
        fits = s <= shape[-1] and (len(shape) < 2 or s <= shape[-2])
        if not fits:
            raise ConfigError(
                f"attack.params.trigger_size = {s}: larger than the examples' "
                f"{'corner' if len(shape) >= 2 else 'features'} (sample shape {list(shape)})"
            )
        if len(shape) >= 2:
            x[..., -s:, -s:] = self.trigger_value
        else:
            x[:, -s:] = self.trigger_value
        return x

    def poison(
        self, train: ClientPartition, clients: np.ndarray, rng: np.random.Generator
    ) -> ClientPartition:
        classes = _need_classes(train, self.kind)
        if self.target >= classes:
            raise ConfigError(
                f"attack.params.target = {self.target}: the data has {classes} classes "
                f"(0..{classes - 1})"
            )
        owner = train.client_index()
        rows = np.isin(owner, clients)
        sizes = train.sizes()
        quota = np.ceil(self.poison_fraction * sizes).astype(np.int64)
        # a random order within each client: sort by (client, random key), rank in client
        order = np.lexsort((rng.random(owner.size), owner))
        rank = np.empty(owner.size, dtype=np.int64)
        rank[order] = np.arange(owner.size, dtype=np.int64) - train.offsets[owner[order]]
        chosen = np.flatnonzero(rows & (rank < quota[owner]))
        x, y = train.x.copy(), train.y.copy()
        x[chosen] = self.apply_trigger(train.x[chosen])
        y[chosen] = self.target
        return replace(train, x=x, y=y)
