"""A run's files damaged on disk (truncated, bit-flipped, replaced by garbage): every
reader answers with its documented behaviour and never modifies the file it failed to
read. Checkpoints: ``CheckpointError``, and resume falls back to the newest readable one
while the damaged ones are kept aside as ``.damaged-<n>`` (``sim/recovery.py``);
``metrics.jsonl``: damaged lines are skipped, then set aside by ``truncate_records``;
``privacy.json``: ``CheckpointError``; ``clients.sqlite``: ``CheckpointError``, kept aside
by ``prepare_registry``; ``config.toml``: ``ConfigError``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from budget import fuzz
from hypothesis import given
from hypothesis import strategies as st

from fedloom.config import load_config, to_toml
from fedloom.errors import CheckpointError, ConfigError
from fedloom.privacy.accounting import MechanismEvent
from fedloom.privacy.ledger import Budget, PrivacyLedger
from fedloom.runs import RunDirectory
from fedloom.server.registry import ClientRegistry
from fedloom.sim.recovery import prepare_registry, set_aside_damaged_checkpoints

STATE = {
    "arrays": {"params": np.linspace(-1, 1, 50, dtype=np.float32), "seen": np.arange(5)},
    "meta": {"round": 2, "note": "x"},
}


def damage(data: bytes, how: str, draw: st.DataObject) -> bytes:
    """``data`` truncated, bit-flipped, overwritten in places or replaced by garbage."""
    out = bytearray(data)
    if how == "truncate":
        return bytes(out[: draw.draw(st.integers(0, len(out) - 1))])
    if how == "flip":
        for at in draw.draw(st.lists(st.integers(0, len(out) * 8 - 1), min_size=1, max_size=8)):
            out[at // 8] ^= 1 << (at % 8)
        return bytes(out)
    if how == "overwrite":
        at = draw.draw(st.integers(0, len(out) - 1))
        piece = draw.draw(st.binary(min_size=1, max_size=64))
        out[at : at + len(piece)] = piece
        return bytes(out)
    return draw.draw(st.binary(max_size=300))


HOW = st.sampled_from(["truncate", "flip", "overwrite", "garbage"])


def good_checkpoint() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(Path(tmp))
        return run.save_checkpoint(2, STATE, keep=3).read_bytes()


GOOD_CHECKPOINT = good_checkpoint()


@fuzz()
@given(HOW, st.data())
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(how: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "round-000002.npz"
        damaged = damage(GOOD_CHECKPOINT, how, data)
        path.write_bytes(damaged)
        try:
            state = RunDirectory.read_checkpoint(path)
        except CheckpointError:
            pass
        else:  # a flip that zip, npy and JSON all accept: still a checkpoint of a round
            assert isinstance(state["meta"]["round"], int)
        assert path.read_bytes() == damaged


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [(10, 99, "compression method"), (8, 1, "encrypted")],
    ids=["compression-method", "encrypted-flag"],
)
def test_a_checkpoint_with_damaged_zip_flags_is_refused(
    tmp_path: Path, offset: int, value: int, why: str
) -> None:
    # zipfile raised NotImplementedError and RuntimeError out of read_checkpoint here
    data = bytearray(GOOD_CHECKPOINT)
    at = data.find(b"PK\x01\x02")  # every central directory entry
    while at >= 0:
        data[at + offset : at + offset + 2] = value.to_bytes(2, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path = tmp_path / "round-000002.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=why):
        RunDirectory.read_checkpoint(path)
    assert path.read_bytes() == bytes(data)


@fuzz(0.3)
@given(HOW, st.data())
def test_resume_falls_back_to_the_previous_checkpoint(how: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(Path(tmp))
        older = run.save_checkpoint(1, {**STATE, "meta": {"round": 1}}, keep=3)
        newest = run.save_checkpoint(2, STATE, keep=3)
        good_older = older.read_bytes()
        newest.write_bytes(damage(newest.read_bytes(), how, data))
        path, state = run.latest_checkpoint()
        assert older.read_bytes() == good_older
        if run.skipped:  # the damaged one was refused: the older one is used
            assert (path, state["meta"]["round"], run.skipped) == (older, 1, [newest.name])
            aside = set_aside_damaged_checkpoints(run, run.skipped)
            assert aside == ["round-000002.npz.damaged-1"]
            assert [p.name for p in run.checkpoints()] == [older.name]


def test_no_readable_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.save_checkpoint(1, STATE, keep=3).write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        run.latest_checkpoint()


GOOD_LINES = [{"round": r, "event": "round", "loss": 0.5, "accuracy": 0.25} for r in range(1, 4)]


@fuzz()
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4), st.data())
def test_damaged_metrics_lines_are_skipped_then_kept_aside(
    garbage: list[bytes], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(Path(tmp))
        for record in GOOD_LINES:
            run.append(record)
        lines = run.metrics_path.read_bytes().splitlines()
        for piece in garbage:
            lines.insert(data.draw(st.integers(0, len(lines))), piece.replace(b"\n", b" "))
        run.metrics_path.write_bytes(b"\n".join(lines) + b"\n")
        records = run.records()
        assert [r for r in records if r in GOOD_LINES] == GOOD_LINES
        run.truncate_records(3)
        kept = run.records()
        assert [r for r in kept if r in GOOD_LINES] == GOOD_LINES


@pytest.mark.parametrize(
    "line", [b"[" * 100_000, b'{"round": ' + b"1" * 5000 + b', "event": "x"}'], ids=["deep", "long"]
)
def test_metrics_lines_that_break_the_json_reader_are_damage(tmp_path: Path, line: bytes) -> None:
    # json.loads raised RecursionError and ValueError (an int over 4300 digits) here
    run = RunDirectory(tmp_path)
    run.append(GOOD_LINES[0])
    with run.metrics_path.open("ab") as f:
        f.write(line + b"\n")
    assert run.records() == GOOD_LINES[:1]
    aside = run.truncate_records(1)
    assert aside is not None and aside.read_bytes() == line + b"\n"


def good_ledger() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "privacy.json"
        ledger = PrivacyLedger(path, Budget(8.0, 1e-5), "rdp")
        for r in (1, 2):
            ledger.record(r, MechanismEvent("gaussian", 1.1, 0.05), note="update")
        return path.read_bytes()


GOOD_LEDGER = good_ledger()


@fuzz()
@given(HOW, st.data())
def test_a_damaged_privacy_ledger_is_refused(how: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "privacy.json"
        damaged = damage(GOOD_LEDGER, how, data)
        path.write_bytes(damaged)
        try:
            ledger = PrivacyLedger.load(path)
        except CheckpointError:
            pass
        else:  # still valid JSON with a valid layout: the record it holds is read back
            assert ledger.path == path
        assert path.read_bytes() == damaged


def good_registry(folder: Path) -> Path:
    path = folder / "clients.sqlite"
    registry = ClientRegistry(path)
    registry.register(np.array([10, 20, 30]), np.array([0.5, 1.0, 1.5]))
    registry.close()
    return path


@fuzz(0.3)
@given(st.sampled_from(["truncate", "overwrite", "garbage"]), st.data())
def test_a_damaged_registry_is_refused_and_kept_aside(how: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = good_registry(Path(tmp))
        damaged = damage(path.read_bytes(), how, data)
        path.write_bytes(damaged)
        outcome = prepare_registry(path)
        if outcome is not None:  # refused: the damaged bytes are kept aside, untouched
            assert outcome.startswith("damaged") and not path.exists()
            assert (Path(tmp) / "clients.sqlite.damaged-1").read_bytes() == damaged


@fuzz()
@given(HOW, st.data())
def test_a_damaged_config_is_a_config_error(how: str, data: st.DataObject) -> None:
    text = to_toml(load_config()).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        damaged = damage(text, how, data)
        path.write_bytes(damaged)
        try:
            load_config(path)
        except ConfigError:
            pass
        assert path.read_bytes() == damaged


def test_nesting_deeper_than_the_parsers_follow_is_a_typed_refusal(tmp_path: Path) -> None:
    """Found by the long fuzz run: json and tomllib raise RecursionError on deep nesting."""
    config = tmp_path / "config.toml"
    config.write_text("a = " + "[" * 100_000)
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(config)
    ledger = tmp_path / "privacy.json"
    ledger.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="corrupt privacy ledger"):
        PrivacyLedger.load(ledger)
