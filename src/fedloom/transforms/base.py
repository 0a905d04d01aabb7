"""The transform protocol: ``init`` builds a state, ``apply`` maps a cohort's updates.

A transform turns a ``[K, d]`` float32 matrix of updates (one row per client) into another
and threads an explicit state through, as optax's ``GradientTransformation`` does for
gradients: ``state = t.init(dim)``, then ``updates, state = t.apply(updates, state, ctx)``.
State is plain data (a dict of numpy arrays, ints, floats or strings), so a checkpoint
writes it and a resumed run continues bit for bit; nothing is hidden in the object.

A client transform's state belongs to one client. For a cohort the runtime stacks the
clients' states along a new leading axis (:func:`stack_states`), applies the transform once
to the ``[K, d]`` matrix and splits the states again (:func:`unstack_states`), so a
transform written for one client serves a stacked cohort when its arithmetic broadcasts
over that axis (``state["x"]`` is ``[K, ...]`` inside ``apply``). :class:`ClientStates`
keeps them between rounds.

A transform with a client half and a server half (secure masking) is one
object with both (:class:`TwoSided`); :func:`chain` composes transforms left to right.

References: Babuschkin et al., "The DeepMind JAX Ecosystem" (optax), 2020.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from fedloom.errors import CheckpointError, ConfigError, FedloomError

State = dict[str, Any]
Side = Literal["client", "server"]


@dataclass(frozen=True)
class Context:
    """What a transform may know about the round besides the updates.

    ``client_ids``, ``weights`` (example counts) and ``losses`` (training losses, where
    known) are aligned with the rows. ``noise``
    is the randomness a transform may draw from (a ``NoiseSource``: seeded in simulation,
    the OS's in a deployment); ``seed`` and ``attempt`` key a transform's own seeded
    streams in simulation, ``replay`` (> 0) a fresh stream for an attempt replayed after
    a resume. ``secure``: randomness must come from the OS (a deployment). ``stats``:
    round statistics an earlier stage computed for a later one (e.g. ``"unclipped"``).
    """

    round: int
    client_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    attempt: int = 0
    seed: int = 0
    noise: Any = None
    secure: bool = False
    replay: int = 0
    losses: np.ndarray | None = None
    stats: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Transform(Protocol):
    """One step of an update pipeline (see the module docstring)."""

    def init(self, dim: int) -> State: ...

    def apply(
        self, updates: np.ndarray, state: State, ctx: Context
    ) -> tuple[np.ndarray, State]: ...


@dataclass(frozen=True)
class TwoSided:
    """A transform that runs partly on each client and partly on the server, e.g. secure
    masking (the client encodes, the server decodes the sum) or a change of basis.
    Compression, whose output is a byte payload rather than a row, is its own stage
    (``fedloom.compression``)."""

    client: Transform
    server: Transform


@dataclass(frozen=True)
class Chain:
    """Transforms applied left to right; the state holds one entry per transform."""

    transforms: tuple[Transform, ...]

    def init(self, dim: int) -> State:
        return {str(i): t.init(dim) for i, t in enumerate(self.transforms)}

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        new: State = {}
        for i, t in enumerate(self.transforms):  # an empty state has no leaves to store
            updates, new[str(i)] = t.apply(updates, state.get(str(i), {}), ctx)
        return updates, new

    @property
    def stateful(self) -> bool:
        """Whether any transform keeps state (an empty ``init`` is stateless)."""
        return any(_leaves(t.init(1)) for t in self.transforms)


def chain(*transforms: Transform) -> Chain:
    """Compose ``transforms`` (applied in the order given) into one transform."""
    for t in transforms:
        if not (callable(getattr(t, "init", None)) and callable(getattr(t, "apply", None))):
            raise ConfigError(f"{t!r} is not a transform: it needs init(dim) and apply(...)")
    return Chain(tuple(transforms))


# ------------------------------------------------------------------- per-client state


def _leaves(state: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if "." in key or not key:
            raise FedloomError(f"transform state key {key!r} must be non-empty without '.'")
        if isinstance(value, Mapping):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = np.asarray(value)
    return out


def flatten_state(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A (nested) state as ``{"a.b": array}``: what an ``.npz`` file holds."""
    return _leaves(state)


def unflatten_state(flat: Mapping[str, np.ndarray]) -> State:
    """The inverse of :func:`flatten_state` (leaves come back as numpy arrays)."""
    out: State = {}
    for key, value in flat.items():
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = np.asarray(value)
    return out


def stack_states(states: list[State]) -> State:
    """Client states with a leading cohort axis, in the order given."""
    flats = [flatten_state(s) for s in states]
    if not flats:
        return {}
    keys = set(flats[0])
    for f in flats[1:]:
        if set(f) != keys:
            raise FedloomError(f"client states differ in keys: {sorted(keys)} vs {sorted(f)}")
    return unflatten_state({k: np.stack([f[k] for f in flats]) for k in sorted(keys)})


def unstack_states(state: State, k: int) -> list[State]:
    """The ``k`` client states of a stacked cohort state."""
    flat = flatten_state(state)
    for key, value in flat.items():
        if value.ndim == 0 or value.shape[0] != k:
            raise FedloomError(
                f"transform state {key!r} has shape {value.shape}; a cohort of {k} needs "
                f"a leading axis of {k}"
            )
    return [unflatten_state({key: v[i] for key, v in flat.items()}) for i in range(k)]


class ClientStates:
    """Each client's transform state between rounds (its home in simulation).

    A client seen for the first time starts from ``transform.init(dim)``. The simulator
    writes :meth:`arrays` into its checkpoints and restores them with :meth:`load_arrays`;
    a deployed client keeps its own (:func:`save_client_state`).
    """

    def __init__(self, transform: Transform, dim: int) -> None:
        self.transform = transform
        self.dim = dim
        self.states: dict[int, State] = {}
        self.pending: dict[int, State] = {}  # staged by apply(stage=True), see commit

    def apply(self, updates: np.ndarray, ctx: Context, stage: bool = False) -> np.ndarray:
        """Run the transform over the cohort's rows (``ctx.client_ids`` order) and keep
        each client's new state; with ``stage``, hold it until :meth:`commit` (a device
        keeps its new state only once the server holds its update)."""
        if len(ctx.client_ids) != updates.shape[0]:
            raise FedloomError(
                f"{len(ctx.client_ids)} client ids for {updates.shape[0]} update rows"
            )
        if not len(ctx.client_ids):
            return updates
        return self.update(
            ctx.client_ids, lambda stacked: self.transform.apply(updates, stacked, ctx), stage
        )

    def update(
        self, client_ids: Iterable[int], step: Callable[[State], tuple[Any, State]], stage: bool
    ) -> Any:
        """``step(stacked states of client_ids) -> (out, new stacked states)``: the clients'
        states stacked in the order given, their new states kept (or staged) and ``out``
        returned; how :meth:`apply` runs a transform and compression runs its encoder."""
        ids = [int(c) for c in client_ids]
        fresh = self.transform.init(self.dim)
        out, new = step(stack_states([self.states.get(c, fresh) for c in ids]))
        target = self.pending if stage else self.states
        for c, s in zip(ids, unstack_states(new, len(ids)), strict=True):
            target[c] = s
        return out

    def commit(self, accepted: Iterable[int]) -> None:
        """Keep the staged states of the ``accepted`` clients (the server holds their
        updates); the others' are dropped, as a device whose upload failed drops its."""
        for c in accepted:
            if int(c) in self.pending:
                self.states[int(c)] = self.pending[int(c)]
        self.pending = {}

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Every client's state as flat arrays named ``{prefix}{client}.{key}`` (and one
        empty array ``{prefix}{client}`` per client, so an empty state is kept too)."""
        out: dict[str, np.ndarray] = {}
        for c, s in sorted(self.states.items()):
            out[f"{prefix}{c}"] = np.zeros(0)
            out |= {f"{prefix}{c}.{k}": v for k, v in flatten_state(s).items()}
        return out

    def load_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str) -> None:
        """Restore the states written by :meth:`arrays` (others' keys are ignored)."""
        flats: dict[int, dict[str, np.ndarray]] = {}
        for name, value in arrays.items():
            if not name.startswith(prefix):
                continue
            cid, _, key = name.removeprefix(prefix).partition(".")
            try:
                client = int(cid)
            except ValueError:
                raise CheckpointError(f"transform state entry {name!r} names no client") from None
            flat = flats.setdefault(client, {})
            if key:
                flat[key] = np.array(value)
        self.states = {c: unflatten_state(f) for c, f in flats.items()}


def apply_one(
    transform: Transform, update: np.ndarray, state: State, ctx: Context
) -> tuple[np.ndarray, State]:
    """A client chain over one client's update ``[d]`` and its own (unstacked) state."""
    out, new = transform.apply(update[None], stack_states([state]), ctx)
    return out[0], unstack_states(new, 1)[0]


def save_client_state(path: Path, state: State) -> None:
    """A deployed client's transform state, written atomically (``.npz``) under its own
    folder: a crash leaves the previous state, never half of one."""
    import io

    from fedloom.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **flatten_state(state))
    atomic_write_bytes(Path(path), buf.getvalue())


