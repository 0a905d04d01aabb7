"""How ``fedloom run`` reports when nobody watches a terminal (a pipe, nohup, Slurm, CI):
one plain line per round, --quiet, --verbose, --log-file, a strict --json summary, and the
resume hint after an interrupt in every mode."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from cli_errors import one_line_error
from typer.testing import CliRunner

from fedloom.cli import app
from fedloom.console import Output, dumps, reporting
from fedloom.errors import RunInterrupted

runner = CliRunner()
TINY = [
    "rounds=2",
    "partition.num_clients=6",
    "server.clients_per_round=3",
    "model.hidden=[8]",
    "client.local_epochs=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run_args(tmp_path, *extra: str) -> list[str]:
    args = ["run"]
    for item in [f'output_dir="{tmp_path}"', *TINY]:
        args += ["--set", item]
    return [*args, *extra]


def strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_plain_lines_per_round_without_a_terminal(tmp_path):
    result = runner.invoke(app, run_args(tmp_path))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    for line in lines:
        assert re.fullmatch(
            r"round \d/2  accuracy [\d.e-]+  loss [\d.e-]+  elapsed \d+:\d\d:\d\d", line
        ), line
        for number in re.findall(r"(?:accuracy|loss) ([\d.e-]+)", line):
            assert len(number.replace(".", "").lstrip("0")) <= 4, line  # 4 significant
    assert "\x1b[" not in result.output  # no ANSI codes in a pipe
    assert "━" not in result.output  # no bar


def test_json_summary_is_the_only_thing_on_stdout(tmp_path):
    result = runner.invoke(app, run_args(tmp_path, "--json"))
    assert result.exit_code == 0, result.output
    summary = strict_json(result.stdout)  # all of stdout: one object
    assert summary["rounds"] == summary["rounds_planned"] == 2
    assert summary["stop"]["reason"] == "max_rounds"
    assert summary["run_dir"] == str(tmp_path / "digits-fedavg")
    assert 0 <= summary["final"]["accuracy"] <= 1 and summary["best"]["round"] in (1, 2)
    assert summary["plots"]
    for png in summary["plots"]:
        assert png.endswith(".png") and __import__("pathlib").Path(png).stat().st_size > 1000
    assert "round 2/2" in result.stderr  # progress went to stderr


def test_quiet_prints_only_the_run_directory(tmp_path):
    result = runner.invoke(app, run_args(tmp_path, "--quiet"))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"run directory: {tmp_path / 'digits-fedavg'}"]


def test_log_file_gets_every_round_appended(tmp_path):
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    log.write_text("earlier line\n")
    result = runner.invoke(app, run_args(tmp_path, "--quiet", "--log-file", str(log)))
    assert result.exit_code == 0, result.output
    text = log.read_text()
    assert text.startswith("earlier line\n")  # appended
    assert re.search(r"INFO fedloom.progress: round 1/2  accuracy", text)
    assert "round 2/2" in text and "\x1b[" not in text
    assert "INFO fedloom.cli: run directory: " in text  # --quiet hides it, the log keeps it
    summary = re.search(r"INFO fedloom.cli: summary: (.*)", text)
    assert summary and strict_json(summary.group(1))["rounds"] == 2


def test_quiet_and_verbose_together_is_a_clear_error(tmp_path):
    one_line_error(run_args(tmp_path, "--quiet", "--verbose"), "--quiet", "--verbose")


@pytest.mark.parametrize(("out", "shown"), [(Output(), False), (Output(verbose=True), True)])
def test_verbose_shows_debug_logs(capsys, out, shown):
    with reporting(out):
        logging.getLogger("fedloom.sim.test").debug("a debug detail")
        logging.getLogger("fedloom.sim.test").info("an info line")
    err = capsys.readouterr().err
    assert "an info line" in err
    assert ("a debug detail" in err) == shown
    assert not logging.getLogger("fedloom").handlers  # undone


@pytest.mark.parametrize("mode", [[], ["--quiet"], ["--json"]])
def test_interrupt_prints_the_resume_hint_on_stderr(tmp_path, monkeypatch, mode):
    import fedloom.progress

    def interrupted(sim, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise RunInterrupted("SIGINT", 1, sim.run_dir.path)

    monkeypatch.setattr(fedloom.progress, "run_with_progress", interrupted)
    result = runner.invoke(app, run_args(tmp_path, *mode))
    assert result.exit_code == 130, result.output
    path = tmp_path / "digits-fedavg"
    assert f"resume with: uv run fedloom run --resume {path}" in result.stderr
    if mode == ["--json"]:
        assert result.stdout == ""


def test_dumps_writes_strict_json():
    text = dumps({"a": float("nan"), "b": [float("inf"), 0.123456789], "c": 1})
    assert strict_json(text) == {"a": None, "b": ["inf", 0.123457], "c": 1}


def test_a_piped_run_shows_each_round_as_it_ends_and_the_hint_on_sigterm(tmp_path):
    """A real process whose stdout is a pipe (no PYTHONUNBUFFERED): the first round's line
    arrives while the run is still going; SIGTERM then ends it with the resume hint."""
    args = [sys.executable, "-m", "fedloom", "run", "--set", f'output_dir="{tmp_path}"']
    for item in [*TINY[1:], "rounds=400"]:
        args += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        first = proc.stdout.readline().decode()
        while not first.startswith("round "):
            assert first, proc.stderr.read().decode()
            first = proc.stdout.readline().decode()
        assert first.startswith("round 1/400  accuracy ")
        assert proc.poll() is None, "the line came only at the end"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err.decode()
    assert f"resume with: uv run fedloom run --resume {tmp_path / 'digits-fedavg'}" in err.decode()


def test_unwritable_log_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(run_args(tmp_path, "--log-file", str(blocker / "run.log")), "--log-file")
