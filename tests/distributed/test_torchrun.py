"""One simulation sharded over 2 torchrun processes equals the single-process run."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.runs import RunDirectory

COMMON = [
    "rounds=4",
    "partition.num_clients=40",
    "server.clients_per_round=9",  # odd: the two ranks get different shares
    "checkpoint.every=2",
    "client.momentum=0.5",
    'devices.kind="tiered"',
    "server.deadline_s=120",
    'simulation.executor="vectorized"',
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], tmp_path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "fedloom",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


# a robust rule and anomaly screening need every row: the processes gather them
# (RunConfig.shard_mode); the scaling attackers act on each process's own share
ROBUST = [
    'aggregation.rule="trimmed_mean"',
    "anomaly.enabled=true",
    'attack.kind="scaling"',
    "attack.clients=[1, 5, 9, 13, 17, 21, 25, 29]",
]
MODES = {"allreduce": ['distributed.mode="allreduce"'], "robust": ROBUST}


@pytest.fixture(scope="module", params=list(MODES))
def single(request, tmp_path_factory):
    """The same experiment in this process: the reference."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single")
    extra = MODES[request.param]
    sim = start_simulation(
        load_config(None, [*COMMON, *extra, 'name="single"', f'output_dir="{out}"'])
    )
    sim.run()
    return request.param, sim.run_dir


def final_params(path) -> np.ndarray:
    run = RunDirectory(path)
    return run.read_checkpoint(run.checkpoints()[-1])["arrays"]["params"]


def sets(name: str, out) -> list[str]:
    args = ["run"]
    for item in [*COMMON, f'name="{name}"', f'output_dir="{out}"']:
        args += ["--set", item]
    return args


def test_two_processes_match_one(tmp_path, single):
    mode, single = single
    extra = [arg for item in MODES[mode] for arg in ("--set", item)]
    sharded = torchrun([*sets("sharded", tmp_path), *extra], tmp_path, nproc=2)
    assert sharded.returncode == 0, sharded.stderr[-3000:] + sharded.stdout[-3000:]
    a, b = final_params(single.path), final_params(tmp_path / "sharded")
    assert np.abs(a - b).max() < 1e-5
    records = RunDirectory(tmp_path / "sharded").records()
    assert records[0]["processes"] == 2
    assert [r["round"] for r in records if r["event"] == "round"] == [1, 2, 3, 4]
    single_rounds = [r for r in single.records() if "completed" in r]
    sharded_rounds = [r for r in records if "completed" in r]
    for x, y in zip(single_rounds, sharded_rounds, strict=True):
        assert (x["completed"], x["failed"], x["virtual_time"]) == (
            y["completed"],
            y["failed"],
            y["virtual_time"],
        )
        assert (x.get("anomaly"), x.get("reputation")) == (y.get("anomaly"), y.get("reputation"))
    if mode == "robust":
        assert any(r["anomaly"]["flagged"] for r in sharded_rounds)
