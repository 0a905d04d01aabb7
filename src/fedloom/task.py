"""What is learned: the model, the loss and the metrics, as one typed object.

A ``Task`` is everything about a run that depends on the user's problem rather than on
federation: how to build the model (with the run seed's initial weights), the loss
(any ``(outputs, targets) -> scalar`` callable, averaged over the batch), the metrics
reported on evaluation (named callables of the same form) and, optionally, the shape of
one input. Every runtime (simulator executors, evaluation, deployment clients) takes
the task instead of assuming a classifier, so images, token sequences and regression
train through the same server chain, DP, SecAgg, selection and checkpoints.

Losses and metrics are written for a batch, as users write them. Where fedloom needs one
value per example (masked padding in the vectorized executor, per-client hold-out
metrics, evaluation in chunks) it evaluates the same callable on single-example batches
under ``torch.func.vmap`` (:func:`per_example`); the built-in ones also carry a direct
per-example form, which is faster and identical.

Defaults follow the data's targets (``Targets``): integer class labels get cross-entropy
and accuracy; integer token targets ``[n, T]`` get token cross-entropy and token
accuracy; float targets get mean squared error with MSE and MAE as metrics.

A config names a task by an import path (``model.kind = "module:my_pkg.nets:Net"``):
the attribute may be a ``Task``, an ``nn.Module`` class, or a callable returning either,
called with ``model.options`` as keyword arguments (:func:`import_task`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from fedloom.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

Targets = Literal["classes", "tokens", "values"]
"""What ``y`` holds: class labels ``[n]``, token ids ``[n, T]`` (next-token targets) or
real-valued regression targets ``[n]`` / ``[n, k]``."""

MODULE_PREFIX = "module:"


@dataclass(frozen=True)
class Metric:
    """A named evaluation metric: ``fn(outputs, targets)`` is the batch mean, and
    ``maximize`` says whether higher is better (for the best round and early stopping).
    ``per_example`` (optional) gives one value per example directly."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    maximize: bool = True
    per_example: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Loss:
    """A training loss: ``fn(outputs, targets)`` is the batch mean; ``per_example``
    (optional) gives one value per example directly."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    per_example: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    name: str = "custom"


def per_example(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    direct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One value per example of a batch-mean callable: ``direct`` if given, else ``fn``
    on single-example batches under ``vmap`` (valid for any mean-reduced ``fn``)."""
    if direct is not None:
        return direct
    from torch.func import vmap

    return vmap(lambda o, t: fn(o.unsqueeze(0), t.unsqueeze(0)))


