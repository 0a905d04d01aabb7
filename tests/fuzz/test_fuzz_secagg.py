"""SecAgg+ against hostile peers: the wire parsers (``secagg_wire``) fed hostile protobuf
messages, and the sans-IO state machines (``secagg.protocol``) fed replayed, out-of-order,
wrong-round, wrong-stage, wrong-sender and tampered messages. Every refusal is a
``SecAggError``; a server that refused a batch keeps its state, so the honest clients'
batch then completes the round with the exact sum. A deviating server's unmasking
requests are refused by the client where the protocol's threat model covers them
(``SecAggClient.unmasking``; Bonawitz et al., CCS 2017, section 6); what it does not cover
is pinned in ``test_a_lie_about_who_dropped_is_answered`` and docs/fuzzing.md."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from budget import fuzz
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from pb_strategies import message

from fedloom.secagg import FixedPoint, SecAggClient, SecAggError, SecAggServer
from fedloom.secagg.protocol import (
    STAGES,
    AdvertiseRequest,
    KeysAdvert,
    MaskedInput,
    UnmaskRequest,
    UnmaskShares,
)
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.secagg_wire import (
    CLIENT_BODY,
    SERVER_BODY,
    client_from_pb,
    client_to_pb,
    server_from_pb,
    server_to_pb,
)

N, T, DIM = 3, 2, 4
FP = FixedPoint(1.0, N)
VECTORS = np.array([[0.1, -0.2, 0.3, 0.0], [0.5, 0.5, -0.5, 0.25], [-0.1, 0.0, 0.2, 0.1]])


class Round:
    """One honest SecAgg+ round of three clients (complete graph, threshold 2), run stage
    by stage so that a test can throw hostile messages at either end in between."""

    def __init__(self) -> None:
        self.server = SecAggServer(N, T, None, DIM, FP, seed=0)
        self.clients = [SecAggClient(i, FP.encode(VECTORS[i]), T) for i in range(N)]
        self.replies: list[Any] = []  # the clients' replies to the current stage
        self.requests: dict[int, Any] = self.server.advertise_keys()
        self.step = 0  # index into STAGES of the stage the clients answer next

    def answer(self) -> list[Any]:
        stage = STAGES[self.step]
        self.replies = [getattr(c, stage)(self.requests[c.index]) for c in self.clients]
        self.step += 1
        return self.replies

    def advance(self, batch: list[Any]) -> Any:
        """The server's next stage on ``batch``."""
        method = ("share_keys", "masked_input", "unmasking", "aggregate")[self.step - 1]
        self.requests = getattr(self.server, method)(batch)
        return self.requests

    def finish(self) -> None:
        """Run to the end honestly and check the exact sum."""
        total = self.requests
        while self.step < len(STAGES):
            total = self.advance(self.answer())
        expected = np.sum([FP.encode(v) for v in VECTORS], axis=0, dtype=FP.dtype)
        assert np.array_equal(total, expected)


def tamper(r: Round, reply: Any, how: str, data: st.DataObject) -> list[Any]:
    """A hostile batch for the server: the honest replies with one message changed."""
    others = [m for m in r.replies if m is not reply]
    if how == "replay":
        return [*r.replies, reply]
    if how == "sender":
        sender = data.draw(st.sampled_from([-1, N, N + 7, 2**40, others[0].sender]))
        return [*others, dataclasses.replace(reply, sender=sender)]
    if how == "round":
        round_id = data.draw(st.binary(max_size=20).filter(lambda b: b != reply.round_id))
        return [*r.replies[:-1], dataclasses.replace(r.replies[-1], round_id=round_id)]
    if how == "stage":
        stage = data.draw(st.sampled_from([s for s in (*STAGES, "", "done") if s != reply.stage]))
        return [*others, dataclasses.replace(reply, stage=stage)]
    if how == "kind":  # a message of another stage's kind
        wrong = AdvertiseRequest(reply.round_id, reply.stage, reply.sender, -1)
        return [*others, wrong]
    return [*others, payload_tamper(reply, data)]


