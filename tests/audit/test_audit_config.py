"""Config checks of ``fedloom audit``: each finding triggered and not triggered, and the
shipped examples audit without unexplained high findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.audit import audit
from fedloom.audit.config_checks import config_findings, secagg_threshold
from fedloom.config import parse_config
from fedloom.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


def checks(findings, severity=None):
    return {f.check for f in findings if severity in (None, f.severity)}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_have_no_high_findings(path):
    report = audit(path)
    assert report.kind == "config"
    assert not report.has_high(), report.sorted()
    # none of them enables differential privacy or secure aggregation
    assert {"privacy.off", "secagg.off"} <= report.checks("medium")


def test_insecure_is_high_and_certs_silence_the_note():
    base = parse_config({})
    assert "transport.no_tls" in checks(config_findings(base, insecure=True), "high")
    assert "transport.no_tls" not in checks(config_findings(base))
    assert "transport.unchecked" in checks(config_findings(base), "info")
    assert not checks(config_findings(base, certs_given=True)) & {"transport.unchecked"}


def test_privacy_off_no_budget_and_local_epsilon():
    assert "privacy.off" in checks(config_findings(parse_config({})), "medium")
    central = {"mode": "central", "noise_multiplier": 1.0}
    unbudgeted = config_findings(parse_config({"privacy": central}))
    assert "privacy.off" not in checks(unbudgeted)
    assert "privacy.no_budget" in checks(unbudgeted, "medium")
    assert {"privacy.mechanism", "privacy.noise_source"} <= checks(unbudgeted, "info")
    budgeted = parse_config({"privacy": {**central, "budget_epsilon": 100.0}})
    assert "privacy.no_budget" not in checks(config_findings(budgeted))
    loose = parse_config({"privacy": {"mode": "local", "local_epsilon": 20.0}})
    assert "privacy.local_epsilon" in checks(config_findings(loose), "medium")
    tight = parse_config({"privacy": {"mode": "local", "local_epsilon": 4.0}})
    assert "privacy.local_epsilon" not in checks(config_findings(tight))


def test_secagg_off_is_medium_except_under_central_dp():
    assert "secagg.off" in checks(config_findings(parse_config({})), "medium")
    central = parse_config({"privacy": {"mode": "central", "noise_multiplier": 1.0}})
    assert "secagg.off" not in checks(config_findings(central))


def secagg_config(threshold: float, failure: float, per_round: int = 10):
    return parse_config(
        {
            "server": {"clients_per_round": per_round},
            "secagg": {"enabled": True, "threshold": threshold},
            "devices": {"failure_prob": failure},
        }
    )


def test_secagg_threshold_against_dropout():
    strict = secagg_config(1.0, 0.1)
    assert secagg_threshold(strict, 10) == (10, 10)  # complete graph, everyone needed
    high = [f for f in config_findings(strict) if f.check == "secagg.dropout"]
    assert high[0].severity == "high" and "secagg.threshold = 1.0" in high[0].detail
    # t = 6 of 10 with p = 0.9: P[Bin(10, 0.9) < 6] is about 1.6e-3
    fine = [f for f in config_findings(secagg_config(0.5, 0.1)) if f.check == "secagg.dropout"]
    assert fine[0].severity == "info"
    # a measured survival probability replaces devices.failure_prob
    measured = config_findings(secagg_config(0.5, 0.0), survival=0.5, survival_source="registry")
    assert "secagg.dropout" in checks(measured, "high")


def test_secagg_cohort_of_one():
    config = secagg_config(0.5, 0.0, per_round=2)
    assert "secagg.cohort_of_one" not in checks(config_findings(config))
    # the loader refuses secagg.min_clients < 2; a config built around it is still caught
    weak = config.model_copy(update={"secagg": config.secagg.model_copy(update={"min_clients": 1})})
    assert "secagg.cohort_of_one" in checks(config_findings(weak), "high")


def krum(per_round: int, **params):
    return parse_config(
        {
            "server": {"clients_per_round": per_round},
            "aggregation": {"rule": "krum", "params": params},
        }
    )


def test_krum_against_a_byzantine_fraction():
    # 0.4 of 5 rows: 2 Byzantine; Krum needs K > 2f + 2 = 6 rows
    few = config_findings(krum(5), byzantine_fraction=0.4)
    assert "aggregation.byzantine" in checks(few, "high")
    # f = 1 on 10 rows with 2 Byzantine: the rule is told to expect fewer than arrive
    low_f = [f for f in config_findings(krum(10), byzantine_fraction=0.2)]
    assert "aggregation.params.f = 1" in next(f.detail for f in low_f if f.severity == "high")
    ok = config_findings(krum(10, f=2), byzantine_fraction=0.2)
    assert "aggregation.byzantine" in checks(ok, "info")
    assert "aggregation.byzantine" not in checks(config_findings(krum(5)))  # no fraction


def test_other_rules_against_a_byzantine_fraction():
    def rule(name, **params):
        return parse_config({"aggregation": {"rule": name, "params": params}})

    assert "aggregation.byzantine" in checks(
        config_findings(rule("mean"), byzantine_fraction=0.1), "high"
    )
    trimmed = rule("trimmed_mean", beta=0.1)
    assert "aggregation.byzantine" in checks(
        config_findings(trimmed, byzantine_fraction=0.3), "high"
    )
    assert "aggregation.byzantine" in checks(
        config_findings(trimmed, byzantine_fraction=0.1), "info"
    )
    median = rule("median")
    assert "aggregation.byzantine" in checks(
        config_findings(median, byzantine_fraction=0.5), "high"
    )
    assert "aggregation.byzantine" in checks(
        config_findings(median, byzantine_fraction=0.4), "info"
    )


def test_attack_clients_is_the_default_fraction():
    config = parse_config(
        {
            "server": {"clients_per_round": 5},
            "aggregation": {"rule": "krum"},
            "attack": {"kind": "sign_flip", "clients": 0.4},
        }
    )
    assert "aggregation.byzantine" in checks(config_findings(config), "high")
    assert "aggregation.byzantine" in checks(
        config_findings(config, byzantine_fraction=0.0), "info"
    )


def test_compression_under_secagg_is_reported_compatible():
    config = parse_config(
        {
            "secagg": {"enabled": True, "bits": 16},
            "compression": {"codec": "randomk", "params": {"fraction": 0.5, "shared_seed": 3}},
        }
    )
    found = [f for f in config_findings(config) if f.check == "compression.secagg"]
    assert found[0].severity == "info" and "randomk" in found[0].detail
    assert "compression.secagg" not in checks(config_findings(parse_config({})))


def test_bad_fraction_and_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="byzantine-fraction"):
        config_findings(parse_config({}), byzantine_fraction=1.5)
    with pytest.raises(ConfigError, match="no such config"):
        audit(tmp_path / "missing.toml")
