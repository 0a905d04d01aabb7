"""Every kind of bad config fails before any work, naming the field and the value."""

from pathlib import Path

import pytest

from fedloom.config import RunConfig, apply_overrides, load_config, to_toml
from fedloom.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_default_config_is_the_documented_experiment():
    cfg = load_config()
    assert cfg.data.source == "digits"
    assert cfg.partition.method == "dirichlet" and cfg.partition.alpha == 0.5
    assert cfg.partition.num_clients == 100 and cfg.server.clients_per_round == 10
    assert cfg.server.optimizer.name == "fedavg"
    assert cfg.model.kind == "mlp"


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ['server.optimizer.name="fedadam"', "stopping.target=0.9"])
    again = load_config(write(tmp_path, to_toml(cfg)))
    assert again == cfg


def test_examples_are_valid_and_round_trip(tmp_path):
    examples = sorted(Path(__file__).parents[1].joinpath("examples").glob("*.toml"))
    assert examples, "no example configs shipped"
    for path in examples:
        cfg = load_config(path)
        assert isinstance(cfg, RunConfig)
        assert load_config(write(tmp_path, to_toml(cfg))) == cfg, path.name


def test_round_trip_of_tables_in_lists(tmp_path):
    cfg = load_config(
        None,
        [
            'network.changes=[{kind="flap", clients=[1, 2], time=5, count=2}, {kind="drop"}]',
            'selection.strategy="oort"',
            "selection.params={exploration=0.5, alpha=2}",
        ],
    )
    assert load_config(write(tmp_path, to_toml(cfg))) == cfg


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[server]\nclients_per_rund = 3\n", ["server.clients_per_rund", "unknown setting"]),
        ("bogus = 1\n", ["bogus", "unknown setting"]),
        ('rounds = "many"\n', ["rounds", "'many'"]),
        ("rounds = 0\n", ["rounds", "greater than or equal to 1", "0"]),
        ("[client]\nlr = -0.1\n", ["client.lr", "-0.1"]),
        ("[data]\ntest_fraction = 1.5\n", ["data.test_fraction", "1.5"]),
        ('[partition]\nmethod = "random"\n', ["partition.method", "'random'"]),
        ('[server.optimizer]\nname = "sgd"\n', ["server.optimizer", "'sgd'"]),
        ('[server.optimizer]\nname = "fedadam"\nbeta2 = 1.0\n', ["beta2", "1.0"]),
        ('[server.optimizer]\nname = "fedavg"\nbeta2 = 0.9\n', ["beta2", "unknown setting"]),
        ("[server]\nclients_per_round = 500\n", ["clients_per_round = 500", "num_clients = 100"]),
        ('[data]\nsource = "file"\n', ["data.path"]),
        ('name = "../escape"\n', ["name", "../escape"]),
        ("[client]\nlr = inf\n", ["client.lr", "inf"]),
        ("[client]\nlr = nan\n", ["client.lr", "nan"]),
        ("[client]\nnesterov = true\n", ["client.nesterov", "momentum"]),
        ("[client]\ndp_sgd_noise_multiplier = 1.0\n", ["dp_sgd_clip_norm"]),
        ('[stopping]\nmetric = "accuracy"\ntarget = 1.5\n', ["stopping.target", "1.5"]),
        ('[partition]\nmethod = "natural"\n', ["natural", "group_column"]),
        ("[secagg]\nbits = 8\n", ["secagg.bits", "8"]),
        ("[secagg]\nthreshold = 0\n", ["secagg.threshold", "0"]),
        ("[secagg]\nthreshold = 1.5\n", ["secagg.threshold", "1.5"]),
        ("[secagg]\nneighbours = 0\n", ["secagg.neighbours", "0"]),
        ('[secagg]\nneighbours = "some"\n', ["secagg.neighbours", "'some'"]),
        ("[secagg]\nclip = -1.0\n", ["secagg.clip", "-1.0"]),
        ('[secagg]\nrounding = "up"\n', ["secagg.rounding", "'up'"]),
        ("[secagg]\nenable = true\n", ["secagg.enable", "unknown setting"]),
        (
            '[privacy]\nmode = "distributed"\nnoise_multiplier = 1.0\naccountant = "rdp"\n',
            ["privacy.mode = 'distributed' needs secagg.enabled = true"],
        ),
        (
            '[privacy]\nmode = "distributed"\nnoise_multiplier = 1.0\n',
            ["privacy.accountant = 'rdp'"],
        ),
        (
            '[privacy]\nmode = "distributed"\naccountant = "rdp"\n',
            ["privacy.mode = 'distributed' needs exactly one of"],
        ),
        (
            '[privacy]\nmode = "distributed"\nnoise_multiplier = 1.0\naccountant = "rdp"\n'
            "adaptive_clipping = true\n",
            ["privacy.adaptive_clipping = false"],
        ),
        (
            '[privacy]\nmode = "distributed"\nnoise_multiplier = 1.0\naccountant = "rdp"\n'
            "[secagg]\nenabled = true\nbits = 64\n",
            ["secagg.bits = 16 or 32"],
        ),
    ],
)
def test_bad_config_names_field_and_value(tmp_path, text, needles):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_missing_file_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "rounds = = 3\n"))


