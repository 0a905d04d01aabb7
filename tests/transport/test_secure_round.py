"""SecAgg+ as the deployment runs it, without the network: every message crosses the
protobuf wire format, the server's ``SecureStages`` drives the stages, and dropouts,
retries, replays and hostile replies are handled per client."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.errors import FedloomError
from fedloom.records import ClientMetrics
from fedloom.secagg.cohort import SecureAggregator
from fedloom.secagg.crypto import SecAggError
from fedloom.secagg.protocol import STAGES, MaskedInput, SecAggClient
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.certs import init_ca, issue, load_identity, signing_key, verified_client_key
from fedloom.transport.secagg_wire import (
    CIPHERTEXT_BYTES,
    client_from_pb,
    client_to_pb,
    server_from_pb,
)
from fedloom.transport.secure_round import SecureStages, SecureTaskSpec

DIM = 6


def digest(message: pb.SecAggMessage | np.ndarray) -> bytes:
    if isinstance(message, np.ndarray):
        return hashlib.sha256(message.tobytes()).digest()
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


class Cohort:
    """``n`` clients and the server's stages, every message through protobuf."""

    def __init__(
        self,
        n: int,
        neighbours: int | str | None = "all",
        threshold: float = 0.5,
        signed: bool = False,
    ):
        self.aggregator = SecureAggregator(DIM, max_examples=10, neighbours=neighbours)
        self.aggregator.threshold = threshold
        self.n = n
        self.protocol = self.aggregator.protocol(n, attempt=1, distributed=None)
        self.ids = [10 + i for i in range(n)]  # client ids are not protocol indices
        self.stages = SecureStages("1.1", self.ids, self.protocol, signed=signed)
        rng = np.random.default_rng(n)
        self.deltas = rng.uniform(-0.5, 0.5, size=(n, DIM)).astype(np.float32)
        self.encoded = []
        self.clients = []
        for i in range(n):
            spec = SecureTaskSpec.from_pb(
                SecureTaskSpec.for_client(
                    self.aggregator, i, n, self.protocol.threshold, 1, None, None
                ).to_pb()
            )
            row = spec.encode(self.deltas[i], 10, ClientMetrics(0.5, 3, 1.0))
            self.encoded.append(row)
            self.clients.append(SecAggClient(i, row, spec.threshold))

    def fetch(self, i: int, stage: str) -> object:
        message = self.stages.fetch(self.ids[i], stage)
        assert message is not None and message.WhichOneof("body") not in ("abort", "wait_s")
        return server_from_pb(
            pb.SecAggMessage.FromString(message.SerializeToString()), stage, i, self.n
        )

    def reply(self, i: int, stage: str) -> bool:
        """Client ``i`` answers ``stage``; returns whether the server saw a duplicate."""
        answer = getattr(self.clients[i], stage)(self.fetch(i, stage))
        if isinstance(answer, MaskedInput):
            return self.stages.submit(self.ids[i], stage, answer, digest(answer.y))
        wire = client_to_pb("1.1", answer)
        message = client_from_pb(
            pb.SecAggMessage.FromString(wire.SerializeToString()), stage, i, self.n
        )
        return self.stages.submit(self.ids[i], stage, message, digest(wire))

    def advance(self) -> None:
        self.stages.open_stage(self.stages.run_step(*self.stages.close_stage()))

    def play(self, gone: dict[str, list[int]]) -> None:
        """All four stages; ``gone[stage]`` drop there (the server times them out)."""
        out: set[int] = set()
        for stage in STAGES:
            out |= set(gone.get(stage, []))
            for i in range(self.n):
                if (
                    i not in out
                    and self.stages.fetch(self.ids[i], stage).WhichOneof("body") != "abort"
                ):
                    self.reply(i, stage)
            self.stages.drop(self.stages.waiting(), "stage timeout")
            self.advance()
            if self.stages.done:
                return


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 9),
    neighbours=st.sampled_from([None, "all", 2, 3]),
    data=st.data(),
)
def test_the_sum_over_the_wire_is_exact_for_dropouts_at_every_stage(n, neighbours, data) -> None:  # noqa: ANN001
    cohort = Cohort(n, neighbours)
    t = cohort.protocol.threshold
    stage_of = data.draw(
        st.lists(st.sampled_from([None, None, None, *STAGES]), min_size=n, max_size=n),
        label="drop stage",
    )
    gone = {s: [i for i, g in enumerate(stage_of) if g == s] for s in STAGES}
    cohort.play(gone)
    if cohort.stages.abort is not None:  # only when too few clients or holders were left
        assert "threshold" in cohort.stages.abort
        assert cohort.stages.total is None
        return
    included = [cohort.ids.index(c) for c in cohort.stages.included]
    assert len(included) >= t
    expected = np.sum([cohort.encoded[i] for i in included], axis=0, dtype=cohort.protocol.dtype)
    np.testing.assert_array_equal(cohort.stages.total, expected)
    # everyone who sent a masked input is in the sum, dropping at unmasking or not
    assert set(included) == set(range(n)) - {i for s in STAGES[:3] for i in gone[s]}


