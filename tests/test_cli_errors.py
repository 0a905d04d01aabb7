"""Bad input and a hostile machine give one-line errors naming the field or file, never a
traceback: huge seeds and names, an output_dir that is a file or read-only, a full disk,
settings whose memory cannot fit, and malformed command-line lists."""

from __future__ import annotations

import errno
import os
import pathlib

import pytest
import torch
from cli_errors import one_line_error, runner

from fedloom.cli import app

SMALL = [
    "--set",
    "rounds=2",
    "--set",
    "partition.num_clients=5",
    "--set",
    "server.clients_per_round=2",
]  # noqa: E501


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run_args(out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "run",
        "--set",
        f'output_dir="{out}"',
        *SMALL,
        *[a for x in extra for a in ("--set", x)],
    ]


def test_seed_beyond_64_bits(tmp_path):
    result = runner.invoke(app, run_args(tmp_path, f"seed={2**64}"))
    assert result.exit_code == 2 and "seed" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_huge_run_name(tmp_path):
    result = runner.invoke(app, run_args(tmp_path, f'name="{"a" * 1_000_000}"'))
    assert result.exit_code == 2 and "name" in result.output and "at most 100" in result.output


def test_output_dir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    one_line_error(run_args(target), "output_dir", "is a file")
    assert target.read_text() == "mine"


def test_read_only_output_dir(tmp_path, monkeypatch):
    """A folder the user may not write in (simulated: the tests may run as root)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if self.parent == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    one_line_error(run_args(locked), "output_dir", "Permission denied")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name the file")
def test_disk_full_during_a_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while the round-2 checkpoint is written: one line naming the file, no temp
    file left, the earlier checkpoints intact, and the run resumes once there is space."""
    import fedloom.atomic

    real = os.fsync

    def fsync(fd: int) -> None:
        if "round-000002" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(fedloom.atomic.os, "fsync", fsync)
    args = run_args(tmp_path, "name=full", "rounds=3", "checkpoint.every=1")
    one_line_error(args, "round-000002.npz", "No space left on device")
    run = tmp_path / "full"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "round-000000.npz",
        "round-000001.npz",
    ]
    monkeypatch.setattr(fedloom.atomic.os, "fsync", real)
    again = runner.invoke(app, ["run", "--resume", str(run)])
    assert again.exit_code == 0, again.output


def test_atomic_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    import fedloom.atomic
    from fedloom.atomic import atomic_write_text
    from fedloom.errors import StorageError

    target = tmp_path / "state.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fedloom.atomic.os, "fsync", full)
    with pytest.raises(StorageError, match="No space left on device.*previous file is intact"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_data_export_onto_an_existing_file(tmp_path):
    target = tmp_path / "clients"
    target.write_text("keep me")
    one_line_error(["data", "export", str(target)], "clients", "existing file")
    assert target.read_text() == "keep me"


def test_privacy_sweep_with_a_non_number(tmp_path):
    one_line_error(["privacy", "sweep", "--epsilons", "1,abc"], "--epsilons", "'abc'")


def test_model_too_large_for_memory_is_refused_before_building_it(tmp_path):
    line = one_line_error(run_args(tmp_path, "model.hidden=[20000000]"), "model.hidden")
    assert "GiB" in line and "simulation.memory_limit_mb" in line
    assert not list(tmp_path.iterdir()), "no run directory left behind"


def test_memory_limit_setting(tmp_path):
    one_line_error(
        run_args(tmp_path, "simulation.memory_limit_mb=0.01"), "simulation.memory_limit_mb"
    )
