"""Asynchronous (FedBuff) against synchronous training over gRPC, and a killed server.

Real ``fedloom server`` and ``fedloom client`` processes on 127.0.0.1 (plaintext). Digits,
10 clients (IID), the default MLP 64-32-10 (2,410 parameters, 9.6 kB a float32 update),
one local epoch. Three clients are throttled by the client's upload rate cap
(``--max-upload-kbps 16``: about 4.8 s per upload, where the others take milliseconds).

1. **sync**: FedAvg, every client each round (``server.clients_per_round = 10``), so each
   round waits for the slowest upload; ``S`` rounds.
2. **FedBuff**: ``buffer_size = 5``, ``concurrency = 10``, polynomial staleness,
   ``max_staleness = 20``; ``S`` server steps. The fast clients fill the buffer; a
   throttled client's update enters a later step, staler (or is dropped past 20).

Wall seconds: the sum of the round (step) records' ``wall_s``, i.e. training time from
the first hand-out to the last step's checkpoint, without process start-up (10 torch
imports), which both modes pay alike. ``ratio`` = sync / FedBuff.

3. **kill**: a FedBuff run of ``2 S`` steps whose server is SIGKILLed once 2 steps are
   recorded and an acknowledged update waits in its buffer (or after 4 steps at the
   latest), then resumed with ``--resume``. From the outside: every upload the killed
   server acknowledged (its log; it logs each one after the inbox commit, before the
   reply) must be in a step covered by the checkpoint the resume started from (the steps'
   ``holds`` lines, up to the resume record's round) or put back into the buffer by the
   resumed server (its ``readmitted`` lines). ``lost`` counts those that are neither;
   the clients' own count of acknowledged uploads before the kill is reported too.

Usage: ``uv run python benchmarks/async_deployment.py [--quick]`` (prints JSON).
``measure(quick)`` is part 3 of ``benchmarks/async.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLIENTS = 10
THROTTLED = 3  # clients 0..2
THROTTLE_KBPS = 16.0
STARTUP_S = 180.0
CONFIG = """
name = "{name}"
rounds = {rounds}
seed = 5
output_dir = "{runs}"
[partition]
num_clients = {clients}
method = "iid"
[server]
clients_per_round = {clients}
[client]
local_epochs = 1
[checkpoint]
every = 1
keep = 100
{extra}
"""
FEDBUFF = """
[asynchronous]
mode = "fedbuff"
buffer_size = 5
concurrency = 10
max_staleness = 20
backoff_s = 0.5
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class _Run:
    """One server and its clients, all real processes, in ``root``."""

    def __init__(self, root: Path, name: str, rounds: int, extra: str) -> None:
        from fedloom.config import load_config
        from fedloom.data.federated import build_federated_data
        from fedloom.data.storage import write_eval_set, write_partition

        self.root = root
        root.mkdir(parents=True)
        self.config = root / "run.toml"
        self.config.write_text(
            CONFIG.format(
                name=name, rounds=rounds, runs=root / "runs", clients=CLIENTS, extra=extra
            )
        )
        config = load_config(self.config)
        data = build_federated_data(config.data, config.partition, config.seed)
        write_partition(root / "data", data.train, data.holdout)
        self.eval_path = root / "eval.npz"
        write_eval_set(self.eval_path, data.test)
        self.procs: list[subprocess.Popen] = []
        self.port = 0
        self.run_path: Path | None = None
        self.server: subprocess.Popen | None = None
        self.server_log = Path()

    def start_server(self, resume: bool = False) -> None:
        args = [sys.executable, "-m", "fedloom", "server"]
        if resume:
            assert self.run_path is not None
            args += ["--resume", str(self.run_path)]
        else:
            args += [str(self.config)]
        args += ["--insecure", "--port", str(self.port), "--eval-data", str(self.eval_path)]
        args += ["--min-clients", str(CLIENTS), "--min-transfer-kbps", "0"]
        self.server_log = self.root / f"server-{len(self.procs)}.log"
        with open(self.server_log, "w") as log:
            self.server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env())
        self.procs.append(self.server)
        text = self._wait_for(self.server_log, r"listening on [\d.]+:(\d+)", self.server)
        self.port = int(re.search(r"listening on [\d.]+:(\d+)", text).group(1))  # type: ignore[union-attr]
        self.run_path = Path(re.search(r"run directory: (\S+)", text).group(1))  # type: ignore[union-attr]

    def start_clients(self) -> None:
        from fedloom.data.storage import client_dir

        for i in range(CLIENTS):
            args = [sys.executable, "-m", "fedloom", "client", "--insecure"]
            args += ["--server", f"127.0.0.1:{self.port}", "--patience", "120"]
            args += ["--data", str(client_dir(self.root / "data", i))]
            if i < THROTTLED:
                args += ["--max-upload-kbps", str(THROTTLE_KBPS)]
            with open(self.root / f"client-{i}.log", "w") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env())
            self.procs.append(proc)

    @staticmethod
    def _wait_for(path: Path, pattern: str, proc: subprocess.Popen) -> str:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            text = path.read_text()
            if re.search(pattern, text):
                return text
            if proc.poll() is not None:
                raise RuntimeError(f"process exited ({proc.returncode}):\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{pattern!r} never appeared in {path}")

    def records(self) -> list[dict[str, Any]]:
        assert self.run_path is not None
        path = self.run_path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "round"]

    def wait_server(self, timeout: float = 600.0) -> None:
        assert self.server is not None
        code = self.server.wait(timeout)
        if code != 0:
            raise RuntimeError(f"server exited with {code}:\n{self.server_log.read_text()[-3000:]}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)


def _play(root: Path, name: str, steps: int, extra: str) -> dict[str, Any]:
    """One run to its end: training wall seconds and what its steps held."""
    run = _Run(root / name, name, steps, extra)
    try:
        run.start_server()
        run.start_clients()
        run.wait_server()
        records = run.steps()
    finally:
        run.close()
    stale = [s.get("staleness") or {} for s in records]
    return {
        "steps": len(records),
        "wall_s": round(sum(r["wall_s"] for r in records), 3),
        "accuracy": records[-1].get("accuracy"),
        "updates": sum(r["completed"] for r in records),
        "dropped_stale": sum(r.get("dropped_stale") or 0 for r in records),
        "max_staleness": max((int(k) for h in stale for k in h), default=0),
    }


def _kill_and_resume(root: Path, steps: int) -> dict[str, Any]:
    """A FedBuff run killed mid-run (SIGKILL) and resumed; acknowledged updates lost."""
    run = _Run(root / "kill", "kill", steps, FEDBUFF)
    try:
        run.start_server()
        run.start_clients()
        assert run.server is not None
        give_up = time.monotonic() + STARTUP_S + 300.0
        while True:  # 2 steps recorded and an acknowledged update buffered, or 4 steps
            if time.monotonic() > give_up:
                raise RuntimeError(f"no 2 steps in time:\n{run.server_log.read_text()[-3000:]}")
            if run.server.poll() is not None:
                raise RuntimeError(f"server exited:\n{run.server_log.read_text()[-3000:]}")
            done = len(run.steps())
            text = run.server_log.read_text()
            last_step = max([int(s) for s in re.findall(r"step (\d+) holds", text)], default=0)
            buffered = re.findall(r"acknowledged client-\d+ task \S+ \(step (\d+)", text)
            waiting = any(int(s) > last_step for s in buffered)
            if done >= 4 or (done >= 2 and waiting):
                break
            time.sleep(0.05)
        killed_at = time.time()
        run.server.send_signal(signal.SIGKILL)
        run.server.wait(10)
        before = run.server_log.read_text()
        run.start_server(resume=True)
        run.wait_server()
        after = run.server_log.read_text()
        records = run.records()
    finally:
        run.close()
    acknowledged = set(re.findall(r"acknowledged (client-\d+) task (\S+)", before))
    resume = next(r for r in records if r.get("event") == "resume")
    checkpointed = {
        (c, t)
        for step, held in re.findall(r"step (\d+) holds: (.*)", before)
        if int(step) <= resume["round"]
        for c, t in re.findall(r"(client-\d+):(\S+?)(?:,|$)", held)
    }
    readmitted = set(re.findall(r"readmitted (client-\d+) task (\S+)", after))
    lost = acknowledged - checkpointed - readmitted
    told = 0  # the clients' own count: uploads acknowledged to them before the kill
    for log in (root / "kill").glob("client-*.log"):
        for stamp in re.findall(
            r"^(\S+ \S+) fedloom.client task \S+: .*applied", log.read_text(), re.M
        ):
            moment = time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S"))
            told += moment <= killed_at
    steps_after = [r for r in records if r.get("event") == "round"]
    return {
        "killed_after_steps": resume["round"],
        "acknowledged_before_kill": len(acknowledged),
        "clients_told_acknowledged_before_kill": told,
        "in_checkpointed_steps": len(acknowledged & checkpointed),
        "readmitted_from_inbox": len(readmitted),
        "lost": len(lost),
        "steps_recorded": len(steps_after),
        "finished": bool(steps_after) and steps_after[-1]["round"] == steps,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    """Sync vs FedBuff wall seconds for the same number of steps, and the kill check."""
    steps = 3 if quick else 6
    with tempfile.TemporaryDirectory(prefix="fedloom-async-grpc-") as tmp:
        root = Path(tmp)
        sync = _play(root, "sync", steps, "")
        fedbuff = _play(root, "fedbuff", steps, FEDBUFF)
        kill = _kill_and_resume(root, 2 * steps)
    return {
        "clients": CLIENTS,
        "throttled": THROTTLED,
        "throttle_kbps": THROTTLE_KBPS,
        "steps": steps,
        "sync_wall_s": sync["wall_s"],
        "async_wall_s": fedbuff["wall_s"],
        "ratio": round(sync["wall_s"] / fedbuff["wall_s"], 2) if fedbuff["wall_s"] else None,
        "sync": sync,
        "fedbuff": fedbuff,
        "kill": kill,
        "lost_acknowledged_updates": kill["lost"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of 3 steps")
    print(json.dumps(measure(parser.parse_args().quick), indent=2))
