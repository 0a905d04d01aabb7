"""The fuzz tests' example budget: small by default, so that every fuzz file runs in a few
seconds with the rest of the suite, and as large as ``FEDLOOM_FUZZ_EXAMPLES`` asks for a
long run (``FEDLOOM_FUZZ_EXAMPLES=20000 uv run pytest -n 0 tests/fuzz``). Default runs are
derandomized, so a failure in CI reproduces; a long run explores fresh examples."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_EXAMPLES = 60


def examples() -> int:
    """The number of examples each property tries."""
    value = os.environ.get("FEDLOOM_FUZZ_EXAMPLES", "")
    return int(value) if value.strip() else DEFAULT_EXAMPLES


def fuzz(scale: float = 1.0) -> settings:
    """Hypothesis settings for one property; ``scale`` shrinks the budget of a property
    whose examples are expensive (a whole SecAgg round, a checkpoint on disk)."""
    long_run = bool(os.environ.get("FEDLOOM_FUZZ_EXAMPLES", "").strip())
    return settings(
        max_examples=max(1, int(examples() * scale)),
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