def payload_tamper(reply: Any, data: st.DataObject) -> Any:
    """``reply`` with its stage's content made wrong (what the server checks itself)."""
    if isinstance(reply, KeysAdvert):  # the server takes any keys; clients check them
        return dataclasses.replace(reply, sender=-5)
    if isinstance(reply, MaskedInput):
        y = data.draw(
            st.sampled_from(
                [reply.y[:-1], reply.y.astype(np.uint16), np.zeros((DIM, 1), FP.dtype), [0] * DIM]
            )
        )
        return dataclasses.replace(reply, y=y)
    if isinstance(reply, UnmaskShares):
        seeds = dict(reply.seed_shares)
        seeds.pop(next(iter(seeds)))
        return dataclasses.replace(reply, seed_shares=seeds)
    table = dict(reply.ciphertexts)  # EncryptedShares: shares for the wrong neighbours
    table[data.draw(st.sampled_from([reply.sender, N, 99]))] = b"\0" * 112
    if data.draw(st.booleans()):
        table.pop(next(iter(reply.ciphertexts)))
    return dataclasses.replace(reply, ciphertexts=table)


@fuzz(0.5)
@given(st.data())
def test_a_refused_batch_leaves_the_server_able_to_finish(data: st.DataObject) -> None:
    r = Round()
    hostile_step = data.draw(st.integers(0, len(STAGES) - 1), label="stage")
    how = data.draw(
        st.sampled_from(["replay", "sender", "round", "stage", "kind", "payload"]), label="how"
    )
    while r.step < hostile_step:
        r.advance(r.answer())
    r.answer()
    reply = data.draw(st.sampled_from(r.replies))
    hostile = tamper(r, reply, how, data)
    with pytest.raises(SecAggError):
        r.advance(hostile)
    r.advance(r.replies)  # the same stage, honest: the refusal changed nothing
    r.finish()


def test_stages_out_of_order_are_refused_at_both_ends() -> None:
    r = Round()
    for method in ("masked_input", "unmasking", "aggregate"):
        with pytest.raises(SecAggError, match="cannot run"):
            getattr(r.server, method)([])
    with pytest.raises(SecAggError, match="cannot run"):
        r.server.advertise_keys()
    request = r.requests[0]
    with pytest.raises(SecAggError, match="cannot run"):
        r.clients[0].share_keys(request)  # type: ignore[arg-type]
    r.clients[0] = SecAggClient(0, FP.encode(VECTORS[0]), T)  # a refused stage is spent
    r.finish()


# -- a deviating server, as each client sees it ---------------------------------------------
def at_unmasking() -> Round:
    r = Round()
    while r.step < 3:
        r.advance(r.answer())
    return r


def request(r: Round, i: int, dropped: tuple[int, ...], survived: tuple[int, ...]) -> Any:
    honest = r.requests[i]
    return UnmaskRequest(honest.round_id, "unmasking", -1, i, dropped, survived)


@pytest.mark.parametrize(
    ("dropped", "survived", "why"),
    [
        ((1,), (0, 1, 2), "both the self-mask and the mask-key share"),
        ((), (0, 1, 1, 2), "repeats a peer"),
        ((), (1, 2), "does not list client 0"),
        ((7,), (0, 1), "holds no shares"),
        ((1, 2), (0,), "below the threshold"),
    ],
    ids=["both-shares", "repeat", "self-missing", "unknown-peer", "below-threshold"],
)
def test_a_client_refuses_an_unmasking_request_that_would_expose_an_input(
    dropped: tuple[int, ...], survived: tuple[int, ...], why: str
) -> None:
    r = at_unmasking()
    with pytest.raises(SecAggError, match=why):
        r.clients[0].unmasking(request(r, 0, dropped, survived))


def test_a_lie_about_who_dropped_is_answered() -> None:
    """Not covered (no consistency round): one client cannot tell that a peer named as
    dropped did send its masked input, so it reveals that peer's mask-key share. With a
    majority threshold the server still needs a second holder to lie to."""
    r = at_unmasking()
    reply = r.clients[0].unmasking(request(r, 0, (1,), (0, 2)))
    assert set(reply.key_shares) == {1} and set(reply.seed_shares) == {0, 2}


