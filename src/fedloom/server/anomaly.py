"""Per-round anomaly screening of client updates, and the reputation policy built on it.

Sans-IO and vectorized over the round's ``[K, d]`` rows. Each update gets three raw
scores: its L2 norm, its cosine to a robust centre of the round (the coordinate-wise
median unless the caller supplies one) and its distance from the client's own smoothed
past updates, ``||x - h|| / (||h|| + eps)``. Each score becomes a one-sided robust
z-score over the round's rows, ``(value - median) / (1.4826 * MAD)``: only high norms,
low cosines and high history distances count. Each is first mapped to a scale on which
honest clients spread about symmetrically, as the MAD's normal calibration assumes:

- the norm as ``log(norm)``: honest norms differ by factors (clients with more data take
  more local steps), a scaling attack multiplies;
- the cosine as its angle ``arccos(cosine)``: cosines of honest updates crowd below 1
  with a long low tail, their angles are nearly symmetric;
- the history distance as ``log(distance)`` minus the client's own running mean of it:
  on non-IID data some honest clients always move further from their past than others
  (their data pull the model their own way), so the score is how much a client departs
  from its own usual, which is what a client that turns malicious changes. A client's
  first scored distances only set its baseline.

The MAD has a floor of one thousandth of the median's magnitude (of 1 for the angle and
the log scores), so identical rows neither divide by zero nor turn rounding noise into
flags. An update whose largest z-score exceeds the threshold is flagged, with the score
that contributed most as its reason.

A flagged update does not enter its client's history, so an attacker cannot drag its
own reference along; the history is then stale (the model moved on while it stayed), so
the client's next update gets no history score and, if accepted, replaces it. Otherwise
one false flag would lock an honest client into ever larger distances from a frozen past.

:class:`ReputationPolicy` turns flags into a per-client reputation with quarantine:
``rep <- decay * rep + (1 - decay) * clean`` (``clean`` is 0 in a round where the
client was flagged or its example count clamped, else 1; it starts at 1). Falling
below ``quarantine_below`` quarantines the client for ``probation_rounds`` rounds; when
they are served it is released on probation with reputation
``quarantine_below + (1 - quarantine_below) / 2`` (halfway back to full trust). On
probation any flag re-quarantines it at once, for twice the length of its previous
quarantine; ``probation_rounds`` clean screenings end the probation and forgive the
past quarantines (the next quarantine is again ``probation_rounds`` long).

References: Iglewicz & Hoaglin, "How to Detect and Handle Outliers", 1993 (modified
z-scores from the median absolute deviation); Cao et al., "FLTrust: Byzantine-robust
Federated Learning via Trust Bootstrapping", NDSS 2021 (cosine to a reference
direction); Zhang et al., "FLDetector: Defending Federated Learning Against Model
Poisoning Attacks via Detecting Malicious Clients", KDD 2022 (consistency of a client's
updates across rounds); Muñoz-González et al., "Byzantine-Robust Federated Machine
Learning through Adaptive Model Averaging", 2019 (per-client reputation and blocking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, FedloomError, RejectionKind, UpdateRejected

SCORES = ("norm", "cosine", "history")
REASONS = ("norm_outlier", "direction_outlier", "history_outlier")  # one per score
CLAMPED = "count_clamped"  # the reason of a decision caused by a clamped example count
SERVED = "quarantine_served"  # the reason of a release
ACTIONS = ("flag", "quarantine", "requarantine", "release")
MIN_ROWS = 3  # rows (with a known score) needed to score a round

_MAD_SCALE = 1.4826  # MAD -> standard deviation under a normal distribution
_FLOOR = 1e-3  # the MAD's floor, relative to the median's magnitude
_EPS = 1e-12
_BASELINE_SMOOTHING = 0.3  # weight of the newest log history distance in its baseline
_MAX_DOUBLINGS = 16  # the longest quarantine is probation_rounds * 2**16 rounds


def _json(x: float) -> float | None:
    """A float for a JSON record (None where NaN or infinite)."""
    return float(x) if math.isfinite(x) else None


def robust_z(values: np.ndarray, high_is_bad: bool, unit: float) -> np.ndarray:
    """One-sided robust z-scores of ``values`` (float64 [K], NaN = unknown): positive
    where a value is suspicious. All NaN when fewer than ``MIN_ROWS`` values are known."""
    z = np.full(len(values), math.nan)
    known = ~np.isnan(values)
    if known.sum() < MIN_ROWS:
        return z
    v = values[known]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    scale = max(_MAD_SCALE * mad, _FLOOR * max(abs(med), unit), _EPS)
    z[known] = (v - med if high_is_bad else med - v) / scale
    return z


@dataclass(frozen=True)
class Screening:
    """One round's anomaly scores; row ``i`` of every array is client ``client_ids[i]``.

    ``scores`` holds the raw scores and ``z`` their one-sided robust z-scores (keys
    ``SCORES``; the cosine's is that of its angle; NaN: unknown, e.g. no history yet, or
    too few rows to score). ``score`` is
    the largest z-score of each row, ``flagged`` whether it exceeds ``threshold``, and
    ``reasons`` the flagged rows' largest contributor (``REASONS``; None if not flagged).
    """

    round: int
    client_ids: np.ndarray  # int64 [K]
    scores: dict[str, np.ndarray]  # float64 [K] each
    z: dict[str, np.ndarray]  # float64 [K] each
    score: np.ndarray  # float64 [K]
    flagged: np.ndarray  # bool [K]
    reasons: tuple[str | None, ...]
    threshold: float

    @property
    def flagged_ids(self) -> np.ndarray:
        """The flagged clients (int64)."""
        return self.client_ids[self.flagged]

    def record(self) -> dict[str, Any]:
        """The round record's ``anomaly`` entry: counts, the round's median raw scores,
        and per flagged client its reason, combined score and three z-scores."""
        rows = np.flatnonzero(self.flagged)
        return {
            "round": self.round,
            "screened": len(self.client_ids),
            "threshold": self.threshold,
            "flagged": [
                {
                    "client": int(self.client_ids[i]),
                    "reason": self.reasons[i],
                    "score": _json(float(self.score[i])),
                    "z": {name: _json(float(self.z[name][i])) for name in SCORES},
                }
                for i in rows.tolist()
            ],
            "median": {
                name: _json(float(np.nanmedian(v))) if np.isfinite(v).any() else None
                for name, v in self.scores.items()
            },
            "max_score": (
                _json(float(np.nanmax(self.score))) if np.isfinite(self.score).any() else None
            ),
        }


class AnomalyDetector:
    """Screens each round's rows and keeps every screened client's smoothed history.

    Histories are stored only for clients that have one: a dense slot index ``[N]``
    (int64) into a growing ``[M, d]`` float32 array, so memory grows with the clients
    actually seen, not with ``num_clients * dim``. A client's first accepted update
    becomes its history; later ones blend in as ``h <- (1 - a) h + a x`` with
    ``a = history_smoothing``.
    """

    def __init__(
        self, num_clients: int, dim: int, threshold: float = 3.5, history_smoothing: float = 1.0
    ) -> None:
        if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold > 0):
            raise ConfigError(f"anomaly.threshold = {threshold!r}, expected a number > 0")
        if not (isinstance(history_smoothing, int | float) and 0.0 < history_smoothing <= 1.0):
            raise ConfigError(
                f"anomaly.history_smoothing = {history_smoothing!r}, expected 0 < a <= 1"
            )
        for field, value in (("num_clients", num_clients), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise FedloomError(f"anomaly detector {field} = {value!r}, expected an int >= 1")
        self.num_clients = int(num_clients)
        self.dim = int(dim)
        self.threshold = float(threshold)
        self.history_smoothing = float(history_smoothing)
        self._slot = np.full(self.num_clients, -1, dtype=np.int64)
        self._owner = np.empty(0, dtype=np.int64)  # client of each used slot
        self._history = np.empty((0, self.dim), dtype=np.float32)  # capacity >= used slots
        self._baseline = np.empty(0, dtype=np.float64)  # per slot: mean log distance (NaN)
        self._stale = np.empty(0, dtype=bool)  # per slot: flagged since its last update

    @property
    def known(self) -> np.ndarray:
        """The clients that have a history, in slot order (int64)."""
        return self._owner.copy()

    def history(self, client_id: int) -> np.ndarray | None:
        """A copy of the client's smoothed history (float32 [d]), None if it has none."""
        slot = int(self._slot[self._client_ids("client_id", [client_id])[0]])
        return None if slot < 0 else self._history[slot].copy()

    def _client_ids(self, field: str, value: object) -> np.ndarray:
        ids = np.asarray(value)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise FedloomError(
                f"{field} has shape {ids.shape} and dtype {ids.dtype}, expected 1-D ints"
            )
        ids = ids.astype(np.int64)
        if (bad := (ids < 0) | (ids >= self.num_clients)).any():
            raise FedloomError(
                f"{field}: unknown client {int(ids[bad][0])} "
                f"(registered ids are 0..{self.num_clients - 1})"
            )
        return ids

    def screen(
        self,
        round: int,
        rows: np.ndarray,
        client_ids: np.ndarray,
        centre: np.ndarray | None = None,
    ) -> Screening:
        """Score round ``round``'s updates ``rows`` ([K, d], finite: screen validated
        updates) of ``client_ids`` against ``centre`` (default: the coordinate-wise median
        of the rows), flag outliers and learn the unflagged rows into their clients'
        histories. Fewer than ``MIN_ROWS`` rows: nothing is scored or flagged."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != self.dim or (x.size and x.dtype.kind != "f"):
            raise FedloomError(
                f"rows have shape {x.shape} and dtype {x.dtype}, "
                f"expected float rows of shape (K, {self.dim})"
            )
        x = x.astype(np.float32, copy=False)
        k = len(x)
        ids = self._client_ids("client_ids", client_ids)
        if len(ids) != k:
            raise FedloomError(f"client_ids has {len(ids)} entries, expected one per row ({k})")
        if len(np.unique(ids)) != k:
            uniq, counts = np.unique(ids, return_counts=True)
            raise FedloomError(f"client_ids lists client {int(uniq[counts > 1][0])} twice")
        if (bad := ~np.isfinite(x).all(axis=1)).any():
            i = int(np.flatnonzero(bad)[0])
            raise FedloomError(
                f"row {i} (client {int(ids[i])}) is not finite; screen validated updates"
            )
        if centre is None:
            c = np.median(x, axis=0) if k else np.zeros(self.dim, dtype=np.float32)
        else:
            c = np.asarray(centre)
            if c.shape != (self.dim,) or not np.isfinite(c).all():
                raise FedloomError(
                    f"centre has shape {c.shape}, expected a finite vector of shape ({self.dim},)"
                )
        c = c.astype(np.float32, copy=False)

        norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        c_norm = float(np.sqrt(np.dot(c.astype(np.float64), c.astype(np.float64))))
        denom = norm * c_norm
        dots = (x @ c).astype(np.float64)
        cosine = np.divide(dots, denom, out=np.zeros(k), where=denom > 0)
        slots = self._slot[ids]
        known = slots >= 0
        has = known.copy()
        has[known] = ~self._stale[slots[known]]  # a stale history scores nothing
        history = np.full(k, math.nan)
        if has.any():
            h = self._history[slots[has]]
            h_norm = np.sqrt(np.einsum("ij,ij->i", h, h, dtype=np.float64))
            diff = x[has] - h
            dist = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
            history[has] = dist / (h_norm + _EPS)
        scores = {"norm": norm, "cosine": cosine, "history": history}
        log_history = np.log(np.maximum(history, _EPS))  # NaN stays NaN
        baseline = np.full(k, math.nan)
        baseline[has] = self._baseline[slots[has]]

        z = {
            "norm": robust_z(np.log(np.maximum(norm, _EPS)), high_is_bad=True, unit=1.0),
            "cosine": robust_z(np.arccos(np.clip(cosine, -1.0, 1.0)), high_is_bad=True, unit=1.0),
            "history": robust_z(log_history - baseline, high_is_bad=True, unit=1.0),
        }
        stacked = np.stack([z[name] for name in SCORES])  # [3, K]
        score = np.fmax.reduce(stacked, axis=0) if k else np.empty(0)
        flagged = score > self.threshold  # NaN (unscored) compares False
        top = np.argmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0)
        reasons = tuple(
            REASONS[t] if f else None for t, f in zip(top.tolist(), flagged.tolist(), strict=True)
        )
        self._stale[slots[known & flagged]] = True
        self._learn(ids[~flagged], x[~flagged], log_history[~flagged])
        return Screening(
            round=int(round),
            client_ids=ids,
            scores=scores,
            z=z,
            score=score,
            flagged=flagged,
            reasons=reasons,
            threshold=self.threshold,
        )

    def _learn(self, ids: np.ndarray, x: np.ndarray, log_distance: np.ndarray) -> None:
        """Blend accepted rows into their clients' histories (new clients: the row itself)
        and their log history distances into their baselines (the first one sets it)."""
        slots = self._slot[ids]
        old = slots >= 0
        a = np.float32(self.history_smoothing)
        s = slots[old]
        keep = np.where(self._stale[s], np.float32(0), np.float32(1) - a)[:, None]
        self._history[s] = keep * self._history[s] + (np.float32(1) - keep) * x[old]
        self._stale[s] = False
        prev, seen = self._baseline[s], log_distance[old]
        blended = (1.0 - _BASELINE_SMOOTHING) * prev + _BASELINE_SMOOTHING * seen
        # the first distance sets the baseline; an unscored one (stale history) keeps it
        self._baseline[s] = np.where(np.isnan(prev), seen, np.where(np.isnan(seen), prev, blended))
        new_ids = ids[~old]
        if not len(new_ids):
            return
        used = len(self._owner)
        need = used + len(new_ids)
        if need > len(self._history):
            grown = np.empty((max(need, 2 * len(self._history)), self.dim), dtype=np.float32)
            grown[:used] = self._history[:used]
            self._history = grown
        self._history[used:need] = x[~old]
        self._baseline = np.concatenate([self._baseline, np.full(len(new_ids), math.nan)])
        self._stale = np.concatenate([self._stale, np.zeros(len(new_ids), dtype=bool)])
        self._slot[new_ids] = np.arange(used, need)
        self._owner = np.concatenate([self._owner, new_ids])

    def state_dict(self) -> dict[str, np.ndarray]:
        """The histories as arrays for a checkpoint: ``clients`` (int64 [M], slot order),
        ``history`` (float32 [M, d]), ``baseline`` (float64 [M], each client's mean log
        history distance, NaN before its first) and ``stale`` (bool [M], flagged since
        its last accepted update); ``load_state_dict`` restores them exactly."""
        used = len(self._owner)
        return {
            "clients": self._owner.copy(),
            "history": self._history[:used].copy(),
            "baseline": self._baseline.copy(),
            "stale": self._stale.copy(),
        }

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the histories by a ``state_dict()``; refused (nothing changes) unless
        it fits this detector's clients and dimension."""
        if set(arrays) != {"clients", "history", "baseline", "stale"}:
            raise FedloomError(
                f"anomaly detector state has arrays {sorted(arrays)}, expected baseline, "
                "clients, history, stale"
            )
        owner = np.asarray(arrays["clients"])
        hist = np.asarray(arrays["history"])
        baseline = np.asarray(arrays["baseline"])
        stale = np.asarray(arrays["stale"])
        for name, arr, dtype in (("baseline", baseline, np.float64), ("stale", stale, np.bool_)):
            if arr.dtype != dtype or arr.shape != owner.shape:
                raise FedloomError(
                    f"anomaly state {name} is {arr.dtype}{arr.shape}, "
                    f"expected {np.dtype(dtype)}{owner.shape}"
                )
        if owner.ndim != 1 or owner.dtype != np.int64:
            raise FedloomError(
                f"anomaly state clients is {owner.dtype}{owner.shape}, expected int64"
            )
        if hist.dtype != np.float32 or hist.shape != (len(owner), self.dim):
            raise FedloomError(
                f"anomaly state history is {hist.dtype}{hist.shape}, "
                f"expected float32{(len(owner), self.dim)}"
            )
        owner = self._client_ids("anomaly state clients", owner)
        if len(np.unique(owner)) != len(owner):
            raise FedloomError("anomaly state clients lists a client twice")
        slot = np.full(self.num_clients, -1, dtype=np.int64)
        slot[owner] = np.arange(len(owner))
        self._slot, self._owner, self._history = slot, owner.copy(), hist.copy()
        self._baseline, self._stale = baseline.copy(), stale.copy()


