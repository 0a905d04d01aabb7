"""``fedloom export RUN_DIR``: the trained model of a run, made for a device.

Loads the run's model (``fedloom.api.load_model``), rebuilds its data from the run's
config (the test set for accuracy; a few hundred seeded training examples, never test
examples, to calibrate static int8 quantization), optionally prunes it, and writes
TorchScript / ONNX (float and int8) and ``report.json`` with ``fedloom.edge.export``,
printing the report as a table. torch, onnx and onnxruntime are imported inside the
command, so the rest of the command line starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from fedloom.console import console, user_errors
from fedloom.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from fedloom.edge.export import ExportReport

CALIBRATION_EXAMPLES = 256
BACKENDS = ("x86", "qnnpack")


def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory with a trained model")],
    int8: Annotated[bool, typer.Option("--int8", help="also write int8 versions")] = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="write ONNX (model.onnx)")] = False,
    torchscript: Annotated[
        bool, typer.Option("--torchscript", help="write TorchScript (model.pt)")
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation
        typer.Option(help="folder to write (default: RUN_DIR/export)"),
    ] = None,
    prune: Annotated[
        float,
        typer.Option(
            metavar="FRACTION", help="zero this fraction of the weights first (global magnitude)"
        ),
    ] = 0.0,
    backend: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="int8 kernels: x86 or qnnpack (default: this machine's)"),
    ] = None,
) -> None:
    """Export a run's trained model for devices (TorchScript and/or ONNX, optionally int8
    and pruned) and report size, batch-1 CPU latency and test accuracy of each; with
    neither --onnx nor --torchscript, both are written."""
    with user_errors():
        if backend is not None and backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if not 0 <= prune < 1:
            raise ConfigError(f"--prune {prune}: expected a fraction in [0, 1)")
        report, notes = _export(
            run_dir,
            int8=int8,
            onnx=onnx or not torchscript,
            torchscript=torchscript or not onnx,
            out=out if out is not None else run_dir / "export",
            prune=prune,
            backend=backend,
        )
    for line in notes:
        console.print(line)
    console.print(_table(report, run_dir))
    if report.onnx_max_abs_diff is not None:
        console.print(f"ONNX: max |logit - torch logit| = {report.onnx_max_abs_diff:.1e}")
    target = out if out is not None else run_dir / "export"
    console.print(f"wrote {escape(str(target))}/ (report.json and the models)")


def _export(
    run_dir: Path,
    *,
    int8: bool,
    onnx: bool,
    torchscript: bool,
    out: Path,
    prune: float,
    backend: str | None,
) -> tuple[ExportReport, list[str]]:
    import torch

    from fedloom.api import load_model
    from fedloom.data.federated import build_federated_data
    from fedloom.edge.export import export_model
    from fedloom.edge.profiles import detect_profile
    from fedloom.edge.prune import compressed_bytes, prune_global
    from fedloom.runs import RunDirectory

    model = load_model(run_dir)
    config = RunDirectory.open(run_dir).load_config()
    data = build_federated_data(config.data, config.partition, config.seed)
    rng = np.random.default_rng([config.seed, 7])
    pick = rng.choice(len(data.train.x), min(CALIBRATION_EXAMPLES, len(data.train.x)), False)
    calibration = torch.from_numpy(np.ascontiguousarray(data.train.x[np.sort(pick)]))
    test_x = np.ascontiguousarray(data.test.x)
    eval_data = (test_x, data.test.y) if data.test.num_classes is not None else None
    notes = []
    if prune > 0:
        before, accuracy = compressed_bytes(model), _accuracy(model, eval_data)
        reached = prune_global(model, prune)
        notes.append(
            f"pruned: sparsity {reached:.3f}, compressed state dict {before} -> "
            f"{compressed_bytes(model)} bytes"
            + ("" if accuracy is None else f", test accuracy before pruning {accuracy:.4f}")
        )
    report = export_model(
        model,
        torch.from_numpy(test_x[:8]),
        out,
        int8=int8,
        onnx=onnx,
        torchscript=torchscript,
        calibration=calibration,
        eval_data=eval_data,
        backend=backend or detect_profile().quantization_backend,
    )
    return report, notes


def _accuracy(model: nn.Module, eval_data: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    import torch

    if eval_data is None:
        return None
    with torch.no_grad():
        logits = model(torch.from_numpy(eval_data[0]))
    return float(np.mean(logits.argmax(-1).numpy() == eval_data[1]))


def _table(report: ExportReport, run_dir: Path) -> Table:
    method = f", int8 {report.int8_method}" if report.int8_method else ""
    table = Table(title=f"export of {run_dir} ({report.backend}{method}, batch 1, 1 thread)")
    for col in (
        "artifact",
        "file",
        "bytes",
        "smaller",
        "latency µs",
        "speedup",
        "accuracy",
        "Δ pt",
    ):
        table.add_column(col, justify="left" if col in ("artifact", "file") else "right")
    for a in report.artifacts:
        table.add_row(
            a.name,
            a.file or "(state dict)",
            str(a.bytes),
            f"{a.size_ratio:.2f}x",
            f"{a.latency_ms * 1e3:.1f}",
            f"{a.speedup:.2f}x",
            "" if a.accuracy is None else f"{a.accuracy:.4f}",
            "" if a.accuracy_change is None else f"{a.accuracy_change:+.2f}",
        )
    return table