def load_client_state(path: Path, transform: Transform, dim: int) -> State:
    """The state :func:`save_client_state` wrote, or ``transform.init(dim)`` if there is
    none yet. A file whose keys do not match the transform's is refused (the chain changed
    since it was written: delete the file to start afresh)."""
    fresh = transform.init(dim)
    path = Path(path)
    if not path.exists():
        return fresh
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"transform state {str(path)!r} cannot be read: {err}") from None
    if set(flat) != set(flatten_state(fresh)):
        raise CheckpointError(
            f"transform state {str(path)!r} has {sorted(flat)}, the configured transforms "
            f"{sorted(flatten_state(fresh))}; delete the file to start the state afresh"
        )
    return unflatten_state(flat)


# ----------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Callable[..., Transform]] = {}


def register(name: str) -> Callable[[Callable[..., Transform]], Callable[..., Transform]]:
    """Make a transform factory (a class or function) known to configs as ``name``."""

    def add(factory: Callable[..., Transform]) -> Callable[..., Transform]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ConfigError(f"a transform named {name!r} is registered already")
        _REGISTRY[name] = factory
        return factory

    return add


def registered() -> list[str]:
    """The names configs may use without a module path."""
    _load_builtins()
    return sorted(_REGISTRY)


def resolve(name: str) -> Callable[..., Transform]:
    """The factory a config names: a registered name, or ``"package.module:attribute"``
    (imported; the module must be importable on the server and on every client)."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise ConfigError(
            f"unknown transform {name!r}: not one of {sorted(_REGISTRY)} and not a "
            "'module:attribute' path"
        )
    module, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"transform {name!r} cannot be imported: {err}") from None
    if not callable(factory):
        raise ConfigError(f"transform {name!r} is not a class or function")
    return factory


def build(name: str, params: Mapping[str, Any] | None = None) -> Transform | TwoSided:
    """The transform ``name`` made with ``params`` (one-sided or :class:`TwoSided`); bad
    parameters raise ``ConfigError``."""
    factory = resolve(name)
    try:
        t = factory(**dict(params or {}))
    except (TypeError, ValueError, FedloomError) as err:
        raise ConfigError(f"transform {name!r} with params {dict(params or {})!r}: {err}") from None
    if isinstance(t, TwoSided):
        chain(t.client, t.server)  # checks both halves are transforms
    else:
        chain(t)
    return t


def build_chain(specs: Iterable[tuple[str, Mapping[str, Any]]]) -> Chain:
    """A one-sided chain from ``(name, params)`` pairs, as a config lists them."""
    built = [build(name, params) for name, params in specs]
    two = [type(t).__name__ for t in built if isinstance(t, TwoSided)]
    if two:
        raise ConfigError(f"two-sided transforms belong to the client chain, got {two}")
    return chain(*built)  # type: ignore[arg-type]


def build_sides(specs: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[Chain, Chain | None]:
    """The client chain of ``[transforms] client`` and the server halves of its two-sided
    transforms, in reverse order (decoding undoes the last encoding first); None when
    every transform is one-sided."""
    built = [build(name, params) for name, params in specs]
    client = chain(*(t.client if isinstance(t, TwoSided) else t for t in built))
    halves = [t.server for t in reversed(built) if isinstance(t, TwoSided)]
    return client, chain(*halves) if halves else None


def _load_builtins() -> None:
    import fedloom.transforms.clipping  # noqa: F401  (registers the built-in transforms)