def test_overrides_parse_toml_values_and_nest():
    data = apply_overrides(
        {}, ["rounds=7", "model.hidden=[16, 8]", "name=abc", "stopping.target=0.5"]
    )
    assert data == {
        "rounds": 7,
        "model": {"hidden": [16, 8]},
        "name": "abc",
        "stopping": {"target": 0.5},
    }
    assert load_config(None, ["rounds=7"]).rounds == 7


@pytest.mark.parametrize("item", ["rounds", "=3", "a..b=1", "rounds.x=1"])
def test_bad_overrides(item):
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["rounds=5", item]) if item == "rounds.x=1" else apply_overrides(
            {}, [item]
        )


def test_input_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    path = write(sub, '[devices]\nkind = "trace"\ntrace = "traces/t.jsonl"\n')
    cfg = load_config(path)
    assert cfg.devices.trace == (sub / "traces" / "t.jsonl").resolve()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ['data.source="file"', 'data.path="mine.csv"'])
    assert cfg.data.path == (tmp_path / "mine.csv").resolve()


def test_secagg_settings_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "secagg.enabled=true",
            'secagg.neighbours="all"',
            "secagg.bits=16",
            'secagg.rounding="stochastic"',
            'privacy.mode="distributed"',
            "privacy.target_epsilon=4",
            'privacy.accountant="rdp"',
        ],
    )
    assert cfg.secagg.neighbours == "all" and cfg.secagg.bits == 16
    assert load_config(write(tmp_path, to_toml(cfg))) == cfg
    assert load_config(None, ["secagg.neighbours=8"]).secagg.neighbours == 8
    assert load_config().secagg.enabled is False


def test_distributed_dp_too_fine_for_its_ring_is_refused_before_training(tmp_path):
    from fedloom.assemble import start_simulation

    cfg = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "secagg.enabled=true",
            "secagg.bits=16",
            'privacy.mode="distributed"',
            "privacy.noise_multiplier=0.00001",
            'privacy.accountant="rdp"',
        ],
    )
    with pytest.raises(ConfigError, match="secagg.bits = 16 .* below the 1/2"):
        start_simulation(cfg)
    assert not any(tmp_path.iterdir())


def test_client_settings_have_one_source_of_defaults_bounds_and_rules() -> None:
    """ClientConfig takes TrainPlan's defaults and bounds, and its rules between settings
    are TrainPlan's, reported under the config's names."""
    from fedloom.config import ClientConfig
    from fedloom.records import TrainPlan

    c, plan = ClientConfig(), TrainPlan()
    assert (c.local_epochs, c.local_steps, c.batch_size, c.optimizer, c.lr) == (
        plan.local_epochs,
        plan.local_steps,
        plan.batch_size,
        plan.optimizer,
        plan.lr,
    )
    assert (c.betas, c.eps, c.dp_sgd_clip_norm, c.dp_sgd_noise_multiplier) == (
        plan.betas,
        plan.eps,
        plan.dp_sgd_clip,
        plan.dp_sgd_noise,
    )
    for overrides, match in [
        (["client.lr=0"], "client.lr"),
        (["client.momentum=1.0"], "client.momentum"),
        (['client.optimizer="adam"', "client.momentum=0.5"], "client.momentum = 0.5 applies"),
        (
            ["client.dp_sgd_noise_multiplier=1.0"],
            "client.dp_sgd_noise_multiplier = 1.0 needs client.dp_sgd_clip_norm",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, overrides)
