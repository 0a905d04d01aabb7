"""Compression for devices: int8 size, batch-1 CPU latency and accuracy of each export.

The digits MLP 64-256-256-10 and fedloom's LeNet (on ``[n, 1, 8, 8]`` digit images) are
trained centrally for a few epochs on sklearn's digits (standardized, 25% held out),
then exported with ``fedloom.edge.export_model`` (int8, TorchScript and ONNX, x86
backend, 256 training examples for calibration). Printed per model: every artifact's
bytes, size ratio, batch-1 latency on one thread and speedup against float eager torch
and against the float artifact of the same format, accuracy and its change, and the
ONNX logit difference; also the large-batch latency of float and int8 eager torch,
where int8 kernels are not dominated by per-call overhead.

Usage: ``uv run python benchmarks/edge_export.py [--json PATH]`` (also part of
``benchmarks/edge.py``, whose targets include these)
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from targets import finish

from fedloom.edge.export import export_model, median_latency_ms, one_thread
from fedloom.edge.quantize import batches, quantize, quantized_engine
from fedloom.models.cnn import LeNet
from fedloom.models.mlp import MLP

EPOCHS = 30
BIG_BATCH = 256


def train(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = EPOCHS
) -> torch.nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def big_batch(model: torch.nn.Module, x: torch.Tensor, calib: list[torch.Tensor]) -> dict:
    int8 = quantize(model, x[:1], calib, "x86").model
    batch = x[:BIG_BATCH]
    with one_thread(), torch.no_grad(), quantized_engine("x86"):
        f = median_latency_ms(lambda: model(batch), 10, 50)
        q = median_latency_ms(lambda: int8(batch), 10, 50)
    return {"batch": BIG_BATCH, "float_ms": f, "int8_ms": q, "speedup": f / q}


def measure(epochs: int = EPOCHS) -> dict:
    """Both models trained (``epochs``), exported and measured; the result ends with its
    targets."""
    torch.set_num_threads(1)
    digits = load_digits()
    x = ((digits.data - digits.data.mean(0)) / (digits.data.std(0) + 1e-8)).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    result: dict = {"models": {}}
    targets = []
    for name, build, shape in (
        ("mlp", lambda: MLP(64, (256, 256), 10), (64,)),
        ("lenet", lambda: LeNet((1, 8, 8), 10), (1, 8, 8)),
    ):
        tr = torch.from_numpy(xtr).reshape(-1, *shape)
        te = torch.from_numpy(xte).reshape(-1, *shape)
        torch.manual_seed(0)
        model = train(build(), tr, torch.from_numpy(ytr), epochs)
        with tempfile.TemporaryDirectory() as out:
            report = export_model(
                model, te[:8], out, int8=True, calibration=tr[:256], eval_data=(te, yte)
            )
        rows = {a.name: a for a in report.artifacts}
        print(
            f"\n{name}: onnx max |diff| {report.onnx_max_abs_diff:.2e}, int8 {report.int8_method}"
        )
        for a in report.artifacts:
            print(
                f"  {a.name:17s} {a.bytes:8d} B  x{a.size_ratio:5.2f} smaller  "
                f"{a.latency_ms * 1e3:7.1f} us  x{a.speedup:5.2f} vs eager float  "
                f"x{a.speedup_vs_float_format:5.2f} vs float same format  "
                f"acc {a.accuracy:.4f} ({a.accuracy_change:+.2f} pt)"
            )
        big = big_batch(model, tr, batches(tr[:256], 32))
        print(
            f"  batch {BIG_BATCH} eager: float {big['float_ms']:.3f} ms, int8 "
            f"{big['int8_ms']:.3f} ms, x{big['speedup']:.2f}"
        )
        result["models"][name] = {"report": asdict(report), "big_batch": big}
        int8 = [a for a in report.artifacts if a.precision == "int8"]
        best = max(int8, key=lambda a: a.speedup)
        same = max(int8, key=lambda a: a.speedup_vs_float_format)
        targets += [
            {
                "name": f"{name} torch int8 size ratio",
                "value": round(rows["torch-int8"].size_ratio, 2),
                "goal": ">= 3.5",
                "met": rows["torch-int8"].size_ratio >= 3.5,
            },
            {
                "name": f"{name} fastest int8 ({best.name}) speedup vs eager float",
                "value": round(best.speedup, 2),
                "goal": ">= 1.5",
                "met": best.speedup >= 1.5,
            },
            {
                "name": f"{name} best int8 ({same.name}) speedup vs float in the same runtime",
                "value": round(same.speedup_vs_float_format, 2),
                "goal": ">= 1.5",
                "met": same.speedup_vs_float_format >= 1.5,
            },
            {
                "name": f"{name} torch int8 accuracy change (points)",
                "value": round(rows["torch-int8"].accuracy_change, 2),
                "goal": ">= -1",
                "met": rows["torch-int8"].accuracy_change >= -1,
            },
            {
                "name": f"{name} onnx max logit diff",
                "value": report.onnx_max_abs_diff,
                "goal": "<= 1e-4",
                "met": report.onnx_max_abs_diff <= 1e-4,
            },
        ]
    result["targets"] = targets
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    finish(measure(), args.json)


if __name__ == "__main__":
    main()
