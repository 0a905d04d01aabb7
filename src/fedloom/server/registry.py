"""The client registry: everything the server has learned about every registered client.

SQLite (``clients.sqlite``) is the storage of record: a static ``clients`` table, an
append-only log (``participation``, ``evaluations``, ``checkins``) and ``snapshots`` of
the working state. The working state itself lives in numpy arrays indexed by client id,
so one round's bookkeeping is a handful of vectorized updates plus one ``executemany``
transaction, and 100,000 clients cost a few MB. Selectors read it through ``stats()``.

Reputation (``record_screening``, ``admit``): the anomaly screening of each round
(``server/anomaly.py``) moves every screened client's reputation; the policy's
decisions (flag, quarantine, release, requarantine) are logged in ``decisions`` and
every change of a reputation in ``reputation``, for reports.

Restoring the snapshot of round ``r`` and replaying the same calls reproduces the same
state exactly: log rows written after round ``r`` are deleted on restore, and check-ins
carry the round during which they arrived.

References: Bonawitz et al., "Towards Federated Learning at Scale: System Design",
MLSys 2019 (diurnal device availability, over-selection against dropouts);
Raj & Kalyani, "Taming Non-stationary Bandits: A Bayesian Approach", 2017 (discounted
Beta posteriors); Lai et al., "Oort: Efficient Federated Learning via Guided Participant
Selection", OSDI 2021 (per-client loss, squared loss and duration as selection signals);
Muñoz-González et al., "Byzantine-Robust Federated Machine Learning through Adaptive
Model Averaging", 2019 (per-client reputation and blocking).
"""

from __future__ import annotations

import io
import math
import sqlite3
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import numpy as np

from fedloom.errors import (
    CheckpointError,
    ConfigError,
    FedloomError,
    RejectionKind,
    UpdateRejected,
)
from fedloom.server.anomaly import (
    CLAMPED,
    SCORES,
    SERVED,
    Decision,
    ReputationPolicy,
    ReputationState,
    Screening,
)
from fedloom.server.stats import HOURS, ClientStats

FLAGS: dict[str, int] = {
    "rejected_update": 1,
    "nonfinite_update": 2,
    "stale_update": 4,
    "oversized_update": 8,
    "anomalous_update": 16,
}

# The flag a rejection's kind sets besides rejected_update (other kinds set only that).
_KIND_FLAGS: dict[RejectionKind, int] = {
    RejectionKind.NONFINITE: FLAGS["nonfinite_update"],
    RejectionKind.STALE_VERSION: FLAGS["stale_update"],
    RejectionKind.STALE_TASK: FLAGS["stale_update"],
    RejectionKind.WRONG_SHAPE: FLAGS["oversized_update"],
    RejectionKind.OVERSIZED: FLAGS["oversized_update"],
    RejectionKind.ANOMALY: FLAGS["anomalous_update"],
}

# Working state: name -> (dtype, initial value, one column per hour of day).
_STATE: dict[str, tuple[type, float, bool]] = {
    "selected": (np.int64, 0, False),
    "completed": (np.int64, 0, False),
    "a": (np.float64, 0.0, False),  # discounted completions
    "b": (np.float64, 0.0, False),  # discounted non-completions
    "last_round": (np.int64, 0, False),
    "loss": (np.float64, math.nan, False),
    "loss_sq": (np.float64, math.nan, False),
    "duration": (np.float64, math.nan, False),
    "last_seen": (np.float64, math.nan, False),  # virtual seconds of the last contact
    "seen": (np.uint32, 0, True),
    "online": (np.uint32, 0, True),
    "flags": (np.int32, 0, False),
    "last_accuracy": (np.float64, math.nan, False),
    "measured_up_kbps": (np.float64, math.nan, False),  # from real transfers (deployment)
    "measured_down_kbps": (np.float64, math.nan, False),
    "reputation": (np.float64, 1.0, False),  # anomaly reputation, 1 = fully trusted
    "quarantined": (np.bool_, False, False),  # held out of selection until released
    "quarantined_until": (np.int64, 0, False),  # last round of the latest quarantine
    "probation": (np.int64, 0, False),  # clean screenings left on probation
    "strikes": (np.int64, 0, False),  # quarantines since the last completed probation
}

# The columns of ReputationState, as the working state names them.
_REPUTATION = {
    "reputation": "reputation",
    "quarantined": "quarantined",
    "until": "quarantined_until",
    "probation": "probation",
    "strikes": "strikes",
}

# Logs whose rows belong to a round (deleted after the round a restore returns to).
_LOGS = ("participation", "evaluations", "checkins", "decisions", "reputation", "snapshots")

# the reputation columns (anomaly screening); snapshots written before them lack them
_REPUTATION_STATE = ("reputation", "quarantined", "quarantined_until", "probation", "strikes")

_STATIC = ("data_size", "label_entropy", "tier", "compute_ms_per_sample", "up_kbps", "down_kbps")
_STATIC_DTYPES = (np.int64, np.float64, np.int64, np.float64, np.float64, np.float64)

# clients.sqlite's layout (PRAGMA user_version): a database of a newer version is refused
# instead of misread; 0 (written before versioning) has the tables of version 1
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY, data_size INTEGER NOT NULL, label_entropy REAL NOT NULL,
    tier INTEGER NOT NULL, compute_ms_per_sample REAL, up_kbps REAL, down_kbps REAL);
CREATE TABLE IF NOT EXISTS participation (
    round INTEGER NOT NULL, time REAL NOT NULL, client_id INTEGER NOT NULL,
    outcome TEXT NOT NULL, reason TEXT, duration REAL, loss REAL, num_examples INTEGER,
    steps INTEGER, contribution REAL, PRIMARY KEY (round, client_id));
