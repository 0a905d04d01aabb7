"""One ``metrics.jsonl`` schema for both runtimes: the records of simulated runs and of
gRPC runs (plain, secure aggregation with central DP) validate against
``fedloom.metrics``, and a record a runtime writes differently is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from inprocess import run_insecure_clients, serve_in_thread

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.metrics import RecordError, RoundRecord, SecAggRecord, StartRecord, parse, validate
from fedloom.transport.server import ServerOptions

SMALL = ["rounds=2", "partition.num_clients=4", "server.clients_per_round=3"]
SECURE_DP = [
    "secagg.enabled=true",
    'privacy.mode="central"',
    "privacy.noise_multiplier=0.5",
    "privacy.clip_norm=1.0",
    'privacy.sampling="fixed"',
    'privacy.accountant="rdp"',
]


def _simulated(tmp_path: Path, extra: list[str]) -> list[dict]:
    config = load_config(None, [*SMALL, *extra, f"output_dir={tmp_path}"])
    sim = start_simulation(config)
    sim.run()
    return sim.run_dir.records()


def _deployed(tmp_path: Path, extra: list[str]) -> list[dict]:
    options = ServerOptions(port=0, insecure=True, linger_s=0.5, min_clients=3)
    server, port, thread = serve_in_thread(tmp_path, extra, options)
    run_insecure_clients(server, thread, tmp_path, [0, 1, 2], timeout_s=120)
    return server.engine.run_dir.records()


@pytest.mark.parametrize(
    "extra",
    [
        ["server.deadline_s=30", 'devices.kind="tiered"', "evaluation.federated_every=1"],
        SECURE_DP,
        ['privacy.mode="local"', "privacy.local_epsilon=8"],
    ],
    ids=["plain", "secagg-central-dp", "local-dp"],
)
def test_simulated_records_fit_the_schema(tmp_path: Path, extra: list[str]) -> None:
    typed = validate(_simulated(tmp_path, extra))
    assert isinstance(typed[0], StartRecord) and typed[0].randomness.runtime == "simulation"
    rounds = [r for r in typed if isinstance(r, RoundRecord)]
    assert rounds and all(r.virtual_time is not None for r in rounds)
    if "secagg.enabled=true" in extra:
        assert all(isinstance(r.secagg, SecAggRecord) for r in rounds)


@pytest.mark.parametrize("extra", [[], SECURE_DP], ids=["plain", "secagg-central-dp"])
def test_deployed_records_fit_the_same_schema(tmp_path: Path, extra: list[str]) -> None:
    typed = validate(_deployed(tmp_path, extra))
    assert isinstance(typed[0], StartRecord) and typed[0].randomness.runtime == "deployment"
    rounds = [r for r in typed if isinstance(r, RoundRecord)]
    assert rounds and all(r.bytes_up is not None for r in rounds)
    if extra:
        secure = [r.secagg for r in rounds if r.status == "aggregated"]
        assert secure and all(s is not None and s.cohort >= s.included for s in secure)
        assert all(s.masked_input_bytes and s.plain_upload_bytes for s in secure)


def test_a_record_off_the_schema_is_refused() -> None:
    base = {
        "event": "round",
        "round": 1,
        "status": "aggregated",
        "selected": 3,
        "completed": 3,
        "failed": 0,
        "rejected": 0,
        "num_examples": 90,
        "train_loss": 0.5,
        "update_norm": 0.1,
        "wall_s": 0.01,
        "attempt": 1,
        "dispatched": 3,
    }
    assert isinstance(parse(base), RoundRecord)
    with pytest.raises(RecordError, match="masked_bytes"):  # a key one runtime invented
        parse(base | {"secagg": {"included": 3, "cohort": 3, "masked_bytes": 12}})
    with pytest.raises(RecordError, match="secagg.cohort"):  # a key one runtime left out
        parse(base | {"secagg": {"included": 3}})
    with pytest.raises(RecordError, match="round"):
        parse({k: v for k, v in base.items() if k != "round"})
