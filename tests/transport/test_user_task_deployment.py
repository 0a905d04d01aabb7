"""A user's own model over gRPC: the server names it by import path, each client builds it
from its own trusted code, and the run reaches the simulator's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from deployment import Deployment
from user_nets import digits_images

ATOL = 1e-5  # float32 sums in another order (the simulator's executor vs one client each)
USER_CNN = '[model]\nkind = "module:user_nets:digits_cnn"\n'


def test_a_user_cnn_on_images_trains_over_grpc_as_in_the_simulator(tmp_path: Path) -> None:
    d = Deployment(
        tmp_path,
        clients=2,
        rounds=3,
        epochs=1,
        extra=USER_CNN,
        data=digits_images(num_clients=2),
        shape=("model.input_shape=[1, 8, 8]", "model.num_classes=10"),
    )
    try:
        d.start_server()  # (a client not told to trust user_nets refuses: test_task_messages)
        clients = [d.start_client(i, None, "--trust", "user_nets") for i in range(2)]
        d.wait_server()
        for proc in clients:
            assert proc.wait(60) == 0, d.logs()
        records = d.records()
        assert records[0]["task"]["reference"] == "module:user_nets:digits_cnn"
        assert records[0]["task"]["input_shape"] == [1, 8, 8]
        rounds = [r for r in records if r.get("event") == "round"]
        assert [r["status"] for r in rounds] == ["aggregated"] * 3
        params, accuracy = d.simulated_params()
        assert np.abs(d.final_params() - params).max() < ATOL, d.logs()
        assert rounds[-1]["accuracy"] == accuracy
    finally:
        d.close()
