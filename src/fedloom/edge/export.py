"""Export of a trained model for a device: TorchScript, ONNX, their int8 versions, and a
report of what each costs and gives.

Artifacts (written atomically into one folder):

- ``model.pt`` / ``model_int8.pt``: TorchScript, traced and frozen (``torch.jit.freeze``
  folds the weights into the graph as constants, which removes attribute look-ups at
  run time; the int8 model is ``fedloom.edge.quantize``'s). TorchScript is what
  libtorch's device runtimes load.
- ``model.onnx``: ONNX of the float model by the TorchScript-based exporter
  (``dynamo=False``: fast, and it needs no onnxscript), with a dynamic batch axis,
  refused unless onnxruntime's logits are within ``ONNX_TOLERANCE`` of torch's.
- ``model_int8.onnx``: onnxruntime's own int8 quantization of ``model.onnx``: dynamic
  (weights int8, activations quantized per batch) for linear models, static (QDQ,
  per-channel weights, activations calibrated on the calibration examples) for
  convolutional ones, as in torch.
- ``report.json``: :class:`ExportReport`.

Latency is measured the same way for every artifact: the same single example, one torch
thread or one onnxruntime intra-op thread, warm-up runs first, then the median of many
runs timed with ``time.perf_counter``, taken in blocks that alternate between the
artifacts so that the machine's changing load falls on all of them alike; the float
model in eager torch is the baseline.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedloom.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from fedloom.edge.prune import compressed_bytes, sparsity
from fedloom.edge.quantize import (
    Quantized,
    batches,
    has_convolutions,
    quantize,
    quantized_engine,
    state_dict_bytes,
    torch_ao_quiet,
    torchscript_quiet,
)
from fedloom.errors import ConfigError, FedloomError

ONNX_TOLERANCE = 1e-4  # max |logits_onnx - logits_torch| accepted
ONNX_OPSET = 17
CALIBRATION_BATCH = 32
EVAL_BATCH = 256
WARMUP_RUNS = 50
LATENCY_RUNS = 300
LATENCY_ROUNDS = 10  # interleaved blocks of runs (interleaved_latency_ms)

Predict = Callable[[np.ndarray], np.ndarray]


class ExportError(FedloomError):
    """An exported model fails its check (ONNX logits off, a file that does not run)."""


@dataclass(frozen=True)
class Artifact:
    """One way to run the model. ``file``: None for the eager torch model (its bytes:
    the state dict's); ``size_ratio``: the float artifact of the same format's bytes over
    these; ``latency_ms``: median batch-1 CPU latency on one thread; ``speedup``: the
    float eager torch model's latency over this; ``speedup_vs_float_format``: the same
    against the float artifact of the same format; ``accuracy`` on the evaluation data
    and ``accuracy_change`` against the float torch model, in points."""

    name: str
    precision: str
    file: str | None
    bytes: int
    size_ratio: float
    latency_ms: float
    speedup: float
    speedup_vs_float_format: float
    accuracy: float | None
    accuracy_change: float | None


@dataclass(frozen=True)
class ExportReport:
    """``int8_method``: ``"dynamic"``, ``"static"`` or None (no int8); ``onnx_max_abs_diff``:
    largest logit difference of onnxruntime against torch; ``sparsity`` and
    ``compressed_bytes``: the float model's zero weights and compressed state dict
    (``fedloom.edge.prune``)."""

    backend: str
    int8_method: str | None
    onnx_max_abs_diff: float | None
    eval_examples: int | None
    warmup_runs: int
    latency_runs: int
    sparsity: float
    compressed_bytes: int
    artifacts: tuple[Artifact, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (the previous count after it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved_latency_ms(
    fns: list[Callable[[], object]], warmup: int, runs: int, rounds: int = LATENCY_ROUNDS
) -> list[float]:
    """Median wall time of each ``fn()`` in milliseconds over ``runs`` calls after
    ``warmup``, the calls taken in ``rounds`` interleaved blocks so that a change in the
    machine's load falls on every function alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for block in np.array_split(np.arange(runs), min(rounds, runs)):
        for fn, spent in zip(fns, times, strict=True):
            for _ in block:
                start = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - start)
    return [float(np.median(t) * 1e3) for t in times]


