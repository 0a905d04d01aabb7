"""SecAgg+ over one training round's updates: client-side encoding, the protocol, decoding.

Under secure aggregation the server learns only the sum of the cohort's inputs, so all it
needs from a round must be a sum. Each client turns its update into one vector over
Z_(2^bits), ``[delta | w_i | w_i * loss_i / L | b_i]``:

- FedAvg: the delta is clipped per coordinate to ``[-clip, clip]`` and weighted by
  ``w_i = min(n_i, W) / W``, ``n_i`` its example count and ``W`` a public cap (the largest
  registered client), so ``w_i <= 1`` and the server's ``sum w_i delta_i / sum w_i`` is
  FedAvg's example-weighted mean.
- Central DP: the client clips its own update to the L2 clip norm ``C`` and sends it with
  equal weight (then no coordinate exceeds ``C``, the default range), with the bit
  ``b_i = 1[||delta_i|| <= C]`` that adaptive clipping counts; the server adds the noise
  to the unmasked sum (:class:`~fedloom.privacy.central.CentralDP`), as without SecAgg.
  The encoded row, as decoded, stays within C too (:func:`within_l2`): rounding on a
  coarse ring could otherwise lengthen it past the sensitivity the noise is sized for.
- Distributed DP: the delta is the client's
  :class:`~fedloom.secagg.distributed_dp.DistributedDiscreteGaussian` encoding, with its
  share of the noise; the server adds none.

- Random-k with a shared seed (``keep_fraction``): every client of a round sends only the
  same ``k`` coordinates, drawn from a public seed and the attempt, so the masked input
  shrinks to ``k`` slots; the server scatters the decoded sums and scales them by
  ``d / k`` (unbiased). A linear codec: the sum of the kept values is the kept values of
  the sum (Stich et al., NeurIPS 2018; the shared-seed variant of Konečný et al., 2016).

The loss slot (the training loss clipped to ``[0, L]``, ``L = LOSS_RANGE``) gives the
round's mean training loss ``sum w_i loss_i / sum w_i``; no per-client loss reaches the
server. Fixed-point slots are scaled to ``[-1, 1]`` by their public range and encoded
with ``FixedPoint(1, n, bits)`` for a cohort of ``n``, so a decoded slot of a sum over
``count`` clients is off by at most ``count * range * error_bound``
(:meth:`SecureAggregator.error_bound`).

The protocol runs in-process through the sans-IO state machines
(:func:`~fedloom.secagg.simulate.simulate_encoded`): a client that drops at a stage sends
nothing from that stage on, one whose update or loss is not finite does not send its
masked input, and a round without enough clients or share holders aborts.

References: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017; Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020; McMahan et al., "Communication-Efficient Learning
of Deep Networks from Decentralized Data", AISTATS 2017 (FedAvg weights); Kairouz, Liu &
Steinke, ICML 2021 (distributed DP under SecAgg).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedloom.errors import RejectionKind, UpdateRejected
from fedloom.privacy.mechanisms import GeneratorNoise, NoiseSource, SecureNoise, clip_rows
from fedloom.records import Update
from fedloom.secagg.crypto import SecAggError
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian, rotation_signs
from fedloom.secagg.encoding import FixedPoint, signed, wrap
from fedloom.secagg.protocol import STAGES, SecAggServer, default_neighbours, share_holders
from fedloom.secagg.simulate import SecAggReport, simulate_encoded

LOSS_RANGE = 100.0
"""Training losses are clipped to [0, LOSS_RANGE] in the secure sum."""

AUX_SLOTS = 3  # weight, weighted loss, unclipped bit
_MASKED_INPUT = STAGES.index("masked_input")


@dataclass(frozen=True)
class SecureSum:
    """All the server learns from one round under secure aggregation: sums.

    ``included``: ids of the clients whose input is in the sum. ``delta``: ``sum w_i
    clip(delta_i)`` (FedAvg) or ``sum clip_C(delta_i)`` (DP; with the noise shares under
    distributed DP), float64 ``[d]``. ``weight``: ``sum w_i``. ``loss``: ``sum w_i
    loss_i``. ``unclipped``: how many updates were within the DP clip norm (0 without DP).
    """

    included: np.ndarray
    delta: np.ndarray
    weight: float
    loss: float
    unclipped: float


@dataclass(frozen=True)
class SecureRound:
    """One round of :meth:`SecureAggregator.aggregate`: the sum (None if the protocol
    aborted, with the reason in ``abort``), its cost, the graph, how many clients dropped
    at each stage, and the clients that refused to encode (id -> reason)."""

    total: SecureSum | None
    report: SecAggReport | None
    neighbours: int
    threshold: int
    dropped: dict[str, int] = field(default_factory=dict)
    rejected: dict[int, UpdateRejected] = field(default_factory=dict)
    abort: str | None = None


class SecureAggregator:
    """The cohort's side and the server's side of SecAgg+ for model updates, in one process.

    ``dim``: update length. ``max_examples`` (W): the public cap of the FedAvg weights.
    ``neighbours``: SecAgg+ degree, None for :func:`default_neighbours`, ``"all"`` for the
    complete graph (the original SecAgg). ``threshold``: the share of each client's share
    holders that must survive, ``t = min(h, floor(threshold * h) + 1)`` (a run's config
    refuses ``threshold < 0.5``: without a consistency round, two disjoint groups of t
    holders would let a dishonest server recover both of one client's secrets). ``clip``:
    per-coordinate range of the encoded delta (None: the DP clip norm, else 1).
    ``bits``, ``rounding``: the ring and its rounding (see ``FixedPoint``). ``seed``: the
    neighbour graphs, rotations and simulated randomness; ``secure_noise`` draws the
    distributed noise from the OS CSPRNG instead. ``signed``: clients sign their
    advertised keys and verify their neighbours' (the active-adversary setting).
    ``min_clients``: the protocol aborts rather than unmask a sum of fewer masked inputs
    (``secagg.min_clients``; a sum of one input is that input).

    References: see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        max_examples: int,
        neighbours: int | Literal["all"] | None = None,
        threshold: float = 0.5,
        clip: float | None = None,
        bits: int = 32,
        rounding: Literal["nearest", "stochastic"] = "nearest",
        seed: int = 0,
        secure_noise: bool = False,
        signed: bool = False,
        min_clients: int = 1,
        keep_fraction: float | None = None,
        keep_seed: int = 0,
    ) -> None:
        if keep_fraction is not None and not 0 < keep_fraction <= 1:
            raise SecAggError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise SecAggError(f"dim must be an int >= 1, got {dim!r}")
        if isinstance(max_examples, bool) or not isinstance(max_examples, int | np.integer):
            raise SecAggError(f"max_examples must be an int >= 1, got {max_examples!r}")
        if max_examples < 1:
            raise SecAggError(f"max_examples must be an int >= 1, got {max_examples!r}")
        if not 0 < threshold <= 1:
            raise SecAggError(f"threshold must be in (0, 1], got {threshold!r}")
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise SecAggError(f"min_clients must be an int >= 1, got {min_clients!r}")
        FixedPoint(1.0, 1, bits, rounding)  # validates bits and rounding now
        self.dim = dim
        self.max_examples = int(max_examples)
        self.neighbours = neighbours
        self.threshold = threshold
        self.clip = clip
        self.bits = bits
        self.rounding = rounding
        self.seed = seed
        self.secure_noise = secure_noise
        self.signed = signed
        self.min_clients = min_clients
        self.keep_fraction = keep_fraction
        self.keep_seed = int(keep_seed)
        # k as compression.sparse.RandomK counts it (the fraction rounded to float32)
        k = None if keep_fraction is None else math.ceil(float(np.float32(keep_fraction)) * dim)
        self.kept_dim = dim if k is None else max(1, k)

    def kept(self, attempt: int) -> np.ndarray | None:
        """The coordinates every client of round ``attempt`` sends under random-k with a
        shared seed (None: all): public, data-independent, the same for the whole cohort,
        so the masked sum of the kept values is the kept values of the sum (a linear
        codec). Drawn anew every attempt."""
        if self.keep_fraction is None:
            return None
        rng = np.random.default_rng([self.keep_seed, 17, int(attempt)])
        return np.sort(rng.choice(self.dim, self.kept_dim, replace=False))

    def graph(self, num_clients: int) -> tuple[int | None, int]:
        """The protocol's ``neighbours`` argument (None: complete) and threshold for a
        cohort of ``num_clients``."""
        k = self.neighbours
        degree = None if k == "all" else default_neighbours(num_clients) if k is None else k
        holders = share_holders(num_clients, degree)
        return degree, min(holders, math.floor(self.threshold * holders) + 1)

    def slots(self, distributed: DistributedDiscreteGaussian | None = None) -> int:
        """Length of each client's encoded vector."""
        return (self.kept_dim if distributed is None else distributed.padded) + AUX_SLOTS

    def upload_bytes(self, distributed: DistributedDiscreteGaussian | None = None) -> int:
        """Bytes of one masked input (the encoded vector), against ``4 * dim`` for float32."""
        return self.slots(distributed) * self.bits // 8

    def fixed_point(self, num_clients: int) -> FixedPoint:
        """The fixed-point code of a cohort of ``num_clients`` (every slot in ``[-1, 1]``)."""
        return FixedPoint(1.0, num_clients, self.bits, self.rounding)

    def value_range(self, dp_clip: float | None) -> float:
        """Per-coordinate range of the encoded delta (fixed-point modes)."""
        if self.clip is not None:
            return self.clip
        return 1.0 if dp_clip is None else dp_clip

    def error_bound(self, num_clients: int, count: int, dp_clip: float | None = None) -> float:
        """Worst-case error of one decoded delta coordinate of a sum of ``count`` inputs,
        in a cohort of ``num_clients`` (fixed-point modes). Under DP (``dp_clip``) a
        coordinate may be rounded the other way to keep the row within the clip norm
        (:func:`within_l2`), so each is off by less than one code step."""
        fixed = self.fixed_point(num_clients)
        step = fixed.error_bound if dp_clip is None else 1.0 / fixed.scale
        return count * self.value_range(dp_clip) * step

    def aggregate(
        self,
        cohort: Sequence[int],
        updates: Sequence[Update],
        dropouts: Mapping[int, str],
        attempt: int,
        dp_clip: float | None = None,
        distributed: DistributedDiscreteGaussian | None = None,
    ) -> SecureRound:
        """Securely sum the ``updates`` of a ``cohort`` (every client that took part in the
        key agreement, in protocol order).

        ``dropouts[client]`` is the stage at which a client stops answering; a cohort
        client without an update that is not listed drops at ``masked_input``.
        ``dp_clip``: central DP's clip norm (each client clips its own update).
        ``distributed``: distributed DP's encoding (needs ``dp_clip`` is None). ``attempt``
        keys the round's public seeds and simulated randomness.
        """
        ids = [int(c) for c in cohort]
        position = {c: i for i, c in enumerate(ids)}
        if len(position) != len(ids) or not ids:
            raise SecAggError(f"cohort must list distinct clients, got {ids}")
        gone = dict(dropouts)
        unknown = [c for c in [*gone, *(u.client_id for u in updates)] if c not in position]
        if unknown:
            raise SecAggError(f"client(s) {sorted(set(unknown))} are not in the cohort")
        bad_stage = {c: s for c, s in gone.items() if s not in STAGES}
        if bad_stage:
            raise SecAggError(f"unknown dropout stage(s) {bad_stage}; stages are {STAGES}")
        if distributed is not None and dp_clip is not None:
            raise SecAggError("distributed DP clips with its own clip norm: pass dp_clip=None")
        rejected: dict[int, UpdateRejected] = {}
        sending = []
        for u in updates:
            if not (np.all(np.isfinite(u.delta)) and math.isfinite(u.metrics.train_loss)):
                rejected[u.client_id] = UpdateRejected(
                    u.client_id, "non-finite update or loss: not sent", RejectionKind.NONFINITE
                )
            else:
                sending.append(u)
        n = len(ids)
        fixed = self.fixed_point(n)
        degree, threshold = self.graph(n)
        encoded = np.zeros((n, self.slots(distributed)), dtype=fixed.dtype)
        if sending:
            rows = [position[u.client_id] for u in sending]
            encoded[rows] = self.encode(sending, n, attempt, dp_clip, distributed)
        delivered = {u.client_id for u in sending}
        stages: dict[str, list[int]] = {stage: [] for stage in STAGES}
        for c in ids:  # without an input to send, a client is gone by masked_input
            stage = gone.get(c)
            if c not in delivered and (stage is None or STAGES.index(stage) > _MASKED_INPUT):
                stage = "masked_input"
            if stage is not None:
                stages[stage].append(position[c])
        graph = (_degree(degree, n), threshold, {k: len(v) for k, v in stages.items() if v})
        try:
            total, report = simulate_encoded(
                encoded,
                fixed,
                threshold,
                degree,
                stages,
                self._graph_seed(attempt),
                signed=self.signed,
                min_inputs=self.min_clients,
            )
        except SecAggError as err:
            return SecureRound(None, None, *graph, rejected, str(err))
        included = np.array([ids[i] for i in report.included], dtype=np.int64)
        secure = self.decode(total, included, n, attempt, dp_clip, distributed)
        return SecureRound(secure, report, *graph, rejected)

    def protocol(
        self, num_clients: int, attempt: int, distributed: DistributedDiscreteGaussian | None
    ) -> SecAggServer:
        """The server's state machine for a round of ``num_clients`` over the network
        (the same graph and threshold as :meth:`aggregate` simulates)."""
        degree, threshold = self.graph(num_clients)
        return SecAggServer(
            num_clients,
            threshold,
            degree,
            self.slots(distributed),
            self.fixed_point(num_clients),
            self._graph_seed(attempt),
            min_inputs=self.min_clients,
        )

    def _graph_seed(self, attempt: int) -> int:
        return int(np.random.SeedSequence([self.seed, 14, attempt]).generate_state(1)[0])

    def decode(
        self,
        total: np.ndarray,
        included: np.ndarray,
        num_clients: int,
        attempt: int,
        dp_clip: float | None = None,
        distributed: DistributedDiscreteGaussian | None = None,
    ) -> SecureSum:
        """The server's side: the unmasked sum (mod 2^bits) of the ``included`` clients'
        encoded vectors, in a cohort of ``num_clients``, back to float sums."""
        fixed = self.fixed_point(num_clients)
        count = len(included)
        head = self.slots(distributed) - AUX_SLOTS
        if distributed is None:
            delta = fixed.decode_sum(total[:head], count) * self.value_range(dp_clip)
            kept = self.kept(attempt)
            if kept is not None:  # random-k: the kept sums, scaled to stay unbiased
                full = np.zeros(self.dim)
                full[kept] = delta * (self.dim / self.kept_dim)
                delta = full
        else:
            delta = distributed.decode(total[:head], self._signs(distributed, attempt))
        weight, loss, unclipped = fixed.decode_sum(total[head:], count) * [1.0, LOSS_RANGE, 1.0]
        # the count of bits is an integer: its error (count * error_bound) is far below 1/2
        ids = np.asarray(included, dtype=np.int64)
        return SecureSum(ids, delta, float(weight), float(loss), float(round(unclipped)))

    def encode(
        self,
        updates: Sequence[Update],
        num_clients: int,
        attempt: int,
        dp_clip: float | None = None,
        distributed: DistributedDiscreteGaussian | None = None,
    ) -> np.ndarray:
        """The clients' side: each update's vector over Z_(2^bits) (rows in ``updates``
        order), as each client would encode it, for a cohort of ``num_clients``. Updates
        and losses must be finite."""
        fixed = self.fixed_point(num_clients)
        rows = np.stack([u.delta for u in updates]).astype(np.float32, copy=False)
        kept = self.kept(attempt)
        if kept is not None:
            if distributed is not None or dp_clip is not None:
                raise SecAggError("random-k under secure aggregation is not for DP runs")
            rows = rows[:, kept]
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        w = np.minimum(counts, self.max_examples) / self.max_examples
        losses = np.array([u.metrics.train_loss for u in updates], dtype=np.float64)
        unclipped = np.zeros(len(updates))
        if distributed is not None:
            head = distributed.encode(
                rows, self._signs(distributed, attempt), [self._noise(u, attempt) for u in updates]
            )
        else:
            r = self.value_range(dp_clip)
            if dp_clip is None:
                values = w[:, None] * np.clip(rows, -r, r)
            else:
                values, norms = clip_rows(rows, dp_clip)
                unclipped = (norms <= dp_clip).astype(np.float64)
            head = self._fixed(fixed, values / r, updates, attempt, salt=0)
            if dp_clip is not None:  # rounding must not push a row past C (a coarse ring)
                head = within_l2(head, values / r, fixed, dp_clip / r)
        aux = np.stack([w, w * np.clip(losses, 0.0, LOSS_RANGE) / LOSS_RANGE, unclipped], axis=1)
        return np.concatenate([head, self._fixed(fixed, aux, updates, attempt, salt=1)], axis=1)

    def _fixed(
        self,
        fixed: FixedPoint,
        values: np.ndarray,
        updates: Sequence[Update],
        attempt: int,
        salt: int,
    ) -> np.ndarray:
        """Fixed-point rows; stochastic rounding draws from each client's own generator
        (seeded for reproducible simulation, from OS entropy with ``secure_noise``)."""
        if fixed.rounding == "nearest":
            return fixed.encode(values)
        rows = []
        for row, u in zip(values, updates, strict=True):
            seed = None if self.secure_noise else [self.seed, 16, attempt, u.client_id, salt]
            rows.append(fixed.encode(row, np.random.default_rng(seed)))
        return np.stack(rows)

    def _signs(self, distributed: DistributedDiscreteGaussian, attempt: int) -> np.ndarray:
        return rotation_signs(distributed.padded, [self.seed, 15, attempt])

    def _noise(self, update: Update, attempt: int) -> NoiseSource:
        if self.secure_noise:
            return SecureNoise()
        return GeneratorNoise(np.random.default_rng([self.seed, 17, attempt, update.client_id]))


