"""The README's commands run as written: its Quickstart and its gRPC deployment walkthrough
are extracted from README.md and executed in a fresh temporary folder (a copy of
``examples/``), so a README command that breaks fails here.

Each command runs in bash as the README gives it, with only the rewrites of ``REWRITES``
applied (each a plain text substitution on the command, listed here so nothing changes
fedloom's behaviour behind the README's back):

- ``uv run X`` runs ``X`` from this checkout's virtual environment (its ``bin`` first on
  ``PATH``): the program ``uv run`` starts once the environment is synced, without a
  lock check per command;
- experiments are cut to 2 rounds with ``--set rounds=2`` (appended, so it wins over the
  README's own ``rounds``), the privacy sweep to 2 of its epsilons, the privacy plan to
  2 candidates of 2 rounds (each candidate is a whole experiment);
- the walkthrough starts 2 clients instead of 5 (``N=2``: still every client of the
  partition, started by the README's loop) on a free port instead of 50051.

Skipped, with the reason: ``uv run pytest`` (this suite itself) and the Development
block (the test suite, ruff, regenerating the gRPC stubs, the CI script).

The Quickstart's commands are split over a few tests (commands that read another's run
directory stay together) so pytest-xdist can spread them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the checkout's virtual environment
TWO_ROUNDS = " --set rounds=2"

# (README text, what the test runs instead): applied in order to every command
REWRITES: list[tuple[str, str]] = [
    ("uv run ", ""),
    ("--epsilons 0.5,1,2,4,8,inf", f"--epsilons 4,inf{TWO_ROUNDS}"),
    ("--clients-per-round 10,20,50 --clip-norms 0.1,0.5,1", "--clients-per-round 10,20 --rounds 2"),
    ("N=5 ", "N=2 "),
    ("--resume runs/digits-fedavg --set rounds=100", "--resume runs/digits-fedavg --set rounds=3"),
]

# every Quickstart command (as in the README, comments dropped) -> (its group, whether
# --set rounds=2 is appended); a group's commands run in the README's order in one folder
# (a group: commands that read another's run directory), each group in its own test
QUICKSTART: dict[str, tuple[str, bool]] = {
    "uv run fedloom run": ("resume", True),
    "uv run fedloom run --resume runs/digits-fedavg": ("resume", False),
    "uv run fedloom run --set server.clients_per_round=20 --set rounds=100": ("set", True),
    "uv run fedloom run examples/digits_iid.toml": ("iid", True),
    "uv run fedloom run examples/synthetic_fedprox.toml --set client.prox_mu=0.1": (
        "fedprox",
        True,
    ),
    "uv run fedloom data export exports/digits --config examples/digits_fedavg.toml": (
        "export",
        False,
    ),
    "uv run fedloom run --resume runs/digits-fedavg --set rounds=100": ("resume", False),
    "uv run fedloom clients runs/devices-trace --csv > clients.csv": ("devices", False),
    """uv run fedloom run --set tracking.backends='["tensorboard"]'""": ("tracking", True),
    "uv run fedloom sweep --set client.lr=0.03,0.1 --set server.clients_per_round=10,20": (
        "sweep_grid",
        True,
    ),
    "uv run fedloom compare runs/sweeps/digits-fedavg": ("sweep_grid", False),
    "uv run fedloom run examples/devices_trace.toml": ("devices", True),
    "uv run fedloom clients runs/devices-trace": ("devices", False),
    "uv run torchrun --nproc_per_node=2 -m fedloom run": ("torchrun", True),
    """uv run fedloom run --set privacy.mode='"central"' --set privacy.target_epsilon=4""": (
        "central",
        True,
    ),
    "uv run fedloom privacy sweep --epsilons 0.5,1,2,4,8,inf": ("sweep", False),
    "uv run fedloom privacy plan --epsilon 4 --clients-per-round 10,20,50 --clip-norms 0.1,0.5,1": (
        "plan",
        False,
    ),
}
# what each group leaves behind (relative to its folder)
WRITES: dict[str, str] = {
    "resume": "runs/digits-fedavg/config.toml",
    "set": "runs/digits-fedavg/config.toml",
    "iid": "runs/digits-iid/metrics.jsonl",
    "fedprox": "runs/synthetic-fedprox/metrics.jsonl",
    "export": "exports/digits/client-000099",
    "devices": "runs/devices-trace/metrics.jsonl",
    "torchrun": "runs/digits-fedavg/metrics.jsonl",
    "central": "runs/digits-fedavg/privacy.json",
    "sweep": "runs/sweeps/digits-fedavg-privacy/sweep.json",
    "plan": "runs/digits-fedavg-plan/plan.json",
    "tracking": "runs/digits-fedavg/tensorboard",
    "sweep_grid": "runs/sweeps/digits-fedavg/comparisons/comparison/comparison.json",
}
SKIPPED = {"uv run pytest": "the test suite itself"}


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks under the README heading ``section`` (up to the next heading)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no section {section!r}"
    return re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)


def commands(block: str) -> list[str]:
    """One command per line (continuations joined), comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+", " ", line))
    return out