def test_decoding_the_networked_sum_gives_fedavg() -> None:
    cohort = Cohort(5)
    cohort.play({"masked_input": [4]})
    ids = np.array(cohort.stages.included)
    secure = cohort.aggregator.decode(cohort.stages.total, ids, 5, attempt=1)
    assert list(ids) == [10, 11, 12, 13]
    expected = cohort.deltas[:4].astype(np.float64).sum(axis=0)  # equal weights: 10 examples
    bound = cohort.aggregator.error_bound(5, 4)
    assert np.abs(secure.delta / secure.weight * 4 - expected).max() <= 4 * bound + 1e-9
    assert secure.weight == pytest.approx(4.0)
    assert secure.loss == pytest.approx(4 * 0.5, abs=1e-6)


def test_retries_are_taken_once_and_a_different_reply_is_a_replay() -> None:
    cohort = Cohort(3)
    assert cohort.reply(0, "advertise_keys") is False
    request = cohort.fetch(0, "advertise_keys")
    assert request.recipient == 0
    keys = cohort.stages.replies[0]
    wire = client_to_pb("1.1", keys)
    again = client_from_pb(wire, "advertise_keys", 0, 3)
    assert cohort.stages.submit(10, "advertise_keys", again, digest(wire)) is True
    other = client_to_pb("1.1", SecAggClient(0, cohort.encoded[0], 2).advertise_keys(request))
    with pytest.raises(SecAggError, match="already taken"):
        cohort.stages.submit(
            10, "advertise_keys", client_from_pb(other, "advertise_keys", 0, 3), digest(other)
        )


def test_a_stage_not_yet_open_waits_and_a_closed_one_is_over() -> None:
    cohort = Cohort(3)
    assert cohort.stages.fetch(10, "share_keys") is None  # keys are still being advertised
    for i in range(3):
        cohort.reply(i, "advertise_keys")
    cohort.advance()
    late = cohort.stages.fetch(10, "advertise_keys")
    assert "over" in late.abort
    with pytest.raises(SecAggError, match="unknown stage"):
        cohort.stages.fetch(10, "gossip")
    with pytest.raises(SecAggError, match="not open"):
        cohort.stages.submit(10, "unmasking", None, b"")
    with pytest.raises(SecAggError, match="already taken"):  # a late, different reply
        cohort.stages.submit(10, "advertise_keys", None, b"")


def test_hostile_replies_are_refused_without_aborting_the_round() -> None:
    cohort = Cohort(4)
    for i in range(4):
        cohort.reply(i, "advertise_keys")
    cohort.advance()
    shares = cohort.clients[3].share_keys(cohort.fetch(3, "share_keys"))
    tampered = client_to_pb("1.1", shares)
    del tampered.encrypted_shares.ciphertexts[0]  # withholds client 0's shares
    with pytest.raises(SecAggError, match="expected its live neighbours"):
        cohort.stages.submit(13, "share_keys", client_from_pb(tampered, "share_keys", 3, 4), b"x")
    other_round = client_to_pb("1.1", shares)
    other_round.round_id = b"\1" * 16
    with pytest.raises(SecAggError, match="another round"):
        cohort.stages.submit(
            13, "share_keys", client_from_pb(other_round, "share_keys", 3, 4), b"y"
        )
    for i in range(3):
        cohort.reply(i, "share_keys")
    cohort.stages.drop(cohort.stages.waiting(), "stage timeout")  # client 3 never made good
    cohort.advance()
    wrong = MaskedInput(cohort.protocol.round_id, "masked_input", 0, np.zeros(3, np.uint32))
    with pytest.raises(SecAggError, match="must be uint32"):
        cohort.stages.submit(10, "masked_input", wrong, b"z")
    for stage in STAGES[2:]:
        for i in range(3):
            cohort.reply(i, stage)
        cohort.advance()
    assert cohort.stages.included == [10, 11, 12]
    assert cohort.stages.dropped == {"share_keys": 1}
    assert "out of the secure sum" in cohort.stages.fetch(13, "masked_input").abort


