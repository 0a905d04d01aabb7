"""The deployment server: the round engine, driven by real clients over gRPC.

``DeploymentServer`` is the network event source for a ``RoundEngine`` (the same engine
the simulator drives: ``SyncServer``, cohort policy, registry, privacy ledger,
evaluation, records and checkpoints; ``fedloom.assemble`` builds both) and replaces the
virtual timeline with the network: a round's cohort is drawn from the clients that are
online now (seen within ``client_timeout_s``), each selected client fetches its task by
long-polling ``GetTask``, downloads the model in chunks (as an exact delta when it
holds an older version), trains, and streams its update back. A round closes when every
selected client has answered or failed (disconnected, past the deadline, not needed
after over-selection), and is then aggregated, evaluated, recorded and checkpointed
exactly as in simulation.

Robustness: uploads are keyed by (client, task, version), so a retried upload is
applied once and acknowledged as a duplicate; every malformed, oversized, non-finite,
stale or unauthenticated message is refused with a gRPC status naming the problem on
that client's stream, logged and counted, while the server keeps serving everyone else.
A killed server restarted with ``resume`` continues from its last checkpoint and
registry; clients reconnect by themselves.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np

from fedloom.atomic import atomic_write_text
from fedloom.client.evaluation import ReportedEvaluation
from fedloom.client.progress import mean_curve
from fedloom.client.schedule import NO_CAP, steps_for_each
from fedloom.compression.adaptive import AdaptivePolicy
from fedloom.compression.pipeline import compression_record
from fedloom.config import RunConfig
from fedloom.edge.profiles import DeviceProfile
from fedloom.errors import CheckpointError, ConfigError, FedloomError, UpdateRejected
from fedloom.errors import RejectionKind as _K
from fedloom.records import ClientMetrics, Dispatch, RoundResult, Update
from fedloom.secagg.crypto import SecAggError
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.secagg.protocol import STAGES, MaskedInput
from fedloom.server.engine import RoundEngine, count_reasons
from fedloom.server.local_work import at_least, steps_within, unfit_reason
from fedloom.transforms.secure import secure_masking
from fedloom.transport import download, wire
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport.certs import (
    CLIENT_NAME,
    METADATA_CLIENT,
    load_identity,
    peer_certificate,
    peer_name,
    server_credentials,
)
from fedloom.transport.messages import (
    CompressionSpec,
    LocalDP,
    MessageError,
    ModelSpec,
    plan_to_pb,
    profile_from_pb,
)
from fedloom.transport.secagg_wire import CLIENT_STAGE, client_from_pb
from fedloom.transport.secure_round import SecureStages, SecureTaskSpec
from fedloom.transport.wire import ENCODED

log = logging.getLogger("fedloom.server")


def metric_text(value: object) -> str:
    """A round's metric in a log line: 4 significant digits (``-`` when not evaluated)."""
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


