"""The deployment client: one process per device, training what the server asks for.

It joins, then loops: long-poll for a task, download the model (an exact delta when it
holds an older version), train it with the same ``TorchTrainer`` and seed the simulator
uses, and stream the update back. Every call is retried on transient failures
(unavailable server, reset connection, timeout) with exponential backoff and full jitter,
so a client rides out network faults and server restarts by itself. Uploads are
idempotent on the server (client, task, version), so retrying one after a lost reply
never applies it twice. A heartbeat thread keeps the client counted as online.

References: Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import torch

from fedloom.edge.profiles import DeviceProfile, detect_profile
from fedloom.errors import ConfigError, FedloomError
from fedloom.privacy.mechanisms import SecureNoise
from fedloom.records import ClientMetrics, TrainPlan
from fedloom.secagg.crypto import SecAggError
from fedloom.secagg.protocol import (
    STAGES,
    AdvertiseRequest,
    MaskedInput,
    NeighbourKeys,
    SecAggClient,
)
from fedloom.transport import download, wire
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport import fedloom_pb2_grpc as rpc
from fedloom.transport.certs import (
    METADATA_CLIENT,
    CertError,
    Identity,
    channel_credentials,
    load_identity,
    signing_key,
    verified_client_key,
)
from fedloom.transport.download import CODEC_CHAIN
from fedloom.transport.messages import (
    MAX_MODEL_PARAMETERS,
    CompressionSpec,
    LocalDP,
    MessageError,
    ModelSpec,
    check_trusted,
    plan_from_pb,
    profile_to_pb,
)
from fedloom.transport.secagg_wire import client_to_pb, server_from_pb
from fedloom.transport.secure_round import SecureTaskSpec

if TYPE_CHECKING:
    from fedloom.attacks.base import Attack
    from fedloom.data.arrays import ArrayDataset

log = logging.getLogger("fedloom.client")

TRANSFORM_STATE = "transform_state.npz"
"""A client's update-transform state, in its data folder (written atomically)."""
COMPRESSION_STATE = "compression_state.npz"
"""A client's compression state (error-feedback residual), in its data folder."""
T = TypeVar("T")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class ServerGone(FedloomError):
    """The server stayed unreachable for longer than the client's patience."""


class TLSFailure(FedloomError):
    """The TLS handshake failed in a way retrying cannot fix (a certificate the other
    side does not trust, a host name the server's certificate does not name)."""


# gRPC reports a failed handshake as UNAVAILABLE, like a transient outage; these details
# mean the certificates themselves are wrong, so every retry would fail the same way
_PERMANENT_TLS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"Hostname Verification Check failed|Peer name .* is not in peer certificate"),
        "the server's certificate does not name the host in --server (issue it with "
        "`fedloom certs issue server --server --host HOST`)",
    ),
    (
        re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"),
        "the server's certificate is not signed by this client's CA (ca.pem) or has expired",
    ),
)