@dataclass(frozen=True)
class ReputationState:
    """The reputation columns of some clients (row ``i`` of each array is one client)."""

    reputation: np.ndarray  # float64, 1 = fully trusted
    quarantined: np.ndarray  # bool: held out of selection until released
    until: np.ndarray  # int64: last round of the (latest) quarantine, 0 = never
    probation: np.ndarray  # int64: clean screenings left on probation, 0 = not on probation
    strikes: np.ndarray  # int64: quarantines since the last completed probation


@dataclass(frozen=True)
class Decision:
    """What the reputation policy did to one client in one round.

    ``action`` is one of ``ACTIONS``; ``reason`` a screening reason (``REASONS``),
    ``CLAMPED`` or ``SERVED``; ``reputation`` the client's reputation afterwards;
    ``until`` the last round of its quarantine (quarantine/requarantine; else 0);
    ``scores`` its z-scores (keys ``SCORES``, None where unknown), None if it was not
    screened.
    """

    round: int
    client: int
    action: str
    reason: str
    reputation: float
    until: int = 0
    scores: dict[str, float | None] | None = None

    def record(self) -> dict[str, Any]:
        """A JSON-able dict for the round record."""
        return {
            "round": self.round,
            "client": self.client,
            "action": self.action,
            "reason": self.reason,
            "reputation": _json(self.reputation),
            "until": self.until,
            "z": self.scores,
        }