def test_a_client_refuses_a_minority_threshold_when_asked_for_a_majority() -> None:
    server = SecAggServer(N, 1, None, DIM, FP, seed=0)
    client = SecAggClient(0, FP.encode(VECTORS[0]), 1, majority=True)
    others = [SecAggClient(i, FP.encode(VECTORS[i]), 1) for i in (1, 2)]
    requests = server.advertise_keys()
    adverts = [c.advertise_keys(requests[c.index]) for c in (client, *others)]
    keys = server.share_keys(adverts)
    with pytest.raises(SecAggError, match="not a majority"):
        client.share_keys(keys[0])


@pytest.mark.parametrize("field", ["recipient", "round_id", "stage"])
def test_a_client_refuses_a_misrouted_message(field: str) -> None:
    r = Round()
    r.advance(r.answer())  # the first message fixes the round id: test the second
    honest = r.requests[0]
    change = {"recipient": 1, "round_id": b"\1" * 16, "stage": "masked_input"}[field]
    with pytest.raises(SecAggError):
        r.clients[0].share_keys(dataclasses.replace(honest, **{field: change}))


# -- the wire parsers -----------------------------------------------------------------------
@pytest.mark.parametrize("stage", sorted(CLIENT_BODY))
def test_hostile_client_messages_are_refused_by_the_wire(stage: str) -> None:
    @fuzz()
    @given(message(pb.SecAggMessage, depth=3), st.integers(0, N - 1))
    def check(msg: pb.SecAggMessage, sender: int) -> None:
        try:
            parsed = client_from_pb(msg, stage, sender, N)
        except SecAggError:
            return
        assert parsed.sender == sender and parsed.stage == stage and len(parsed.round_id) == 16

    check()


@pytest.mark.parametrize("stage", sorted(SERVER_BODY))
def test_hostile_server_messages_are_refused_by_the_wire(stage: str) -> None:
    @fuzz()
    @given(message(pb.SecAggMessage, depth=3), st.integers(0, N - 1))
    def check(msg: pb.SecAggMessage, recipient: int) -> None:
        try:
            parsed = server_from_pb(msg, stage, recipient, N)
        except SecAggError:
            return
        assert parsed.recipient == recipient and parsed.stage == stage

    check()


def honest_wire_messages() -> list[tuple[str, bytes, bool]]:
    """(stage, serialized message, from a client) for every message of one honest round."""
    r, out = Round(), []
    for step, stage in enumerate(STAGES):
        out += [
            (stage, server_to_pb("t", m).SerializeToString(), False) for m in r.requests.values()
        ]
        replies = r.answer()
        if stage in CLIENT_BODY:
            out += [(stage, client_to_pb("t", m).SerializeToString(), True) for m in replies]
        if step < len(STAGES) - 1:
            r.advance(replies)
    return out


WIRE = honest_wire_messages()


@fuzz(2)
@given(st.sampled_from(WIRE), st.data())
def test_bit_flipped_stage_messages_are_refused_or_still_well_formed(
    item: tuple[str, bytes, bool], data: st.DataObject
) -> None:
    stage, raw, from_client = item
    raw = bytearray(raw)
    for at in data.draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=3)):
        raw[at // 8] ^= 1 << (at % 8)
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        msg = pb.SecAggMessage.FromString(bytes(raw))
    except DecodeError:
        return
    peer = data.draw(st.integers(0, N - 1))
    try:
        if from_client:
            client_from_pb(msg, stage, peer, N)
        else:
            server_from_pb(msg, stage, peer, N)
    except SecAggError:
        return


def test_honest_wire_messages_parse() -> None:
    for stage, raw, from_client in WIRE:
        msg = pb.SecAggMessage.FromString(raw)
        parse = client_from_pb if from_client else server_from_pb
        who = msg.sender if from_client else msg.recipient
        assert parse(msg, stage, who, N).stage == stage
