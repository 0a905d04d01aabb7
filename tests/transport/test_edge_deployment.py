"""Local work fitted to each deployed device over gRPC, from the run's records and the
processes' logs: a client whose declared memory cannot hold the model is never given
work, one that declares itself too slow to finish a step before the deadline is dropped
before it is told anything, and one whose declared speed fits only part of its work
trains partially until the server has measured it."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployment import Deployment

from fedloom.edge.profiles import DeviceProfile, builtin_profile
from fedloom.errors import CheckpointError
from fedloom.metrics import validate
from fedloom.transport.server import load_profiles, save_profiles

EDGE = """
[edge]
precision = "auto"
"""
TINY, FROZEN, SLOW, PHONE = 0, 1, 2, 3


def test_deployed_devices_get_the_work_their_profiles_allow(tmp_path: Path) -> None:
    d = Deployment(tmp_path, clients=4, rounds=3, epochs=1, extra=EDGE)
    profiles = {
        TINY: ("--profile", "iot", "--memory-mb", "0.01"),  # < the MLP's training memory
        FROZEN: ("--ms-per-sample", "1000000"),  # 1,000 s per example
        SLOW: ("--ms-per-sample", "400"),  # 12.8 s per step of 32: about 9 of 12 steps fit
        PHONE: ("--profile", "high_end_phone"),  # bf16 and fp16: trains in bf16
    }
    try:
        # round 1 waits for every client; its deadline leaves time for a few slow steps
        adaptive = ("--set", "server.deadline_s=120", "--set", 'edge.local_work="adaptive"')
        d.start_server("--min-clients", "4", *adaptive)
        procs = [d.start_client(i, None, *profiles[i]) for i in range(4)]
        d.wait_server()
        for proc in procs:
            assert proc.wait(60) == 0, d.logs()
        records = d.records()
        validate(records)
        rounds = [r for r in records if r.get("event") == "round"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        why = "cannot finish 1 step before the deadline"
        for r in rounds:
            # the tiny device is never selected; the frozen one is failed before dispatch
            assert r["selected"] == 3 and r["dispatched"] == 2, r
            assert r["dropped"] == {why: 1}, r
            assert r["completed"] == 2, r
        # the slow device's declared speed fits part of round 1; measured, it trains fully
        assert [r["partial"] for r in rounds] == [1, 0, 0]
        # progress monitoring: four sampled batch losses per client, averaged; the model
        # improves, so the round's first sampled loss is above its last
        assert all(len(r["local_loss"]) == 4 for r in rounds), rounds
        assert all(r["local_loss"][0] > r["local_loss"][-1] for r in rounds), rounds
        # what the clients declared is kept for a restarted server
        declared = load_profiles(d.run_path / "device_profiles.json")
        assert declared[TINY].memory_mb == 0.01 and declared[TINY].name == "iot"
        assert declared[FROZEN].ms_per_sample == 1e6
        assert declared[PHONE].bf16
        logs = {i: next(tmp_path.glob(f"client-{i}-*.log")).read_text() for i in range(4)}
        assert "done: 0 rounds trained" in logs[TINY]
        assert "done: 0 rounds trained" in logs[FROZEN]
        assert "done: 3 rounds trained" in logs[SLOW]
        assert "done: 3 rounds trained" in logs[PHONE]
    finally:
        d.close()


def test_declared_profiles_survive_a_server_restart_and_a_damaged_file_is_refused(
    tmp_path,
) -> None:
    path = tmp_path / "device_profiles.json"
    assert load_profiles(path) == {}
    profiles = {3: builtin_profile("iot"), 0: DeviceProfile("x", ms_per_sample=2.5)}
    save_profiles(path, profiles)
    assert load_profiles(path) == profiles
    path.write_text('{"1": {"name": "x", "threads": 0}}')
    with pytest.raises(CheckpointError, match="device_profiles.json.*threads = 0"):
        load_profiles(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a device profile file"):
        load_profiles(path)
