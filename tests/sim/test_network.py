"""Transfers over links whose bandwidth changes during the transfer."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.sim.devices import tiered_population, uniform_population
from fedloom.sim.network import LinkChange, NetworkConditions, bandwidth_drop, link_flap

MB = 1_000_000  # 8,000 kbit: 8 s at 1000 kbps


def test_no_changes_equals_closed_form():
    pop = tiered_population(1000, np.random.default_rng(0))
    clients = np.arange(0, 1000, 3)
    sizes = np.linspace(0, 5 * MB, len(clients))
    net = NetworkConditions(pop)
    for direction in ("up", "down"):
        np.testing.assert_allclose(
            net.transfer_end(clients, 100.0, sizes, direction),
            100.0 + pop.transfer_time(clients, sizes, direction),
            rtol=1e-12,
        )


def test_bandwidth_halves_mid_transfer():
    pop = uniform_population(3, up_kbps=1000.0, latency_ms=500.0)
    # payload starts at 0.5 s; by 4.5 s half (4 s of 8) is sent; the rest takes 8 s at half rate
    net = NetworkConditions(pop, bandwidth_drop(4.5, np.array([1]), 0.5))
    np.testing.assert_allclose(net.transfer_end(np.arange(3), 0.0, MB, "up"), [8.5, 12.5, 8.5])
    # download direction untouched when only "up" drops
    net_up = NetworkConditions(pop, bandwidth_drop(4.5, None, 0.5, direction="up"))
    np.testing.assert_allclose(net_up.transfer_end(np.arange(3), 0.0, MB, "down"), [8.5] * 3)


def test_drop_with_until_restores_bandwidth():
    pop = uniform_population(1, up_kbps=1000.0)
    # rate 125 kB/s; [2, 6) at quarter rate: 250k + 125k sent by 6 s, 625k left = 5 s
    net = NetworkConditions(pop, bandwidth_drop(2.0, None, 0.25, until=6.0))
    np.testing.assert_allclose(net.transfer_end(np.array([0]), 0.0, MB, "up"), [11.0])
    assert net.factor_at(np.array([0]), 3.0, "up")[0] == 0.25
    assert net.factor_at(np.array([0]), 6.0, "up")[0] == 1.0


def test_link_down_pauses_transfer_by_its_length():
    pop = uniform_population(2, up_kbps=1000.0, latency_ms=100.0)
    flap = link_flap(np.array([0]), start=3.0, period=100.0, down_for=2.5, count=1)
    net = NetworkConditions(pop, flap)
    np.testing.assert_allclose(net.transfer_end(np.arange(2), 0.0, MB, "up"), [8.1 + 2.5, 8.1])
    # repeated flaps: down [1, 2), [4, 5), [7, 8), [10, 11): all four fall inside the transfer
    many = NetworkConditions(pop, link_flap(None, start=1.0, period=3.0, down_for=1.0, count=4))
    np.testing.assert_allclose(many.transfer_end(np.array([1]), 0.0, MB, "up"), [8.1 + 4.0])


def test_transfer_started_while_link_is_down_waits():
    pop = uniform_population(1, up_kbps=1000.0)
    net = NetworkConditions(pop, link_flap(None, start=0.0, period=100.0, down_for=5.0, count=1))
    np.testing.assert_allclose(net.transfer_end(np.array([0]), 2.0, MB, "up"), [13.0])


def test_change_during_latency_applies_from_payload_start():
    pop = uniform_population(1, up_kbps=1000.0, latency_ms=2000.0)
    net = NetworkConditions(pop, bandwidth_drop(1.0, None, 0.5))
    np.testing.assert_allclose(net.transfer_end(np.array([0]), 0.0, MB, "up"), [18.0])


def test_permanently_down_link_never_finishes():
    pop = uniform_population(3, up_kbps=1000.0)
    net = NetworkConditions(pop, [LinkChange(4.0, np.array([0, 2]), 0.0, 1.0)])
    end = net.transfer_end(np.arange(3), 0.0, MB, "up")
    assert np.isinf(end[0]) and np.isinf(end[2]) and end[1] == pytest.approx(8.0)
    # a transfer that finishes before the outage is unaffected; nothing to send finishes at once
    np.testing.assert_allclose(net.transfer_end(np.array([0, 2]), 0.0, [MB // 4, 0], "up"), [2, 0])
    np.testing.assert_allclose(net.transfer_end(np.array([0]), 0.0, MB, "down"), [8.0])


def test_same_time_changes_apply_in_given_order():
    pop = uniform_population(1, up_kbps=1000.0)
    changes = [LinkChange(0.0, None, 0.5, 0.5), LinkChange(0.0, None, 0.25, 0.25)]
    net = NetworkConditions(pop, changes)
    np.testing.assert_allclose(net.transfer_end(np.array([0]), 0.0, MB, "up"), [32.0])


def test_validation():
    pop = uniform_population(3)
    with pytest.raises(ConfigError, match="up_factor"):
        NetworkConditions(pop, [LinkChange(1.0, None, -1.0, 1.0)])
    with pytest.raises(ConfigError, match="client 7"):
        NetworkConditions(pop, [LinkChange(1.0, np.array([0, 7]), 1.0, 1.0)])
    with pytest.raises(ConfigError, match="time"):
        NetworkConditions(pop, [LinkChange(np.nan, None, 1.0, 1.0)])
    with pytest.raises(ConfigError, match="nbytes of client 1"):
        NetworkConditions(pop).transfer_end(np.arange(3), 0.0, np.array([1, -1, 1]), "up")
    with pytest.raises(ConfigError, match="down_for"):
        link_flap(None, 0.0, period=5.0, down_for=5.0, count=2)
    with pytest.raises(ConfigError, match="until"):
        bandwidth_drop(5.0, None, 0.5, until=5.0)
