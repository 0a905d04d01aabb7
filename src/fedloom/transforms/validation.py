"""Per-client checks of an update before it may enter a sum.

A row must be a float32 vector of the model's length, finite, with an L2 norm whose
square stays finite in float32 (:data:`MAX_UPDATE_NORM`), from a client declaring an
integer example count >= 1 and finite training statistics. :meth:`Validate.check` refuses
one update as it arrives (so a runtime can answer the client at once);
:meth:`Validate.apply` checks a cohort's rows at once, where rows are produced on the
server (e.g. after decoding).
"""

from __future__ import annotations

import math

import numpy as np

from fedloom.errors import RejectionKind, UpdateRejected
from fedloom.records import ClientMetrics, Update
from fedloom.transforms.base import Context, State

# The largest update norm a server accepts: sqrt of float32's maximum, so the square of
# every admitted row's norm, the dot product of any two admitted rows (Cauchy-Schwarz) and
# any weighted mean of them stay finite in float32. Larger is a diverged or hostile update
# (3e38 in every coordinate is finite, but its norm and the cohort's sums are not).
MAX_UPDATE_NORM = float(np.sqrt(np.finfo(np.float32).max))


def validate_metrics(cid: int, m: ClientMetrics) -> None:
    """Refuse statistics that would poison the round's sums or the registry: the training
    loss and epochs must be finite, steps a count; the squared loss may be NaN (not
    reported) but never infinite."""
    for name, value, nan_ok in (
        ("train_loss", m.train_loss, False),
        ("train_loss_sq", m.train_loss_sq, True),
        ("epochs", m.epochs, False),
    ):
        number = isinstance(value, int | float | np.integer | np.floating)
        if not number or isinstance(value, bool) or math.isinf(value):
            raise UpdateRejected(
                cid, f"{name} = {value!r} is not a finite number", RejectionKind.NONFINITE
            )
        if math.isnan(value) and not nan_ok:
            raise UpdateRejected(
                cid, f"{name} = {value!r} is not a finite number", RejectionKind.NONFINITE
            )
    if m.epochs < 0:
        raise UpdateRejected(cid, f"epochs = {m.epochs!r}, expected >= 0", RejectionKind.BAD_COUNT)
    steps = m.steps
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise UpdateRejected(
            cid, f"steps = {steps!r}, expected an int >= 0", RejectionKind.BAD_COUNT
        )
    samples = m.loss_samples
    if len(samples) > MAX_LOSS_SAMPLES:
        raise UpdateRejected(
            cid,
            f"loss_samples holds {len(samples)} values, expected at most {MAX_LOSS_SAMPLES}",
            RejectionKind.MALFORMED,
        )
    if not all(isinstance(v, float | int) and math.isfinite(v) for v in samples):
        raise UpdateRejected(
            cid,
            f"loss_samples = {list(samples)!r}: expected finite numbers",
            RejectionKind.NONFINITE,
        )


def l2_norm(v: np.ndarray) -> float:
    """The L2 norm of a 1-D array accumulated in float64, without BLAS: OpenBLAS spreads
    a float64 dot over 10,000 elements across threads, which costs a millisecond or more
    per update (far more on a busy machine) instead of microseconds."""
    return math.sqrt(float(np.einsum("i,i->", v, v, dtype=np.float64)))


MAX_LOSS_SAMPLES = 64  # progress monitoring: edge.loss_samples' upper bound


class Validate:
    """Shape, dtype, finiteness, norm limit and example-count checks of a model of ``dim``
    parameters."""

    def __init__(self, dim: int, max_norm: float = MAX_UPDATE_NORM) -> None:
        self.dim = int(dim)
        self.max_norm = float(max_norm)

    def init(self, dim: int) -> State:
        return {}

    def check(self, u: Update) -> None:
        """Raise ``UpdateRejected`` (with its kind) if ``u``'s content is unacceptable."""
        cid, delta = u.client_id, u.delta
        if not isinstance(delta, np.ndarray) or delta.shape != (self.dim,):
            shape = getattr(delta, "shape", type(delta).__name__)
            raise UpdateRejected(
                cid, f"delta has shape {shape}, expected ({self.dim},)", RejectionKind.WRONG_SHAPE
            )
        if delta.dtype != np.float32:
            raise UpdateRejected(
                cid, f"delta has dtype {delta.dtype}, expected float32", RejectionKind.WRONG_SHAPE
            )
        if not np.isfinite(delta).all():
            bad = int(np.count_nonzero(~np.isfinite(delta)))
            raise UpdateRejected(
                cid, f"delta contains {bad} NaN/inf values", RejectionKind.NONFINITE
            )
        self._norm(cid, l2_norm(delta))
        self._count(cid, u.num_examples)
        validate_metrics(cid, u.metrics)

    def _norm(self, cid: object, norm: float) -> None:
        if not norm <= self.max_norm:
            raise UpdateRejected(
                cid,
                f"delta has L2 norm {norm:.3g}, over {self.max_norm:.3g} (its square "
                "overflows float32: a diverged or hostile update)",
                RejectionKind.OVERFLOW,
            )

    @staticmethod
    def _count(cid: object, count: object) -> None:
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
            raise UpdateRejected(
                cid, f"num_examples = {count!r}, expected an int >= 1", RejectionKind.BAD_COUNT
            )

    def apply(self, updates: np.ndarray, state: State, ctx: Context) -> tuple[np.ndarray, State]:
        """The rows unchanged, or ``UpdateRejected`` naming the first bad row's client."""
        ids = np.asarray(ctx.client_ids).tolist()
        if updates.ndim != 2 or updates.shape[1] != self.dim or len(ids) != updates.shape[0]:
            raise UpdateRejected(
                ids[0] if ids else None,
                f"rows have shape {updates.shape}, expected ({len(ids)}, {self.dim})",
                RejectionKind.WRONG_SHAPE,
            )
        if updates.dtype != np.float32:
            raise UpdateRejected(
                ids[0] if ids else None,
                f"rows have dtype {updates.dtype}, expected float32",
                RejectionKind.WRONG_SHAPE,
            )
        norms = np.sqrt(np.einsum("ij,ij->i", updates, updates, dtype=np.float64))
        for i in np.flatnonzero(~np.isfinite(updates).all(axis=1)).tolist():
            raise UpdateRejected(ids[i], "delta contains NaN/inf values", RejectionKind.NONFINITE)
        for i in np.flatnonzero(~(norms <= self.max_norm)).tolist():
            self._norm(ids[i], float(norms[i]))
        for cid, n in zip(ids, np.asarray(ctx.weights).tolist(), strict=False):
            self._count(cid, int(n) if float(n).is_integer() else n)
        return updates, state
