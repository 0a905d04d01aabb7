"""``fedloom server`` reports like a simulation: at the end it writes the same report
plots into its run directory and shows the summary; its per-round log lines carry
metrics rounded to 4 significant digits."""

from __future__ import annotations

import re
from pathlib import Path

from deployment import Deployment


def test_server_writes_the_report_plots_and_rounded_round_lines(tmp_path: Path) -> None:
    d = Deployment(tmp_path, clients=2, rounds=2, epochs=1)
    try:
        d.play()
        assert d.run_path is not None
        for name in ("accuracy.png", "loss.png"):
            assert (d.run_path / "report" / name).stat().st_size > 1000
        log = Path(d.server_log).read_text()
        assert "summary" in log and "final test accuracy" in log
        lines = re.findall(r"round (\d) aggregated: 2/2 updates, accuracy (\S+), loss (\S+)", log)
        assert [n for n, _, _ in lines] == ["1", "2"], log
        for _, accuracy, loss in lines:
            for number in (accuracy, loss):
                assert len(number.replace(".", "").lstrip("0")) <= 4, number
        assert "\x1b[" not in log  # not a terminal: plain lines
    finally:
        d.close()
