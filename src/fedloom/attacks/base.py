"""What every simulated attack is: a row crafter, a data poisoner, or both.

An attack is a small frozen dataclass whose fields are its ``attack.params``; it checks
them on construction (``ConfigError`` naming ``attack.params.<name>`` and the value).
Update attacks override :meth:`Attack.craft`, data attacks :meth:`Attack.poison`; the
``Adversary`` (``fedloom.attacks.adversary``) decides whom and when.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from fedloom.data.arrays import ClientPartition
from fedloom.errors import ConfigError


class Attack:
    """Base of the built-in attacks.

    ``crafts``: the attack replaces the malicious clients' updates (``craft``);
    ``poisons``: it poisons their training data once, when the run is built (``poison``).
    """

    kind: ClassVar[str]
    crafts: ClassVar[bool] = True
    poisons: ClassVar[bool] = False

    def craft(self, own: np.ndarray, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The ``[M, d]`` rows the round's ``M`` malicious clients send, from their own
        honestly trained updates ``own`` ``[M, d]`` and the round's honest updates
        ``honest`` ``[H, d]`` (omniscient attacks read them; ``H`` may be 0)."""
        return own

    def poison(
        self, train: ClientPartition, clients: np.ndarray, rng: np.random.Generator
    ) -> ClientPartition:
        """``train`` with the examples of ``clients`` (sorted ids) poisoned; arrays that
        change are copies, the input is left as it was."""
        return train


def reference(own: np.ndarray, honest: np.ndarray) -> np.ndarray:
    """The updates an omniscient attack estimates the benign distribution from, float64:
    the round's honest updates, or, with fewer than 2 of them (a round of almost only
    malicious clients, an asynchronous cohort of one), the malicious clients' own
    honestly trained updates, which are drawn from the same distribution."""
    rows = honest if honest.shape[0] >= 2 else own
    return np.asarray(rows, dtype=np.float64)


def check_number(
    name: str,
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    integer: bool = False,
) -> float:
    """``value`` as a finite number within the bounds, or ``ConfigError`` naming
    ``attack.params.<name>``; integral floats pass as integers (TOML writes ``3.0``)."""
    where = f"attack.params.{name} = {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number")
    if integer and not number.is_integer():
        raise ConfigError(f"{where}: expected an integer")
    for limit, ok, sign in (
        (gt, gt is None or number > gt, ">"),
        (ge, ge is None or number >= ge, ">="),
        (le, le is None or number <= le, "<="),
    ):
        if not ok:
            raise ConfigError(f"{where}: must be {sign} {limit:g}")
    return number


def check_choice(name: str, value: object, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``, else ``ConfigError`` naming the field."""
    if value not in options:
        raise ConfigError(
            f"attack.params.{name} = {value!r}: expected one of {', '.join(map(repr, options))}"
        )
    return str(value)