@dataclass(frozen=True)
class ReputationPolicy:
    """The reputation math (see the module docstring), as pure functions of the state."""

    decay: float = 0.7
    quarantine_below: float = 0.4
    probation_rounds: int = 5

    def __post_init__(self) -> None:
        if not (isinstance(self.decay, int | float) and 0.0 < self.decay < 1.0):
            raise ConfigError(f"anomaly.reputation_decay = {self.decay!r}, expected 0 < d < 1")
        q = self.quarantine_below
        if not (isinstance(q, int | float) and 0.0 <= q < 1.0):
            raise ConfigError(f"anomaly.quarantine_below = {q!r}, expected 0 <= q < 1")
        p = self.probation_rounds
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ConfigError(f"anomaly.probation_rounds = {p!r}, expected an int >= 1")

    @property
    def release_reputation(self) -> float:
        """The reputation a client is released with: halfway from the threshold to 1."""
        return self.quarantine_below + (1.0 - self.quarantine_below) / 2.0

    def quarantine_length(self, strikes: np.ndarray) -> np.ndarray:
        """Rounds a quarantine lasts when it is the client's ``strikes``-th (>= 1) since
        its last completed probation: ``probation_rounds * 2**(strikes - 1)``."""
        doublings = np.clip(np.asarray(strikes, dtype=np.int64) - 1, 0, _MAX_DOUBLINGS)
        return self.probation_rounds * (np.int64(1) << doublings)

    def close(
        self, round: int, state: ReputationState, bad: np.ndarray
    ) -> tuple[ReputationState, np.ndarray]:
        """One round's screening outcome for the clients of ``state``: ``bad`` (bool) where
        flagged or clamped. Returns the new state and each client's action (``ACTIONS``
        entry, or '' for none). A client still quarantined (an update that was in flight)
        is only scored (until its release, :meth:`release`): a flag neither extends nor
        restarts its quarantine."""
        bad = np.asarray(bad, dtype=bool)
        rep = state.reputation + (1.0 - self.decay) * (np.where(bad, 0.0, 1.0) - state.reputation)
        held = state.quarantined
        on_probation = (state.probation > 0) & ~held
        requarantine = bad & on_probation
        quarantine = bad & ~on_probation & ~held & (rep < self.quarantine_below)
        caught = quarantine | requarantine
        strikes = state.strikes + caught
        passed = ~bad & on_probation
        probation = np.where(passed, state.probation - 1, state.probation)
        probation = np.where(requarantine, 0, probation)
        strikes = np.where(passed & (probation == 0), 0, strikes)
        until = np.where(caught, round + self.quarantine_length(strikes), state.until)
        actions = np.full(len(bad), "", dtype=object)
        actions[bad] = "flag"
        actions[quarantine] = "quarantine"
        actions[requarantine] = "requarantine"
        new = ReputationState(
            reputation=rep,
            quarantined=state.quarantined | caught,
            until=until.astype(np.int64),
            probation=probation.astype(np.int64),
            strikes=strikes.astype(np.int64),
        )
        return new, actions

    def release(self, round: int, state: ReputationState) -> tuple[ReputationState, np.ndarray]:
        """Release the clients whose quarantine ended before ``round``: on probation for
        ``probation_rounds`` clean screenings, with ``release_reputation``. Returns the new
        state and the mask of released clients."""
        due = state.quarantined & (state.until < round)
        new = ReputationState(
            reputation=np.where(due, self.release_reputation, state.reputation),
            quarantined=state.quarantined & ~due,
            until=state.until.copy(),
            probation=np.where(due, self.probation_rounds, state.probation).astype(np.int64),
            strikes=state.strikes.copy(),
        )
        return new, due