def permanent_tls_failure(details: str) -> str | None:
    """What is wrong, when a failed call's ``details`` show a TLS failure that retrying
    cannot fix; None otherwise."""
    for pattern, cause in _PERMANENT_TLS:
        if pattern.search(details or ""):
            return cause
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; give up after ``patience_s`` of failures."""

    base_s: float = 0.2
    cap_s: float = 5.0
    patience_s: float = 120.0
    call_timeout_s: float = 60.0

    def delays(self, rng: random.Random) -> Iterator[float]:
        attempt = 0
        while True:
            yield rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
            attempt += 1


@dataclass
class ClientStats:
    rounds: int = 0
    retries: int = 0
    duplicates: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def with_retries(
    what: str, fn: Callable[[], T], policy: RetryPolicy, rng: random.Random, stats: ClientStats
) -> T:
    """``fn()`` retried on transient gRPC failures and damaged transfers (backoff with full
    jitter) until ``policy.patience_s`` of failures; then ``ServerGone``."""
    started = time.monotonic()
    delays = policy.delays(rng)
    while True:
        try:
            return fn()
        except (grpc.RpcError, wire.WireError) as err:
            if isinstance(err, wire.WireError):  # a damaged transfer: fetch it again
                problem = str(err)
            else:
                code = err.code() if hasattr(err, "code") else None
                if code not in TRANSIENT:
                    raise
                details = err.details() if hasattr(err, "details") else ""
                cause = permanent_tls_failure(details) if code == UNAVAILABLE else None
                if cause is not None:
                    raise TLSFailure(f"{what}: TLS handshake failed: {cause}") from None
                problem = f"{code.name if code else 'error'}: {details}"
            if time.monotonic() - started > policy.patience_s:
                raise ServerGone(
                    f"{what}: no success for {policy.patience_s:.0f} s ({problem})"
                ) from None
            stats.retries += 1
            delay = next(delays)
            log.info("%s failed (%s); retrying in %.2f s", what, problem, delay)
            time.sleep(delay)


class _BackgroundHash:
    """sha256 computed in a second thread while the next chunks arrive (hashlib releases
    the GIL on large inputs), so checking a download costs little beyond receiving it.
    ``update`` takes bytes or a view of them, which must not change until ``digest``."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pool = futures.ThreadPoolExecutor(max_workers=1)  # one worker: in order

    def update(self, data: bytes | memoryview) -> None:
        self._pool.submit(self._hash.update, data)

    def digest(self) -> bytes:
        self._pool.shutdown(wait=True)
        return self._hash.digest()

    def __enter__(self) -> _BackgroundHash:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RateLimiter:
    """Caps the upload rate as a link of that rate would: each chunk is released once the
    link would have carried it (its turn, after the chunks before it, plus its own size
    at the rate), so even a one-chunk upload takes its size over the rate."""

    def __init__(self, kbps: float | None) -> None:
        self.bytes_per_s = None if kbps is None else kbps * 1000 / 8
        self._next = time.monotonic()

    def restart(self) -> None:
        """A new attempt of a transfer: chunks of a failed attempt that were still
        waiting for their turn never went out, so they no longer hold the link."""
        self._next = min(self._next, time.monotonic())

    def take(self, nbytes: int) -> None:
        if self.bytes_per_s is None:
            return
        now = time.monotonic()
        start = max(self._next, now)  # this chunk's turn
        self._next = start + nbytes / self.bytes_per_s
        time.sleep(self._next - now)


def _check_data_owner(data_dir: Path, name: str) -> None:
    """Refuse a data folder exported for another client than ``name`` (the certificate's
    client): its updates would be trained on someone else's data under this identity."""
    from fedloom.data.storage import recorded_client
    from fedloom.errors import DataError
    from fedloom.transport.certs import CLIENT_NAME

    recorded = recorded_client(data_dir)
    match = CLIENT_NAME.match(name)
    if recorded is None:
        log.warning("%s records no client id (exported by an older fedloom)", data_dir)
    elif match is None or int(match.group(1)) != recorded:
        raise DataError(
            f"--data {str(data_dir)!r} holds the data of client {recorded} "
            f"(client-{recorded}), but this client is {name!r}: use the folder exported "
            f"for {name}"
        )


OMNISCIENT_ATTACKS = ("alie", "min_max", "min_sum")
"""Attacks a deployment client refuses: they craft from the round's honest updates, which
a client never sees, and the attacks' fallback estimate (``attacks.base.reference``:
the malicious clients' own updates) is one row here, whose spread is zero, so each would
send its honest update unchanged. IPM needs only the benign mean, which its own update
estimates: it is accepted (``-epsilon`` times its own update)."""


