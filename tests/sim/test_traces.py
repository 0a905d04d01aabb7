"""Trace files: round trips, FedScale conversion, error messages, the shipped example."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import DataError
from fedloom.sim.availability import AlwaysAvailable, IntervalTrace
from fedloom.sim.devices import FLOAT_FIELDS, Population, tiered_population
from fedloom.sim.traces import convert_fedscale, read_trace, write_trace

EXAMPLE = Path(__file__).parents[2] / "examples" / "traces" / "mixed_devices.jsonl"


def assert_same(a: Population, b: Population) -> None:
    assert len(a) == len(b)
    for name in (*FLOAT_FIELDS, "tier", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    ta, tb = a.availability.to_intervals(), b.availability.to_intervals()
    np.testing.assert_array_equal(ta.bounds, tb.bounds)
    np.testing.assert_array_equal(ta.offsets, tb.offsets)
    np.testing.assert_array_equal(ta.period, tb.period)


def mixed_population() -> Population:
    pop = tiered_population(6, np.random.default_rng(0))
    trace = IntervalTrace.from_intervals(
        [
            [(0.0, 3600.0), (7200.0, 9000.5)],
            [],
            [(0.0, np.inf)],
            [(10.0, np.inf)],
            [(100.0, 200.0)],
            [(0.0, 86400.0)],
        ],
        np.array([86400.0, np.inf, np.inf, np.inf, 1000.0, 86400.0]),
    )
    memory = pop.memory_mb.copy()
    memory[1] = np.inf
    tier = pop.tier.copy()
    tier[2] = -1
    return replace(pop, availability=trace, memory_mb=memory, tier=tier, ids=np.arange(6) * 7 + 3)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(tmp_path, suffix):
    pop = mixed_population()
    path = tmp_path / f"devices{suffix}"
    write_trace(path, pop)
    back = read_trace(path)
    assert_same(pop, back)
    assert back.availability.available(np.arange(6), 500.0).tolist() == [
        True, False, True, True, False, True
    ]  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_always_and_diurnal(tmp_path, suffix):
    always = tiered_population(20, np.random.default_rng(1))
    write_trace(tmp_path / f"a{suffix}", always)
    back = read_trace(tmp_path / f"a{suffix}")
    assert isinstance(back.availability, AlwaysAvailable)
    assert_same(always, back)
    diurnal = tiered_population(20, np.random.default_rng(1), availability="diurnal")
    write_trace(tmp_path / f"d{suffix}", diurnal)
    back = read_trace(tmp_path / f"d{suffix}")
    c = np.arange(20)
    for t in np.arange(0, 2 * 86400, 900.0):
        np.testing.assert_array_equal(
            back.availability.available(c, t), diurnal.availability.available(c, t)
        )


def test_documented_example_and_defaults(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"client": 17, "compute_ms_per_sample": 43.1, "up_kbps": 2310.0, "down_kbps": 9100.0,'
        ' "latency_ms": 40, "active": [[0, 3600], [7200, 9000]], "period": 86400}\n'
        "\n"
        '{"client": 4, "compute_ms_per_sample": 10, "down_kbps": 500, "active": [[5, null]]}\n'
    )
    pop = read_trace(path)
    assert pop.ids.tolist() == [17, 4]
    assert pop.up_kbps.tolist() == [2310.0, 500.0] and pop.down_kbps.tolist() == [9100.0, 500.0]
    assert pop.latency_ms.tolist() == [40.0, 0.0]
    assert pop.loss_rate.tolist() == [0.0, 0.0] and pop.failure_prob.tolist() == [0.0, 0.0]
    assert np.isinf(pop.memory_mb).all() and pop.tier.tolist() == [-1, -1]
    c = np.arange(2)
    assert pop.availability.available(c, 86400 + 7300).tolist() == [True, True]
    assert pop.availability.next_change(c, 86400 + 7300).tolist() == [86400 + 9000, np.inf]


def test_csv_example_from_docs(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "client,compute_ms_per_sample,up_kbps,down_kbps,latency_ms,period,active\n"
        '17,43.1,2310.0,9100.0,40,86400,"[[0, 3600], [7200, 9000]]"\n'
        "18,80.0,1000.0,,,,\n"
    )
    pop = read_trace(path)
    assert pop.ids.tolist() == [17, 18] and pop.down_kbps.tolist() == [9100.0, 1000.0]
    assert pop.availability.available(np.arange(2), 5000.0).tolist() == [False, True]


GOOD = {"client": 1, "compute_ms_per_sample": 20.0, "up_kbps": 100.0}


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"compute_ms_per_sample": 1.0, "up_kbps": 1.0}, "missing required field 'client'"),
        ({"client": 2, "up_kbps": 1.0}, r"\(client 2\): missing required field 'compute_ms"),
        ({"client": 2, "compute_ms_per_sample": 1.0}, "'up_kbps' or 'down_kbps'"),
        ({**GOOD, "client": 2, "up_kbps": -5.0}, r"\(client 2\): field 'up_kbps' must be a fin"),
        ({**GOOD, "client": 2, "latency_ms": float("nan")}, "field 'latency_ms'"),
        ({**GOOD, "client": 2, "loss_rate": 1.0}, r"field 'loss_rate' must be in \[0, 1\)"),
        ({**GOOD, "client": 2, "failure_prob": "0.1"}, "field 'failure_prob' must be a number"),
        ({**GOOD, "client": 2, "client_id": 3}, "unknown field 'client_id'"),
        ({**GOOD, "client": -2}, "field 'client' must be >= 0"),
        ({**GOOD, "client": 2.5}, "field 'client' must be an integer"),
        ({**GOOD, "client": 2, "tier": -3}, "field 'tier'"),
        ({**GOOD, "client": 2, "active": [[10, 20], [15, 30]]}, "interval 1.*non-overlapping"),
        ({**GOOD, "client": 2, "active": [[30, 40], [10, 20]]}, "interval 1.*sorted"),
        ({**GOOD, "client": 2, "active": [[10, 5]]}, "interval 0.*end must be after start"),
        ({**GOOD, "client": 2, "active": [[-1, 5]]}, "interval 0.*start must be"),
        ({**GOOD, "client": 2, "active": [[0, 5, 6]]}, "interval 0 must be a"),
        ({**GOOD, "client": 2, "active": [[0, 90]], "period": 60}, "beyond the period"),
        ({**GOOD, "client": 2, "active": [[0, None]], "period": 60}, "open end"),
        ({**GOOD, "client": 2, "period": 60}, "'period' given without 'active'"),
        ({**GOOD, "client": 2, "period": 0, "active": []}, "field 'period' must be"),
        (GOOD, r"duplicate client 1 \(first defined at t.jsonl:1\)"),
    ],
)
def test_bad_jsonl_names_line_and_field(tmp_path, line, match):
    path = tmp_path / "t.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    path.write_text(json.dumps(GOOD) + "\n\n" + text + "\n")
    with pytest.raises(DataError, match=rf"t\.jsonl:3\b.*{match}"):
        read_trace(path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("2,abc,100", "field 'compute_ms_per_sample': cannot parse 'abc'"),
        ("2,nan,100", r"\(client 2\): field 'compute_ms_per_sample' must be"),
        ("2.5,10,100", "field 'client': cannot parse"),
        ("1,10,100", "duplicate client 1"),
        ("2,10,100,7", "more cells than header"),
    ],
)
def test_bad_csv_names_line_and_field(tmp_path, row, match):
    path = tmp_path / "t.csv"
    path.write_text(f"client,compute_ms_per_sample,up_kbps\n1,20,100\n{row}\n")
    with pytest.raises(DataError, match=rf"t\.csv:3\b.*{match}"):
        read_trace(path)


def test_bad_csv_header_and_files(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("client,compute_ms,up_kbps\n1,20,100\n")
    with pytest.raises(DataError, match=r"t\.csv:1: unknown column 'compute_ms'"):
        read_trace(path)
    with pytest.raises(DataError, match="unknown extension '.pkl'"):
        read_trace(tmp_path / "trace.pkl")
    with pytest.raises(DataError, match="unknown extension '.txt'"):
        write_trace(tmp_path / "trace.txt", tiered_population(2, np.random.default_rng(0)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no clients"):
        read_trace(empty)
    with pytest.raises(DataError, match="cannot be read"):
        read_trace(tmp_path / "missing.jsonl")


def test_convert_fedscale():
    device_info = {
        3: {"computation": 10.0, "communication": 800.0},
        1: {"computation": 25.5, "communication": 4000},
        2: {"computation": 7, "communication": 100.0},
    }
    behavior = {
        1: {"duration": 900, "active": [0, 500], "inactive": [100, 1200], "finish_time": 1000},
        3: {"duration": 900, "active": [50, 70], "inactive": [50, 80], "finish_time": 200},
        99: {"duration": 1, "active": [0], "inactive": [1], "finish_time": 2},  # ignored
    }
    pop = convert_fedscale(device_info, behavior)
    assert pop.ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(pop.compute_ms_per_sample, [76.5, 21.0, 30.0])
    np.testing.assert_array_equal(pop.up_kbps, pop.down_kbps)
    np.testing.assert_array_equal(pop.up_kbps, [4000.0, 100.0, 800.0])
    assert (pop.latency_ms == 0).all() and (pop.failure_prob == 0).all()
    trace = pop.availability.to_intervals()
    # inactive 1200 is clipped to the 1000 s period; the empty [50, 50) pair is dropped
    assert trace.intervals(0) == [(0.0, 100.0), (500.0, 1000.0)]
    assert trace.intervals(1) == [(0.0, np.inf)]  # no behaviour: always online
    assert trace.intervals(2) == [(70.0, 80.0)]
    c = np.arange(3)
    assert pop.availability.available(c, 2050.0).tolist() == [True, True, False]  # 50, 50, 50
    assert pop.availability.next_change(c, 2050.0).tolist() == [2100.0, np.inf, 2070.0]
    only_devices = convert_fedscale(device_info, augmentation_factor=1.0)
    assert isinstance(only_devices.availability, AlwaysAvailable)
    np.testing.assert_allclose(only_devices.compute_ms_per_sample, [25.5, 7.0, 10.0])


@pytest.mark.parametrize(
    ("device_info", "behavior", "match"),
    [
        ({1: {"computation": 1.0}}, None, r"client 1\).*missing field 'communication'"),
        ({1: {"computation": -1.0, "communication": 5}}, None, "'compute_ms_per_sample'"),
        ({1: {"computation": 1, "communication": 5}}, {1: {"active": []}}, "'inactive'"),
        (
            {1: {"computation": 1, "communication": 5}},
            {1: {"active": [9], "inactive": [3], "finish_time": 10}},
            "active 9.0 is after inactive 3.0",
        ),
        ({"a": {"computation": 1, "communication": 5}}, None, "'client id' must be an integer"),
        ({}, None, "no clients"),
    ],
)
def test_convert_fedscale_errors(device_info, behavior, match):
    with pytest.raises(DataError, match=match):
        convert_fedscale(device_info, behavior)


def test_shipped_example_trace_loads():
    pop = read_trace(EXAMPLE)
    assert len(pop) == 200
    assert pop.ids.tolist() == list(range(200))
    assert set(np.unique(pop.tier)) <= {0, 1, 2, 3}
    trace = pop.availability
    assert isinstance(trace, IntervalTrace) and (trace.period == 2 * 86400.0).all()
    # every client is online some of the time, nobody always
    grid = np.arange(0, 2 * 86400, 600.0)
    online = np.mean([trace.available(np.arange(200), t) for t in grid], axis=0)
    assert (online > 0.1).all() and (online < 0.9).all()