_GUARD = "anomaly."  # checkpoint arrays holding the detector's histories


@dataclass
class AnomalyGuard:
    """Screening in the server chain (between the server transforms and the reducer)
    and the reputation policy the engine applies to its results; with
    ``exclude_flagged`` a flagged update is refused (``RejectionKind.ANOMALY``) and left
    out of the aggregate."""

    detector: AnomalyDetector
    policy: ReputationPolicy
    exclude_flagged: bool = True

    def screen(
        self, round: int, rows: np.ndarray, client_ids: np.ndarray
    ) -> tuple[Screening, dict[int, UpdateRejected]]:
        """The round's screening and the refusals of the updates it leaves out."""
        screening = self.detector.screen(round, rows, client_ids)
        refused: dict[int, UpdateRejected] = {}
        if self.exclude_flagged:
            for i in np.flatnonzero(screening.flagged).tolist():
                cid = int(client_ids[i])
                why = (
                    f"anomalous update: {screening.reasons[i]} (robust z-score "
                    f"{screening.score[i]:.1f} > {screening.threshold:g})"
                )
                refused[cid] = UpdateRejected(cid, why, RejectionKind.ANOMALY)
        return screening, refused

    def arrays(self) -> dict[str, np.ndarray]:
        return {_GUARD + k: v for k, v in self.detector.state_dict().items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.detector.load_state_dict(
            {k.removeprefix(_GUARD): v for k, v in arrays.items() if k.startswith(_GUARD)}
        )
