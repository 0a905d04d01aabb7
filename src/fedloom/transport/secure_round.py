"""Secure aggregation over the network: one round of SecAgg+ between the deployment server
and its client processes.

The same sans-IO state machines as in simulation (:mod:`fedloom.secagg.protocol`) run on
both ends; this module holds what the network adds.

- :class:`SecureTaskSpec` travels in the task (``Task.secagg``): the client's
  protocol index, the cohort size and threshold, and how to encode its update
  (:class:`~fedloom.secagg.cohort.SecureAggregator`'s parameters, the round's DP clip or
  distributed-DP mechanism). Rounding and noise come from the device's own entropy.
- :class:`SecureStages` is the server's side of one round: which message each client
  fetches at each stage, which replies arrived (idempotently: a retried reply is taken
  once, a different one is refused as a replay), and who dropped where. The server's
  round thread closes a stage once every live client answered, or the stage timed out,
  or its silent clients were declared disconnected; it then runs the protocol step on the
  frozen replies and opens the next stage. A stage below the threshold aborts the round
  and nothing is unmasked.

Clients train first and then run the four stages, so a client that fails while training
is simply absent from the key agreement (the cheapest dropout: nothing to unmask).

References: Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020; Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, section 4 (the rounds and their timeouts).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography import x509

from fedloom.errors import FedloomError
from fedloom.records import ClientMetrics, Update
from fedloom.secagg.cohort import SecureAggregator
from fedloom.secagg.crypto import SecAggError, agree, generate_keypair
from fedloom.secagg.distributed_dp import DistributedDiscreteGaussian
from fedloom.secagg.protocol import (
    STAGES,
    EncryptedShares,
    KeysAdvert,
    MaskedInput,
    SecAggServer,
    check_advert,
)
from fedloom.transforms.secure import secure_masking
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.secagg_wire import server_to_pb

_ENCODING_FIELDS = (
    "dim",
    "max_examples",
    "clip",
    "bits",
    "rounding",
    "seed",
    "keep_fraction",
    "keep_seed",
)
_DDG_FIELDS = tuple(f.name for f in dataclasses.fields(DistributedDiscreteGaussian) if f.init)


@dataclass(frozen=True)
class SecureTaskSpec:
    """What a client needs to take part in one round's secure sum."""

    index: int  # the client's protocol index in the cohort
    num_clients: int  # cohort size n (fixes the fixed-point headroom)
    threshold: int  # Shamir threshold t
    attempt: int  # keys the public rotation of distributed DP
    encoding: dict[str, Any]  # SecureAggregator parameters (_ENCODING_FIELDS)
    dp_clip: float | None = None  # central DP: the client clips to this L2 norm
    distributed: dict[str, Any] | None = None  # distributed DP: the round's mechanism
    signed: bool = False  # sign the advertised keys, verify the neighbours' (certificates)

    def to_pb(self) -> pb.SecureTaskSpec:
        e = self.encoding
        msg = pb.SecureTaskSpec(
            index=self.index,
            num_clients=self.num_clients,
            threshold=self.threshold,
            attempt=self.attempt,
            encoding=pb.SecureEncoding(
                dim=e["dim"],
                max_examples=e["max_examples"],
                bits=e["bits"],
                rounding=e["rounding"],
                seed=e["seed"],
                keep_seed=e["keep_seed"],
            ),
            signed=self.signed,
        )
        if e["clip"] is not None:
            msg.encoding.clip = e["clip"]
        if e["keep_fraction"] is not None:
            msg.encoding.keep_fraction = e["keep_fraction"]
        if self.dp_clip is not None:
            msg.dp_clip = self.dp_clip
        if self.distributed is not None:
            msg.distributed.CopyFrom(pb.DistributedDG(**self.distributed))
        return msg

    @classmethod
    def from_pb(cls, msg: pb.SecureTaskSpec) -> SecureTaskSpec:
        """Read and check a task's spec; a malformed one raises ``FedloomError`` naming the
        field and its value."""
        if not msg.HasField("encoding"):
            raise FedloomError("secagg task spec: encoding is missing")
        e = msg.encoding
        encoding = {
            "dim": int(e.dim),
            "max_examples": int(e.max_examples),
            "clip": float(e.clip) if e.HasField("clip") else None,
            "bits": int(e.bits),
            "rounding": e.rounding,
            "seed": int(e.seed),
            "keep_fraction": float(e.keep_fraction) if e.HasField("keep_fraction") else None,
            "keep_seed": int(e.keep_seed),
        }
        distributed = None
        if msg.HasField("distributed"):
            d = msg.distributed
            distributed = {name: getattr(d, name) for name in _DDG_FIELDS}
            for name in ("dim", "shares", "bits"):
                distributed[name] = int(distributed[name])
        spec = cls(
            int(msg.index),
            int(msg.num_clients),
            int(msg.threshold),
            int(msg.attempt),
            encoding,
            float(msg.dp_clip) if msg.HasField("dp_clip") else None,
            distributed,
            bool(msg.signed),
        )
        for name in ("index", "num_clients", "threshold", "attempt"):
            if getattr(spec, name) < 0:
                value = getattr(spec, name)
                raise FedloomError(f"secagg task spec: {name} = {value!r}, expected an int >= 0")
        if spec.num_clients < 2:  # whatever the server asks: a sum of one input is that input
            raise FedloomError(
                f"secagg task spec: num_clients = {spec.num_clients}; a secure sum needs at "
                "least 2 clients"
            )
        if not spec.index < spec.num_clients or not 1 <= spec.threshold <= spec.num_clients:
            raise FedloomError(
                f"secagg task spec: index {spec.index}, threshold {spec.threshold} do not fit "
                f"a cohort of {spec.num_clients}"
            )
        if spec.dp_clip is not None and not (math.isfinite(spec.dp_clip) and spec.dp_clip > 0):
            raise FedloomError(
                f"secagg task spec: dp_clip = {spec.dp_clip!r}, expected a finite number > 0"
            )
        clip = encoding["clip"]
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise FedloomError(
                f"secagg task spec: encoding.clip = {clip!r}, expected a finite number > 0"
            )
        try:  # the encoder and mechanism check their own values
            spec.aggregator()
            spec.mechanism()
        except (FedloomError, TypeError, ValueError) as err:
            raise FedloomError(f"secagg task spec: {err}") from None
        return spec

    @classmethod
    def for_client(
        cls,
        aggregator: SecureAggregator,
        index: int,
        num_clients: int,
        threshold: int,
        attempt: int,
        dp_clip: float | None,
        distributed: DistributedDiscreteGaussian | None,
    ) -> SecureTaskSpec:
        encoding = {name: getattr(aggregator, name) for name in _ENCODING_FIELDS}
        ddg = None
        if distributed is not None:
            ddg = {name: getattr(distributed, name) for name in _DDG_FIELDS}
        return cls(
            index, num_clients, threshold, attempt, encoding, dp_clip, ddg, aggregator.signed
        )

    def aggregator(self) -> SecureAggregator:
        """The client's encoder: randomness (rounding, noise shares) from the OS."""
        return SecureAggregator(**self.encoding, secure_noise=True)

    def mechanism(self) -> DistributedDiscreteGaussian | None:
        return None if self.distributed is None else DistributedDiscreteGaussian(**self.distributed)

    def encode(self, delta: np.ndarray, num_examples: int, metrics: ClientMetrics) -> np.ndarray:
        """This client's input to the secure sum; a non-finite update or loss raises
        ``SecAggError`` (the client then sends no masked input)."""
        if not (np.all(np.isfinite(delta)) and math.isfinite(metrics.train_loss)):
            raise SecAggError("the update or its loss is not finite: not sent")
        update = Update(-1, 0, 0, np.asarray(delta, dtype=np.float32), num_examples, metrics)
        # the secure transform's client half
        halves = secure_masking(self.aggregator(), self.dp_clip, self.mechanism())
        return halves.client.encode([update], self.num_clients, self.attempt)[0]


