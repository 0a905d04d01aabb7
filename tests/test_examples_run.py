"""The example scripts run as users run them (``python examples/NAME.py``), here with
``--quick`` (fewer rounds), and print what their docstrings promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NUMBER = r"(\d+\.\d+)"


def run_example(name: str, tmp_path: Path) -> str:
    """The example's standard output after a quick run, from a scratch working directory
    (nothing it writes lands in the repository)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.iterdir()), "an in-memory run left files behind"
    return done.stdout


def test_custom_cnn_trains_a_user_module_and_its_weights_load_back(tmp_path: Path) -> None:
    out = run_example("custom_cnn.py", tmp_path)
    assert re.search(r"^round +5 +accuracy ", out, re.M), out  # on_round, evaluated rounds
    found = re.search(rf"custom_cnn: 5 rounds, test accuracy {NUMBER} \(reported {NUMBER}", out)
    assert found, out
    loaded, reported = map(float, found.groups())
    assert loaded == reported  # the state_dict is the model the run evaluated
    assert loaded > 0.1  # better than chance on 10 classes


def test_regression_reports_mse_and_mae_and_a_custom_metric(tmp_path: Path) -> None:
    out = run_example("regression.py", tmp_path)
    assert "targets: values, 10 features" in out, out
    assert "metrics reported: loss, mae, mse" in out, out  # no accuracy
    found = re.search(rf"regression: 5 rounds, test mse {NUMBER}", out)
    assert found, out
    r2 = re.search(r"regression: test r2 (-?\d+\.\d+), best", out)
    assert r2, out
    assert float(found.group(1)) < 1.0 and 0.0 < float(r2.group(1)) <= 1.0


def test_shakespeare_char_trains_from_a_leaf_folder(tmp_path: Path) -> None:
    out = run_example("shakespeare_char.py", tmp_path)
    found = re.search(rf"shakespeare_char: 3 rounds, next-character accuracy {NUMBER}", out)
    assert found, out
    assert 0.0 < float(found.group(1)) <= 1.0


@pytest.mark.parametrize("name", ["custom_cnn.py", "regression.py", "shakespeare_char.py"])
def test_examples_use_only_the_public_api(name: str) -> None:
    imports = re.findall(r"^\s*(?:from|import) (fedloom\S*)", (EXAMPLES / name).read_text(), re.M)
    assert imports == ["fedloom"], imports
