"""Local DP over gRPC: the server asks, each client clips and noises its own update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from inprocess import run_insecure_clients, serve_in_thread

from fedloom.privacy.calibration import analytic_gaussian_sigma
from fedloom.transport.messages import LocalDP
from fedloom.transport.server import ServerOptions


def test_privatize_clips_and_noises_with_fresh_randomness() -> None:
    delta = np.full(1000, 0.5, dtype=np.float32)  # L2 norm 15.8
    spec = LocalDP.from_pb(LocalDP("gaussian", 1.0, 8.0, 1e-5).to_pb())  # as the device reads it
    a, b = spec.apply(delta), spec.apply(delta)
    assert a.dtype == np.float32 and a.shape == delta.shape
    assert not np.array_equal(a, b)  # OS randomness, never a seed from the server
    clipped = delta / np.linalg.norm(delta)
    sigma = analytic_gaussian_sigma(8.0, 1e-5, 2.0)  # replace-one sensitivity 2C
    assert abs(np.std(a - clipped) / sigma - 1) < 0.15  # 1000 draws: std within ~5%
    assert abs(np.mean(a - clipped)) < 4 * sigma / np.sqrt(1000)


def test_local_dp_run_over_grpc_is_accounted(tmp_path: Path) -> None:
    options = ServerOptions(port=0, insecure=True, linger_s=0.5)
    overrides = ['privacy.mode="local"', "privacy.local_epsilon=8"]
    server, port, thread = serve_in_thread(tmp_path, overrides, options)
    run_insecure_clients(server, thread, tmp_path, [0, 1, 2])
    rounds = [r for r in server.engine.run_dir.records() if r.get("event") == "round"]
    assert [r["completed"] for r in rounds] == [3, 3]
    assert rounds[-1]["epsilon"] > 0
    ledger = json.loads((server.engine.run_dir.path / "privacy.json").read_text())
    assert ledger  # the local releases were charged to the run's ledger