def median_latency_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls after ``warmup``."""
    return interleaved_latency_ms([fn], warmup, runs)[0]


def _torch_predict(model: Callable[[torch.Tensor], torch.Tensor]) -> Predict:
    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return torch.cat([model(b) for b in torch.split(torch.from_numpy(x), EVAL_BATCH)]).numpy()

    return predict


def _session(model_bytes: bytes):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_predict(session) -> Predict:  # noqa: ANN001
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [session.run(None, {name: b})[0] for b in np.array_split(x, -(-len(x) // EVAL_BATCH))]
        )

    return predict


def _accuracy(predict: Predict, eval_data: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    if eval_data is None:
        return None
    x, y = eval_data
    return float(np.mean(predict(x).argmax(-1) == y))


def _trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad(), torchscript_quiet():
        return torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))


def _save_script(script: torch.jit.ScriptModule, path: Path, inputs: torch.Tensor) -> None:
    with torchscript_quiet():
        atomic_write(path, lambda fh: torch.jit.save(script, fh))
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        if not torch.equal(loaded(inputs), script(inputs)):
            raise ExportError(f"{str(path)!r} reloaded does not reproduce the traced model")


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with torchscript_quiet(), warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter is chosen on purpose (module docstring)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        try:
            torch.onnx.export(
                model.eval(),
                (example,),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as err:  # the exporter's many failure types, reported in one line
            raise ExportError(f"ONNX export failed: {type(err).__name__}: {err}") from None
    return buffer.getvalue()


def _onnx_int8(
    float_onnx: bytes, conv: bool, calibration: list[np.ndarray] | None, reduce_range: bool
) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, data: list[np.ndarray]) -> None:
            self.data = iter(data)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.data, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory(prefix="fedloom-onnx-") as tmp:
        src, pre, out = Path(tmp, "float.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(float_onnx)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if conv:
            assert calibration is not None
            quantize_static(
                str(pre),
                str(out),
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
            )
        else:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
        return out.read_bytes()


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    *,
    int8: bool = False,
    onnx: bool = True,
    torchscript: bool = True,
    calibration: torch.Tensor | np.ndarray | None = None,
    eval_data: tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray] | None = None,
    backend: str = "x86",
    warmup_runs: int = WARMUP_RUNS,
    latency_runs: int = LATENCY_RUNS,
) -> ExportReport:
    """Write ``model`` (float, eval mode) as TorchScript and/or ONNX into ``out_dir``,
    with int8 versions when ``int8`` (``calibration``: training examples for a
    convolutional model's static quantization), measure each (``eval_data``: inputs and
    labels for accuracy) and write ``report.json``; returns the report."""
    if warmup_runs < 0 or latency_runs < 1:
        raise ConfigError(
            f"warmup_runs = {warmup_runs}, latency_runs = {latency_runs}: need >= 0, >= 1"
        )
    if example_input.ndim < 1 or example_input.shape[0] < 1:
        raise ConfigError(f"example_input of shape {tuple(example_input.shape)}: need a batch")
    out = Path(out_dir)
    model = model.eval()
    one = example_input[:1].contiguous()
    one_np = _as_numpy(one)
    data = None if eval_data is None else (_as_numpy(eval_data[0]), _as_numpy(eval_data[1]))
    check_inputs = data[0] if data is not None else _as_numpy(example_input)
    conv = has_convolutions(model)
    calib = (
        None if calibration is None else batches(torch.as_tensor(calibration), CALIBRATION_BATCH)
    )

    found: list[_Candidate] = []
    onnx_diff = None
    method = None
    with one_thread(), torch.no_grad(), quantized_engine(backend), torch_ao_quiet():
        found.append(
            _Candidate(
                "torch",
                "fp32",
                "torch",
                None,
                state_dict_bytes(model),
                lambda: model(one),
                _accuracy(_torch_predict(model), data),
            )
        )
        quantized = None
        if int8:
            quantized = quantize(model, example_input, calib, backend)
            method = quantized.method
            q = quantized.model
            found.append(
                _Candidate(
                    "torch-int8",
                    "int8",
                    "torch",
                    None,
                    quantized.int8_bytes,
                    lambda: q(one),
                    _accuracy(_torch_predict(q), data),
                )
            )
        if torchscript:
            found += _torchscript(model, quantized, example_input, out, check_inputs, data, one)
        if onnx:
            onnx_diff, written = _onnx(model, example_input, out, check_inputs, data, one_np)
            found += written
            if int8:
                found.append(_onnx_int8_candidate(out, conv, calib, backend, data, one_np))
        latencies = interleaved_latency_ms([c.run_one for c in found], warmup_runs, latency_runs)
    report = ExportReport(
        backend,
        method,
        onnx_diff,
        None if data is None else int(data[0].shape[0]),
        warmup_runs,
        latency_runs,
        sparsity(model),
        compressed_bytes(model),
        _artifacts(found, latencies),
    )
    atomic_write_text(out / "report.json", report.to_json())
    return report


@dataclass(frozen=True)
class _Candidate:
    """An artifact before its latency is measured."""

    name: str
    precision: str
    fmt: str
    file: Path | None
    bytes: int
    run_one: Callable[[], object]
    accuracy: float | None


def _artifacts(found: list[_Candidate], latencies: list[float]) -> tuple[Artifact, ...]:
    """The report's rows: each candidate against the float one of its format and the
    eager float model (the first)."""
    floats = {c.fmt: (c, t) for c, t in zip(found, latencies, strict=True) if c.precision == "fp32"}
    base, base_latency = found[0], latencies[0]
    rows = []
    for c, latency in zip(found, latencies, strict=True):
        ref, ref_latency = floats[c.fmt]
        change = None
        if c.accuracy is not None and base.accuracy is not None:
            change = 100.0 * (c.accuracy - base.accuracy)
        rows.append(
            Artifact(
                c.name,
                c.precision,
                None if c.file is None else c.file.name,
                c.bytes,
                ref.bytes / c.bytes,
                latency,
                base_latency / latency,
                ref_latency / latency,
                c.accuracy,
                change,
            )
        )
    return tuple(rows)


def _torchscript(
    model: nn.Module,
    quantized: Quantized | None,
    example: torch.Tensor,
    out: Path,
    check_inputs: np.ndarray,
    data: tuple[np.ndarray, np.ndarray] | None,
    one: torch.Tensor,
) -> list[_Candidate]:
    found = []
    for name, file, module, precision in _variants(model, quantized):
        script = _trace(module, example)
        path = out / file
        _save_script(script, path, torch.from_numpy(check_inputs[:EVAL_BATCH]))
        found.append(
            _Candidate(
                name,
                precision,
                "torchscript",
                path,
                path.stat().st_size,
                lambda s=script: s(one),
                _accuracy(_torch_predict(script), data),
            )
        )
    return found


def _onnx(
    model: nn.Module,
    example: torch.Tensor,
    out: Path,
    check_inputs: np.ndarray,
    data: tuple[np.ndarray, np.ndarray] | None,
    one: np.ndarray,
) -> tuple[float, list[_Candidate]]:
    """Write ``model.onnx`` once onnxruntime's logits match torch's; the largest
    difference and its candidate."""
    float_onnx = _onnx_bytes(model, example)
    session = _session(float_onnx)
    predict = _ort_predict(session)
    diff = float(np.abs(predict(check_inputs) - _torch_predict(model)(check_inputs)).max())
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(
            f"onnxruntime's logits differ from torch's by up to {diff:.3g} "
            f"(> {ONNX_TOLERANCE}); model.onnx not written"
        )
    path = out / "model.onnx"
    atomic_write_bytes(path, float_onnx)
    return diff, [
        _Candidate(
            "onnx",
            "fp32",
            "onnx",
            path,
            len(float_onnx),
            _ort_one(session, one),
            _accuracy(predict, data),
        )
    ]


def _onnx_int8_candidate(
    out: Path,
    conv: bool,
    calib: list[torch.Tensor] | None,
    backend: str,
    data: tuple[np.ndarray, np.ndarray] | None,
    one: np.ndarray,
) -> _Candidate:
    """Write ``model_int8.onnx``, quantized from ``model.onnx``, once it runs."""
    calib_np = None if calib is None else [_as_numpy(b) for b in calib]
    # x86 int8 kernels without VNNI can saturate u8 x s8 products: use 7-bit activations
    # there, as torch's x86 qconfig does
    int8_onnx = _onnx_int8((out / "model.onnx").read_bytes(), conv, calib_np, backend == "x86")
    session = _session(int8_onnx)
    if not np.all(np.isfinite(session.run(None, {"input": one})[0])):
        raise ExportError("the int8 ONNX model gives non-finite logits; not written")
    path = out / "model_int8.onnx"
    atomic_write_bytes(path, int8_onnx)
    return _Candidate(
        "onnx-int8",
        "int8",
        "onnx",
        path,
        len(int8_onnx),
        _ort_one(session, one),
        _accuracy(_ort_predict(session), data),
    )


def _variants(
    model: nn.Module, quantized: Quantized | None
) -> list[tuple[str, str, nn.Module, str]]:
    """(name, file, module, precision) of each TorchScript artifact."""
    found = [("torchscript", "model.pt", model, "fp32")]
    if quantized is not None:
        found.append(("torchscript-int8", "model_int8.pt", quantized.model, "int8"))
    return found


def _ort_one(session, one: np.ndarray) -> Callable[[], object]:  # noqa: ANN001
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: one})
