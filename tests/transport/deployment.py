"""Real server and client processes for deployment tests (not a test file).

``Deployment`` writes a small run config, exports its client data, issues mTLS
certificates, and starts ``python -m fedloom server`` / ``client`` processes on
127.0.0.1 (or wherever a test points them), killing whatever is left at the end.

The server is given no client data: its config names a data source that cannot load
(``DATALESS``: the model's shape is given instead) and it evaluates on the test split
only (``--eval-data``), while each client reads its own folder; the simulator the
tests compare with builds the same data from the test's config.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedloom.assemble import start_simulation
from fedloom.config import load_config
from fedloom.data.federated import FederatedData, build_federated_data
from fedloom.data.storage import client_dir, write_eval_set, write_partition
from fedloom.runs import RunDirectory
from fedloom.transport.certs import init_ca, issue

CONFIG = """
rounds = {rounds}
seed = 3
output_dir = "{runs}"
[partition]
num_clients = {clients}
[server]
clients_per_round = {clients}
{cap}
[client]
local_epochs = {epochs}
[checkpoint]
every = 1
keep = 50
{extra}
"""
# the server's settings on top of the test's config: a data source that would fail to
# load (the server must not build the data), and the model's shape in its place
DATALESS = [
    'data.source="file"',
    'data.path="/nonexistent/no-client-data-on-the-server.csv"',
    "model.num_features=64",
    "model.num_classes=10",
]
HERE = str(Path(__file__).resolve().parent)
STARTUP_S = 120.0  # generous: the first torch import on a busy CI machine is slow


class Deployment:
    def __init__(
        self,
        root: Path,
        clients: int = 3,  # each is a process importing torch: a few seconds of CPU
        rounds: int = 4,
        epochs: int = 2,
        extra: str = "",
        data: FederatedData | None = None,
        shape: tuple[str, ...] = ("model.num_features=64", "model.num_classes=10"),
    ) -> None:
        """``extra``: TOML appended to the run config (whole tables, e.g. ``[secagg]``);
        ``data``: the clients' data instead of the config's (the simulator the test
        compares with gets it too); ``shape``: the settings that tell the data-free
        server the model's shape."""
        self.root = root
        self.clients = clients
        self.config_path = root / "run.toml"
        self.server_settings = [*DATALESS[:2], *shape]
        settings = dict(rounds=rounds, runs=root / "runs", clients=clients, epochs=epochs)
        self.config_path.write_text(CONFIG.format(**settings, extra=extra, cap=""))
        self.config = load_config(self.config_path)
        self.data = data
        if data is None:
            data = build_federated_data(self.config.data, self.config.partition, self.config.seed)
        # the FedAvg weight cap at the largest client (a no-op for the simulator), so that
        # SecAgg's public weight bound W is the simulator's in the deployment too
        cap = f"max_examples_per_client = {int(data.train.sizes().max())}"
        self.config_path.write_text(CONFIG.format(**settings, extra=extra, cap=cap))
        self.config = load_config(self.config_path)
        self.data_root = root / "data"
        write_partition(self.data_root, data.train, data.holdout)
        self.eval_path = root / "eval.npz"  # the test split: the simulator evaluates on it
        write_eval_set(self.eval_path, data.test)
        self.certs = root / "certs"
        init_ca(self.certs)
        issue(self.certs, "server", kind="server")
        for i in range(clients):
            issue(self.certs, f"client-{i:06d}")
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        self.port = 0
        self.run_path: Path | None = None

    @staticmethod
    def env() -> dict[str, str]:
        """Unbuffered logs, one thread, and this folder importable (``user_nets``: a
        user's model code the processes may be told to trust)."""
        path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}

    def start_server(self, *extra: str, resume: Path | None = None) -> int:
        args = [sys.executable, "-m", "fedloom", "server"]
        if resume:
            args += ["--resume", str(resume)]
        else:
            args += [str(self.config_path)]
            args += [a for s in self.server_settings for a in ("--set", s)]
        args += ["--port", str(self.port), "--certs", str(self.certs), "--client-timeout", "4"]
        args += ["--eval-data", str(self.eval_path)]
        log = open(self.root / f"server-{len(self.procs)}.log", "w")  # noqa: SIM115
        self.server = subprocess.Popen(
            [*args, *extra], stdout=log, stderr=subprocess.STDOUT, env=self.env()
        )
        self.procs.append(self.server)
        self.server_log = log.name
        text = self._wait_for(log.name, r"listening on [\d.]+:(\d+)", self.server)
        self.port = int(re.search(r"listening on [\d.]+:(\d+)", text).group(1))
        self.run_path = Path(re.search(r"run directory: (\S+)", text).group(1))
        return self.port

    def start_client(
        self, i: int, target: str | None = None, *extra: str, prefix: list[str] | None = None
    ) -> subprocess.Popen:
        args = [
            *(prefix or []),
            sys.executable,
            "-m",
            "fedloom",
            "client",
            "--server",
            target or f"127.0.0.1:{self.port}",
            "--data",
            str(client_dir(self.data_root, i)),
            "--certs",
            str(self.certs / f"client-{i:06d}"),  # its bundle: no CA key on a device
            "--patience",
            "90",
            *extra,
        ]
        log = open(self.root / f"client-{i}-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env())
        self.procs.append(proc)
        return proc

    @staticmethod
    def _wait_for(path: str, pattern: str, proc: subprocess.Popen) -> str:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            text = Path(path).read_text()
            if re.search(pattern, text):
                return text
            if proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.returncode}):\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared in {path}:\n{Path(path).read_text()}")

    def wait_server_log(self, pattern: str) -> None:
        """Until the running server's log matches ``pattern`` (e.g. a client joined)."""
        assert self.server is not None
        self._wait_for(self.server_log, pattern, self.server)

    def rounds_done(self) -> int:
        """Rounds recorded so far in the run's metrics."""
        if self.run_path is None or not (self.run_path / "metrics.jsonl").exists():
            return 0
        records = RunDirectory(self.run_path).records()
        return max([r["round"] for r in records if r.get("event") == "round"], default=0)

    def wait_rounds(self, n: int, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while self.rounds_done() < n:
            assert self.server is not None
            if self.server.poll() is not None:
                raise AssertionError(f"server exited ({self.server.returncode}): {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.rounds_done()} rounds after {timeout} s")
            time.sleep(0.2)

    def wait_server(self, timeout: float = 300.0) -> None:
        assert self.server is not None
        code = self.server.wait(timeout)
        assert code == 0, f"server exited with {code}: {self.logs()}"

    def play(self) -> None:
        """Start the server and every client, then wait until the run ends and every
        client has exited 0."""
        self.start_server()
        clients = [self.start_client(i) for i in range(self.clients)]
        self.wait_server()
        for proc in clients:
            assert proc.wait(60) == 0, self.logs()

    def records(self) -> list[dict]:
        assert self.run_path is not None
        return RunDirectory(self.run_path).records()

    def final_params(self) -> np.ndarray:
        assert self.run_path is not None
        _, state = RunDirectory(self.run_path).latest_checkpoint()
        return state["arrays"]["params"]

    def simulated_params(self) -> tuple[np.ndarray, float]:
        """The same config run in the simulator: final model and test accuracy."""
        config = self.config.model_copy(update={"output_dir": self.root / "sim"})
        sim = start_simulation(config, data=self.data)
        summary = sim.run()
        return sim.server.params, summary.accuracy

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)