def rewrite(command: str) -> str:
    for old, new in REWRITES:
        command = command.replace(old, new)
    return command


def workdir(tmp_path: Path) -> Path:
    """A fresh folder holding what the README's commands read: the shipped examples."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(script: str, cwd: Path, timeout: float = 600) -> str:
    """Run ``script`` in bash in ``cwd``; its output, or a failure naming the script. On a
    timeout its whole process group goes (the walkthrough's background server and
    clients included)."""
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"README command timed out after {timeout} s: {script}\n{output}")
    assert proc.returncode == 0, f"README command failed ({proc.returncode}): {script}\n{output}"
    return output


def test_the_quickstart_table_matches_the_readme() -> None:
    """Every Quickstart command is run by a test below (a new one must be added to
    QUICKSTART), and the top of the README repeats Quickstart commands or skipped ones."""
    (block,) = bash_blocks("Quickstart")
    assert sorted(commands(block)) == sorted(QUICKSTART)
    top = README.read_text(encoding="utf-8").split("\n## ", 1)[0]
    (intro,) = re.findall(r"^```bash\n(.*?)^```", top, re.M | re.S)
    assert all(c in QUICKSTART or c in SKIPPED for c in commands(intro))


@pytest.mark.parametrize("group", sorted({g for g, _ in QUICKSTART.values()}))
def test_quickstart_commands_run(group: str, tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    assert set(WRITES) == {g for g, _ in QUICKSTART.values()}
    outputs = {}
    (block,) = bash_blocks("Quickstart")
    for command in commands(block):  # in the README's order
        where, short = QUICKSTART[command]
        if where == group:
            outputs[command] = sh(rewrite(command) + (TWO_ROUNDS if short else ""), cwd)
    assert (cwd / WRITES[group]).exists(), sorted(str(p) for p in cwd.rglob("*"))[:50]
    if group == "resume":
        assert "resume" in outputs["uv run fedloom run --resume runs/digits-fedavg"].lower()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_deployment_walkthrough_runs_and_says_whom_the_server_waits_for(
    tmp_path: Path,
) -> None:
    (block,) = bash_blocks("Deployment over gRPC")
    assert "--clients $N" in block and "for i in" in block and "\nwait" in block, (
        "the walkthrough issues every client's certificate and starts them all"
    )
    port = free_port()
    script = rewrite(block).replace("50051", str(port))
    script = script.replace(f"--port {port} &", f"--port {port}{TWO_ROUNDS} &")
    assert TWO_ROUNDS in script
    cwd = workdir(tmp_path)
    output = sh(script, cwd, timeout=300)
    assert re.search(r"round 1: waiting for 2 more clients \(0 of 2 online: none\)", output)
    assert "client-000001" in output and "joined" in output
    assert output.count("done: 2 rounds trained") == 2  # both clients saw the run through
    assert (cwd / "runs" / "digits-fedavg" / "metrics.jsonl").is_file()
    # everything the walkthrough writes outside runs/ is under deploy/, ignored by git
    assert sorted(p.name for p in cwd.iterdir()) == ["deploy", "examples", "runs"]
    written = ["deploy/certs/ca.key", "deploy/clients/client-000000/x", "runs/x", "exports/x"]
    ignored = subprocess.run(
        ["git", "check-ignore", *written], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout.split() == written  # every one ignored