def test_too_few_clients_abort_and_nothing_is_unmasked() -> None:
    cohort = Cohort(4)  # threshold 3
    cohort.play({"masked_input": [0, 1]})
    assert cohort.stages.total is None
    assert "below the threshold" in cohort.stages.abort
    assert "aborted" in cohort.stages.fetch(12, "unmasking").abort


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: setattr(m, "sender", 2), "claims sender 2"),
        (lambda m: setattr(m.keys_advert, "c_public", b"\0" * 31), "31 bytes"),
        (lambda m: setattr(m, "round_id", b"\0" * 15), "round id"),
        (lambda m: m.routed_shares.SetInParent(), "expects a 'keys_advert'"),
    ],
)
def test_malformed_client_messages_name_the_problem(change, match: str) -> None:  # noqa: ANN001
    message = pb.SecAggMessage(task_id="t", round_id=b"\0" * 16, sender=1, recipient=-1)
    message.keys_advert.c_public = b"\1" * 32
    message.keys_advert.s_public = b"\2" * 32
    change(message)
    with pytest.raises(SecAggError, match=match):
        client_from_pb(message, "advertise_keys", 1, 4)


def test_out_of_range_indices_and_shares_are_refused() -> None:
    message = pb.SecAggMessage(task_id="t", round_id=b"\0" * 16, sender=1, recipient=-1)
    message.encrypted_shares.ciphertexts[7] = b"\0" * CIPHERTEXT_BYTES
    with pytest.raises(SecAggError, match="not a client index"):
        client_from_pb(message, "share_keys", 1, 4)
    message.encrypted_shares.ciphertexts.clear()
    message.encrypted_shares.ciphertexts[2] = b"\0" * (CIPHERTEXT_BYTES + 1)
    with pytest.raises(SecAggError, match="ciphertext of"):
        client_from_pb(message, "share_keys", 1, 4)
    shares = pb.SecAggMessage(task_id="t", round_id=b"\0" * 16, sender=1, recipient=-1)
    shares.unmask_shares.seed_shares[1].values.extend([2**61 - 1, 0, 0, 0, 0])
    with pytest.raises(SecAggError, match="field elements"):
        client_from_pb(shares, "unmasking", 1, 4)
    with pytest.raises(SecAggError, match="no client message is sent at stage 'masked_input'"):
        client_from_pb(shares, "masked_input", 1, 4)


def test_a_low_order_public_key_is_refused_before_it_reaches_the_peers() -> None:
    cohort = Cohort(3)
    request = cohort.fetch(0, "advertise_keys")
    keys = cohort.clients[0].advertise_keys(request)
    wire = client_to_pb("1.1", keys)
    wire.keys_advert.s_public = b"\0" * 32  # the identity point: an all-zero shared secret
    with pytest.raises(SecAggError):
        cohort.stages.submit(
            10, "advertise_keys", client_from_pb(wire, "advertise_keys", 0, 3), b""
        )
    assert 0 not in cohort.stages.replies


