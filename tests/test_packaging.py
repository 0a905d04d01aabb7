"""fedloom as a user installs it: the wheel ``uv build`` makes installs into a fresh
virtual environment and runs an experiment from there; the version, license, changelog
and type marker ship with it, and ``--help`` shows no reStructuredText markup."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedloom
from fedloom.cli import app

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
runner = CliRunner()


def test_version_is_one_everywhere() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"fedloom {VERSION}\n"
    assert fedloom.__version__ == VERSION
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)


def test_license_and_type_marker() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice
    assert (Path(fedloom.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize("command", [[], ["run"], ["server"], ["privacy"], ["data", "export"]])
def test_help_shows_no_restructuredtext_backticks(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "``" not in result.output and "Usage" in result.output


def uv(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["uv", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"uv {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv on PATH")
def test_the_wheel_installs_and_runs_in_a_fresh_environment(tmp_path: Path) -> None:
    """The wheel holds the package, its marker and license and the ``fedloom`` command.
    The fresh environment gets the locked dependencies from uv's cache (offline: no
    download, the same torch build), then the wheel itself, and runs there away from the
    checkout. (uv links the cached files: on a cache on another file system it copies
    them, torch included.)"""
    dist = tmp_path / "dist"
    uv("build", "--wheel", "--out-dir", str(dist), cwd=ROOT)
    (wheel,) = dist.glob("fedloom-*.whl")
    assert wheel.name == f"fedloom-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"fedloom-{VERSION}.dist-info/entry_points.txt").decode()
    assert {
        "fedloom/py.typed",
        "fedloom/cli.py",
        f"fedloom-{VERSION}.dist-info/licenses/LICENSE",
    } <= names
    assert "fedloom = fedloom.cli:main" in entry_points
    venv = tmp_path / "venv"
    locked = ["sync", "--frozen", "--offline", "--no-dev", "--no-install-project", "--quiet"]
    uv(*locked, cwd=ROOT, env={"UV_PROJECT_ENVIRONMENT": str(venv)})
    python = str(venv / "bin" / "python")
    uv("pip", "install", "--offline", "--no-deps", "--python", python, str(wheel), cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    fedloom_bin = venv / "bin" / "fedloom"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    version = subprocess.run(
        [fedloom_bin, "--version"], cwd=work, env=env, capture_output=True, text=True
    )
    assert version.stdout == f"fedloom {VERSION}\n", version.stderr
    where = subprocess.run(
        [python, "-c", "import fedloom; print(fedloom.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where  # the wheel, not src/
    run = subprocess.run(
        [fedloom_bin, "run", "--set", "rounds=2"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (work / "runs" / "digits-fedavg" / "metrics.jsonl").read_text().splitlines()
    assert [r["round"] for r in map(json.loads, lines) if r.get("event") == "round"] == [1, 2]