@dataclass(frozen=True)
class ServerOptions:
    """How the deployment server listens and paces rounds (the run itself is the config)."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port (see DeploymentServer.port)
    certs: Path | None = None  # folder from `fedloom certs` holding ca.pem, server.pem/.key
    insecure: bool = False  # plaintext, clients named by metadata: local experiments only
    min_clients: int | None = None  # online clients needed to start a round (default: cohort)
    heartbeat_s: float = 1.0
    client_timeout_s: float = 10.0  # silence after which a client counts as disconnected
    max_transfers: int = 16  # concurrent model downloads + update uploads
    chunk_bytes: int = wire.CHUNK_BYTES
    max_workers: int = 256
    keep_versions: int = 4  # model versions kept for delta downloads
    linger_s: float = 2.0  # after the last round, keep answering "done" this long
    secagg_stage_timeout_s: float = 60.0  # a SecAgg+ stage after key advertising waits this long
    # hostile or broken clients: a transfer must receive its first message within
    # transfer_grace_s and then keep up min_transfer_kbps (one chunk of slack), or it is
    # cancelled and its slot freed; a client holds at most max_transfers_per_client
    transfer_grace_s: float = 10.0
    min_transfer_kbps: float = 64.0
    max_transfers_per_client: int = 2
    # a round with no server.deadline_s still ends after this long: clients still pending
    # are failed as "deadline"
    round_timeout_s: float = 600.0
    # when min_clients is not set, a round that waited this long for the cohort's clients
    # to be online starts with those online, if they reach the quorum (the first round
    # this server plays waits up to round_timeout_s: clients may still be starting)
    start_timeout_s: float = 60.0
    status_every_s: float = 10.0  # while waiting, log whom the server waits for this often

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_s",
            "client_timeout_s",
            "linger_s",
            "secagg_stage_timeout_s",
            "transfer_grace_s",
            "min_transfer_kbps",
        ):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be >= 0")
        for name in ("round_timeout_s", "start_timeout_s", "status_every_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be > 0")
        for name in (
            "max_transfers",
            "chunk_bytes",
            "max_workers",
            "keep_versions",
            "max_transfers_per_client",
        ):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be >= 1")
        if self.min_clients is not None and self.min_clients < 1:
            raise ConfigError(f"--min-clients = {self.min_clients} must be >= 1")
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port = {self.port!r} must be in 0..65535 (0: any free port)")
        if not _HOST.fullmatch(self.host):
            raise ConfigError(f"--host = {self.host!r} is neither an IP address nor a host name")
        if not self.insecure and self.certs is None:
            raise ConfigError("certs is required unless insecure is set (mTLS is the default)")


# an IPv4/IPv6 address (IPv6 optionally in brackets) or a DNS name: letters, digits,
# '-' and '.' (what gRPC's resolver accepts as a listening host)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"\[?[0-9A-Fa-f:.]+(%\w+)?\]?|{_LABEL}(\.{_LABEL})*\.?")


def _check_cohort(num_clients: int, quorum: int | None, min_clients: int | None) -> None:
    """Refuse settings no round could satisfy with ``num_clients`` registered clients."""
    if min_clients is not None and min_clients > num_clients:
        raise ConfigError(
            f"--min-clients = {min_clients} exceeds the {num_clients} registered clients "
            "(partition.num_clients): no round could ever start"
        )
    if quorum is not None and quorum > num_clients:
        raise ConfigError(
            f"server.quorum = {quorum} exceeds the {num_clients} registered clients "
            "(partition.num_clients): no round could ever aggregate"
        )


def check_settings(config: RunConfig, options: ServerOptions) -> None:
    """Refuse, before anything is built, server options that contradict the run's
    config (``DeploymentServer`` checks again once the partition is built)."""
    if config.partition.method != "natural":  # natural: the data decides the count
        _check_cohort(config.partition.num_clients, config.server.quorum, options.min_clients)


def listen(options: ServerOptions) -> tuple[grpc.Server, int]:
    """A gRPC server bound to ``options.host:options.port``, not yet started, and the bound
    port. Bind before building anything else, so that a port in use (also by another
    gRPC server: port sharing is off) or a host that does not resolve costs nothing,
    leaves no run directory, and is one line (``FedloomError``)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers),
        options=[*wire.channel_options(), ("grpc.so_reuseport", 0)],
    )
    address = f"{options.host}:{options.port}"
    try:
        found = socket.getaddrinfo(options.host, options.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise FedloomError(
            f"cannot listen on {address}: {options.host!r} does not resolve ({err})"
        ) from None
    if options.port:  # a port in use: say so plainly before gRPC logs its own error
        family, kind, proto, _, where = found[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(where)
            except OSError as err:
                raise FedloomError(f"cannot listen on {address}: {err.strerror}") from None
    try:
        if options.insecure:
            log.warning("serving WITHOUT TLS on %s: clients are not authenticated", address)
            port = server.add_insecure_port(address)
        else:
            assert options.certs is not None
            creds = server_credentials(load_identity(options.certs, "server"))
            port = server.add_secure_port(address, creds)
    except RuntimeError:  # gRPC: "Failed to bind to address ..."
        port = 0
    if port == 0:
        in_use = ""
        if options.port:
            in_use = " (is the port in use, e.g. by another server?)"
        raise FedloomError(f"cannot listen on {address}{in_use}")
    return server, port


class TransferScheduler:
    """At most ``slots`` transfers at once; waiting ones go earliest deadline first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[float, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self.max_waiting = 0

    @contextmanager
    def slot(self, deadline: float | None) -> Iterator[None]:
        ticket = (float("inf") if deadline is None else deadline, next(self._order))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            self.max_waiting = max(self.max_waiting, len(self._waiting))
            while not (self._free > 0 and self._waiting[0] == ticket):
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


class TokenBucket:
    """A byte budget per second shared by every transfer that takes from it: each
    ``take`` waits until the bucket holds its bytes (at most ``burst`` accumulate while
    idle), so concurrent downloads together stay within ``bytes_per_s`` on average."""

    def __init__(self, bytes_per_s: float, burst: int) -> None:
        if not (math.isfinite(bytes_per_s) and bytes_per_s > 0) or burst < 1:
            raise ConfigError(f"token bucket of {bytes_per_s!r} bytes/s, burst {burst!r}")
        self.rate = float(bytes_per_s)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        """Wait for ``nbytes`` of budget (a message larger than the burst waits for its
        whole size: the budget is kept on average, never exceeded by more than a burst)."""
        with self._lock:  # one taker at a time: first come, first served
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclass(eq=False)
class _Transfer:
    """One model download or update upload in progress, as the stall watchdog sees it."""

    cid: int
    kind: str  # "download" | "upload"
    context: grpc.ServicerContext
    slack: int  # bytes of one message: progress is counted when a message completes
    started: float = dataclasses.field(default_factory=time.monotonic)  # of this phase
    total: int | None = None  # payload bytes, once known (uploads: from the header)
    done: int = 0
    waiting: bool = True  # until it holds a transfer slot
    stalled: str | None = None  # why the watchdog cancelled it

    def granted(self) -> None:
        """The transfer holds a slot now: its progress is due from here on."""
        self.started, self.waiting = time.monotonic(), False

    def stall(self, now: float, grace: float, bytes_per_s: float) -> str | None:
        """Why this transfer is too slow at ``now`` (None if it keeps up): the first
        message must arrive within ``grace``; once it holds a slot, it must have moved
        ``bytes_per_s`` since ``grace`` after the grant, less one message in flight."""
        elapsed = now - self.started
        if self.total is None:  # an upload's header has not arrived
            return f"no {self.kind} header within {grace:g} s" if elapsed > grace else None
        if self.waiting or self.done >= self.total:  # queued, or every byte moved
            return None
        in_flight = min(self.slack, self.total - self.done)
        if self.done + in_flight < bytes_per_s * (elapsed - grace):
            return (
                f"{self.kind} stalled: {self.done} of {self.total} bytes after {elapsed:.1f} s "
                f"(slower than {bytes_per_s * 8 / 1000:g} kbit/s)"
            )
        return None


@dataclass
class _Round:
    task_id: str
    started: float  # time.perf_counter(), like arrival times
    dispatches: dict[int, Dispatch]
    needed: int | None  # deliveries that make the rest surplus (None: await everyone)
    arrival: dict[int, float] = dataclasses.field(default_factory=dict)
    applied: dict[int, bytes] = dataclasses.field(default_factory=dict)  # client -> sha256
    rejected: dict[int, UpdateRejected] = dataclasses.field(default_factory=dict)
    up_kbps: dict[int, float] = dataclasses.field(default_factory=dict)  # measured transfers
    loss_samples: dict[int, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    # applied uploads' evaluations of the received model: (loss, accuracy, examples)
    evaluations: dict[int, tuple[float, float, int]] = dataclasses.field(default_factory=dict)
    down_kbps: dict[int, float] = dataclasses.field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    secure: SecureStages | None = None  # SecAgg+ rounds: the protocol's state
    dp_clip: float | None = None  # what the secure sum was encoded with
    distributed: DistributedDiscreteGaussian | None = None
    payloads: dict[int, tuple[int, float]] = dataclasses.field(default_factory=dict)
    downloads: list[int] = dataclasses.field(default_factory=list)  # bytes of each download


class DeploymentServer(rpc.FedloomServicer):
    """Serves one run (new or resumed) to client processes until it finishes."""

    def __init__(
        self,
        engine: RoundEngine,
        options: ServerOptions,
        model_spec: ModelSpec,
        client_transforms: Sequence[tuple[str, Mapping[str, Any]]] = (),
        *,
        max_examples: int,
        compression: CompressionSpec | None = None,
        adaptive: AdaptivePolicy | None = None,
        partial_work: int | None = None,
    ) -> None:
        """``engine``: the run's round engine, built for a deployment (OS randomness:
        ``fedloom.assemble.deployment_server`` refuses any other); ``model_spec``:
        what a client builds its model from (``Join``); ``client_transforms``: the
        ``(name, params)`` of the chain each client applies to its update (``Join``; the
        client builds it from its own code and keeps its state); ``max_examples``: the
        most examples a client may report at its join (a larger report is refused);
        ``compression``: how clients encode their uploads (``Join``), decoded by the
        engine's server on receipt; ``adaptive``: the policy that picks each client's
        codec setting per round (None: the codec's default); ``partial_work``: fit each
        client's local steps to the deadline at its measured (else declared) speed, and
        drop one that cannot finish this many (None: every client gets the full work).

        The server holds no client data: each client's data size is what it reported
        when it joined (kept in the registry, so a resumed run knows it), and it bounds
        that client's FedAvg weight."""
        if engine.secure is not None and engine.secure.signed and options.insecure:
            raise ConfigError(
                "secagg.signed = true needs mTLS: clients sign their keys with their "
                "certificate keys (drop --insecure)"
            )
        self.engine = engine
        self.partial_work = partial_work
        # seconds per training example: measured from uploads, else declared at the join
        self._sample_s: dict[int, float] = {}
        self._declared_sample_s: dict[int, float] = {}
        plan = engine.privacy
        self._local_dp = (
            LocalDP(
                plan.mechanism_kind,  # type: ignore[arg-type]
                plan.clip_norm,
                plan.local_epsilon,
                plan.delta,
            ).to_pb()
            if plan.local
            else None
        )
        self.options = options
        self.num_clients = engine.server.num_clients
        if max_examples < 1:
            raise ConfigError(f"max_examples = {max_examples!r} must be >= 1")
        self.max_examples = int(max_examples)
        # label histograms describe class labels; other targets share none (entropy 0)
        self.num_classes = model_spec.outputs if model_spec.targets == "classes" else 0
        # each client's reported data size (0: not joined yet); only joined clients are
        # online, so only they are drawn by the selectors (size-weighted ones see 0)
        self.sizes = engine.registry.stats().data_size.astype(np.int64)
        # the device profiles clients declared at their joins, kept in the run directory
        # so a restarted server still knows which device cannot hold the model
        self._profiles: dict[int, DeviceProfile] = {}
        for cid, profile in load_profiles(engine.run_dir.path / PROFILES_FILE).items():
            self._declare(cid, profile, save=False)
        self.holdout_sizes: dict[int, int] = {}  # reported hold-out sizes, this process
        # join reports not yet in the registry, whose SQLite connection belongs to the
        # round thread (applied there, before each round's cohort is drawn)
        self._reports: dict[int, tuple[int, float]] = {}
        _check_cohort(self.num_clients, engine.server.quorum, options.min_clients)
        per_round = engine.cohort.clients_per_round
        self.min_clients = options.min_clients or min(per_round, self.num_clients)
        # no update weighs more than its client's reported data size (see bound_examples)
        joined = np.flatnonzero(self.sizes > 0)
        engine.server.bound_examples(joined, self.sizes[joined])
        self._cond = threading.Condition()
        self._last_seen: dict[int, float] = {}  # client id -> time.time() of its last call
        self._round: _Round | None = None
        # the models clients download: the global model, or its broadcast (compressed)
        self._models = {engine.server.version: engine.server.start_params.copy()}
        self._downloads: dict[tuple[int, int], tuple[list[bytes], int]] = {}
        self._prepare_lock = threading.Lock()
        self._closed: dict[int, bytes] = {}  # the last closed round's applied uploads
        self._closed_task = ""
        self._scheduler = TransferScheduler(options.max_transfers)
        self._bandwidth: TokenBucket | None = None  # a shared download budget, if any
        self._transfers: set[_Transfer] = set()  # in progress, for the stall watchdog
        self._transfer_lock = threading.Lock()
        self.refused: Counter[_K] = Counter()  # refused messages by kind, whole run
        self._refused_mark: Counter[_K] = Counter()  # self.refused at the last round record
        self._played = False  # a round was started by this server (process)
        self._awaiting = False  # the round thread waits for clients to come online
        # in task ids: a resumed server replays the round it died in under a new id, so
        # work begun for its predecessor (a half-run SecAgg+ protocol) is refused as stale
        self._instance = secrets.token_hex(3)
        self._done = threading.Event()
        self._stop = threading.Event()
        self._grpc: grpc.Server | None = None
        self.port = 0
        self.model_spec = model_spec
        self._model_pb = model_spec.to_pb()
        self._transforms_pb = [
            pb.TransformSpec(name=name, params_json=json.dumps(dict(params)))
            for name, params in client_transforms
        ]
        self._compression_pb = None if compression is None else compression.to_pb()
        self.adaptive = adaptive
        self._train_s: dict[int, float] = {}  # reported training seconds (adaptive settings)

    # lifecycle ----------------------------------------------------------------
    def start(self, listener: tuple[grpc.Server, int] | None = None) -> int:
        """Start answering clients on ``listener`` (from :func:`listen`; bound here when
        None); returns the bound port. ``run`` plays rounds."""
        server, self.port = listener or listen(self.options)
        rpc.add_FedloomServicer_to_server(self, server)
        # replaces the stub's Download handler: chunks go out serialized once per version
        server.add_registered_method_handlers(
            download.SERVICE, {"Download": download.handler(self.Download)}
        )
        server.start()
        self._grpc = server
        watchdog = threading.Thread(target=self._watch_transfers, name="transfers", daemon=True)
        watchdog.start()
        return self.port

    def run(self) -> None:
        """Play rounds until the run finishes, in the calling thread (the one that built
        the simulation: its SQLite registry belongs to it), then linger so that polling
        clients learn the run is done."""
        try:
            while not self.engine.finished and not self._stop.is_set():
                self._play_round()
            with self._cond:  # late joins too: the registry holds every report
                self._apply_reports()
            if not self._stop.is_set():
                self.engine.conclude()  # no rounds are left: the stop (and audit) records
            with self._cond:
                self._cond.notify_all()
            self._stop.wait(self.options.linger_s)
        finally:
            self._done.set()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()

    # rounds -------------------------------------------------------------------
    def _online(self, now: float) -> list[int]:
        """Clients that joined (reported their data) and were seen recently."""
        limit = now - self.options.client_timeout_s
        return sorted(
            c for c, seen in self._last_seen.items() if seen >= limit and self.sizes[c] > 0
        )

    def _apply_reports(self) -> None:
        """Put the join reports received since the last round into the registry (call
        under the lock, in the round thread)."""
        for cid, (size, entropy) in sorted(self._reports.items()):
            self.engine.registry.report(cid, size, entropy)
        self._reports.clear()

    def _play_round(self) -> None:
        engine, srv = self.engine, self.engine.server
        with self._cond:
            if not self._await_online():
                return
            self._apply_reports()
            self._played = True
            now = time.time()
            available = np.array(self._online(now), dtype=np.int64)
            # under DP with fixed-size sampling the cohort is drawn from all N clients (the
            # accountant's m / N); an offline pick fails at once as disconnected
            dispatches = self._choose_settings(engine.open_round(available), now)
            dispatches, unfit = self._fit_work(dispatches, now)
            deadline = dispatches[0].deadline if dispatches else None
            cohort = [d.client_id for d in dispatches]
            refusal = engine.release_refusal(cohort)
            if refusal is not None:  # the budget: nobody is told, the run stops
                started = time.perf_counter()
                result, extra = engine.withhold_round(cohort, refusal)
                self._cond.release()
                try:
                    engine.finish_round(result, started, extra)
                finally:
                    self._cond.acquire()
                return
            if engine.too_small_for_secagg(cohort):
                # empty or one client (Poisson): nobody is told, the round is skipped
                started = time.perf_counter()
                result, extra = engine.skip_small_secure_round(cohort)
                self._cond.release()  # evaluation and checkpoint without the lock
                try:
                    engine.finish_round(result, started, extra)
                finally:
                    self._cond.acquire()
                return
            rnd = _Round(
                f"{dispatches[0].round}.{engine.attempts}.{self._instance}" if dispatches else "",
                time.perf_counter(),
                {d.client_id: d for d in dispatches},
                engine.enough(len(dispatches)),  # never cuts a Poisson cohort
            )
            if engine.secure is not None:
                self._open_secure(rnd, [d.client_id for d in dispatches])
            self._round = rnd
            self._cond.notify_all()
            # without server.deadline_s a round still ends: after round_timeout_s
            ends = now + self.options.round_timeout_s if deadline is None else deadline
            if rnd.secure is None:
                failed = self._await_cohort(rnd, ends)
            else:
                failed = self._await_secure(rnd, ends)
            failed = unfit | failed
            # privacy audit canaries join as in simulation; replays armed after a resume
            rnd.payloads = srv.received_payloads
            result = engine.close_round()
            self._round = None
            self._closed, self._closed_task = rnd.applied, rnd.task_id
            self._cond.notify_all()
        # the release is charged to the ledger (privacy.json written) before any client
        # can download the new model version
        self._finish_round(rnd, result, failed, time.time())
        if result.status == "aggregated":
            with self._cond:
                self._models[srv.version] = srv.start_params.copy()
                for old in sorted(self._models)[: -self.options.keep_versions]:
                    del self._models[old]
                self._cond.notify_all()

    def _await_online(self) -> bool:
        """Wait (holding the condition) until ``min_clients`` clients are online; False if
        the server stops meanwhile. Logs every ``status_every_s`` whom it waits for. When
        ``--min-clients`` was not given (it defaults to the cohort size), the round starts
        after ``start_timeout_s`` (the server's first round: ``round_timeout_s``) with the
        clients online, if they reach the quorum (at least one), so that one dead client
        cannot stall the run."""
        quorum = self.engine.server.quorum or 1
        patience = self.options.start_timeout_s if self._played else self.options.round_timeout_s
        started = time.monotonic()
        report = started  # say at once whom it waits for, then every status_every_s
        self._awaiting = True
        try:
            return self._await_online_loop(quorum, patience, started, report)
        finally:
            self._awaiting = False

    def _await_online_loop(
        self, quorum: int, patience: float, started: float, report: float
    ) -> bool:
        while True:
            online = self._online(time.time())
            if len(online) >= self.min_clients:
                return True
            if self._stop.is_set():
                return False
            now = time.monotonic()
            if (
                self.options.min_clients is None
                and now - started >= patience
                and len(online) >= quorum
            ):
                log.warning(
                    "round %d starts with the %d clients online (wanted %d; waited %.0f s)",
                    self.engine.server.round + 1,
                    len(online),
                    self.min_clients,
                    now - started,
                )
                return True
            if now >= report:
                report = now + self.options.status_every_s
                self._log_waiting(online)
            self._cond.wait(0.5)

    def _log_waiting(self, online: list[int]) -> None:
        """One line saying how many more clients the next round waits for and who they
        are, so an operator sees at once that a client was never started."""
        missing = sorted(set(range(self.num_clients)) - set(online))
        log.info(
            "round %d: waiting for %d more clients (%d of %d online: %s); not online: %s",
            self.engine.server.round + 1,
            max(self.min_clients - len(online), 0),
            len(online),
            self.min_clients,
            _names(online),
            _names(missing),
        )

    def _open_secure(self, rnd: _Round, cohort: list[int]) -> None:
        """Start the round's SecAgg+: its encoding and the protocol's server side."""
        engine = self.engine
        assert engine.secure is not None
        dp, plan = engine.server.dp, engine.privacy
        n = len(cohort)
        rnd.dp_clip = None if dp is None or dp.noise_on_clients else dp.clip_norm
        rnd.distributed = None if plan.distributed is None else plan.round_mechanism(n)
        protocol = engine.secure.protocol(n, engine.attempts, rnd.distributed)
        rnd.secure = SecureStages(rnd.task_id, cohort, protocol, signed=engine.secure.signed)

    def _await_secure(self, rnd: _Round, deadline: float | None) -> dict[int, str]:
        """Play the round's SecAgg+ stages (holding the condition, released while the
        protocol computes), then hand the server the unmasked sum and fail the rest.

        The first stage, key advertising, follows training: it ends at the round's
        deadline or once enough clients advertised (the rest are surplus). Every later
        stage waits at most ``secagg_stage_timeout_s``. At any stage a client silent for
        ``client_timeout_s`` is dropped at once.
        """
        engine, srv, stages = self.engine, self.engine.server, rnd.secure
        assert stages is not None and engine.secure is not None
        while not stages.done and not self._stop.is_set():
            first = stages.stage == STAGES[0]
            until = deadline if first else time.time() + self.options.secagg_stage_timeout_s
            report = time.monotonic() + self.options.status_every_s
            while stages.waiting() and not self._stop.is_set():
                now = time.time()
                if time.monotonic() >= report:  # say whom the stage waits for
                    report = time.monotonic() + self.options.status_every_s
                    log.info(
                        "round %d, secure aggregation stage %s waits for %s",
                        srv.round + 1,
                        stages.stage,
                        _names(set(stages.waiting())),
                    )
                silent = now - self.options.client_timeout_s
                stages.drop(
                    [c for c in stages.waiting() if self._last_seen.get(c, -math.inf) < silent],
                    "disconnected",
                )
                if first and rnd.needed is not None and len(stages.replies) >= rnd.needed:
                    stages.drop(stages.waiting(), "surplus")
                if until is not None and now >= until:
                    stages.drop(stages.waiting(), "deadline" if first else "stage timeout")
                if stages.waiting():
                    self._cond.wait(0.2)
            if self._stop.is_set():
                break
            stage, replies = stages.close_stage()
            if stage == "masked_input" and engine.privacy.distributed is not None:
                # the budget, checked on the realised shares before the server unmasks
                refusal = engine.release_refusal(stages.cohort, shares=len(replies))
                if refusal is not None:
                    stages.refuse_sum(refusal)
                    engine.refuse_release(refusal)
                    break
            self._cond.release()  # the protocol's work: let the RPC threads answer meanwhile
            try:
                result = stages.run_step(stage, replies)
            finally:
                self._cond.acquire()
            stages.open_stage(result)
            if stages.abort is not None:
                log.warning("round %d: %s", srv.round + 1, stages.abort)
            self._cond.notify_all()
        if stages.total is not None:
            included = np.array(stages.included, dtype=np.int64)
            # the secure transform's server half: the unmasked ring sum back to float sums
            halves = secure_masking(engine.secure, rnd.dp_clip, rnd.distributed)
            secure = halves.server.decode(
                stages.total, included, len(stages.cohort), engine.attempts
            )
            sizes = self.sizes[included]
            caps = np.array([rnd.dispatches[int(c)].max_steps or NO_CAP for c in included])
            plans = [rnd.dispatches[int(c)].plan for c in included]
            try:  # a client may have encoded anything: the sum itself can be malformed
                srv.receive_secure_sum(secure, sizes, steps_for_each(sizes, plans, caps))
            except FedloomError as err:
                stages.refuse_sum(str(err))
                log.warning("round %d: %s", srv.round + 1, stages.abort)
            else:
                rnd.arrival.update({int(c): stages.arrival[int(c)] for c in included})
        if stages.abort is not None:  # nothing to release: not even central DP's noise alone
            srv.skip_round(stages.abort)
        failed: dict[int, str] = {}
        pending = srv.pending
        for cid in stages.cohort:
            if cid in pending:
                failed[cid] = stages.out.get(cid, "server stopping")
                srv.fail(cid, failed[cid])
        return failed

    def _await_cohort(self, rnd: _Round, deadline: float | None) -> dict[int, str]:
        """Wait (holding the condition) until no selected client is pending; fail the
        silent ones, the late ones and, once enough delivered, the surplus."""
        srv = self.engine.server
        failed: dict[int, str] = {}

        def fail(cid: int, reason: str) -> None:
            srv.fail(cid, reason)
            failed[cid] = reason
            if reason != "surplus":
                log.info("client %d dropped from round %d: %s", cid, srv.round + 1, reason)

        report = time.monotonic() + self.options.status_every_s
        while srv.pending and not self._stop.is_set():
            now = time.time()
            if time.monotonic() >= report:  # say whom the round waits for
                report = time.monotonic() + self.options.status_every_s
                log.info(
                    "round %d waits for %d of %d clients: %s (%s s to the deadline)",
                    srv.round + 1,
                    len(srv.pending),
                    len(rnd.dispatches),
                    _names(srv.pending),
                    "-" if deadline is None else f"{deadline - now:.0f}",
                )
            silent = now - self.options.client_timeout_s
            for cid in sorted(srv.pending):
                if self._last_seen.get(cid, -math.inf) < silent:
                    fail(cid, "disconnected")
            if rnd.needed is not None and len(rnd.applied) >= rnd.needed:
                for cid in sorted(srv.pending):
                    fail(cid, "surplus")
            if deadline is not None and now >= deadline:
                for cid in sorted(srv.pending):
                    fail(cid, "deadline")
            if srv.pending:
                self._cond.wait(0.2)
        for cid in sorted(srv.pending):  # stopping
            fail(cid, "server stopping")
        return failed

    def _finish_round(
        self, rnd: _Round, result: RoundResult, failed: dict[int, str], now: float
    ) -> None:
        """Registry, evaluation, privacy ledger, records and checkpoint, as in simulation."""
        engine = self.engine
        ids = result.clients.ids
        surplus = {cid for cid, why in failed.items() if why == "surplus"}
        # the clients failed before dispatch (too slow for the deadline) were asked too
        asked = np.array(sorted((set(rnd.dispatches) | set(failed)) - surplus), dtype=np.int64)
        # a client may retry after a refusal: only a refusal it never made good counts, and
        # it counts as the client's outcome even if the client then went silent (as in
        # RoundResult.excluded), so that the registry flags it by the refusal's kind
        refused = {cid: err for cid, err in rnd.rejected.items() if cid not in rnd.applied}
        engine.record_round(
            asked,
            result,
            np.array([rnd.arrival[int(i)] - rnd.started for i in ids]),
            {cid: why for cid, why in failed.items() if cid not in surplus | refused.keys()},
            refused,
            now=now,
        )
        self._report_clients(rnd, result)
        record = engine.finish_round(
            result,
            rnd.started,
            {
                "attempt": engine.attempts,
                "dispatched": len(rnd.dispatches),
                "dropped": count_reasons({c: w for c, w in failed.items() if c not in surplus}),
                "surplus": len(surplus),
                "partial": sum(d.max_steps is not None for d in rnd.dispatches.values()),
                "local_loss": mean_curve(list(rnd.loss_samples.values())),
                "bytes_up": rnd.bytes_up,
                "bytes_down": rnd.bytes_down,
                "refused_messages": dict(self.refused),
                # refusals by kind since the previous round's record
                "refused_in_round": dict(self.refused - self._refused_mark),
            }
            | self._secure_record(rnd)
            | self._compression_record(rnd),
            uploaded=sorted(rnd.rejected),  # local DP: refused uploads were seen too
        )
        self._refused_mark = self.refused.copy()
        for cid, declared, used in result.clamped:
            log.warning(
                "round %d: client-%06d declared %d examples; weighted as %d (its bound)",
                result.round,
                cid,
                declared,
                used,
            )
        log.info(
            "round %d %s: %d/%d updates, accuracy %s, loss %s",
            result.round,
            result.status,
            len(result.completed),
            len(rnd.dispatches),
            metric_text(record.get("accuracy")),
            metric_text(record.get("loss")),
        )

    def _report_clients(self, rnd: _Round, result: RoundResult) -> None:
        """What the round (or step) measured of its clients, before its record: the
        aggregated clients' reported evaluations (no central evaluation set) and every
        measured transfer rate (the registry's bandwidth estimates)."""
        engine = self.engine
        if isinstance(engine.evaluator, ReportedEvaluation):  # no central evaluation set
            completed = set(result.completed)
            engine.evaluator.report({c: e for c, e in rnd.evaluations.items() if c in completed})
        measured = np.array(sorted(rnd.up_kbps.keys() | rnd.down_kbps.keys()), dtype=np.int64)
        engine.registry.record_bandwidth(
            measured,
            np.array([rnd.up_kbps.get(int(c), np.nan) for c in measured]),
            np.array([rnd.down_kbps.get(int(c), np.nan) for c in measured]),
        )

    def _secure_record(self, rnd: _Round) -> dict[str, Any]:
        """The round's SecAgg+ facts for its record (nothing without secure aggregation;
        the keys of ``fedloom.metrics.SecAggRecord``, as in simulation)."""
        stages = rnd.secure
        if stages is None:
            return {}
        protocol = stages.protocol
        out: dict[str, Any] = {
            "included": len(stages.included),
            "cohort": len(stages.cohort),
            "neighbours": len(protocol.neighbours[0]),
            "threshold": protocol.threshold,
            "dropped": dict(stages.dropped),
            "server_s": stages.server_s,
            "masked_input_bytes": protocol.dim * protocol.bits // 8,
            "plain_upload_bytes": 4 * self.engine.server.dim,
        }
        if stages.abort is not None:
            out["aborted"] = stages.abort
        return {"secagg": out}

    # identity and refusals ----------------------------------------------------
    def _refuse(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, kind: _K, message: str
    ) -> NoReturn:
        self.refused[kind] += 1
        log.warning("refused (%s): %s", kind, message)
        context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort raises

    @contextmanager
    def _transfer(
        self, cid: int, kind: str, context: grpc.ServicerContext, slack: int
    ) -> Iterator[_Transfer]:
        """Register a download or upload with the stall watchdog, refused when ``cid``
        already has ``max_transfers_per_client`` open (a flood of streams from one client
        cannot take every slot or worker)."""
        limit = self.options.max_transfers_per_client
        transfer = _Transfer(cid, kind, context, slack)
        with self._transfer_lock:
            open_now = sum(t.cid == cid for t in self._transfers)
            if open_now < limit:
                self._transfers.add(transfer)
        if open_now >= limit:
            self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                _K.TOO_MANY_TRANSFERS,
                f"client-{cid} already has {open_now} transfers open (at most {limit}); "
                f"{kind} refused",
            )
        try:
            yield transfer
        finally:
            with self._transfer_lock:
                self._transfers.discard(transfer)

    def _watch_transfers(self) -> None:
        """Cancel transfers that stall (see ``_Transfer.stall``), which frees their slot
        and their worker thread; each is logged and counted as ``stalled``."""
        grace = self.options.transfer_grace_s
        rate = self.options.min_transfer_kbps * 1000 / 8
        while not self._stop.wait(min(0.25, max(grace / 4, 0.05))):
            now = time.monotonic()
            stalled: list[_Transfer] = []
            with self._transfer_lock:
                for t in self._transfers:
                    if t.stalled is None and (why := t.stall(now, grace, rate)):
                        t.stalled = why
                        stalled.append(t)
            for t in stalled:
                self.refused[_K.STALLED] += 1
                log.warning("refused (stalled): client-%d: %s; cancelled", t.cid, t.stalled)
                t.context.cancel()

    def _client(self, context: grpc.ServicerContext) -> int:
        """The calling client's id, from its certificate (or metadata when insecure)."""
        if self.options.insecure:
            name = dict(context.invocation_metadata()).get(METADATA_CLIENT)
        else:
            name = peer_name(context.auth_context())
        match = CLIENT_NAME.match(name or "")
        if match is None or int(match.group(1)) >= self.num_clients:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                _K.UNKNOWN_CLIENT,
                f"unknown client {name!r}: expected client-N with N < {self.num_clients}",
            )
        cid = int(match.group(1))
        with self._cond:
            self._last_seen[cid] = time.time()
        return cid

    # RPCs ---------------------------------------------------------------------
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        cid = self._client(context)
        size, entropy = self._join_report(cid, request, context)
        profile = None
        if request.HasField("profile"):
            try:
                profile = profile_from_pb(request.profile)
            except MessageError as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        with self._cond:
            if profile is not None:
                self._declare(cid, profile)
            # the lowest report wins: the weight of this client's updates never exceeds
            # what it declared at any join (see SyncServer.bound_examples)
            old = int(self.sizes[cid])
            self.sizes[cid] = size if old == 0 else min(old, size)
            self.holdout_sizes[cid] = int(request.holdout_examples)
            self._reports[cid] = (int(self.sizes[cid]), entropy)
            self.engine.server.bound_examples(np.array([cid]), np.array([size]))
            self._cond.notify_all()  # a round may be waiting for clients
        log.info(
            "client %d joined (%s): %d examples, %d held out, label histogram %s",
            cid,
            request.device or "unknown device",
            size,
            request.holdout_examples,
            "shared" if request.label_counts else "not shared",
        )
        with self._cond:
            online = self._online(time.time())
            if self._awaiting and len(online) < self.min_clients:
                self._log_waiting(online)
        return pb.JoinReply(
            client_id=cid,
            dim=self.engine.server.dim,
            run=self.engine.run_dir.path.name,
            heartbeat_s=self.options.heartbeat_s,
            chunk_bytes=self.options.chunk_bytes,
            version=self.engine.server.version,
            model=self._model_pb,
            client_transforms=self._transforms_pb,
            compression=self._compression_pb,
        )

    def _declare(self, cid: int, profile: DeviceProfile, save: bool = True) -> None:
        """What a joining client declared of its device: the engine's planner fits its
        work to it (memory, precision) and its profiled speed stands in until measured;
        kept in the run directory (``save``) for a restarted server."""
        self._profiles[cid] = profile
        if save:
            save_profiles(self.engine.run_dir.path / PROFILES_FILE, self._profiles)
        if self.engine.local_work is not None:
            self.engine.local_work.declare(np.array([cid]), [profile])
        if profile.ms_per_sample is not None:
            self._declared_sample_s[cid] = profile.ms_per_sample / 1e3

    def _join_report(
        self, cid: int, request: pb.JoinRequest, context: grpc.ServicerContext
    ) -> tuple[int, float]:
        """``cid``'s reported data size and label entropy, or a refusal (``bad_count``)
        naming what cannot be true: a count below 1 or above ``max_examples`` (so no
        client can dominate the FedAvg weights by what it claims), a negative hold-out, a
        label histogram with more classes than the model, negative counts, or counts that
        do not add up to the example count. A histogram not shared counts as balanced
        (the entropy of the uniform distribution)."""
        n, cap = int(request.num_examples), self.max_examples
        counts = np.array(request.label_counts, dtype=np.int64)
        why = None
        if n < 1:
            why = f"num_examples = {n}, expected >= 1"
        elif n > cap:
            why = (
                f"num_examples = {n} exceeds server.max_examples_per_client = {cap} "
                "(the most examples one client may report and weigh with)"
            )
        elif not 0 <= request.holdout_examples <= cap:
            why = f"holdout_examples = {request.holdout_examples}, expected 0..{cap}"
        elif counts.size > self.num_classes:
            why = (
                f"a label histogram of {counts.size} classes; the model has {self.num_classes}"
                if self.num_classes
                else "a label histogram, but the model's targets are not class labels"
            )
        elif counts.size and counts.min() < 0:
            why = f"a negative label count ({int(counts.min())})"
        elif counts.size and int(counts.sum()) != n:
            why = f"a label histogram sums to {int(counts.sum())}, but num_examples = {n}"
        if why is not None:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                _K.BAD_COUNT,
                f"client-{cid} joined with {why}",
            )
        if not counts.size:
            return n, math.log(self.num_classes) if self.num_classes else 0.0
        p = counts[counts > 0] / n
        return n, float(-(p * np.log(p)).sum())

    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatReply:
        self._client(context)  # identifies the caller and records that it is alive
        return pb.HeartbeatReply()

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        cid = self._client(context)
        wait = min(max(float(request.wait_s), 0.0), 30.0)
        until = time.time() + wait
        with self._cond:
            while True:
                if self._done.is_set() or (self.engine.finished and self._round is None):
                    return pb.Task(kind=pb.Task.DONE)
                rnd = self._round
                srv = self.engine.server
                if rnd is not None and cid in rnd.dispatches and cid in srv.pending:
                    # under SecAgg+ a client that began the protocol has its task already
                    secure = rnd.secure
                    if secure is None or (cid not in secure.started and cid not in secure.out):
                        return self._task(rnd, rnd.dispatches[cid])
                left = until - time.time()
                if left <= 0 or self._stop.is_set() or not context.is_active():
                    return pb.Task(kind=pb.Task.WAIT, retry_after_s=self.options.heartbeat_s)
                self._cond.wait(min(left, 1.0))
                self._last_seen[cid] = time.time()

    def _fit_work(
        self, dispatches: list[Dispatch], now: float
    ) -> tuple[list[Dispatch], dict[int, str]]:
        """With ``partial_work`` and a deadline, each client's local steps fitted to the
        time left after its download and upload (the registry's measured rates) at its
        speed: measured from its last upload, else declared in its profile, else unknown
        (the full work). A client that cannot finish ``partial_work`` steps is failed
        now, before it is told anything; the others get ``max_steps`` when it cuts."""
        least = self.partial_work
        if least is None or not dispatches or dispatches[0].deadline is None:
            return dispatches, {}
        srv = self.engine.server
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        sizes = self.sizes[ids]
        plans = [d.plan for d in dispatches]
        full = steps_for_each(sizes, plans)
        up, down = self.engine.registry.bandwidth(ids)
        nbytes = 4.0 * srv.dim
        with np.errstate(divide="ignore", invalid="ignore"):  # kbit/s; unknown: 0 s
            transfer = np.nan_to_num(nbytes / (down * 125.0) + nbytes / (up * 125.0), nan=0.0)
        speed = np.array(
            [self._sample_s.get(int(c), self._declared_sample_s.get(int(c), np.nan)) for c in ids]
        )
        step_s = speed * np.minimum(sizes, [p.batch_size for p in plans])
        fit = at_least(
            steps_within(full, step_s, dispatches[0].deadline - now - transfer), full, least
        )
        why = unfit_reason(least)
        kept, unfit = [], {}
        for d, f, n in zip(dispatches, fit.tolist(), full.tolist(), strict=True):
            if f == 0:
                srv.fail(d.client_id, why)
                unfit[d.client_id] = why
            else:
                kept.append(dataclasses.replace(d, max_steps=f) if f < n else d)
        return kept, unfit

    def _choose_settings(self, dispatches: list[Dispatch], now: float) -> list[Dispatch]:
        """Each client's codec setting for the round (compressed runs): with an
        ``adaptive`` policy, the densest whose upload ends within the round's planned
        length (``fedloom.compression.adaptive``) at the client's measured upload rate
        (the registry's estimate) after its measured download and its reported training
        time; the codec's default for a client not measured yet."""
        comp = self.engine.server.compression
        if comp is None or not dispatches:
            return dispatches
        deadline = dispatches[0].deadline
        if self.adaptive is None or deadline is None:
            return comp.assign(dispatches)
        ids = np.array([d.client_id for d in dispatches], dtype=np.int64)
        up, down = self.engine.registry.bandwidth(ids)
        dim = self.engine.server.dim
        with np.errstate(divide="ignore", invalid="ignore"):  # kbit/s -> bytes/s
            download = np.nan_to_num(4 * dim / (down * 125.0), nan=0.0, posinf=0.0)
        train = np.array([self._train_s.get(int(c), np.nan) for c in ids])
        settings = self.adaptive.plan(
            comp.codec,
            dim,
            comp.setting(dispatches[0].round, None),
            deadline - now,
            up * 125.0,
            np.zeros(len(ids)),
            download,
            train,
        )
        return comp.assign(dispatches, settings)

    def _compression_record(self, rnd: _Round) -> dict[str, Any]:
        srv = self.engine.server
        if srv.compression is None and srv.broadcast is None:
            return {}
        downloads = np.array(rnd.downloads, dtype=np.int64)
        record = compression_record(
            srv.compression, rnd.payloads, srv.dim, srv.broadcast, downloads
        )
        return {"compression": record}

    def _task(self, rnd: _Round, d: Dispatch) -> pb.Task:
        return pb.Task(
            kind=pb.Task.TRAIN,
            task_id=rnd.task_id,
            round=d.round,
            version=d.version,
            seed=d.seed,
            plan=plan_to_pb(d.plan),
            deadline_unix=d.deadline or 0.0,
            max_steps=d.max_steps or 0,
            local_dp=self._local_dp,
            secagg=self._secure_spec(rnd, d.client_id),
            compression=d.compression,
        )

    def _secure_spec(self, rnd: _Round, cid: int) -> pb.SecureTaskSpec | None:
        """``Task.secagg``: what ``cid`` needs for the round's secure sum, None if none."""
        stages, aggregator = rnd.secure, self.engine.secure
        if stages is None or aggregator is None:
            return None
        spec = SecureTaskSpec.for_client(
            aggregator,
            stages.index[cid],
            len(stages.cohort),
            stages.protocol.threshold,
            self.engine.attempts,
            rnd.dp_clip,
            rnd.distributed,
        )
        return spec.to_pb()

    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """The model's serialized ``DownloadChunk`` messages (``start`` registers this
        method with an identity response serializer: see ``fedloom.transport.download``)."""
        cid = self._client(context)
        version, base = int(request.version), int(request.base_version)
        with self._cond:
            known = version in self._models
            rnd = self._accounting()
            dispatch = rnd.dispatches.get(cid) if rnd is not None else None
            deadline = None if dispatch is None else dispatch.deadline
        if not known:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                _K.STALE_VERSION,
                f"model version {version} is not available (current {self.engine.server.version})",
            )
        messages, payload_bytes = self._prepared(version, base)
        with self._transfer(cid, "download", context, self.options.chunk_bytes) as transfer:
            transfer.total = payload_bytes
            with self._scheduler.slot(deadline):
                transfer.granted()
                started = time.perf_counter()
                for message in messages:
                    if self._bandwidth is not None:  # the server's shared download budget
                        self._bandwidth.take(len(message))
                    yield message
                    transfer.done += len(message)
                # the first chunk only fills buffers: time the rest
                first = min(payload_bytes, self.options.chunk_bytes)
                kbps = _kbps(payload_bytes - first, time.perf_counter() - started)
        self._downloaded(rnd, cid, payload_bytes, kbps)

    def _downloaded(self, rnd: _Round | None, cid: int, payload_bytes: int, kbps: float) -> None:
        """Count a finished download towards ``rnd``, the round it began in, if that round
        is still open (a download for a closed round counts towards none)."""
        with self._cond:
            if self._accounting() is rnd and rnd is not None:
                rnd.bytes_down += payload_bytes
                rnd.downloads.append(payload_bytes)
                rnd.down_kbps[cid] = kbps

    def _accounting(self) -> _Round | None:
        """The round (or asynchronous step) that transfers now count towards (call under
        the lock)."""
        return self._round

    def _prepared(self, version: int, base: int) -> tuple[list[bytes], int]:
        """The serialized chunk messages of model ``version`` (an XOR delta against
        ``base`` when the server still holds it) and the payload size, built once and shared
        by every client that asks: encoding, hashing, compressing and serializing per
        request would cost more than sending."""
        with self._prepare_lock:
            with self._cond:
                model = self._models.get(version)
                old = self._models.get(base) if base != version else None
                if model is None:
                    raise FedloomError(f"model version {version} is no longer held")
                for key in [k for k in self._downloads if k[0] not in self._models]:
                    del self._downloads[key]
            chain = self._chain(version, base)
            key = (version, base if old is not None or chain is not None else -1)
            if key not in self._downloads:
                raw = wire.to_bytes(model)
                if chain is not None:
                    payload, encoding = chain, download.CODEC_CHAIN
                elif old is not None:
                    payload, encoding = wire.xor_delta(model, old), "xor-zlib"
                else:
                    payload, encoding = raw, "raw"
                header = pb.DownloadHeader(
                    version=version,
                    base_version=key[1],
                    encoding=encoding,
                    payload_bytes=len(payload),
                    dim=model.shape[0],
                    sha256=wire.digest(raw),
                )
                self._downloads[key] = (
                    download.encode(header, payload, self.options.chunk_bytes),
                    len(payload),
                )
            return self._downloads[key]

    def _chain(self, version: int, base: int) -> bytes | None:
        """Compressed downloads: the encoded deltas from ``base`` to the current
        ``version`` (None: the whole model is sent, the exact fallback)."""
        broadcast = self.engine.server.broadcast
        if broadcast is None or version != broadcast.version:
            return None
        with self._cond:
            return broadcast.chain(base)

    def Upload(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadReply:
        cid = self._client(context)
        with self._transfer(cid, "upload", context, wire.CHUNK_BYTES) as transfer:
            try:
                return self._upload(cid, transfer, request_iterator, context)
            except grpc.RpcError:  # the stream was cancelled while being read
                if transfer.stalled is None:
                    raise
                return pb.UploadReply(accepted=False, reason=transfer.stalled)

    def _upload(
        self,
        cid: int,
        transfer: _Transfer,
        request_iterator: Iterator[pb.UploadChunk],
        context: grpc.ServicerContext,
    ) -> pb.UploadReply:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        first = next(request_iterator, None)
        if first is None and (transfer.stalled or not context.is_active()):  # cancelled
            return pb.UploadReply(accepted=False, reason=transfer.stalled or "stream cancelled")
        if first is None or not first.HasField("header"):
            self._refuse(context, invalid, _K.MALFORMED, "upload must start with a header")
        h = first.header
        known, dispatch, secure = self._upload_task(cid, h.task_id)
        deadline = None if dispatch is None else dispatch.deadline
        # under SecAgg+ the upload is the masked input: an integer vector of the ring
        dim, dtype = (
            (self.engine.server.dim, np.dtype(np.float32))
            if secure is None
            else (secure.protocol.dim, secure.protocol.dtype)
        )
        comp = self.engine.server.compression
        if comp is not None and secure is None:  # a codec payload of at most its bound
            if dispatch is not None:
                limit = comp.codec.size_bound(
                    dim, comp.setting(dispatch.round, dispatch.compression)
                )
            else:  # a late retry of the closed round: any setting it may have had
                settings = [
                    comp.setting(max(int(h.round), 1), s) for s in (*comp.codec.ladder, None)
                ]
                limit = max(comp.codec.size_bound(dim, s) for s in settings)
            if h.dim != dim or h.dtype != ENCODED or not 0 < h.payload_bytes <= limit:
                self._refuse(
                    context,
                    invalid,
                    _K.WRONG_SHAPE,
                    f"update of dim {h.dim}, dtype {h.dtype!r}, {h.payload_bytes} bytes; "
                    f"expected dim {dim}, {ENCODED!r}, 1..{limit} bytes",
                )
        elif h.dim != dim or h.dtype != dtype.name or h.payload_bytes != dtype.itemsize * dim:
            self._refuse(
                context,
                invalid,
                _K.WRONG_SHAPE,
                f"update of dim {h.dim}, dtype {h.dtype!r}, {h.payload_bytes} bytes; expected "
                f"dim {dim}, {dtype.name!r}, {dtype.itemsize * dim} bytes",
            )
        if not known:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                _K.STALE_TASK,
                f"task {h.task_id!r} is not open for client-{cid}",
            )
        parts, size = [first.data], len(first.data)
        transfer.total, transfer.done = h.payload_bytes, size
        with self._scheduler.slot(deadline):
            transfer.granted()
            started = time.perf_counter()
            for chunk in request_iterator:
                size += len(chunk.data)
                transfer.done = size
                if size > h.payload_bytes:
                    self._refuse(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        _K.OVERSIZED,
                        f"upload exceeds its declared {h.payload_bytes} bytes",
                    )
                parts.append(chunk.data)
            kbps = _kbps(size - len(first.data), time.perf_counter() - started)
        if transfer.stalled is not None:  # cancelled by the watchdog: counted there
            return pb.UploadReply(accepted=False, reason=transfer.stalled)
        payload = b"".join(parts)
        if len(payload) != h.payload_bytes or wire.digest(payload) != h.sha256:
            self._refuse(
                context, invalid, _K.CORRUPT, "upload is truncated or fails its sha256 check"
            )
        if secure is not None:
            return self._apply_masked(cid, h, payload, context, kbps, secure)
        return self._apply(cid, h, payload, context, kbps)

    def _upload_task(
        self, cid: int, task_id: str
    ) -> tuple[bool, Dispatch | None, SecureStages | None]:
        """Whether ``task_id`` may take an upload from ``cid`` (its open task, or a late
        retry of the round closed last), that task's dispatch while it is open, and its
        SecAgg+ state (None: a plain upload)."""
        with self._cond:
            rnd = self._round
            if rnd is not None and task_id == rnd.task_id and cid in rnd.dispatches:
                return True, rnd.dispatches[cid], rnd.secure
            return task_id == self._closed_task and cid in self._closed, None, None

    def _apply_masked(
        self,
        cid: int,
        h: pb.UploadHeader,
        payload: bytes,
        context: grpc.ServicerContext,
        kbps: float,
        secure: SecureStages,
    ) -> pb.UploadReply:
        """A masked input for the SecAgg+ ``masked_input`` stage (retries taken once)."""
        dtype = secure.protocol.dtype
        y = np.frombuffer(payload, dtype=dtype.newbyteorder("<")).astype(dtype)
        message = MaskedInput(secure.protocol.round_id, "masked_input", secure.index[cid], y)
        with self._cond:
            rnd = self._round
            try:
                if rnd is None or rnd.secure is not secure:
                    raise SecAggError("round closed")
                duplicate = secure.submit(cid, "masked_input", message, h.sha256)
            except SecAggError as err:
                why = f"masked input for task {h.task_id!r} from client-{cid}: {err}"
            else:
                if not duplicate:
                    rnd.bytes_up += len(payload)
                    rnd.up_kbps[cid] = kbps
                    self._cond.notify_all()
                return pb.UploadReply(accepted=True, duplicate=duplicate)
        self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, _K.SECAGG, why)

    # secure aggregation -------------------------------------------------------
    def _secure_round(
        self, cid: int, task_id: str, context: grpc.ServicerContext
    ) -> tuple[_Round, SecureStages]:
        """The open SecAgg+ round of ``task_id`` that ``cid`` is in (call under the lock)."""
        rnd = self._round
        if rnd is None or rnd.task_id != task_id or rnd.secure is None:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                _K.STALE_TASK,
                f"no secure aggregation is open for task {task_id!r}",
            )
        if cid not in rnd.secure.index:
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                _K.SECAGG,
                f"client-{cid} is not in the cohort of task {task_id!r}",
            )
        return rnd, rnd.secure

    def SecAggFetch(
        self, request: pb.SecAggFetchRequest, context: grpc.ServicerContext
    ) -> pb.SecAggMessage:
        cid = self._client(context)
        until = time.time() + min(max(float(request.wait_s), 0.0), 30.0)
        with self._cond:
            while True:
                rnd, secure = self._secure_round(cid, request.task_id, context)
                try:
                    message = secure.fetch(cid, request.stage)
                except SecAggError as err:
                    self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, _K.SECAGG, str(err))
                if message is not None:
                    rnd.bytes_down += message.ByteSize()
                    return message
                left = until - time.time()
                if left <= 0 or self._stop.is_set() or not context.is_active():
                    wait = self.options.heartbeat_s
                    return pb.SecAggMessage(task_id=request.task_id, wait_s=wait)
                self._cond.wait(min(left, 1.0))
                self._last_seen[cid] = time.time()

    def SecAggSend(self, request: pb.SecAggMessage, context: grpc.ServicerContext) -> pb.SecAggAck:
        cid = self._client(context)
        if request.WhichOneof("body") == "abort":  # the client leaves the protocol
            with self._cond:
                _, secure = self._secure_round(cid, request.task_id, context)
                secure.drop([cid], "left")
                log.info("client %d left the secure sum: %s", cid, request.abort[:200])
                self._cond.notify_all()
            return pb.SecAggAck()
        stage = CLIENT_STAGE.get(request.WhichOneof("body") or "")
        if stage is None:
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                _K.MALFORMED,
                f"SecAggSend carries {request.WhichOneof('body')!r}, not a client reply",
            )
        digest = wire.digest(request.SerializeToString(deterministic=True))
        with self._cond:
            rnd, secure = self._secure_round(cid, request.task_id, context)
            try:
                message = client_from_pb(request, stage, secure.index[cid], len(secure.cohort))
                if secure.signed and stage == "advertise_keys":
                    certificate = peer_certificate(context.auth_context())
                    if certificate is not None:
                        secure.attach_certificate(cid, certificate)
                duplicate = secure.submit(cid, stage, message, digest)
            except SecAggError as err:
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, _K.SECAGG, str(err))
            if not duplicate:
                rnd.bytes_up += request.ByteSize()
                self._cond.notify_all()
        return pb.SecAggAck(duplicate=duplicate)

    def _reported(
        self, cid: int, h: pb.UploadHeader, context: grpc.ServicerContext
    ) -> tuple[float, float, int] | None:
        """The upload's reported evaluation (loss, accuracy, examples), None when it has
        none or its client joined an earlier server process; a refusal if it is invalid."""
        if not h.eval_examples:
            return None
        with self._cond:
            holdout = self.holdout_sizes.get(cid)
        refusal = reported_evaluation_error(h, holdout)
        if refusal is not None:
            kind, why = refusal
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, kind, f"client-{cid}: {why}")
        if holdout is None:  # joined an earlier server process: its hold-out is unknown
            return None
        return float(h.eval_loss), float(h.eval_accuracy), int(h.eval_examples)

    def _apply(
        self,
        cid: int,
        h: pb.UploadHeader,
        payload: bytes,
        context: grpc.ServicerContext,
        kbps: float,
    ) -> pb.UploadReply:
        evaluation = self._reported(cid, h, context)
        update = upload_update(cid, h, payload, self.engine.server)
        with self._cond:
            rnd = self._round
            current = rnd is not None and rnd.task_id == h.task_id
            # a retry may arrive after its round closed: remember the last round's uploads
            applied: dict[int, bytes] = {}
            if current and rnd is not None:
                applied = rnd.applied
            elif h.task_id == self._closed_task:
                applied = self._closed
            if cid in applied:
                if applied[cid] == h.sha256:
                    return pb.UploadReply(accepted=True, duplicate=True)
                code, kind = grpc.StatusCode.ALREADY_EXISTS, _K.REPLAY
                why = f"a different update from client-{cid} was already applied to this task"
            elif not current or rnd is None:
                code, kind, why = grpc.StatusCode.FAILED_PRECONDITION, _K.STALE_TASK, "round closed"
            else:
                try:
                    self.engine.server.receive(update)
                except UpdateRejected as err:
                    rnd.rejected[cid] = err
                    code, kind = grpc.StatusCode.INVALID_ARGUMENT, err.kind
                    why = str(err)
                else:
                    self._applied(rnd, cid, h, len(payload), evaluation, kbps)
                    self._cond.notify_all()
                    return pb.UploadReply(accepted=True)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            why = f"update for task {h.task_id!r} from client-{cid} is stale: {why}"
        self._refuse(context, code, kind, why)

    def _applied(
        self,
        rnd: _Round,
        cid: int,
        h: pb.UploadHeader,
        nbytes: int,
        evaluation: tuple[float, float, int] | None,
        kbps: float,
    ) -> None:
        """Note an accepted upload in its round (or step), under the lock: its digest
        (retries), reported evaluation, arrival, bytes, measured rate and training time."""
        rnd.applied[cid] = h.sha256
        if evaluation is not None:
            rnd.evaluations[cid] = evaluation
        rnd.arrival[cid] = time.perf_counter()
        rnd.bytes_up += nbytes
        rnd.up_kbps[cid] = kbps
        rnd.loss_samples[cid] = tuple(h.loss_samples)
        if math.isfinite(h.train_s) and h.train_s >= 0:
            self._train_s[cid] = float(h.train_s)
            samples = h.epochs * h.num_examples
            if h.train_s > 0 and math.isfinite(samples) and samples >= 1:
                self._sample_s[cid] = float(h.train_s / samples)


