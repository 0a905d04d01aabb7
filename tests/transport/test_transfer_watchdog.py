"""The stall rule the transfer watchdog applies (``_Transfer.stall``), at chosen times."""

from __future__ import annotations

from fedloom.transport.server import _Transfer

GRACE, RATE = 2.0, 1000.0  # seconds; bytes per second


def transfer(total: int | None, done: int = 0, waiting: bool = False) -> _Transfer:
    t = _Transfer(cid=4, kind="upload", context=None, slack=500, started=100.0)  # type: ignore[arg-type]
    t.total, t.done, t.waiting = total, done, waiting
    return t


def test_a_stream_without_a_header_gets_the_grace_period() -> None:
    assert transfer(None).stall(101.9, GRACE, RATE) is None
    assert "no upload header within 2 s" in str(transfer(None).stall(102.1, GRACE, RATE))


def test_a_transfer_queued_for_a_slot_or_finished_owes_nothing() -> None:
    assert transfer(10_000, waiting=True).stall(1e6, GRACE, RATE) is None
    assert transfer(10_000, done=10_000).stall(1e6, GRACE, RATE) is None


def test_progress_is_due_after_the_grace_with_one_message_of_slack() -> None:
    # at t = 100 + 2 + 3: 3000 bytes due; 2500 moved + 500 in flight keeps up
    assert transfer(10_000, done=2500).stall(105.0, GRACE, RATE) is None
    why = transfer(10_000, done=2400).stall(105.0, GRACE, RATE)
    assert why is not None and "2400 of 10000 bytes" in why and "8 kbit/s" in why
    # the slack never exceeds what is left: 1000 bytes are due by grace + 1 s
    assert transfer(1000, done=900).stall(102.9, GRACE, RATE) is None
    assert transfer(1000, done=900).stall(103.1, GRACE, RATE) is not None
