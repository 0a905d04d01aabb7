"""Compressed communication in both runtimes: the same model in the simulator and over
gRPC, residuals where each runtime keeps them (and across a resume), bytes counted from
the encoded payloads, compressed downloads, adaptive settings, and hostile payloads
refused for their client without reaching the aggregate."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "transport"))

from inprocess import SMALL_RUN, run_insecure_clients, serve_in_thread  # noqa: E402

from fedloom.assemble import resume_simulation, start_simulation  # noqa: E402
from fedloom.compression.codec import HEADER_BYTES, Header  # noqa: E402
from fedloom.config import load_config, to_toml  # noqa: E402
from fedloom.data.storage import client_dir  # noqa: E402
from fedloom.errors import ConfigError, UpdateRejected  # noqa: E402
from fedloom.records import ClientMetrics, Update  # noqa: E402
from fedloom.runs import RunDirectory  # noqa: E402
from fedloom.transport.client import DeploymentClient  # noqa: E402
from fedloom.transport.server import ServerOptions  # noqa: E402

TOPK_EF = [
    'compression.codec="topk"',
    "compression.params={fraction=0.05}",
    "compression.error_feedback=true",
]
ATOL = 1e-4  # vectorized (simulator) vs sequential (client) training, as elsewhere


def simulate(root: Path, *extra: str) -> Path:
    config = load_config(None, [*SMALL_RUN, *extra, f"output_dir={root}"])
    sim = start_simulation(config)
    sim.run()
    return sim.run_dir.path


def last_params(run: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _, state = RunDirectory.open(run).latest_checkpoint()
    return state["arrays"]["params"], state["arrays"]


def rounds(run: Path) -> list[dict]:
    return [r for r in RunDirectory.open(run).records() if r.get("event") == "round"]


def test_topk_with_error_feedback_gives_the_simulators_model_over_grpc(tmp_path: Path) -> None:
    plain, _ = last_params(simulate(tmp_path / "plain"))
    sim_run = simulate(tmp_path / "sim", *TOPK_EF)
    simulated, arrays = last_params(sim_run)
    assert np.abs(simulated - plain).max() > 100 * ATOL  # compression changes the model
    residuals = {k for k in arrays if k.startswith("compress.client.") and "residual" in k}
    assert residuals == {f"compress.client.{c}.residual" for c in range(3)}

    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    server, _, thread = serve_in_thread(tmp_path / "grpc", TOPK_EF, options)
    run_insecure_clients(server, thread, tmp_path / "grpc", [0, 1, 2], timeout_s=120)
    grpc_run = next((tmp_path / "grpc" / "runs").iterdir())
    deployed, arrays = last_params(grpc_run)
    np.testing.assert_allclose(deployed, simulated, atol=ATOL)
    # a deployed client keeps its own residual; the server holds none
    assert not any(k.startswith("compress.client.") for k in arrays)
    for i in range(3):
        with np.load(client_dir(tmp_path / "grpc" / "data", i) / "compression_state.npz") as z:
            assert set(z.files) == {"residual"} and np.abs(z["residual"]).sum() > 0
    # bytes: the transport counted exactly the encoded payloads, far below float32 rows
    for record in rounds(grpc_run):
        comp = record["compression"]
        assert record["bytes_up"] == comp["payload_bytes"]
        assert comp["payloads"] == 3 and comp["ratio"] > 5
        assert set(comp["settings"].values()) == {0.05}
    sim_bytes = [r["bytes_up"] for r in rounds(sim_run)]
    assert sim_bytes == [r["bytes_up"] for r in rounds(grpc_run)]  # the same payloads


def test_residuals_survive_a_resume_exactly(tmp_path: Path) -> None:
    run = [*TOPK_EF, 'simulation.executor="vectorized"']  # not a timed choice: bit for bit
    straight, _ = last_params(simulate(tmp_path / "a", *run, "rounds=4"))
    first = simulate(tmp_path / "b", *run, "rounds=2")
    config = load_config(None, [*SMALL_RUN, *run, "rounds=4", f"output_dir={tmp_path / 'b'}"])
    (first / "config.toml").write_text(to_toml(config.model_copy(update={"name": first.name})))
    resumed = resume_simulation(first)
    resumed.run()
    np.testing.assert_array_equal(resumed.server.params, straight)


def test_compressed_downloads_rebuild_the_servers_model_in_both_runtimes(tmp_path: Path) -> None:
    entry = ['compression.download="uniform"', "compression.download_params={bits=8}"]
    sim_run = simulate(tmp_path / "sim", *entry, "rounds=3")
    simulated, arrays = last_params(sim_run)
    records = rounds(sim_run)
    # round 1 sends whole models; later rounds the one-version deltas (about d bytes)
    assert records[0]["compression"]["download_ratio"] == pytest.approx(1.0)
    assert all(r["compression"]["download_ratio"] > 3 for r in records[1:])
    assert "compress.download.held" in arrays

    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    server, _, thread = serve_in_thread(tmp_path / "grpc", [*entry, "rounds=3"], options)
    run_insecure_clients(server, thread, tmp_path / "grpc", [0, 1, 2], timeout_s=120)
    grpc_run = next((tmp_path / "grpc" / "runs").iterdir())
    deployed, _ = last_params(grpc_run)
    np.testing.assert_allclose(deployed, simulated, atol=ATOL)
    for sim_r, grpc_r in zip(records, rounds(grpc_run), strict=True):
        assert grpc_r["bytes_down"] == sim_r["bytes_down"]  # the same chains went down


def test_adaptive_settings_follow_a_bandwidth_drop(tmp_path: Path) -> None:
    run = simulate(
        tmp_path,
        'compression.codec="topk"',
        "compression.error_feedback=true",
        "compression.adaptive=true",
        "server.deadline_s=2.0",
        "devices.up_kbps=10",
        "devices.compute_ms_per_sample=0.5",
        "rounds=7",
        'network.changes=[{kind="drop", time=1.5, factor=0.05, direction="up"}]',
    )
    records = rounds(run)
    chosen = [sorted(set(r["compression"]["settings"].values())) for r in records]
    # alike clients: nobody has time to spare, so everyone keeps the default fraction
    assert chosen[0] == [0.01] and records[0]["completed"] == 3
    assert records[0]["virtual_time"] < 1.5
    # once the uplink drops to 5% every client gets a sparser setting that still fits
    # (the round under way at the drop may miss the deadline)
    for r, settings in zip(records[-3:], chosen[-3:], strict=True):
        assert max(settings) <= 0.003 and r["completed"] == 3 and not r["dropped"]


def test_virtual_time_counts_the_encoded_bytes(tmp_path: Path) -> None:
    slow = ["devices.up_kbps=50", "devices.latency_ms=0", "devices.compute_ms_per_sample=0.001"]
    plain = rounds(simulate(tmp_path / "plain", *slow, "rounds=1"))[0]
    squeezed = rounds(simulate(tmp_path / "topk", *slow, *TOPK_EF, "rounds=1"))[0]
    per_client_s = 8 * squeezed["bytes_up"] / 3 / 50e3
    assert squeezed["round_virtual_s"] < plain["round_virtual_s"] / 5
    # the slowest upload's seconds are its own payload bytes at 50 kbit/s
    assert squeezed["round_virtual_s"] >= per_client_s * 0.9


# ------------------------------------------------------------------- hostile payloads


@pytest.fixture
def open_round(tmp_path: Path):
    config = load_config(None, [*SMALL_RUN, *TOPK_EF, f"output_dir={tmp_path}"])
    sim = start_simulation(config)
    server = sim.server
    dispatches = server.begin_round()
    return server, dispatches


def _update(d, payload: bytes | None, delta: np.ndarray | None = None) -> Update:
    return Update(
        d.client_id,
        d.round,
        d.version,
        np.zeros(0, np.float32) if delta is None else delta,
        10,
        ClientMetrics(1.0, 1, 1.0),
        payload=payload,
    )


def test_payloads_that_do_not_decode_are_refused_for_their_client(open_round) -> None:
    server, dispatches = open_round
    comp, dim = server.compression, server.dim
    good_row = np.full((1, dim), 0.01, np.float32)
    states = comp.init(dim)
    from fedloom.transforms.base import stack_states

    payloads, _ = comp.encode(good_row, np.array([0.05]), np.array([1]), stack_states([states]))
    good = payloads[0]
    header, _ = Header.unpack(good)
    nan = bytearray(good)
    nan[-4:] = np.array([np.nan], np.float32).tobytes()  # the last value
    short = Header(header.codec, dim - 1, header.setting).pack() + good[HEADER_BYTES:]
    bad = {
        "garbage": (b"\x00" * 7, "malformed"),
        "truncated": (good[:-3], "malformed"),
        "wrong length": (short, "malformed"),
        "non-finite": (bytes(nan), "nonfinite"),
    }
    d0, d1, d2 = dispatches
    for payload, kind in bad.values():
        with pytest.raises(UpdateRejected, match=f"client {d0.client_id}") as err:
            server.receive(_update(d0, payload))
        assert err.value.kind == kind
    with pytest.raises(UpdateRejected, match="plain row") as err:
        server.receive(_update(d1, None, np.zeros(dim, np.float32)))
    server.receive(_update(d2, good))
    result = server.close_round()
    assert list(result.clients.ids) == [d2.client_id]  # only the good payload counted


class GarbledClient(DeploymentClient):
    """A client whose payloads are cut short on the way out (a broken or hostile device)."""

    def _compress(self, task, delta):  # noqa: ANN001, ANN202
        payload, state = super()._compress(task, delta)
        return payload[: len(payload) // 2], state


def test_a_garbled_payload_over_grpc_is_refused_and_named(tmp_path: Path) -> None:
    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    run = [*TOPK_EF, "server.deadline_s=6", "rounds=1"]
    server, port, thread = serve_in_thread(tmp_path, run, options)
    for i in range(3):
        kind = GarbledClient if i == 0 else DeploymentClient
        client = kind(f"127.0.0.1:{port}", client_dir(tmp_path / "data", i), insecure=True)
        threading.Thread(target=client.run, daemon=True).start()
    thread.join(120)
    server.stop()
    assert not thread.is_alive()
    run = next((tmp_path / "runs").iterdir())
    for record in rounds(run):
        assert record["completed"] == 2 and record["compression"]["payloads"] == 2
        (excluded,) = record["excluded"]
        assert excluded["client"] == 0 and excluded["kind"] == "malformed"
        assert "payload" in excluded["detail"]
    # the garbled client kept its residual as it was: the server never held its update
    assert not (client_dir(tmp_path / "data", 0) / "compression_state.npz").exists()


def test_compression_settings_are_checked_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="secagg"):
        load_config(None, ['compression.codec="topk"', "secagg.enabled=true"])
    with pytest.raises(ConfigError, match="deadline_s"):
        load_config(None, ['compression.codec="topk"', "compression.adaptive=true"])
    with pytest.raises(ConfigError, match="need a compression.codec"):
        load_config(None, ["compression.error_feedback=true"])
    with pytest.raises(ConfigError, match="'zip'"):
        load_config(None, ['compression.codec="zip"'])
    with pytest.raises(ConfigError, match="fraction"):
        load_config(None, ['compression.codec="topk"', "compression.params={fraction=2.0}"])
    json.dumps(load_config(None, TOPK_EF).compression.model_dump())


@pytest.mark.parametrize(
    "privacy",
    [
        ['privacy.mode="central"', "privacy.noise_multiplier=1.0", "privacy.clip_norm=0.5"],
        ['privacy.mode="local"', "privacy.local_epsilon=8.0", "privacy.clip_norm=0.5"],
    ],
)
def test_compression_composes_with_differential_privacy(tmp_path: Path, privacy) -> None:
    run = simulate(tmp_path, *TOPK_EF, *privacy, "rounds=2")
    for r in rounds(run):
        assert r["epsilon"] is not None and r["epsilon"] > 0
        if r["status"] == "aggregated":
            assert r["compression"]["payloads"] == r["completed"] > 0
            assert r["bytes_up"] == r["compression"]["payload_bytes"]
