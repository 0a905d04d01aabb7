"""The transform of docs/transforms.md, exactly as the page shows it, runs unchanged in
the simulator and over gRPC: one file plus one config entry, the same model in both
runtimes, and each client's state (its visit count) where that runtime keeps it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "transport"))

from inprocess import SMALL_RUN, run_insecure_clients, serve_in_thread  # noqa: E402

from fedloom.assemble import resume_simulation, start_simulation  # noqa: E402
from fedloom.config import load_config, to_toml  # noqa: E402
from fedloom.data.federated import build_federated_data  # noqa: E402
from fedloom.data.storage import client_dir, write_partition  # noqa: E402
from fedloom.errors import ConfigError  # noqa: E402
from fedloom.runs import RunDirectory  # noqa: E402
from fedloom.transport import fedloom_pb2 as pb  # noqa: E402
from fedloom.transport.client import DeploymentClient  # noqa: E402
from fedloom.transport.messages import MessageError  # noqa: E402
from fedloom.transport.server import ServerOptions  # noqa: E402

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "transforms" / "damp_by_visits.py"
PAGE = ROOT / "docs" / "transforms.md"
ENTRY = 'transforms.client=[{name = "damp_by_visits:DampByVisits", strength = 0.5}]'
ATOL = 1e-4  # vectorized (simulator) vs sequential (client) training, as in test_deployment


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the user puts the file: on the path of the server and of every client."""
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))


def test_the_page_shows_exactly_the_example_file_and_its_config_entry() -> None:
    page = PAGE.read_text()
    section = page.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None and code.group(1) == EXAMPLE.read_text()
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert toml is not None
    entry = toml.group(1).strip().splitlines()
    assert entry == [
        "[transforms]",
        'client = [{ name = "damp_by_visits:DampByVisits", strength = 0.5 }]',
    ]


def last_params(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    path, state = RunDirectory.open(run).latest_checkpoint()
    return state["arrays"]["params"], state["arrays"]


def simulate(root: Path, *extra: str) -> Path:
    config = load_config(None, [*SMALL_RUN, *extra, f"output_dir={root}"])
    sim = start_simulation(config)
    sim.run()
    return sim.run_dir.path


def test_the_example_runs_in_the_simulator_and_over_grpc(tmp_path: Path) -> None:
    plain, _ = last_params(simulate(tmp_path / "plain"))
    simulated, arrays = last_params(simulate(tmp_path / "sim", ENTRY))
    # the transform acts: late rounds are damped, so the model differs from a plain run
    assert np.abs(simulated - plain).max() > 100 * ATOL
    # the simulator keeps each client's state in its checkpoints: 3 clients, 2 rounds each
    visits = {k: int(v) for k, v in arrays.items() if k.endswith(".visits")}
    assert visits == {f"xform.client.{c}.0.visits": 2 for c in range(3)}

    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    server, port, thread = serve_in_thread(tmp_path / "grpc", [ENTRY], options)
    data = tmp_path / "grpc" / "data"
    run_insecure_clients(
        server, thread, tmp_path / "grpc", [0, 1, 2], timeout_s=120, trust=("damp_by_visits",)
    )
    deployed, arrays = last_params(next((tmp_path / "grpc" / "runs").iterdir()))
    np.testing.assert_allclose(deployed, simulated, atol=ATOL)
    # a deployed client keeps its own state in its data folder; the server holds none
    assert not any(k.startswith("xform.client.") for k in arrays)
    for i in range(3):
        with np.load(client_dir(data, i) / "transform_state.npz") as z:
            assert dict(z) == {"0.visits": 2}


def test_a_resumed_simulation_continues_each_clients_state_exactly(tmp_path: Path) -> None:
    # one executor for both runs ("auto" picks the faster by timing; the two executors
    # agree to 1e-5, not bit for bit, and a resume repeats its own run's choice)
    seq = 'simulation.executor="sequential"'
    straight, _ = last_params(simulate(tmp_path / "a", ENTRY, seq, "rounds=4"))
    first = simulate(tmp_path / "b", ENTRY, seq, "rounds=2")
    overrides = [*SMALL_RUN, ENTRY, seq, "rounds=4", f"output_dir={tmp_path / 'b'}"]
    config = load_config(None, overrides)
    (first / "config.toml").write_text(to_toml(config.model_copy(update={"name": first.name})))
    resumed = resume_simulation(first)
    resumed.run()
    np.testing.assert_array_equal(resumed.server.params, straight)
    assert {int(s["0"]["visits"]) for s in resumed.server.client_states.states.values()} == {4}


def test_the_config_entry_is_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="strength"):
        load_config(None, [ENTRY.replace("0.5", "-1")])
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_config(None, ['transforms.client=[{name = "no_such_module:Thing"}]'])
    with pytest.raises(ConfigError, match="secagg"):
        load_config(
            None,
            [
                "secagg.enabled=true",
                "secagg.min_clients=1",
                'transforms.server=[{name = "clip_l2", clip_norm = 1.0}]',
            ],
        )


def test_a_client_without_the_transforms_code_refuses_to_join(tmp_path: Path) -> None:
    config = load_config(None, SMALL_RUN)
    data = build_federated_data(config.data, config.partition, config.seed)
    write_partition(tmp_path, data.train, data.holdout)
    reply = pb.JoinReply(client_transforms=[pb.TransformSpec(name="missing_mod:T")])
    untrusting = DeploymentClient("127.0.0.1:1", client_dir(tmp_path, 0), insecure=True)
    with pytest.raises(MessageError, match="does not trust; start the client with --trust"):
        untrusting._setup_transforms(reply)  # server-named code the device never agreed to
    untrusting.channel.close()
    client = DeploymentClient(
        "127.0.0.1:1", client_dir(tmp_path, 0), insecure=True, trust=("missing_mod",)
    )
    with pytest.raises(ConfigError, match="missing_mod:T"):
        client._setup_transforms(reply)  # the join reply of a server naming unknown code
    assert not (client_dir(tmp_path, 0) / "transform_state.npz").exists()
