"""What the [aggregation], [anomaly] and [attack] sections compose with, as a user meets
it when the config loads: one error line naming both settings."""

from __future__ import annotations

import pytest

from fedloom.config import load_config
from fedloom.errors import ConfigError


def load(*sets: str):
    return load_config(None, list(sets))


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (
            ('aggregation.rule="median"', "secagg.enabled=true"),
            ("aggregation.rule = 'median'", "secagg.enabled = true"),
        ),
        (
            ('aggregation.rule="mean"', "aggregation.bucketing=2", "secagg.enabled=true"),
            ("aggregation.bucketing = 2", "secagg.enabled = true"),
        ),
        (("anomaly.enabled=true", "secagg.enabled=true"), ("anomaly.enabled", "secagg")),
        (
            ('aggregation.rule="krum"', 'privacy.mode="central"', "privacy.noise_multiplier=1.0"),
            ("aggregation.rule = 'krum'", "privacy.mode = 'central'"),
        ),
        (
            ("anomaly.enabled=true", 'asynchronous.mode="fedasync"'),
            ("anomaly.enabled", "asynchronous.buffer_size = 1"),
        ),
        (
            ('aggregation.rule="bulyan"', "aggregation.params={f=2}"),
            ("4f + 3 = 11", "server.clients_per_round"),
        ),
        (('attack.kind="alie"', "attack.clients=1.5"), ("attack.clients = 1.5",)),
        (
            ('attack.kind="alie"', "attack.clients=[3, 500]", "partition.num_clients=100"),
            ("attack.clients", "partition.num_clients = 100"),
        ),
    ],
)
def test_refused_combinations_name_both_settings(sets, needles) -> None:
    with pytest.raises((ConfigError, ValueError)) as err:
        load(*sets)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_norm_bounding_under_secure_aggregation_is_each_clients_clip() -> None:
    config = load(
        'aggregation.rule="norm_bound"', "aggregation.params={max_norm=2.5}", "secagg.enabled=true"
    )
    assert config.client_transform_specs()[-1] == ("clip_l2", {"clip_norm": 2.5})
    plain = load('aggregation.rule="norm_bound"', "aggregation.params={max_norm=2.5}")
    assert plain.client_transform_specs() == []  # the server clips the rows it sees


@pytest.mark.parametrize(
    ("sets", "mode"),
    [
        ((), "allreduce"),
        (('aggregation.rule="median"',), "gather"),
        (("aggregation.bucketing=2",), "gather"),
        (("anomaly.enabled=true",), "gather"),
        (('aggregation.rule="norm_bound"', "secagg.enabled=true"), "allreduce"),
    ],
)
def test_torchrun_gathers_every_row_when_the_server_needs_them(sets, mode) -> None:
    assert load(*sets).shard_mode == mode


def test_an_attack_parameter_is_checked_when_the_run_is_built(tmp_path) -> None:
    """(``attacks`` builds on ``data``, which reads the config: the config cannot import
    it, so the attack's parameters are checked before the run trains, not at load.)"""
    from fedloom.assemble import start_simulation

    config = load(f'output_dir="{tmp_path}"', 'attack.kind="scaling"', "attack.params={boost=2}")
    with pytest.raises(ConfigError, match="attack.params.boost"):
        start_simulation(config)