PROFILES_FILE = "device_profiles.json"


def save_profiles(path: Path, profiles: Mapping[int, DeviceProfile]) -> None:
    """The declared profiles by client id, written atomically."""
    data = {str(cid): dataclasses.asdict(p) for cid, p in sorted(profiles.items())}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_profiles(path: Path) -> dict[int, DeviceProfile]:
    """The profiles :func:`save_profiles` wrote (none if the file does not exist); a
    damaged file is refused with its path, never half-read."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {int(cid): DeviceProfile(**fields) for cid, fields in data.items()}
    except (ValueError, TypeError, AttributeError, ConfigError) as err:
        raise CheckpointError(f"{str(path)!r}: not a device profile file ({err})") from None


def upload_update(cid: int, h: pb.UploadHeader, payload: bytes, server: Any) -> Update:
    """The ``Update`` an upload carries (``server``: the engine's server, for the model's
    dimension and whether payloads are codec-encoded, decoded on receipt)."""
    compressed = server.compression is not None
    return Update(
        cid,
        int(h.round),
        int(h.version),
        np.zeros(0, np.float32) if compressed else wire.as_float32(payload, server.dim, "update"),
        int(h.num_examples),
        ClientMetrics(
            float(h.train_loss),
            int(h.steps),
            float(h.epochs),
            h.train_loss_sq,
            tuple(h.loss_samples),
        ),
        payload=payload if compressed else None,
    )


def reported_evaluation_error(h: pb.UploadHeader, holdout: int | None) -> tuple[_K, str] | None:
    """Why the evaluation an upload reports cannot be taken, with the refusal's kind
    (None if it can): a loss that is not finite or negative, an accuracy outside [0, 1],
    or more examples than the hold-out the client reported at its join (``holdout``;
    None: it joined an earlier server process, so the report is not used)."""
    loss, accuracy, n = float(h.eval_loss), float(h.eval_accuracy), int(h.eval_examples)
    if not math.isfinite(loss) or not math.isfinite(accuracy):
        return _K.NONFINITE, f"eval_loss = {loss}, eval_accuracy = {accuracy}"
    if loss < 0 or not 0.0 <= accuracy <= 1.0:
        return _K.MALFORMED, f"eval_loss = {loss} (>= 0), eval_accuracy = {accuracy} (0..1)"
    if n < 0 or (holdout is not None and n > holdout):
        limit = "?" if holdout is None else holdout
        return _K.BAD_COUNT, f"eval_examples = {n}, expected 0..{limit} (its hold-out at join)"
    return None


def _names(ids: list[int] | set[int], most: int = 20) -> str:
    """Client names for a log line: the first ``most`` of ``ids``, then how many more."""
    ordered = sorted(ids)
    text = ", ".join(f"client-{c:06d}" for c in ordered[:most]) or "none"
    return text + (f" and {len(ordered) - most} more" if len(ordered) > most else "")


def _kbps(nbytes: int, seconds: float) -> float:
    """A transfer's rate in kbit/s; NaN when nothing was timed (a one-chunk payload)."""
    return nbytes * 8 / 1000 / seconds if nbytes > 0 and seconds > 0 else float("nan")