class SecureStages:
    """The server's side of one round of SecAgg+ over the network.

    ``cohort``: the dispatched clients' ids, in protocol order. Methods other than
    :meth:`run_step` are called under the deployment server's lock; :meth:`run_step` (the
    protocol's work, seconds for large cohorts) runs on a closed stage without it.
    """

    def __init__(
        self, task_id: str, cohort: list[int], protocol: SecAggServer, signed: bool = False
    ) -> None:
        """``signed``: adverts must be signed by the key of the advertiser's certificate
        (:meth:`attach_certificate`), and neighbours get the certificates with the keys."""
        self.task_id = task_id
        self.signed = signed
        self.certificates: dict[int, bytes] = {}  # index -> DER, signed rounds
        self._verify_keys: dict[int, Any] = {}  # index -> its certificate's public key
        self.cohort = cohort
        self.index = {cid: i for i, cid in enumerate(cohort)}
        self.protocol = protocol
        self.stage = STAGES[0]
        self.accepting = True
        self.requests: dict[int, Any] = protocol.advertise_keys()  # index -> message
        self.replies: dict[int, Any] = {}
        self._taken: dict[str, dict[int, bytes]] = {}  # stage -> index -> reply digest
        self.out: dict[int, str] = {}  # client id -> why it left the protocol
        self.dropped: dict[str, int] = {}  # stage -> clients that dropped there
        self.started: set[int] = set()  # clients that advertised keys
        self.arrival: dict[int, float] = {}  # masked inputs, time.perf_counter()
        self.total: np.ndarray | None = None
        self.abort: str | None = None
        self.server_s = 0.0

    @property
    def done(self) -> bool:
        return self.total is not None or self.abort is not None

    @property
    def included(self) -> list[int]:
        """Client ids whose inputs are in the sum (once it is known and taken)."""
        if self.total is None or self.abort is not None:
            return []
        return [self.cohort[i] for i in self.protocol.included]

    def waiting(self) -> list[int]:
        """Clients the current stage still waits for."""
        if not self.accepting:
            return []
        asked = (self.cohort[i] for i in self.requests if i not in self.replies)
        return [cid for cid in asked if cid not in self.out]

    def fetch(self, cid: int, stage: str) -> pb.SecAggMessage | None:
        """This client's message for ``stage``; None while the stage has not opened."""
        if stage not in STAGES:
            raise SecAggError(f"unknown stage {stage!r}; stages are {STAGES}")
        if self.abort is not None:
            return pb.SecAggMessage(task_id=self.task_id, abort=self.abort)
        if cid in self.out:
            why = f"out of the secure sum: {self.out[cid]}"
            return pb.SecAggMessage(task_id=self.task_id, abort=why)
        ahead = STAGES.index(stage) - STAGES.index(self.stage)
        if ahead > 0 or (ahead == 0 and not self.accepting):
            return None
        i = self.index[cid]
        if ahead < 0 or i not in self.requests:
            why = f"stage {stage!r} is over for this client"
            return pb.SecAggMessage(task_id=self.task_id, abort=why)
        certificates = self.certificates if self.signed else None
        return server_to_pb(self.task_id, self.requests[i], certificates)

    def attach_certificate(self, cid: int, der: bytes) -> None:
        """Signed rounds: the client's certificate (from its TLS session), whose key must
        have signed its advert and which its neighbours get with its keys."""
        i = self.index[cid]
        if i not in self.certificates:
            self.certificates[i] = der
            self._verify_keys[i] = x509.load_der_x509_certificate(der).public_key()

    def submit(self, cid: int, stage: str, message: Any, digest: bytes) -> bool:
        """Take a client's reply for the open stage; True if the same reply was already
        taken (a retry). Anything else out of place raises ``SecAggError``."""
        i = self.index[cid]
        taken = self._taken.get(stage, {})
        if i in taken:  # a retry, maybe after the stage closed (its answer was lost)
            if taken[i] == digest:
                return True
            raise SecAggError(f"a different {stage!r} reply from client-{cid} was already taken")
        if cid in self.out:
            raise SecAggError(f"client-{cid} is out of this round: {self.out[cid]}")
        if stage != self.stage or not self.accepting or i not in self.requests:
            raise SecAggError(f"stage {stage!r} is not open for client-{cid} (at {self.stage!r})")
        self._check(i, message)
        self.replies[i] = message
        self._taken.setdefault(stage, {})[i] = digest
        if stage == "advertise_keys":
            self.started.add(cid)
        if isinstance(message, MaskedInput):
            self.arrival[cid] = time.perf_counter()
        return False

    def _check(self, i: int, message: Any) -> None:
        """Refuse here what would make the protocol step fail for everyone (it checks the
        cohort's replies together): one hostile client must not abort the round."""
        if message.round_id != self.protocol.round_id:
            raise SecAggError(f"reply from client {i} belongs to another round")
        request = self.requests[i]
        if isinstance(message, KeysAdvert):  # low-order keys would fail the peers' agreement
            probe = generate_keypair()[0]
            for key in (message.c_public, message.s_public):
                agree(probe, key, b"fedloom/secagg/check")
            if self.signed:  # a bad signature would make every neighbour abort
                if i not in self.certificates:
                    raise SecAggError(f"client {i} has no certificate to check its keys with")
                keys = (message.c_public, message.s_public)
                check_advert(self._verify_keys, message.round_id, i, keys, message.signature)
        elif isinstance(message, EncryptedShares):
            if set(message.ciphertexts) != set(request.keys):
                raise SecAggError(
                    f"client {i} sent shares for {sorted(message.ciphertexts)}, expected its "
                    f"live neighbours {sorted(request.keys)}"
                )
        elif isinstance(message, MaskedInput):
            y = message.y
            if y.dtype != self.protocol.dtype or y.shape != (self.protocol.dim,):
                raise SecAggError(
                    f"masked input from client {i} must be {self.protocol.dtype} "
                    f"[{self.protocol.dim}], got {y.dtype} {list(y.shape)}"
                )
        elif set(message.seed_shares) != set(request.survived) or set(message.key_shares) != set(
            request.dropped
        ):
            raise SecAggError(f"client {i} answered a different unmask request")

    def drop(self, cids: list[int], why: str) -> None:
        """These clients leave the protocol at the current stage."""
        for cid in cids:
            if cid not in self.out:
                self.out[cid] = why
                self.dropped[self.stage] = self.dropped.get(self.stage, 0) + 1

    def refuse_sum(self, why: str) -> None:
        """The unmasked sum is malformed (a client encoded values outside its slots'
        ranges, which the server cannot see in any one input): nothing is applied."""
        self.abort = f"secure sum refused: {why}"
        for cid in self.cohort:
            self.out.setdefault(cid, "secure sum refused")

    def close_stage(self) -> tuple[str, list[Any]]:
        """Stop taking replies; the stage and the replies the protocol step gets."""
        self.accepting = False
        return self.stage, [self.replies[i] for i in sorted(self.replies)]

    def run_step(self, stage: str, replies: list[Any]) -> dict[int, Any] | np.ndarray | str:
        """The protocol's next step over a closed stage's replies: the next requests, the
        unmasked sum after the last stage, or the abort reason."""
        step = {
            "advertise_keys": self.protocol.share_keys,
            "share_keys": self.protocol.masked_input,
            "masked_input": self.protocol.unmasking,
            "unmasking": self.protocol.aggregate,
        }[stage]
        started = time.perf_counter()
        try:
            return step(replies)
        except SecAggError as err:
            return str(err)
        finally:
            self.server_s += time.perf_counter() - started

    def open_stage(self, result: dict[int, Any] | np.ndarray | str) -> None:
        """Publish :meth:`run_step`'s result: the next stage, the sum, or the abort."""
        answered = {self.cohort[i] for i in self.replies}
        if isinstance(result, str):
            self.abort = f"secure aggregation aborted: {result}"
            for cid in self.cohort:
                self.out.setdefault(cid, "secagg aborted")
            return
        if isinstance(result, np.ndarray):
            self.total = result
            return
        self.stage = STAGES[STAGES.index(self.stage) + 1]
        self.requests, self.replies = result, {}
        self.accepting = True
        for cid in answered:  # answered but has no next message: not needed any more
            if self.index[cid] not in result:
                self.out.setdefault(cid, f"not asked at {self.stage}")
