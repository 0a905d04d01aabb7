"""Export for devices: TorchScript and ONNX (float and int8), checked, and the report."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from edge_models import TRAIN, digits, images, lenet, mlp

import fedloom.edge.export as edge_export
from fedloom.edge.export import ExportError, export_model

FAST = {"warmup_runs": 2, "latency_runs": 5}  # latency is reported, not asserted


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_mlp_export_writes_checked_artifacts_and_report(tmp_path):
    x, y = digits()
    model = mlp()
    report = export_model(
        model, x[:4], tmp_path, int8=True, eval_data=(x[TRAIN:], y[TRAIN:]), **FAST
    )
    names = [a.name for a in report.artifacts]
    assert names == ["torch", "torch-int8", "torchscript", "torchscript-int8", "onnx", "onnx-int8"]
    for a in report.artifacts:
        assert a.file is None or (tmp_path / a.file).stat().st_size == a.bytes
        assert a.latency_ms > 0 and a.accuracy is not None
    rows = {a.name: a for a in report.artifacts}
    assert rows["torch-int8"].size_ratio >= 3
    assert abs(rows["torch-int8"].accuracy_change) <= 1.0
    assert report.int8_method == "dynamic" and report.eval_examples == len(x) - TRAIN

    # ONNX in onnxruntime: the same logits as torch, on any batch size
    with torch.no_grad():
        expected = model(x[TRAIN:]).numpy()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[TRAIN:].numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert report.onnx_max_abs_diff <= 1e-4
    int8_onnx = ort.InferenceSession(str(tmp_path / "model_int8.onnx"))
    q = int8_onnx.run(None, {"input": x[TRAIN:].numpy()})[0]
    assert np.mean(q.argmax(1) == expected.argmax(1)) >= 0.95

    # TorchScript reloads and reproduces the float model exactly
    script = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        assert torch.equal(script(x[TRAIN:]), model(x[TRAIN:]))

    saved = json.loads((tmp_path / "report.json").read_text())
    assert [a["name"] for a in saved["artifacts"]] == names
    assert saved["backend"] == "x86" and saved["onnx_max_abs_diff"] == report.onnx_max_abs_diff


def test_cnn_export_is_static_int8_with_calibration(tmp_path):
    x, y = images(), digits()[1]
    report = export_model(
        lenet(),
        x[:4],
        tmp_path,
        int8=True,
        torchscript=False,
        calibration=x[:128],
        eval_data=(x[TRAIN:], y[TRAIN:]),
        **FAST,
    )
    assert report.int8_method == "static"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model_int8.onnx",
        "report.json",
    ]
    rows = {a.name: a for a in report.artifacts}
    assert abs(rows["onnx-int8"].accuracy_change) <= 1.0
    assert abs(rows["torch-int8"].accuracy_change) <= 1.0
    assert report.onnx_max_abs_diff <= 1e-4


def test_onnx_mismatch_refuses_the_export(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_export, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="onnxruntime's logits differ"):
        export_model(mlp(), digits()[0][:4], tmp_path, torchscript=False, **FAST)
    assert not (tmp_path / "model.onnx").exists()
    assert not (tmp_path / "report.json").exists()