CREATE INDEX IF NOT EXISTS participation_client ON participation (client_id, round);
CREATE TABLE IF NOT EXISTS evaluations (
    round INTEGER NOT NULL, client_id INTEGER NOT NULL, accuracy REAL,
    loss REAL NOT NULL, PRIMARY KEY (round, client_id));
CREATE INDEX IF NOT EXISTS evaluations_client ON evaluations (client_id, round);
CREATE TABLE IF NOT EXISTS checkins (
    round INTEGER NOT NULL, client_id INTEGER NOT NULL, time REAL NOT NULL,
    online INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    round INTEGER NOT NULL, client_id INTEGER NOT NULL, action TEXT NOT NULL,
    reason TEXT NOT NULL, reputation REAL NOT NULL, norm_z REAL, cosine_z REAL,
    history_z REAL, quarantined_until INTEGER NOT NULL,
    PRIMARY KEY (round, client_id, action));
CREATE INDEX IF NOT EXISTS decisions_client ON decisions (client_id, round);
CREATE TABLE IF NOT EXISTS reputation (
    round INTEGER NOT NULL, client_id INTEGER NOT NULL, reputation REAL NOT NULL,
    PRIMARY KEY (round, client_id));
CREATE INDEX IF NOT EXISTS reputation_client ON reputation (client_id, round);
CREATE TABLE IF NOT EXISTS snapshots (
    round INTEGER NOT NULL, name TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (round, name));
"""

_HISTORY_COLUMNS = (
    "round", "time", "outcome", "reason", "duration", "loss", "num_examples", "steps",
    "contribution", "accuracy", "eval_loss",
)  # fmt: skip
# Rounds in which the client trained (with that round's evaluation, if any), then rounds
# in which it was only evaluated.
_HISTORY_SQL = """
SELECT p.round, p.time, p.outcome, p.reason, p.duration, p.loss, p.num_examples, p.steps,
       p.contribution, e.accuracy, e.loss
FROM participation p LEFT JOIN evaluations e ON e.round = p.round AND e.client_id = p.client_id
WHERE p.client_id = ?1
UNION ALL
SELECT e.round, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, e.accuracy, e.loss
FROM evaluations e
WHERE e.client_id = ?1 AND NOT EXISTS (
    SELECT 1 FROM participation p WHERE p.round = e.round AND p.client_id = e.client_id)
ORDER BY 1
"""

_DECISION_COLUMNS = (
    "round", "client_id", "action", "reason", "reputation", "norm_z", "cosine_z",
    "history_z", "quarantined_until",
)  # fmt: skip
# A client's reputation after each round that changed it, with that round's decision
# (the close decision if there is one, else the release).
_REPUTATION_SQL = """
SELECT r.round, r.client_id, r.reputation, COALESCE(
    (SELECT d.action FROM decisions d WHERE d.round = r.round AND d.client_id = r.client_id
     AND d.action != 'release'),
    (SELECT d.action FROM decisions d WHERE d.round = r.round AND d.client_id = r.client_id))
FROM reputation r
WHERE ?1 IS NULL OR r.client_id = ?1
ORDER BY r.client_id, r.round
"""


class UnknownClient(FedloomError):
    """A client id that is not registered (ids are ``0 .. num_clients - 1``)."""

    def __init__(self, field: str, client_id: object, num_clients: int) -> None:
        super().__init__(
            f"{field}: unknown client {client_id!r} (registered ids are 0..{num_clients - 1})"
            if num_clients
            else f"{field}: unknown client {client_id!r} (no clients are registered)"
        )
        self.client_id = client_id


def _first_bad(
    field: str, values: np.ndarray, bad: np.ndarray, ids: np.ndarray | None, want: str
) -> NoReturn:
    """Raise naming the first offending entry of ``values`` (``bad`` is a mask)."""
    i = int(np.flatnonzero(bad)[0])
    who = f"client {int(ids[i])}" if ids is not None else f"client {i}"
    raise FedloomError(f"{field} = {values[i].item()!r} for {who}, expected {want}")


def _vector(
    field: str,
    value: object,
    n: int | None = None,
    integer: bool = False,
    ids: np.ndarray | None = None,
    minimum: float | None = None,
    allow_nan: bool = False,
    allow_inf: bool = False,
) -> np.ndarray:
    """``value`` as a 1-D int64 or float64 array of length ``n``, checked entry by entry."""
    arr = np.asarray(value)
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        want = f"({n},)" if n is not None else "a 1-D array"
        raise FedloomError(f"{field} has shape {arr.shape}, expected {want}")
    kinds = "iu" if integer else "iuf"
    if arr.size and arr.dtype.kind not in kinds:
        want = "integers" if integer else "numbers"
        raise FedloomError(f"{field} has dtype {arr.dtype}, expected {want}")
    arr = arr.astype(np.int64 if integer else np.float64)
    if not integer and not allow_inf:
        bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
        if bad.any():
            _first_bad(field, arr, bad, ids, "a finite number")
    if minimum is not None and (bad := arr < minimum).any():
        _first_bad(field, arr, bad, ids, f">= {minimum}")
    return arr


def _int(field: str, value: object, minimum: int | None = 0) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise FedloomError(f"{field} = {value!r} ({type(value).__name__}), expected an int")
    if minimum is not None and value < minimum:
        raise FedloomError(f"{field} = {value!r}, expected an int >= {minimum}")
    return int(value)


def _time(field: str, value: object) -> float:
    number = int | float | np.integer | np.floating
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, number)
        or not math.isfinite(value)
        or value < 0
    ):
        raise FedloomError(f"{field} = {value!r}, expected a finite number of seconds >= 0")
    return float(value)


def _encode(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return zlib.compress(buf.getvalue(), 1)


def _decode(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)


def _fresh_state(n: int) -> dict[str, np.ndarray]:
    """The working state of ``n`` new clients. Hourly columns are column-major, so the
    check-in sweep's update of one hour of day touches contiguous memory."""
    return {
        name: np.full((n, HOURS) if hourly else n, fill, dtype=dtype, order="F")
        for name, (dtype, fill, hourly) in _STATE.items()
    }