def test_task_spec_round_trips_and_refuses_malformed_specs() -> None:
    aggregator = SecureAggregator(DIM, max_examples=10, bits=16, rounding="stochastic")
    spec = SecureTaskSpec.for_client(aggregator, 2, 5, 3, 7, 0.5, None)
    msg = spec.to_pb()
    again = SecureTaskSpec.from_pb(pb.SecureTaskSpec.FromString(msg.SerializeToString()))
    assert again == spec and again.aggregator().bits == 16
    assert again.aggregator().secure_noise  # the device's own randomness

    def hostile(**change: object) -> pb.SecureTaskSpec:
        bad = pb.SecureTaskSpec()
        bad.CopyFrom(msg)
        for name, value in change.items():
            target, _, field = name.rpartition("__")
            holder = getattr(bad, target) if target else bad
            if value is None:
                holder.ClearField(field)
            else:
                setattr(holder, field, value)
        return bad

    for change, match in [
        ({"encoding": None}, "encoding is missing"),
        ({"index": 5}, "index 5"),
        ({"index": -1}, "index = -1"),
        ({"threshold": 0}, "threshold 0"),
        ({"encoding__bits": 12}, "bits"),
        ({"encoding__dim": 0}, "dim"),
        ({"encoding__rounding": "up"}, "rounding"),
        ({"encoding__clip": float("nan")}, "encoding.clip = nan"),
        ({"dp_clip": -1.0}, "dp_clip = -1.0"),
    ]:
        with pytest.raises(FedloomError, match=match):
            SecureTaskSpec.from_pb(hostile(**change))
    with pytest.raises(SecAggError, match="not finite"):
        spec.encode(np.full(DIM, np.nan, np.float32), 10, ClientMetrics(0.1, 1, 1.0))


def test_signed_adverts_are_checked_against_the_advertisers_certificate(tmp_path) -> None:  # noqa: ANN001
    certs = tmp_path / "certs"
    init_ca(certs)
    identities = []
    for i in range(3):
        issue(certs, f"client-{i:06d}")
        identities.append(load_identity(certs, f"client-{i:06d}"))
    cohort = Cohort(3, signed=True)
    verify_keys: dict[int, object] = {}
    cohort.clients = [
        SecAggClient(
            i, cohort.encoded[i], 2, signing_key=signing_key(identities[i]), verify_keys=verify_keys
        )
        for i in range(3)
    ]
    ders = [
        x509.load_pem_x509_certificate(identity.cert_pem).public_bytes(serialization.Encoding.DER)
        for identity in identities
    ]
    with pytest.raises(SecAggError, match="no certificate"):
        cohort.reply(0, "advertise_keys")
    cohort.stages.attach_certificate(10, ders[1])  # another client's certificate
    cohort.clients[0] = SecAggClient(
        0, cohort.encoded[0], 2, signing_key=signing_key(identities[0])
    )
    with pytest.raises(SecAggError):
        cohort.reply(0, "advertise_keys")
    assert not cohort.stages.replies
    cohort.stages.certificates.clear()
    for i in range(3):
        cohort.clients[i] = SecAggClient(
            i, cohort.encoded[i], 2, signing_key=signing_key(identities[i]), verify_keys=verify_keys
        )
        cohort.stages.attach_certificate(cohort.ids[i], ders[i])
        cohort.reply(i, "advertise_keys")
    cohort.advance()
    fetched = cohort.stages.fetch(10, "share_keys")
    assert set(fetched.neighbour_keys.certificates) == {1, 2}  # the neighbours' certificates
    assert all(len(s) > 0 for s in fetched.neighbour_keys.signatures.values())
    ca_pem = identities[0].ca_pem
    for j, der in fetched.neighbour_keys.certificates.items():
        verify_keys[j] = verified_client_key(der, ca_pem)
    verify_keys[0] = verified_client_key(ders[0], ca_pem)
    for stage in STAGES[1:]:
        for i in range(3):
            cohort.reply(i, stage)
        cohort.advance()
    expected = np.sum(cohort.encoded, axis=0, dtype=cohort.protocol.dtype)
    np.testing.assert_array_equal(cohort.stages.total, expected)


def test_an_oversized_signature_is_refused() -> None:
    message = pb.SecAggMessage(task_id="t", round_id=b"\0" * 16, sender=1, recipient=-1)
    message.keys_advert.c_public = b"\1" * 32
    message.keys_advert.s_public = b"\2" * 32
    message.keys_advert.signature = b"s" * 81
    with pytest.raises(SecAggError, match="signature has 81 bytes"):
        client_from_pb(message, "advertise_keys", 1, 4)