_NORM_MARGIN = 1e-9  # relative: covers float64 sums of squares and the decoding's rounding


def within_l2(
    encoded: np.ndarray, values: np.ndarray, fixed: FixedPoint, bound: float
) -> np.ndarray:
    """Encoded rows (``fixed``'s codes of ``values`` ``[K, d]``) whose decoded L2 norm is
    at most ``bound`` (in the units of ``values``), the sensitivity central DP's noise is
    calibrated to.

    Rounding a row clipped to norm C can lengthen it: each coordinate moves by up to half
    a step (nearest) or one step (stochastic), so on a coarse ring (16 bits, large
    cohorts, long vectors) the encoded row reached 1.1-1.6 C. Here a row over the bound
    moves the fewest coordinates one step toward zero, largest first: first those
    rounded away from zero (they stay within one step of their value, on its other
    side), then, only if the input itself exceeded the bound by float rounding, any.
    Rows within the bound are unchanged, so a row well inside the clip keeps its
    unbiased (stochastic) or nearest rounding.
    """
    q = signed(encoded, fixed.bits)
    x = np.clip(np.asarray(values, dtype=np.float64), -fixed.clip, fixed.clip) * fixed.scale
    limit = (bound * fixed.scale) ** 2 * (1.0 - _NORM_MARGIN)
    sq = np.einsum("ij,ij->i", q.astype(np.float64), q.astype(np.float64))
    for i in np.flatnonzero(sq > limit):
        q[i] = _shorten(q[i], x[i], limit)
    return wrap(q, fixed.bits)


def _shorten(q: np.ndarray, x: np.ndarray, limit: float) -> np.ndarray:
    """``q`` (int64 codes of ``x``) with ``sum(q**2) <= limit`` (see :func:`within_l2`)."""
    q = q.copy()
    away_only = True
    while True:
        qf = q.astype(np.float64)
        excess = float(qf @ qf) - limit
        if excess <= 0:
            return q
        mag = np.abs(q)
        movable = np.flatnonzero(mag > np.abs(x) if away_only else mag > 0)
        away_only = False
        if movable.size == 0:
            continue
        gain = 2.0 * mag[movable] - 1.0  # what one step toward zero takes off sum(q**2)
        order = np.argsort(-gain, kind="stable")
        taken = int(np.searchsorted(np.cumsum(gain[order]), excess)) + 1
        chosen = movable[order[:taken]]
        q[chosen] -= np.sign(q[chosen])


def _degree(degree: int | None, num_clients: int) -> int:
    return num_clients - 1 if degree is None else min(degree, num_clients - 1)