@dataclass(frozen=True)
class Completion:
    """What the server learned from the clients whose update was aggregated in a round.

    Row ``i`` of every array belongs to client ``ids[i]``. A loss of NaN means the client
    did not report it (the registry then keeps the previous value). Losses and
    contributions derive from what clients report, so a non-finite one is kept as NaN
    (unknown) rather than refused: no value a client sends can stop the registry.
    """

    ids: np.ndarray  # int64 [M]
    duration: np.ndarray  # float64 [M] dispatch-to-upload seconds
    loss: np.ndarray  # float64 [M] mean training loss
    loss_sq: np.ndarray  # float64 [M] mean squared batch loss
    num_examples: np.ndarray  # int64 [M]
    steps: np.ndarray  # int64 [M]
    contribution: np.ndarray  # float64 [M] share of the aggregate (sums to ~1 over the round)

    def __post_init__(self) -> None:
        ids = _vector("completion.ids", self.ids, integer=True)
        if len(np.unique(ids)) != len(ids):
            _first_bad("completion.ids", ids, _duplicated(ids), ids, "distinct ids")
        m = len(ids)
        checked = {
            "ids": ids,
            "duration": _vector("completion.duration", self.duration, m, ids=ids, minimum=0),
            "loss": _statistic("completion.loss", self.loss, m),
            "loss_sq": _statistic("completion.loss_sq", self.loss_sq, m),
            "num_examples": _vector(
                "completion.num_examples", self.num_examples, m, integer=True, ids=ids, minimum=0
            ),
            "steps": _vector("completion.steps", self.steps, m, integer=True, ids=ids, minimum=0),
            "contribution": _statistic("completion.contribution", self.contribution, m),
        }
        for name, arr in checked.items():
            object.__setattr__(self, name, arr)


def _statistic(field: str, value: object, n: int) -> np.ndarray:
    """A client-derived float statistic as float64 of length ``n``; NaN where not finite."""
    arr = _vector(field, value, n, allow_nan=True, allow_inf=True)
    arr[~np.isfinite(arr)] = math.nan
    return arr


def _duplicated(ids: np.ndarray) -> np.ndarray:
    """Mask of the entries whose id already occurred earlier in ``ids``."""
    first = np.zeros(len(ids), dtype=bool)
    first[np.unique(ids, return_index=True)[1]] = True
    return ~first