# built-in losses and metrics --------------------------------------------------------
def _ce_each(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example; for token targets ``[B, T]`` with outputs
    ``[B, T, V]``, the mean over the example's tokens."""
    import torch.nn.functional as F

    if targets.ndim == 2 and outputs.ndim == 3:
        return F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(1)
    return F.cross_entropy(outputs, targets, reduction="none")


def _ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _ce_each(outputs, targets).mean()


def _correct_each(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    hit = (outputs.argmax(-1) == targets).to(outputs.dtype)
    return hit.mean(1) if hit.ndim == 2 else hit


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _correct_each(outputs, targets).mean()


def _match(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Outputs ``[B, 1]`` against targets ``[B]`` (a single regression output)."""
    if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
        return outputs.squeeze(-1)
    return outputs


def _se_each(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    diff = (_match(outputs, targets) - targets) ** 2
    return diff.reshape(diff.shape[0], -1).mean(1)


def _ae_each(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    diff = (_match(outputs, targets) - targets).abs()
    return diff.reshape(diff.shape[0], -1).mean(1)


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _se_each(outputs, targets).mean()


def _mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _ae_each(outputs, targets).mean()


cross_entropy = Loss(_ce, _ce_each, "cross_entropy")
mse_loss = Loss(_mse, _se_each, "mse")
accuracy = Metric(_accuracy, maximize=True, per_example=_correct_each)
mse = Metric(_mse, maximize=False, per_example=_se_each)
mae = Metric(_mae, maximize=False, per_example=_ae_each)


def default_loss(targets: Targets) -> Loss:
    return mse_loss if targets == "values" else cross_entropy


def default_metrics(targets: Targets) -> dict[str, Metric]:
    if targets == "values":
        return {"mse": mse, "mae": mae}
    return {"accuracy": accuracy}


@dataclass(frozen=True)
class Task:
    """The model, loss and metrics of a run.

    ``model``: an ``nn.Module`` (its current weights are the initial ones; each use gets
    a deep copy) or a zero-argument factory (called with the run seed as torch's seed,
    so every process builds the same initial weights). ``loss``: a ``Loss`` or a plain
    ``(outputs, targets) -> scalar`` callable; None picks the default for the data's
    targets. ``metrics``: name -> ``Metric`` or plain callable (a plain callable is a
    score, higher is better); None picks the defaults. ``input_shape``: one example's
    shape (``x.shape[1:]``), checked against the data when given. ``name``: how records
    and the start record name the task.
    """

    model: Any
    loss: Loss | Callable[..., Any] | None = None
    metrics: Mapping[str, Metric | Callable[..., Any]] | None = None
    input_shape: tuple[int, ...] | None = None
    name: str = "custom"
    reference: str | None = field(default=None, compare=False)  # import path, if from one

    def __post_init__(self) -> None:
        from torch import nn

        if not (isinstance(self.model, nn.Module) or callable(self.model)):
            raise ConfigError(
                f"task.model must be an nn.Module or a factory returning one, got "
                f"{type(self.model).__name__}"
            )
        if self.loss is not None and not (isinstance(self.loss, Loss) or callable(self.loss)):
            raise ConfigError(f"task.loss must be callable, got {type(self.loss).__name__}")
        if self.metrics is not None:
            if not isinstance(self.metrics, Mapping):
                raise ConfigError(
                    f"task.metrics must map names to callables, got {type(self.metrics).__name__}"
                )
            for name, m in self.metrics.items():
                if not isinstance(name, str) or not name.isidentifier():
                    raise ConfigError(f"task.metrics: name {name!r} must be an identifier")
                if name == "loss" or name.startswith("fed_"):
                    raise ConfigError(f"task.metrics: name {name!r} is reserved")
                if not (isinstance(m, Metric) or callable(m)):
                    raise ConfigError(f"task.metrics[{name!r}] must be callable")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
                raise ConfigError(
                    f"task.input_shape = {self.input_shape!r}: expected positive integers"
                )
            object.__setattr__(self, "input_shape", shape)

    # resolution against the data -----------------------------------------------------
    def resolved(self, targets: Targets) -> ResolvedTask:
        """This task with its loss and metrics settled for data whose targets are
        ``targets`` (defaults filled in, plain callables wrapped)."""
        loss = self.loss
        if loss is None:
            loss = default_loss(targets)
        elif not isinstance(loss, Loss):
            loss = Loss(loss, None, getattr(loss, "__name__", "custom"))
        metrics = (
            default_metrics(targets)
            if self.metrics is None
            else {
                name: m if isinstance(m, Metric) else Metric(m, maximize=True)
                for name, m in self.metrics.items()
            }
        )
        return ResolvedTask(self, targets, loss, dict(metrics))

    def build_model(self, seed: int) -> nn.Module:
        """A fresh float32 model with the initial weights of ``seed`` (a module given as
        an instance is deep-copied; torch's global RNG is left untouched)."""
        import copy

        import torch
        from torch import nn

        if isinstance(self.model, nn.Module):
            model = copy.deepcopy(self.model)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = self.model()
            if not isinstance(model, nn.Module):
                raise ConfigError(
                    f"task {self.name!r}: the model factory returned "
                    f"{type(model).__name__}, not an nn.Module"
                )
        return model


@dataclass(frozen=True)
class ResolvedTask:
    """A task bound to its data's targets: the loss and metrics every runtime uses."""

    task: Task
    targets: Targets
    loss: Loss
    metrics: dict[str, Metric]

    @property
    def name(self) -> str:
        return self.task.name

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return self.loss.fn

    def loss_each(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Per-example loss (see :func:`per_example`)."""
        return per_example(self.loss.fn, self.loss.per_example)

    def metrics_each(self) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """Per-example value of every metric, by name."""
        return {n: per_example(m.fn, m.per_example) for n, m in self.metrics.items()}

    def maximize(self, metric: str) -> bool:
        """Whether higher is better for ``metric`` (``loss``: lower is)."""
        if metric == "loss":
            return False
        if metric not in self.metrics:
            raise ConfigError(
                f"metric {metric!r} is not reported by task {self.name!r}; it reports "
                f"{', '.join(['loss', *self.metrics])}"
            )
        return self.metrics[metric].maximize

    @property
    def primary(self) -> str:
        """The metric a summary leads with: the first metric (else the loss)."""
        return next(iter(self.metrics), "loss")


@dataclass(frozen=True)
class DataShape:
    """What a task needs to know about its data: one example's shape, the targets, the
    number of classes (None for regression) and the model's output width (classes, or
    the regression target's width)."""

    sample_shape: tuple[int, ...]
    targets: Targets
    num_classes: int | None
    outputs: int

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, num_classes: int | None) -> DataShape:
        """The shape of arrays ``x`` ``[n, ...]`` and ``y`` (as ``ArrayDataset`` holds them)."""
        if num_classes is None:
            targets: Targets = "values"
            outputs = 1 if y.ndim == 1 else int(y.shape[1])
        else:
            targets = "tokens" if y.ndim == 2 else "classes"
            outputs = int(num_classes)
        return cls(tuple(int(s) for s in x.shape[1:]), targets, num_classes, outputs)


# tasks from import paths ------------------------------------------------------------
def import_task(kind: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task named by ``model.kind = "module:pkg.mod:attr"`` (``attr`` may be dotted).

    ``attr`` may be a ``Task``, an ``nn.Module`` subclass, or a callable returning a
    ``Task`` or a module; callables get ``options`` as keyword arguments. Every failure is
    one ``ConfigError`` naming the path and the problem.
    """
    from torch import nn

    ref = kind[len(MODULE_PREFIX) :] if kind.startswith(MODULE_PREFIX) else kind
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.kind = {kind!r}: expected 'module:package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to see
        raise ConfigError(
            f"model.kind = {kind!r}: cannot import {module_name!r}: {type(err).__name__}: {err}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.kind = {kind!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    opts = dict(options or {})
    if isinstance(obj, Task):
        if opts:
            raise ConfigError(f"model.kind = {kind!r} is a Task object; it takes no model.options")
        return replace(obj, reference=kind)
    if isinstance(obj, nn.Module):
        raise ConfigError(
            f"model.kind = {kind!r} is a module instance; name its class or a factory "
            "so every process builds the same initial weights from the run seed"
        )
    if not callable(obj):
        raise ConfigError(f"model.kind = {kind!r} is a {type(obj).__name__}, not callable")
    if inspect.isclass(obj) and issubclass(obj, nn.Module):
        return Task(lambda: obj(**opts), name=attr, reference=kind)
    try:
        inspect.signature(obj).bind(**opts)
    except TypeError as err:
        raise ConfigError(f"model.kind = {kind!r}: model.options {opts}: {err}") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    made = obj(**opts)
    if isinstance(made, Task):
        return replace(made, reference=kind)
    if isinstance(made, nn.Module):  # a factory: rebuild it under the run seed each time
        return Task(lambda: obj(**opts), name=attr, reference=kind)
    raise ConfigError(
        f"model.kind = {kind!r} returned {type(made).__name__}; expected a Task or an nn.Module"
    )


# checking a task against its data before any work -----------------------------------
def check_fit(
    task: ResolvedTask,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int | None,
) -> None:
    """Run the model, the loss and every metric on two examples and refuse, in one line,
    what would otherwise fail mid-run: inputs the model cannot take, outputs the loss
    cannot score (or that give a non-finite or non-scalar loss), fewer output classes
    than the labels need, a metric that fails."""
    import torch

    if task.task.input_shape is not None and tuple(x.shape[1:]) != task.task.input_shape:
        raise ConfigError(
            f"task {task.name!r} takes inputs of shape {list(task.task.input_shape)}, but "
            f"the data's examples have shape {list(x.shape[1:])}"
        )
    xb, yb = torch.from_numpy(x[:2]), torch.from_numpy(y[:2])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(xb)
            except Exception as err:  # noqa: BLE001 - any failure is the user's to see
                raise ConfigError(
                    f"task {task.name!r}: the model cannot take inputs of shape "
                    f"{list(x.shape[1:])} ({x.dtype}): {type(err).__name__}: {_first_line(err)}"
                ) from None
            if not isinstance(out, torch.Tensor):
                raise ConfigError(
                    f"task {task.name!r}: the model returned {type(out).__name__}, not a tensor"
                )
            if num_classes is not None and task.targets != "values":
                width = int(out.shape[-1]) if out.ndim >= 2 else 1
                if width < num_classes:
                    raise ConfigError(
                        f"task {task.name!r}: the model outputs {width} classes but the labels "
                        f"need {num_classes} (labels 0..{num_classes - 1})"
                    )
            what = f"outputs of shape {list(out.shape)} and targets of shape {list(yb.shape)}"
            try:
                loss = task.loss.fn(out, yb)
            except Exception as err:  # noqa: BLE001
                raise ConfigError(
                    f"task {task.name!r}: loss {task.loss.name!r} fails on {what}: "
                    f"{type(err).__name__}: {_first_line(err)}"
                ) from None
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise ConfigError(
                    f"task {task.name!r}: loss {task.loss.name!r} must return a scalar, got "
                    f"{shape} for {what}"
                )
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"task {task.name!r}: loss {task.loss.name!r} is {float(loss)} on {what}"
                )
            _check_mean(f"loss {task.loss.name!r}", task.name, loss, task.loss_each(), out, yb)
            for name, each in task.metrics_each().items():
                try:
                    values = each(out, yb)
                except Exception as err:  # noqa: BLE001
                    raise ConfigError(
                        f"task {task.name!r}: metric {name!r} fails on {what}: "
                        f"{type(err).__name__}: {_first_line(err)}"
                    ) from None
                if tuple(values.shape) != (len(yb),):
                    raise ConfigError(
                        f"task {task.name!r}: metric {name!r} must give one value per example "
                        f"(shape [{len(yb)}]), got {list(values.shape)} for {what}"
                    )
                batch = task.metrics[name].fn(out, yb)
                _check_mean(f"metric {name!r}", task.name, batch, lambda o, t, v=values: v, out, yb)
    finally:
        model.train(was_training)


def _check_mean(
    what: str,
    task: str,
    batch: torch.Tensor,
    each: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    out: torch.Tensor,
    y: torch.Tensor,
) -> None:
    """Refuse a loss or metric that is not the mean of its one-example values: fedloom
    masks padding, evaluates in chunks and averages over clients example by example, which
    is right only for means (a sum, or a statistic of the whole batch such as R² against
    the batch's own variance, would silently report something else)."""
    import torch

    values = each(out, y)
    mean = values.double().mean()
    if not (torch.isfinite(mean) and torch.isclose(batch.double(), mean, rtol=1e-4, atol=1e-6)):
        raise ConfigError(
            f"task {task!r}: {what} is not a mean over examples: {float(batch):.6g} on a "
            f"batch of {len(y)} but {float(mean):.6g} averaged over its examples one by one; "
            "write it as a batch mean of per-example values"
        )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