def attack_params(items: Sequence[str]) -> dict[str, object]:
    """``--attack-param name=value`` items as an attack's params; values are read as TOML
    (``100``, ``0.5``, ``"std"``), else kept as strings (``std``)."""
    params: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--attack-param {item!r}: expected name=value")
        try:
            params[name.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            params[name.strip()] = text.strip()
    return params


def malicious_attack(kind: str, params: Mapping[str, object]) -> Attack:
    """The attack a malicious deployment client applies to its own update and data
    (``fedloom client --attack``); ``ConfigError`` for an unknown kind or parameter and
    for the omniscient attacks (:data:`OMNISCIENT_ATTACKS`)."""
    from fedloom.attacks import build_attack

    if kind in OMNISCIENT_ATTACKS:
        raise ConfigError(
            f"--attack {kind!r}: an omniscient attack crafts its update from the other "
            "clients' honest updates of the round, which a deployment client never sees; "
            "from its own update alone it would send that update unchanged (the spread of "
            f"one update is zero). Simulate it instead: [attack] kind = {kind!r}"
        )
    return build_attack(kind, params)


def poison_own(attack: Attack, train: ArrayDataset, rng: np.random.Generator) -> ArrayDataset:
    """This client's training data poisoned by ``attack`` (all of it is the malicious
    client's; a copy, ``train`` is unchanged): the data it then trains on honestly. A
    backdoor without ``trigger_value`` stamps this client's largest value, as the
    simulator stamps the training data's (``build_adversary``)."""
    from dataclasses import replace

    from fedloom.attacks import Backdoor
    from fedloom.data.arrays import ArrayDataset, ClientPartition

    if not attack.poisons:
        return train
    if isinstance(attack, Backdoor) and attack.trigger_value is None:
        attack = replace(attack, trigger_value=float(train.x.max()) if train.x.size else 1.0)
    offsets = np.array([0, len(train)], dtype=np.int64)
    pool = ClientPartition(train.x, train.y, offsets, train.num_classes)
    poisoned = attack.poison(pool, np.array([0], dtype=np.int64), rng)
    return ArrayDataset(poisoned.x, poisoned.y, train.num_classes, train.groups)


def craft_own(attack: Attack, delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The float32 vector a malicious client uploads instead of its honestly trained
    ``delta``: the attack's row for a round of one malicious client that knows no honest
    update (what the simulator's ``Adversary.act`` does for a cohort)."""
    own = np.asarray(delta, dtype=np.float32).reshape(1, -1)
    rows = attack.craft(own, np.empty((0, own.shape[1]), np.float32), rng)
    return np.asarray(rows, dtype=np.float32).reshape(delta.shape)


class DeploymentClient:
    """A client process's connection, data and trainer."""

    def __init__(
        self,
        target: str,
        data_dir: Path,
        *,
        name: str | None = None,
        certs: Path | None = None,
        insecure: bool = False,
        max_upload_kbps: float | None = None,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
        threads: int = 1,
        share_labels: bool = False,
        trust: tuple[str, ...] = (),
        attack: Attack | None = None,
        claim_examples: int | None = None,
        profile: DeviceProfile | None = None,
    ) -> None:
        """``profile``: what this device declares it runs (memory, int8, fp16/bf16,
        threads, architecture; default: this machine's, :func:`detect_profile`), so the
        server fits its batch, precision and local steps to it. ``threads``: torch
        threads for local training (small models train fastest on one; several client
        processes on one machine must not oversubscribe it);
        ``share_labels``: report this client's label histogram when it joins (by default
        it reports only its example counts); ``trust``: packages whose code the server
        may name (a ``module:`` model or transform); any other is refused.

        A malicious client, for testing a run's defences: ``attack`` (from
        :func:`malicious_attack`) poisons its training data when it loads and crafts each
        upload from its honestly trained update, before its transforms, compression and
        local DP (where the simulator's adversary acts), drawing from the OS-seeded
        generator; ``claim_examples``: the example count every upload declares (the join
        reports the true count, the bound the server clamps a larger claim to)."""
        from fedloom.data.storage import read_client

        if not insecure and certs is not None and (Path(certs) / "ca.key").exists():
            raise FedloomError(
                f"--certs {str(certs)!r} holds the CA's private key (ca.key): a device needs "
                "only its bundle, ca.pem and its own certificate and key (`fedloom certs "
                "issue` writes it to DIR/NAME/)"
            )
        torch.set_num_threads(threads)
        train, holdout = read_client(data_dir)
        if share_labels and train.targets != "classes":
            raise FedloomError(
                f"--share-labels reports a label histogram, but this client's targets are "
                f"{train.targets}, not class labels"
            )
        if claim_examples is not None and claim_examples < 1:
            raise ConfigError(f"--claim-examples {claim_examples}: expected >= 1")
        self.attack = attack
        self.claim_examples = claim_examples
        self.attack_rng = np.random.default_rng()  # the device's own, unseeded
        # the join's report below describes the data as it was, not as poisoned
        honest = train
        if attack is not None:
            train = poison_own(attack, train, self.attack_rng)
        self.data = train
        self.trust = tuple(trust)
        self.x = torch.from_numpy(train.x)
        self.y = torch.from_numpy(train.y)
        self.holdout = (
            None
            if holdout is None or not len(holdout.y)
            else (torch.from_numpy(holdout.x), torch.from_numpy(holdout.y))
        )
        # what this client reports about its data at its join (the server holds none)
        self.report = pb.JoinRequest(
            num_examples=len(train.y),
            holdout_examples=0 if holdout is None else len(holdout.y),
            label_counts=(
                np.bincount(honest.y, minlength=honest.num_classes).tolist() if share_labels else []
            ),
            device="cpu",
            profile=profile_to_pb(profile or detect_profile()),
        )
        self.name = name or Path(data_dir).name
        _check_data_owner(data_dir, self.name)
        if attack is not None or claim_examples is not None:
            log.warning(
                "MALICIOUS client %s: attack %s; each upload declares %s",
                self.name,
                "none" if attack is None else repr(attack),
                "its true example count"
                if claim_examples is None
                else f"{claim_examples} examples (the join reports {len(train)})",
            )
        # the update transforms the server names at join, and their state (this client's)
        self.transform_state_path = Path(data_dir) / TRANSFORM_STATE
        self.transforms: Any = None
        self.transform_state: dict[str, Any] = {}
        # the upload codec the server names at join, and this client's residual for it
        self.compression_state_path = Path(data_dir) / COMPRESSION_STATE
        self.compression: Any = None
        self.compression_state: dict[str, Any] = {}
        self.download_codec: Any = None  # compressed downloads' codec (None: float32)
        self.client_id = -1
        self.retry = retry or RetryPolicy()
        self.rng = random.Random(seed)
        self.limiter = RateLimiter(max_upload_kbps)
        self.stats = ClientStats()
        self._metadata: tuple[tuple[str, str], ...] = ()
        self.identity: Identity | None = None
        self._signed_rounds: set[bytes] = set()  # SecAgg+ round ids this client signed for
        if insecure:
            log.warning("connecting WITHOUT TLS to %s as %s", target, self.name)
            self.channel = grpc.insecure_channel(target, options=wire.channel_options())
            self._metadata = ((METADATA_CLIENT, self.name),)
        else:
            if certs is None:
                raise FedloomError("certs is required unless insecure is set (mTLS is default)")
            self.identity = load_identity(certs, self.name)
            self.channel = grpc.secure_channel(
                target, channel_credentials(self.identity), options=wire.channel_options()
            )
        self.stub = rpc.FedloomStub(self.channel)
        self.held: tuple[int, np.ndarray] | None = None  # (version, params)
        self._stop = threading.Event()
        self.trainer = None

    def _declared_examples(self) -> int:
        """The example count an upload declares: the true one, or the claimed one."""
        return len(self.y) if self.claim_examples is None else self.claim_examples

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return with_retries(what, fn, self.retry, self.rng, self.stats)

    # the loop -------------------------------------------------------------------
    def run(self) -> ClientStats:
        """Serve the server until it says the run is done."""
        reply = self._call(
            "join",
            lambda: self.stub.Join(
                self.report,
                metadata=self._metadata,
                timeout=self.retry.call_timeout_s,
            ),
        )
        self._setup(reply)
        beat = threading.Thread(target=self._heartbeats, args=(reply.heartbeat_s,), daemon=True)
        beat.start()
        try:
            while True:
                task = self._call(
                    "get task",
                    lambda: self.stub.GetTask(
                        pb.TaskRequest(wait_s=10.0),
                        metadata=self._metadata,
                        timeout=self.retry.call_timeout_s,
                    ),
                )
                if task.kind == pb.Task.DONE:
                    return self.stats
                log.debug("task %s (%s)", task.task_id, pb.Task.Kind.Name(task.kind))
                if task.kind == pb.Task.WAIT:
                    time.sleep(min(task.retry_after_s, 1.0) * self.rng.random())
                    continue
                self._work(task)
        finally:
            self._stop.set()
            beat.join()  # no heartbeat may start on a closed channel
            self.channel.close()

    def _setup(self, reply: pb.JoinReply) -> None:
        """Build the model the server names, once its spec passes its checks and its size
        matches the server's ``dim`` (before anything is allocated)."""
        from fedloom.client.trainer import TorchTrainer
        from fedloom.task import check_fit

        if not reply.HasField("model"):
            raise MessageError("join reply: model is missing")
        spec = ModelSpec.from_pb(reply.model)
        known = spec.known_parameters()
        if known is not None and known != reply.dim:
            raise MessageError(
                f"join reply: dim = {reply.dim}, but the model has {known} parameters"
            )
        if reply.dim > MAX_MODEL_PARAMETERS:
            raise MessageError(f"join reply: dim = {reply.dim}, over {MAX_MODEL_PARAMETERS}")
        task, model = spec.build(self.trust)
        # this client's data must fit the model before any round (one line otherwise)
        check_fit(task, model, self.data.x[:2], self.data.y[:2], self.data.num_classes)
        self.trainer = TorchTrainer(model, task)
        if self.trainer.dim != reply.dim:
            raise FedloomError(f"model has {self.trainer.dim} parameters, server {reply.dim}")
        self.dim = int(reply.dim)
        self.client_id = int(reply.client_id)
        self._setup_transforms(reply)
        self._setup_compression(reply)

    def _setup_compression(self, reply: pb.JoinReply) -> None:
        """Build the upload codec the server names (a built-in one) for this model and
        load this client's error-feedback state for it."""
        if not reply.HasField("compression"):
            return
        from fedloom.transforms.base import load_client_state

        spec = CompressionSpec.from_pb(reply.compression)
        shapes = [tuple(p.shape) for p in self.trainer.model.parameters()]
        self.download_codec = spec.download_codec(shapes)
        self.compression = spec.upload(shapes)
        if self.compression is not None:
            self.compression_state = load_client_state(
                self.compression_state_path, self.compression, self.dim
            )

    def _compress(self, task: pb.Task, delta: np.ndarray) -> tuple[bytes, dict[str, Any]]:
        """This update's payload at the task's codec setting, and the new compression
        state (kept once the server has accepted the update, :meth:`_work`)."""
        from fedloom.transforms.base import stack_states, unstack_states

        setting = task.compression if task.HasField("compression") else None
        settings = np.array([self.compression.setting(int(task.round), setting)])
        payloads, state = self.compression.encode(
            delta[None], settings, np.array([task.seed]), stack_states([self.compression_state])
        )
        return payloads[0], unstack_states(state, 1)[0]

    def _setup_transforms(self, reply: pb.JoinReply) -> None:
        """Build the client chain the server names from this device's own code (a name
        it cannot import refuses the run) and load this client's state for it."""
        if not reply.client_transforms:
            return
        from fedloom.transforms.base import build_sides, load_client_state

        specs = []
        for t in reply.client_transforms:
            if ":" in t.name:  # a user transform: code this client must trust
                check_trusted(f"transform {t.name!r}", t.name, self.trust)
            try:
                params = json.loads(t.params_json or "{}")
            except json.JSONDecodeError as err:
                raise MessageError(f"join reply: transform {t.name!r} params: {err}") from None
            if not isinstance(params, dict):
                raise MessageError(f"join reply: transform {t.name!r} params must be an object")
            specs.append((t.name, params))
        self.transforms = build_sides(specs)[0]  # the client halves; the server decodes
        self.transform_state = load_client_state(
            self.transform_state_path, self.transforms, self.dim
        )

    def _transform(
        self, task: pb.Task, delta: np.ndarray, metrics: ClientMetrics
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The client chain over this update; the new state is kept once the server has
        accepted the update (:meth:`_work`)."""
        from fedloom.transforms.base import Context, apply_one

        ctx = Context(
            round=int(task.round),
            client_ids=np.array([self.client_id], dtype=np.int64),
            weights=np.array([len(self.y)], dtype=np.float64),
            losses=np.array([metrics.train_loss], dtype=np.float64),
            seed=int(task.seed),
            noise=SecureNoise(),  # the device's own randomness, never a seed from the server
            secure=True,
        )
        out, state = apply_one(self.transforms, delta, self.transform_state, ctx)
        return np.asarray(out, dtype=np.float32), state

    def _heartbeats(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.stub.Heartbeat(
                    pb.HeartbeatRequest(),
                    metadata=self._metadata,
                    timeout=max(every, 1.0) * 3,
                )
            except grpc.RpcError as err:
                log.debug("heartbeat failed: %s", err.code())

    def _work(self, task: pb.Task) -> None:
        """Download, train, upload; a refused step abandons this task (the server moved on),
        and so does a task that fails its checks (refused here, before any work)."""
        try:
            if not task.HasField("plan"):
                raise MessageError("task.plan is missing")
            plan = plan_from_pb(task.plan)
            for name in ("seed", "max_steps", "round", "version"):
                if getattr(task, name) < 0:
                    raise MessageError(f"task.{name} = {getattr(task, name)}: expected >= 0")
            local_dp = LocalDP.from_pb(task.local_dp) if task.HasField("local_dp") else None
        except MessageError as err:
            self.stats.refused += 1
            log.warning("task %s refused: %s", task.task_id, err)
            return
        try:
            params = self._call("download", lambda: self._download(task.version))
            # under SecAgg+ the server learns nothing about one client: no evaluation
            evaluation = None if task.HasField("secagg") else self._evaluate(params)
            delta, metrics, train_s = self._train(task, plan, params)
            if self.attack is not None and self.attack.crafts:
                delta = craft_own(self.attack, delta, self.attack_rng)
            state = None
            if self.transforms is not None:
                delta, state = self._transform(task, delta, metrics)
            if local_dp is not None:
                delta = local_dp.apply(delta)
            payload, squeezed = None, None
            if self.compression is not None and not task.HasField("secagg"):
                payload, squeezed = self._compress(task, delta)
            if task.HasField("secagg"):
                reply = self._secure_sum(task, delta, metrics)
                if reply is None:
                    return
            else:
                reply = self._call(
                    "upload",
                    lambda: self._upload(task, delta, metrics, train_s, evaluation, payload),
                )
        except grpc.RpcError as err:
            self.stats.refused += 1
            log.warning("task %s refused by the server: %s", task.task_id, err.details())
            return
        if state is not None:  # the server holds the update: the state moves on, atomically
            from fedloom.transforms.base import save_client_state

            save_client_state(self.transform_state_path, state)
            self.transform_state = state
        if squeezed is not None:
            from fedloom.transforms.base import save_client_state

            save_client_state(self.compression_state_path, squeezed)
            self.compression_state = squeezed
        self.stats.rounds += 1
        self.stats.duplicates += int(reply.duplicate)
        log.info(
            "task %s: trained %d steps in %.2f s, update %s",
            task.task_id,
            metrics.steps,
            train_s,
            "already applied (retry)" if reply.duplicate else "applied",
        )

    def _download(self, version: int) -> np.ndarray:
        base = self.held[0] if self.held is not None else -1
        if self.held is not None and base == version:
            return self.held[1]
        try:
            return self._fetch(version, base)
        except wire.WireError as err:
            if base < 0 or "reconstruction" not in str(err):
                raise
            # the encoded deltas did not rebuild the server's model: the exact fallback
            log.warning("%s; downloading the whole model", err)
            self.held = None
            return self._fetch(version, -1)

    def _fetch(self, version: int, base: int) -> np.ndarray:
        call = self.channel.unary_stream(  # the stub's Download, without protobuf copies
            download.METHOD,
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=download.parse,  # (header or None, data as a view)
        )
        stream = call(
            pb.DownloadRequest(version=version, base_version=base),
            metadata=self._metadata,
            timeout=self.retry.call_timeout_s,
        )
        header, buffer, size = None, np.empty(0, np.uint8), 0
        with _BackgroundHash() as hasher:
            for chunk_header, data in stream:
                if header is None:
                    if chunk_header is None:
                        raise wire.WireError("model download does not start with a header")
                    header = chunk_header
                    limit = 4 * self.dim + (1 << 20)  # the raw model, or zlib's worst case
                    if not 0 <= header.payload_bytes <= limit:
                        raise wire.WireError(
                            f"model download declares {header.payload_bytes} bytes"
                        )
                    buffer = np.empty(header.payload_bytes, np.uint8)  # no zero-filling
                if size + len(data) > header.payload_bytes:
                    raise wire.WireError("model download exceeds its declared size")
                buffer[size : size + len(data)] = np.frombuffer(data, np.uint8)
                size += len(data)
                if header.encoding == "raw":  # hash while the next chunk arrives
                    hasher.update(data)
            if header is None or size != header.payload_bytes:
                raise wire.WireError(f"model download of version {version} is truncated")
            if header.encoding == "xor-zlib":
                if self.held is None or header.base_version != self.held[0]:
                    raise wire.WireError(
                        f"model delta against version {header.base_version}, "
                        f"but this client holds {base}"
                    )
                params = wire.apply_xor_delta(buffer.data, self.held[1])
                hasher.update(params.data)
            elif header.encoding == CODEC_CHAIN:
                params = self._apply_chain(header, buffer)
                hasher.update(params.data)
            elif header.encoding == "raw":
                params = wire.as_float32(buffer, self.dim, "model")  # a view: no copy
            else:
                raise wire.WireError(f"unknown model encoding {header.encoding!r}")
            if hasher.digest() != header.sha256:
                what = "reconstruction" if header.encoding == CODEC_CHAIN else "download"
                raise wire.WireError(f"model version {version} {what} fails its sha256 check")
        self.stats.bytes_down += size
        self.held = (version, params)
        return params

    def _apply_chain(self, header: pb.DownloadHeader, buffer: np.ndarray) -> np.ndarray:
        """The model rebuilt from the encoded deltas since the version this client holds
        (compressed downloads); the caller checks it against the server's sha256."""
        from fedloom.compression.codec import PayloadError
        from fedloom.compression.download import apply_chain

        if self.download_codec is None:
            raise wire.WireError("encoded model deltas, but the run has no download codec")
        if self.held is None or header.base_version != self.held[0]:
            raise wire.WireError(
                f"encoded model deltas from version {header.base_version}, but this client "
                f"holds {None if self.held is None else self.held[0]}"
            )
        try:
            return apply_chain(self.download_codec, self.held[1], buffer.data)
        except PayloadError as err:
            raise wire.WireError(f"encoded model deltas: {err}") from None

    def _evaluate(self, params: np.ndarray) -> tuple[float, float, int] | None:
        """The received model's mean loss and accuracy on this client's hold-out (None
        without one, or when the task reports no ``accuracy``), reported with the update
        (``UploadHeader.eval_*``)."""
        if self.holdout is None or "accuracy" not in self.trainer.task.metrics:
            return None
        from fedloom.client.trainer import evaluate_model

        self.trainer.flat.load(params)
        loss, values = evaluate_model(self.trainer.model, *self.holdout, task=self.trainer.task)
        return float(loss.mean()), float(values["accuracy"].mean()), len(loss)

    def _train(
        self, task: pb.Task, plan: TrainPlan, params: np.ndarray
    ) -> tuple[np.ndarray, ClientMetrics, float]:
        out = torch.empty(self.dim, dtype=torch.float32)
        # DP-SGD's batches and noise are the device's secret: the server chose task.seed,
        # and the sample-level guarantee assumes it can neither replay the noise nor see
        # which examples each step sampled (without DP-SGD: the simulator's batches)
        seed = int(task.seed) if plan.dp_sgd_clip is None else secrets.randbits(63)
        started = time.perf_counter()
        metrics = self.trainer.train(
            torch.from_numpy(params.copy()),
            self.x,
            self.y,
            plan,
            seed,
            out=out,
            max_steps=int(task.max_steps) or None,
            dp_noise=SecureNoise(),
        )
        return out.numpy(), metrics, time.perf_counter() - started

    def _secure_sum(
        self, task: pb.Task, delta: np.ndarray, metrics: ClientMetrics
    ) -> pb.UploadReply | None:
        """SecAgg+ in place of a plain upload: encode the update, then answer the four
        stages (the masked input by ``Upload``). None when this client leaves the round:
        the server dropped it or aborted, or the protocol refused a message (logged)."""
        try:
            spec = SecureTaskSpec.from_pb(task.secagg)
        except FedloomError as err:
            log.warning("task %s: %s", task.task_id, err)
            self._leave(task, str(err))
            return None
        upload = None
        verify_keys: dict[int, Any] = {}  # signed keys: filled from the neighbours' certificates
        try:
            signing = None
            if spec.signed:
                if self.identity is None:
                    raise SecAggError("signed keys need this client's certificate (mTLS)")
                signing = signing_key(self.identity)
            protocol = SecAggClient(
                spec.index,
                spec.encode(delta, self._declared_examples(), metrics),
                spec.threshold,
                signing_key=signing,
                verify_keys=verify_keys if spec.signed else None,
                majority=True,  # whatever threshold the server asks for
            )
            for stage in STAGES:
                fetched = self._fetch_stage(task, stage)
                if fetched is None:
                    return None
                request = server_from_pb(fetched, stage, spec.index, spec.num_clients)
                if spec.signed:
                    self._authenticate(request, fetched, verify_keys)
                reply = getattr(protocol, stage)(request)
                if isinstance(reply, MaskedInput):
                    upload = self._call(
                        "upload", functools.partial(self._upload, task, reply.y, None, 0.0)
                    )
                else:
                    message = client_to_pb(task.task_id, reply)
                    send = functools.partial(
                        self.stub.SecAggSend,
                        message,
                        metadata=self._metadata,
                        timeout=self.retry.call_timeout_s,
                    )
                    self._call(f"secagg {stage}", send)
        except SecAggError as err:
            log.warning("task %s: secure aggregation stopped: %s", task.task_id, err)
            self._leave(task, str(err))
            return None
        return upload

    def _leave(self, task: pb.Task, why: str) -> None:
        """Tell the server this client left the protocol, so that the stage need not wait
        for it (best effort: if the notice is lost, the stage times out instead)."""
        try:
            self.stub.SecAggSend(
                pb.SecAggMessage(task_id=task.task_id, abort=why),
                metadata=self._metadata,
                timeout=self.retry.call_timeout_s,
            )
        except grpc.RpcError as err:
            log.debug("leaving notice not delivered: %s", err.code())

    def _authenticate(
        self, request: Any, fetched: pb.SecAggMessage, verify_keys: dict[int, Any]
    ) -> None:
        """Signed keys: never sign for a round id twice (the server picks it, and a signed
        advert could otherwise be replayed), and take each neighbour's verify key from its
        certificate once the CA vouches for it."""
        if isinstance(request, AdvertiseRequest):
            if request.round_id in self._signed_rounds:
                raise SecAggError("the server reused a round id this client has signed for")
            self._signed_rounds.add(request.round_id)
        if isinstance(request, NeighbourKeys):
            assert self.identity is not None
            for j, der in fetched.neighbour_keys.certificates.items():
                try:
                    verify_keys[int(j)] = verified_client_key(der, self.identity.ca_pem)
                except CertError as err:
                    raise SecAggError(f"neighbour {j}'s certificate: {err}") from None

    def _fetch_stage(self, task: pb.Task, stage: str) -> pb.SecAggMessage | None:
        """The server's message for ``stage`` (long-polled), or None if it says this
        client is out of the round."""
        fetch = functools.partial(
            self.stub.SecAggFetch,
            pb.SecAggFetchRequest(task_id=task.task_id, stage=stage, wait_s=10.0),
            metadata=self._metadata,
            timeout=self.retry.call_timeout_s,
        )
        while True:
            message = self._call(f"secagg {stage}", fetch)
            kind = message.WhichOneof("body")
            if kind == "abort":
                log.info("task %s: %s", task.task_id, message.abort)
                return None
            if kind != "wait_s":
                return message

    def _upload(
        self,
        task: pb.Task,
        vector: np.ndarray,
        metrics: ClientMetrics | None,
        train_s: float,
        evaluation: tuple[float, float, int] | None = None,
        encoded: bytes | None = None,
    ) -> pb.UploadReply:
        """Stream one update (float32), or under SecAgg+ a masked input (unsigned ints,
        ``metrics`` None: the server learns no per-client loss or step count), or its
        ``encoded`` codec payload (compressed runs); ``evaluation``: the received
        model's (loss, accuracy, examples) on the hold-out."""
        if encoded is not None:
            payload, dtype = encoded, wire.ENCODED
        else:
            payload = np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<")).tobytes()
            dtype = vector.dtype.name
        facts = (
            {}
            if metrics is None
            else {
                "train_loss": metrics.train_loss,
                "train_loss_sq": metrics.train_loss_sq,
                "steps": metrics.steps,
                "epochs": metrics.epochs,
                "train_s": train_s,
                "loss_samples": list(metrics.loss_samples),
            }
        )
        if metrics is not None and evaluation is not None:
            names = ("eval_loss", "eval_accuracy", "eval_examples")
            facts |= dict(zip(names, evaluation, strict=True))
        header = pb.UploadHeader(
            task_id=task.task_id,
            round=task.round,
            version=task.version,
            num_examples=self._declared_examples(),
            dim=vector.size,
            dtype=dtype,
            payload_bytes=len(payload),
            sha256=wire.digest(payload),
            **facts,
        )

        self.limiter.restart()

        def messages() -> Iterator[pb.UploadChunk]:
            for i, piece in enumerate(wire.chunks(payload)):
                self.limiter.take(len(piece))
                yield pb.UploadChunk(header=header if i == 0 else None, data=piece)

        reply = self.stub.Upload(
            messages(), metadata=self._metadata, timeout=self.retry.call_timeout_s
        )
        self.stats.bytes_up += len(payload)
        return reply