class ClientRegistry:
    """Per-client statistics in numpy, with SQLite (WAL) as the storage of record.

    ``path`` is the database file (``clients.sqlite`` in a run directory or a server's
    state directory); it is created if missing. Opening an existing database loads its
    clients and its newest snapshot.
    """

    def __init__(self, path: Path, decay: float = 0.95, duration_smoothing: float = 0.3) -> None:
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"registry decay = {decay!r}, expected 0 < decay <= 1")
        if not 0.0 < duration_smoothing <= 1.0:
            raise ConfigError(
                f"registry duration_smoothing = {duration_smoothing!r}, expected 0 < s <= 1"
            )
        self.path = Path(path)
        self.decay = decay
        self.duration_smoothing = duration_smoothing
        self._lazy: list[weakref.ref[_Stats]] = []  # stats() snapshots yet to settle
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():  # per-client facts: readable by the run's owner only
            self.path.touch(mode=0o600)
        self._db = sqlite3.connect(self.path)
        try:
            self._open()
        except (sqlite3.DatabaseError, ValueError, TypeError, zlib.error) as err:
            self._db.close()
            raise CheckpointError(
                f"client registry {str(self.path)!r} is unusable: {err}"
            ) from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Load clients and the newest snapshot; raises on a damaged database."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            first = [line for line in check.splitlines() if not line.startswith("***")][:1]
            raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(first) or check}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # not damaged: written by a newer fedloom, kept as is
            raise FedloomError(
                f"client registry {str(self.path)!r} has schema version {version}, newer than "
                f"the {SCHEMA_VERSION} this fedloom reads: open it with a newer fedloom"
            )
        self._db.executescript(_SCHEMA)
        if version < SCHEMA_VERSION:  # new, or from before versioning (version 0, same tables)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.commit()
        rows = self._db.execute(f"SELECT id, {', '.join(_STATIC)} FROM clients ORDER BY id")
        columns = list(zip(*rows.fetchall(), strict=True)) or [()] * (len(_STATIC) + 1)
        if not np.array_equal(columns[0], np.arange(len(columns[0]))):
            raise CheckpointError(f"registry {self.path}: client ids are not 0..N-1")
        self._static = {
            name: np.array(col, dtype=dtype)  # SQL NULL (stored NaN) reads back as NaN
            for name, dtype, col in zip(_STATIC, _STATIC_DTYPES, columns[1:], strict=True)
        }
        self._state = _fresh_state(self.num_clients)
        self._round = 0  # the last recorded round; check-ins belong to the next one
        newest = self._db.execute("SELECT MAX(round) FROM snapshots").fetchone()[0]
        if newest is not None:
            self._state = self._load_snapshot(newest)
            self._round = newest
        self._screened = self._round  # the last round whose screening was recorded

    @property
    def num_clients(self) -> int:
        return len(self._static["data_size"])

    @property
    def nbytes(self) -> int:
        """Bytes of the in-memory working state and static profile (SQLite not included)."""
        arrays = [*self._static.values(), *self._state.values()]
        return sum(a.nbytes for a in arrays)

    def data_sizes(self, ids: np.ndarray) -> np.ndarray:
        """The registered training examples of clients ``ids`` (0: not reported)."""
        return self._static["data_size"][np.asarray(ids, dtype=np.int64)].copy()

    def register(
        self,
        data_size: np.ndarray,
        label_entropy: np.ndarray,
        tier: np.ndarray | None = None,
        compute_ms_per_sample: np.ndarray | None = None,
        up_kbps: np.ndarray | None = None,
        down_kbps: np.ndarray | None = None,
    ) -> None:
        """Register clients ``0 .. N-1`` with their static profile.

        On a database that already holds clients this only verifies that the profile is
        the one it was built with, so a resumed run cannot mix up two federations.
        Unknown device speeds and bandwidths are NaN; the tier is -1 when unknown.
        """
        sizes = _vector("data_size", data_size, integer=True, minimum=0)
        n = len(sizes)
        if n == 0:
            raise FedloomError("data_size is empty, expected at least one client")
        static = {
            "data_size": sizes,
            "label_entropy": _vector("label_entropy", label_entropy, n, minimum=0),
            "tier": _vector(
                "tier",
                np.full(n, -1, np.int64) if tier is None else tier,
                n,
                integer=True,
                minimum=-1,
            ),
        }
        for field, value in (
            ("compute_ms_per_sample", compute_ms_per_sample),
            ("up_kbps", up_kbps),
            ("down_kbps", down_kbps),
        ):
            arr = np.full(n, math.nan) if value is None else _vector(field, value, n)
            if (bad := arr <= 0).any():
                _first_bad(field, arr, bad, None, "> 0")
            static[field] = arr
        if self.num_clients:
            self._verify_registration(static)
            return
        rows = zip(range(n), *(static[name].tolist() for name in _STATIC), strict=True)
        with self._db:
            self._db.executemany(f"INSERT INTO clients VALUES (?{', ?' * len(_STATIC)})", rows)
        self._static = static
        self._state = _fresh_state(n)

    def report(self, client: int, data_size: int, label_entropy: float) -> None:
        """What a deployed client reported about its data when it joined: its example
        count and label entropy replace the registered (unknown: 0) ones. Only the
        deployment calls it; the simulator registers the partition it holds."""
        c = _int("client", client)
        if not 0 <= c < self.num_clients:
            raise FedloomError(f"client {c} is not registered (0..{self.num_clients - 1})")
        size = _int("data_size", data_size)
        entropy = float(label_entropy)
        if size < 0 or not (math.isfinite(entropy) and entropy >= 0):
            raise FedloomError(
                f"client {c}: data_size = {size}, label_entropy = {entropy}; expected >= 0"
            )
        with self._db:
            self._db.execute(
                "UPDATE clients SET data_size = ?, label_entropy = ? WHERE id = ?",
                (size, entropy, c),
            )
        self._settle_snapshots()
        self._static["data_size"][c] = size
        self._static["label_entropy"][c] = entropy

    def _verify_registration(self, static: dict[str, np.ndarray]) -> None:
        n = len(static["data_size"])
        if n != self.num_clients:
            raise FedloomError(
                f"registry {self.path} was built for {self.num_clients} clients, register() got {n}"
            )
        for name in _STATIC:
            old, new = self._static[name], static[name]
            same = old == new
            if old.dtype.kind == "f":
                same |= np.isnan(old) & np.isnan(new)
            if (differ := ~same).any():
                i = int(np.flatnonzero(differ)[0])
                raise FedloomError(
                    f"registry {self.path} was built for {self.num_clients} clients with "
                    f"{name} = {old[i].item()!r} for client {i}; register() got {new[i].item()!r}"
                )

    def stats(self) -> ClientStats:
        """A snapshot of the registry (copies), for selectors.

        Each column is copied (``online_prob``, N x 24, computed) on first read, since a
        selector reads few of them; before a column changes in place the registry copies
        it for every snapshot still alive that has not read it, so a snapshot never sees
        a later change.
        """
        s, st = self._state, self._static
        a, b = s["a"], s["b"]
        stats = _Stats(
            online_prob=partial(_online_prob, s["online"], s["seen"]),
            data_size=st["data_size"].copy,
            label_entropy=st["label_entropy"].copy,
            selected=s["selected"].copy,
            completed=s["completed"].copy,
            reliability=lambda: (a + 1.0) / (a + b + 2.0),
            last_round=s["last_round"].copy,
            loss=s["loss"].copy,
            loss_sq=s["loss_sq"].copy,
            duration=s["duration"].copy,
            flags=s["flags"].copy,
        )
        self._lazy = [ref for ref in self._lazy if ref() is not None]
        self._lazy.append(weakref.ref(stats))
        return stats

    def _settle_snapshots(self) -> None:
        """Copy every column of every snapshot still alive: call before a column that
        ``stats()`` reads changes in place."""
        for ref in self._lazy:
            if (stats := ref()) is not None:
                stats.settle()
        self._lazy = []

    def _ids(self, field: str, value: object, distinct: bool = True) -> np.ndarray:
        """Registered client ids as int64; ``UnknownClient`` names the first stranger."""
        arr = np.asarray(value)
        if arr.size and arr.dtype.kind == "b":
            raise FedloomError(
                f"{field} has dtype bool, expected client ids (use np.flatnonzero(mask))"
            )
        ids = _vector(field, arr, integer=True)
        if (bad := (ids < 0) | (ids >= self.num_clients)).any():
            raise UnknownClient(field, int(ids[bad][0]), self.num_clients)
        if distinct and len(np.unique(ids)) != len(ids):
            _first_bad(field, ids, _duplicated(ids), ids, "distinct ids")
        return ids

    def _client(self, field: str, value: object) -> int:
        cid = _int(field, value, minimum=None)
        if not 0 <= cid < self.num_clients:
            raise UnknownClient(field, cid, self.num_clients)
        return cid

    def observe_availability(self, time: float, online: np.ndarray) -> None:
        """A simulation's check-in sweep: every client is observed at ``time``, and the
        clients ``online`` (ids) are online. Learns P(online) per hour of day.

        In-memory only (the state reaches SQLite with the next snapshot), since a
        simulation replays its availability trace deterministically after a restore.
        """
        t = _time("time", time)
        ids = self._ids("online", online, distinct=False)
        hour = int(t // 3600) % HOURS
        self._settle_snapshots()
        s = self._state
        s["seen"][:, hour] += np.uint32(1)
        mask = np.zeros(self.num_clients, dtype=bool)
        mask[ids] = True
        online_ids = np.flatnonzero(mask)  # each once, ascending
        s["online"][online_ids, hour] += np.uint32(1)
        s["last_seen"][online_ids] = np.fmax(s["last_seen"][online_ids], t)

    def check_in(self, client_id: object, time: object, online: object = True) -> None:
        """One client's check-in (deployment path): logged, and learned into its hour bin.

        Everything is validated before anything changes, so a malformed or unknown
        check-in leaves the registry as it was.
        """
        cid = self._client("check-in client_id", client_id)
        t = _time(f"check-in time of client {cid}", time)
        if not isinstance(online, bool | np.bool_):
            raise FedloomError(
                f"check-in online of client {cid} = {online!r} ({type(online).__name__}), "
                "expected a bool"
            )
        with self._db:
            self._db.execute(
                "INSERT INTO checkins VALUES (?, ?, ?, ?)", (self._round + 1, cid, t, bool(online))
            )
        hour = int(t // 3600) % HOURS
        self._settle_snapshots()
        s = self._state
        s["seen"][cid, hour] += 1
        s["online"][cid, hour] += int(bool(online))
        s["last_seen"][cid] = np.fmax(s["last_seen"][cid], t)

    def record_round(
        self,
        round: int,
        time: float,
        selected: np.ndarray,
        completion: Completion,
        failed: dict[int, str],
        rejected: dict[int, UpdateRejected],
    ) -> None:
        """Learn from one round's outcome and log one participation row per client.

        Each selected client completed (in ``completion``) or not (failed with the reason
        in ``failed``, or rejected: the refusal, whose kind sets the client's anomaly
        flags and whose reason is logged); rejected clients need not be selected (an update
        from outside the cohort is still an anomaly worth flagging). Reliability is the
        mean of a discounted Beta(1, 1) posterior over completions:
        ``a = decay*a + done``, ``b = decay*b + (1 - done)``, ``(a + 1) / (a + b + 2)``.
        Rounds must increase; everything is validated before anything is written.
        """
        r = _int("round", round, minimum=1)
        if r <= self._round:
            raise FedloomError(
                f"round = {r}, expected a round after the last recorded round {self._round}"
            )
        t = _time("time", time)
        sel = self._ids("selected", selected)
        done_ids = self._ids("completion.ids", completion.ids)
        fail_ids = self._ids("failed", self._keys("failed", failed))
        rej_ids = self._ids("rejected", self._keys("rejected", rejected))
        for cid, reason in failed.items():
            if not isinstance(reason, str):
                raise FedloomError(f"reason for client {cid} = {reason!r}, expected a str")
        for cid, err in rejected.items():
            if not isinstance(err, UpdateRejected):
                raise FedloomError(
                    f"rejection of client {cid} = {err!r}, expected an UpdateRejected"
                )
        reasons = {**failed, **{cid: err.reason for cid, err in rejected.items()}}
        in_sel = np.zeros(self.num_clients, dtype=bool)
        in_sel[sel] = True
        for field, ids in (("completion.ids", done_ids), ("failed", fail_ids)):
            if (bad := ~in_sel[ids]).any():
                raise FedloomError(f"{field}: client {int(ids[bad][0])} was not selected")
        both = np.intersect1d(np.concatenate([done_ids, fail_ids]), rej_ids)
        both = np.concatenate([both, np.intersect1d(done_ids, fail_ids)])
        if both.size:
            raise FedloomError(
                f"client {int(both[0])} has more than one outcome in round {r} "
                "(completion, failed and rejected must not overlap)"
            )

        done = np.zeros(self.num_clients, dtype=bool)
        done[done_ids] = True
        is_rej = np.zeros(self.num_clients, dtype=bool)
        is_rej[rej_ids] = True
        fail_rows = sel[~done[sel] & ~is_rej[sel]]
        c = completion
        completed_rows = zip(
            done_ids.tolist(),
            c.duration.tolist(),
            c.loss.tolist(),
            c.num_examples.tolist(),
            c.steps.tolist(),
            c.contribution.tolist(),
            strict=True,
        )
        rows = [
            *((r, t, cid, "completed", None, *values) for cid, *values in completed_rows),
            *(
                (r, t, cid, outcome, reasons.get(cid), None, None, None, None, None)
                for outcome, ids in (("failed", fail_rows), ("rejected", rej_ids))
                for cid in ids.tolist()
            ),
        ]
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO participation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.IntegrityError as exc:
            raise FedloomError(
                f"round {r} is already logged in {self.path}; restore() the snapshot it "
                "should follow before recording it again"
            ) from exc

        self._settle_snapshots()
        s, d = self._state, self.decay
        s["selected"][sel] += 1
        s["last_round"][sel] = r
        s["a"][sel] = d * s["a"][sel] + done[sel]
        s["b"][sel] = d * s["b"][sel] + ~done[sel]
        s["completed"][done_ids] += 1
        for name, new in (("loss", c.loss), ("loss_sq", c.loss_sq)):
            s[name][done_ids] = np.where(np.isnan(new), s[name][done_ids], new)
        old, k = s["duration"][done_ids], self.duration_smoothing
        s["duration"][done_ids] = np.where(
            np.isnan(old), c.duration, k * c.duration + (1 - k) * old
        )
        bits = np.array(
            [_kind_flags(rejected[cid].kind) for cid in rej_ids.tolist()], dtype=np.int32
        )
        s["flags"][rej_ids] |= bits
        self._round = r

    @staticmethod
    def _keys(field: str, mapping: dict[int, str]) -> np.ndarray:
        keys = list(mapping)
        for key in keys:
            _int(f"{field} client id", key, minimum=None)
        return np.array(keys, dtype=np.int64)

    # reputation ------------------------------------------------------------------
    def _reputation(self, ids: np.ndarray) -> ReputationState:
        s = self._state
        return ReputationState(**{f: s[col][ids].copy() for f, col in _REPUTATION.items()})

    def _set_reputation(self, ids: np.ndarray, state: ReputationState) -> None:
        for field, col in _REPUTATION.items():
            self._state[col][ids] = getattr(state, field)

    def quarantined(self, round: int) -> np.ndarray:
        """Mask (bool [N]) of the clients in quarantine during ``round``: not selectable."""
        r = _int("round", round)
        s = self._state
        return s["quarantined"] & (s["quarantined_until"] >= r)

    def admit(self, round: int, policy: ReputationPolicy) -> tuple[np.ndarray, list[Decision]]:
        """Call once when round ``round`` opens, before selection: releases the clients
        whose quarantine ended (on probation, logged as 'release' decisions) and returns
        ``(quarantined(round), releases)``; the mask's clients must not be selected.

        Calling it again for the same round releases nothing more; ``round`` must come
        after the last recorded and the last screened round.
        """
        r = _int("round", round, minimum=1)
        if r <= max(self._round, self._screened):
            raise FedloomError(
                f"admit round = {r}, expected a round after the last recorded round "
                f"{max(self._round, self._screened)}"
            )
        held = np.flatnonzero(self._state["quarantined"])
        new, due = policy.release(r, self._reputation(held))
        ids = held[due]
        rep = new.reputation[due]
        releases = [
            Decision(round=r, client=cid, action="release", reason=SERVED, reputation=value)
            for cid, value in zip(ids.tolist(), rep.tolist(), strict=True)
        ]
        self._log_decisions(r, releases, ids, rep)
        self._set_reputation(held, new)
        return self.quarantined(r), releases

    def record_screening(
        self,
        round: int,
        screening: Screening,
        policy: ReputationPolicy,
        clamped: Sequence[int] | np.ndarray = (),
    ) -> list[Decision]:
        """Call once when round ``round`` closes, with its anomaly screening and the
        clients whose example counts were clamped (they count as flagged without being
        screened): moves the reputations of the scored and the clamped clients by
        ``policy`` (rows the screening could not score, in a round of too few rows, count
        neither way), quarantines those that fell
        below its threshold (or were caught on probation), logs every decision (table
        ``decisions``) and every changed reputation (table ``reputation``), and returns
        the decisions (flag, quarantine, requarantine), in client order.

        Before or after ``record_round`` of the same round; once per round, and rounds
        must increase. Everything is validated before anything is written.
        """
        r = _int("round", round, minimum=1)
        if not isinstance(screening, Screening):
            raise FedloomError(f"screening = {screening!r}, expected a Screening")
        if screening.round != r:
            raise FedloomError(f"screening of round {screening.round} recorded as round {r}")
        if r < self._round or r <= self._screened:
            raise FedloomError(
                f"screening round = {r}, expected a round after the last screened round "
                f"{self._screened} and not before the last recorded round {self._round}"
            )
        listed = self._ids("screening.client_ids", screening.client_ids)
        clamp = self._ids("clamped", np.asarray(clamped, dtype=np.int64))
        scored = np.isfinite(screening.score)  # unscored rows (too few) count for nothing
        screened = listed[scored]
        ids = np.union1d(screened, clamp)
        at = np.searchsorted(ids, screened)
        bad = np.isin(ids, clamp)
        bad[at] |= screening.flagged[scored]
        reason = np.full(len(ids), CLAMPED, dtype=object)
        reasons = np.array(screening.reasons, dtype=object)[scored]
        reason[at] = [CLAMPED if why is None else why for why in reasons.tolist()]
        z = np.full((len(ids), len(SCORES)), math.nan)
        z[at] = np.stack([screening.z[name][scored] for name in SCORES], axis=1)
        known = np.zeros(len(ids), dtype=bool)
        known[at] = True

        old = self._reputation(ids)
        new, actions = policy.close(r, old, bad)
        acted = np.flatnonzero(actions != "")
        decisions = [
            Decision(
                round=r,
                client=int(ids[i]),
                action=str(actions[i]),
                reason=str(reason[i]),
                reputation=float(new.reputation[i]),
                until=int(new.until[i]) if actions[i] != "flag" else 0,
                scores=(
                    {n: _json_float(v) for n, v in zip(SCORES, z[i].tolist(), strict=True)}
                    if known[i]
                    else None
                ),
            )
            for i in acted.tolist()
        ]
        logged = (new.reputation != old.reputation) | (actions != "")
        self._log_decisions(r, decisions, ids[logged], new.reputation[logged])
        self._set_reputation(ids, new)
        self._screened = r
        return decisions

    def _log_decisions(
        self, round: int, decisions: list[Decision], ids: np.ndarray, reputation: np.ndarray
    ) -> None:
        """Insert ``decisions`` and the reputations ``ids`` have after the round, in one
        transaction (a reputation already logged for the round is replaced)."""
        rows = [
            (
                d.round, d.client, d.action, d.reason, d.reputation,
                *((d.scores or {}).get(name) for name in SCORES), d.until,
            )
            for d in decisions
        ]  # fmt: skip
        final = zip([round] * len(ids), ids.tolist(), reputation.tolist(), strict=True)
        try:
            with self._db:
                self._db.executemany(
                    "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO reputation VALUES (?, ?, ?)",
                    final,
                )
        except sqlite3.IntegrityError as exc:
            raise FedloomError(
                f"decisions of round {round} are already logged in {self.path}; restore() "
                "the snapshot they should follow before recording them again"
            ) from exc

    def decisions(self, client_id: int | None = None) -> list[dict]:
        """The logged decisions (of one client, or all), oldest first, as dicts with
        round, client_id, action, reason, reputation, the three z-scores (None: not
        screened or unknown) and quarantined_until (0 for flags and releases)."""
        cid = None if client_id is None else self._client("client_id", client_id)
        rows = self._db.execute(
            "SELECT * FROM decisions WHERE ?1 IS NULL OR client_id = ?1 "
            "ORDER BY round, client_id, action",
            (cid,),
        ).fetchall()
        return [dict(zip(_DECISION_COLUMNS, row, strict=True)) for row in rows]

    def reputation_history(self, client_id: int | None = None) -> list[dict]:
        """Reputation trajectories for plots: one dict (round, client_id, reputation,
        action) per round that changed a client's reputation or decided about it, by client
        then round; a client without rows kept the initial reputation 1. ``action`` is
        that round's decision (None: a clean screening)."""
        cid = None if client_id is None else self._client("client_id", client_id)
        rows = self._db.execute(_REPUTATION_SQL, (cid,)).fetchall()
        keys = ("round", "client_id", "reputation", "action")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def record_evaluation(
        self, round: int, ids: np.ndarray, accuracy: np.ndarray | None, loss: np.ndarray
    ) -> None:
        """Per-client hold-out metrics of round ``round``'s model (table ``evaluations``);
        the accuracy is also kept in memory as ``last_accuracy``. ``accuracy`` None: the
        task has no accuracy metric (stored as NULL, ``last_accuracy`` left as it is)."""
        r = _int("round", round, minimum=0)
        cids = self._ids("ids", ids)
        acc = None
        if accuracy is not None:
            acc = _vector("accuracy", accuracy, len(cids), ids=cids, minimum=0)
            if (bad := acc > 1).any():
                _first_bad("accuracy", acc, bad, cids, "<= 1")
        lss = _vector("loss", loss, len(cids), ids=cids)
        stored = [None] * len(cids) if acc is None else acc.tolist()
        rows = zip([r] * len(cids), cids.tolist(), stored, lss.tolist(), strict=True)
        try:
            with self._db:
                self._db.executemany("INSERT INTO evaluations VALUES (?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            logged = self._db.execute("SELECT client_id FROM evaluations WHERE round = ?", (r,))
            again = np.intersect1d(cids, [cid for (cid,) in logged])
            raise FedloomError(
                f"round {r}: an evaluation of client {int(again[0])} is already logged"
            ) from exc
        if acc is not None:
            self._state["last_accuracy"][cids] = acc

    def record_bandwidth(
        self, client_ids: np.ndarray, up_kbps: np.ndarray, down_kbps: np.ndarray
    ) -> None:
        """Learn clients' link speeds from measured transfers (NaN: not measured), as an
        exponential moving average with the registry's ``duration_smoothing``."""
        ids = self._ids("client_ids", client_ids)
        k = self.duration_smoothing
        for name, value in (("measured_up_kbps", up_kbps), ("measured_down_kbps", down_kbps)):
            new = _vector(name, value, len(ids), ids=ids, allow_nan=True, minimum=0)
            old = self._state[name][ids]
            blended = np.where(np.isnan(old), new, (1 - k) * old + k * new)
            self._state[name][ids] = np.where(np.isnan(new), old, blended)

    def bandwidth(self, client_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The measured (up, down) link speeds of ``client_ids`` in kbit/s, NaN where no
        transfer of the client was measured yet (:meth:`record_bandwidth`)."""
        ids = self._ids("client_ids", client_ids)
        return (
            self._state["measured_up_kbps"][ids].copy(),
            self._state["measured_down_kbps"][ids].copy(),
        )

    def snapshot(self, round: int, keep: int = 3) -> None:
        """Persist the whole working state as of ``round`` (the last recorded round) and
        drop all but the newest ``keep`` snapshots, in one transaction."""
        r = _int("round", round)
        if r != self._round:
            raise FedloomError(
                f"snapshot round = {r}, expected the last recorded round {self._round}"
            )
        keep = _int("keep", keep, minimum=1)
        rows = [(r, name, _encode(arr)) for name, arr in self._state.items()]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", rows)
            self._db.execute(
                "DELETE FROM snapshots WHERE round NOT IN "
                "(SELECT DISTINCT round FROM snapshots ORDER BY round DESC LIMIT ?)",
                (keep,),
            )

    def snapshot_rounds(self) -> list[int]:
        """The rounds that have a snapshot, oldest first."""
        rows = self._db.execute("SELECT DISTINCT round FROM snapshots ORDER BY round")
        return [r for (r,) in rows]

    def _load_snapshot(self, round: int) -> dict[str, np.ndarray]:
        blobs = dict(self._db.execute("SELECT name, blob FROM snapshots WHERE round = ?", (round,)))
        return self._checked_state(round, {name: _decode(blob) for name, blob in blobs.items()})

    def _checked_state(self, round: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``arrays`` as a working state, refused unless every array has its shape/dtype."""
        fresh = _fresh_state(self.num_clients)
        for name, want in fresh.items():
            if name not in arrays and name in _REPUTATION_STATE:
                continue  # a snapshot from before reputations: every client starts fresh
            if name not in arrays:
                raise CheckpointError(f"registry snapshot of round {round} lacks {name!r}")
            got = arrays[name]
            if got.shape != want.shape or got.dtype != want.dtype:
                raise CheckpointError(
                    f"registry snapshot of round {round}: {name} is {got.dtype}{got.shape}, "
                    f"expected {want.dtype}{want.shape}"
                )
            fresh[name] = np.asfortranarray(got)  # snapshots from before: row-major
        return fresh

    def snapshot_arrays(self) -> dict[str, np.ndarray]:
        """The working state as a snapshot stores it (each array compressed, as uint8), to
        keep beside a checkpoint so the registry can be rebuilt if its database is lost."""
        return {
            name: np.frombuffer(_encode(arr), dtype=np.uint8) for name, arr in self._state.items()
        }

    def restore_snapshot_arrays(self, round: int, arrays: dict[str, np.ndarray]) -> None:
        """Return to ``round`` from ``snapshot_arrays()`` taken then, for a database that
        has no snapshot of it (rebuilt after loss or damage). Log rows after ``round`` are
        deleted, as in ``restore``, and the state is snapshotted."""
        r = _int("round", round)
        try:
            decoded = {name: _decode(np.asarray(blob).tobytes()) for name, blob in arrays.items()}
        except (ValueError, OSError, zlib.error) as err:
            raise CheckpointError(f"registry state of round {r} is unreadable: {err}") from None
        state = self._checked_state(r, decoded)
        with self._db:
            for table in _LOGS:
                self._db.execute(f"DELETE FROM {table} WHERE round > ?", (r,))
        self._state = state
        self._round = r
        self._screened = r
        self.snapshot(r)

    def restore(self, round: int) -> None:
        """Return to the snapshot of exactly ``round``: load it, and delete what was logged
        after it (participation, evaluations, decisions and reputations of later rounds,
        check-ins that arrived after it, and later snapshots), so replaying reproduces the
        same state."""
        r = _int("round", round)
        if r not in (available := self.snapshot_rounds()):
            raise CheckpointError(
                f"registry {self.path} has no snapshot of round {r}; "
                f"available rounds: {available or 'none'}"
            )
        state = self._load_snapshot(r)
        with self._db:
            for table in _LOGS:
                self._db.execute(f"DELETE FROM {table} WHERE round > ?", (r,))
        self._state = state
        self._round = r
        self._screened = r

    def history(self, client_id: int) -> list[dict]:
        """The client's log, oldest first: one dict per round in which it was selected or
        rejected (``outcome`` 'completed' | 'failed' | 'rejected') or only evaluated
        (``outcome`` None); ``accuracy``/``eval_loss`` are that round's evaluation."""
        cid = self._client("client_id", client_id)
        rows = self._db.execute(_HISTORY_SQL, (cid,)).fetchall()
        return [dict(zip(_HISTORY_COLUMNS, row, strict=True)) for row in rows]

    def summary(self) -> list[dict]:
        """One dict per client for reports: profile, counters, learned statistics, the mean
        contribution of its aggregated updates (NaN if none), its flag names and its
        reputation (``quarantined``: held now; ``quarantined_until``: last round of its
        latest quarantine, 0 if never; ``probation``: clean screenings left)."""
        contribution = np.full(self.num_clients, math.nan)
        rows = self._db.execute(
            "SELECT client_id, AVG(contribution) FROM participation "
            "WHERE outcome = 'completed' GROUP BY client_id"
        ).fetchall()
        if rows:
            ids, means = zip(*rows, strict=True)
            contribution[list(ids)] = np.array(means, dtype=np.float64)
        st, s = self._static, self._state
        reliability = (s["a"] + 1.0) / (s["a"] + s["b"] + 2.0)
        columns = {
            "id": range(self.num_clients),
            **{name: st[name].tolist() for name in _STATIC},
            "selected": s["selected"].tolist(),
            "completed": s["completed"].tolist(),
            "reliability": reliability.tolist(),
            "last_round": s["last_round"].tolist(),
            "last_seen": s["last_seen"].tolist(),
            "duration": s["duration"].tolist(),
            "measured_up_kbps": s["measured_up_kbps"].tolist(),
            "measured_down_kbps": s["measured_down_kbps"].tolist(),
            "loss": s["loss"].tolist(),
            "last_accuracy": s["last_accuracy"].tolist(),
            "mean_contribution": contribution.tolist(),
            "flags": [_flag_names(f) for f in s["flags"].tolist()],
            "reputation": s["reputation"].tolist(),
            "quarantined": s["quarantined"].tolist(),
            "quarantined_until": s["quarantined_until"].tolist(),
            "probation": s["probation"].tolist(),
        }
        return [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ClientRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _kind_flags(kind: RejectionKind) -> int:
    """The anomaly bits a rejection of ``kind`` sets (``rejected_update`` always)."""
    return FLAGS["rejected_update"] | _KIND_FLAGS.get(kind, 0)


class _Stats(ClientStats):
    """``ClientStats`` whose columns are given as arrays or as functions that make them,
    called on first read (``ClientRegistry.stats``), then kept."""

    def __init__(self, **columns: np.ndarray | Callable[[], np.ndarray]) -> None:
        want = {f.name for f in fields(ClientStats)}
        if set(columns) != want:
            raise TypeError(f"ClientStats fields: got {sorted(columns)}, expected {sorted(want)}")
        pending = {name: make for name, make in columns.items() if callable(make)}
        object.__setattr__(self, "_pending", pending)
        object.__setattr__(self, "_columns", {n: v for n, v in columns.items() if n not in pending})

    def column(self, name: str) -> np.ndarray:
        """Column ``name``, made now if it was not read before."""
        if name not in self._columns:
            self._columns[name] = self._pending.pop(name)()
        return self._columns[name]

    def settle(self) -> None:
        """Make every column not read yet, from the registry as it is now."""
        for name in list(self._pending):
            self.column(name)


for _field in fields(ClientStats):
    setattr(_Stats, _field.name, property(partial(_Stats.column, name=_field.name)))


def _online_prob(online: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Laplace-smoothed P(online) per hour bin, (online + 1) / (seen + 2), computed in
    float32 straight from the counts (the registry recomputes it every round)."""
    prob = np.add(online, 1, dtype=np.float32)
    return np.divide(prob, np.add(seen, 2, dtype=np.float32), out=prob)


def _flag_names(bits: int) -> list[str]:
    return [name for name, bit in FLAGS.items() if bits & bit]
