"""The run report's communication part: accuracy against uploaded bytes, byte totals,
the compression ratio and bytes to a target; runs without byte counts report as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedloom.config import RunConfig, StoppingConfig
from fedloom.report import bytes_to_target, summary_rows, write_plots
from fedloom.runs import RunDirectory

TASK = {"metrics": ["accuracy"], "maximize": ["accuracy"]}


def _start() -> dict[str, Any]:
    return {"round": 0, "event": "start", "task": TASK, "accuracy": 0.1, "loss": 2.3}


def _round(n: int, accuracy: float | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "round": n,
        "event": "round",
        "status": "aggregated",
        "rejected": 0,
        "wall_s": 0.5,
    }
    if accuracy is not None:
        record |= {"accuracy": accuracy, "loss": 1.0 - accuracy}
    return record | extra


def _compression(payload: int, raw: int, codec: str = "topk") -> dict[str, Any]:
    return {
        "codec": codec,
        "payloads": 2,
        "payload_bytes": payload,
        "raw_bytes": raw,
        "ratio": raw / payload,
        "settings": {"0": 0.01, "1": 0.001},
        "download": None,
        "download_ratio": None,
    }


def _run(tmp_path: Path, records: list[dict[str, Any]], target: float | None = None):
    config = RunConfig(name="bytes", output_dir=tmp_path, stopping=StoppingConfig(target=target))
    run = RunDirectory.create(config)
    for r in records:
        run.append(r)
    return run


COMPRESSED = [
    _start(),
    _round(
        1,
        0.5,
        bytes_up=1_000_000,
        bytes_down=4_000_000,
        compression=_compression(1_000_000, 40_000_000),
    ),
    _round(
        2,
        None,
        bytes_up=2_000_000,
        bytes_down=4_000_000,
        compression=_compression(2_000_000, 40_000_000),
    ),
    _round(
        3,
        0.8,
        bytes_up=500_000,
        bytes_down=4_000_000,
        compression=_compression(500_000, 20_000_000),
    ),
    _round(4, 0.9, bytes_up=500_000, bytes_down=4_000_000, compression=None),
]


def test_bytes_to_target_is_the_cumulative_upload_at_the_first_round_reaching_it():
    assert bytes_to_target(COMPRESSED, "accuracy", 0.5) == 1_000_000
    # round 2 was not evaluated: its bytes count, the round itself cannot reach a target
    assert bytes_to_target(COMPRESSED, "accuracy", 0.7) == 3_500_000
    assert bytes_to_target(COMPRESSED, "accuracy", 0.85) == 4_000_000
    assert bytes_to_target(COMPRESSED, "accuracy", 0.95) is None
    # the start record's evaluation is no round: 0.1 is first "reached" at round 1
    assert bytes_to_target(COMPRESSED, "accuracy", 0.1) == 1_000_000
    # lower is better
    assert bytes_to_target(COMPRESSED, "loss", 0.25, maximize=False) == 3_500_000
    assert bytes_to_target(COMPRESSED, "loss", 0.05, maximize=False) is None


def test_bytes_to_target_is_none_without_byte_counts():
    plain = [_start(), _round(1, 0.9), _round(2, 0.95)]
    assert bytes_to_target(plain, "accuracy", 0.5) is None


def test_a_missing_bytes_count_in_one_round_counts_as_zero():
    records = [_round(1, 0.5, bytes_up=100), _round(2, 0.6), _round(3, 0.7, bytes_up=50)]
    assert bytes_to_target(records, "accuracy", 0.6) == 100
    assert bytes_to_target(records, "accuracy", 0.7) == 150


def test_summary_rows_show_totals_codec_ratio_and_bytes_to_target(tmp_path):
    run = _run(tmp_path, COMPRESSED, target=0.8)
    rows = dict(summary_rows(run))
    assert rows["bytes uploaded"] == "4.0 MB"
    assert rows["bytes downloaded"] == "16.0 MB"
    assert rows["compression codec"] == "topk"
    # rounds with compression records only: (40 + 40 + 20) MB / (1 + 2 + 0.5) MB
    assert rows["compression ratio (float32 / payload bytes)"] == "28.57x (100.0 MB as float32)"
    assert rows["bytes uploaded to accuracy 0.8"] == "3.5 MB"
    assert rows["final test accuracy"] == "0.9000"


def test_summary_rows_name_every_codec_and_an_unreached_target(tmp_path):
    records = [
        _start(),
        _round(1, 0.4, bytes_up=5_000, compression=_compression(5_000, 10_000, "qsgd")),
        _round(2, 0.5, bytes_up=5_000, compression=_compression(5_000, 10_000, "topk")),
    ]
    rows = dict(summary_rows(_run(tmp_path, records, target=0.9)))
    assert rows["bytes uploaded"] == "10.0 kB"
    assert "bytes downloaded" not in rows
    assert rows["compression codec"] == "qsgd, topk"
    assert rows["compression ratio (float32 / payload bytes)"].startswith("2.00x")
    assert rows["bytes uploaded to accuracy 0.9"] == "not reached"


def test_uncompressed_rounds_with_byte_counts_show_totals_only(tmp_path):
    records = [_start(), _round(1, 0.4, bytes_up=800, bytes_down=800)]
    rows = dict(summary_rows(_run(tmp_path, records)))
    assert rows["bytes uploaded"] == "800 B" and rows["bytes downloaded"] == "800 B"
    assert not any(k.startswith("compression") for k in rows)
    assert not any(k.startswith("bytes uploaded to") for k in rows)


def test_a_plot_against_uploaded_bytes_is_written(tmp_path):
    run = _run(tmp_path, COMPRESSED)
    plots = {p.name for p in write_plots(run)}
    assert "accuracy_vs_bytes.png" in plots
    png = run.report_dir / "accuracy_vs_bytes.png"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_regression_run_plots_its_first_metric_against_bytes(tmp_path):
    task = {"metrics": ["mse", "mae"], "maximize": []}
    records = [
        {"round": 0, "event": "start", "task": task, "mse": 4.0, "mae": 2.0, "loss": 4.0},
        _round(1, None, bytes_up=1000, mse=2.0, mae=1.0, loss=2.0),
        _round(2, None, bytes_up=1000, mse=1.0, mae=0.5, loss=1.0),
    ]
    run = _run(tmp_path, records, target=1.5)
    plots = {p.name for p in write_plots(run)}
    assert "mse_vs_bytes.png" in plots and not any("accuracy" in p for p in plots)
    assert dict(summary_rows(run))["bytes uploaded to mse 1.5"] == "2.0 kB"


@pytest.mark.parametrize("target", [None, 0.8])
def test_runs_without_byte_counts_report_as_before(tmp_path, target):
    records = [_start(), _round(1, 0.5), _round(2, 0.9)]
    run = _run(tmp_path, records, target=target)
    rows = summary_rows(run)
    assert [k for k, _ in rows] == [
        "run directory",
        "rounds",
        "final test accuracy",
        "final test loss",
        "best test accuracy",
        "training wall time",
        "rejected updates",
    ]
    plots = {p.name for p in write_plots(run)}
    assert plots == {"accuracy.png", "loss.png"}
    assert not (run.report_dir / "accuracy_vs_bytes.png").exists()


def test_the_hand_written_records_are_all_read_back(tmp_path):
    assert _run(tmp_path, COMPRESSED).records() == COMPRESSED  # none set aside as damaged
