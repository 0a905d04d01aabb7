"""The test suite's gRPC tooling (fault proxy, in-thread server), which the benchmarks
share rather than copy; it lives in tests/transport/, outside the shipped package.
Benchmarks run as scripts (``python benchmarks/NAME.py``), so this folder is on the path."""

from __future__ import annotations

import sys
from pathlib import Path

_TOOLING = Path(__file__).resolve().parents[1] / "tests" / "transport"
if str(_TOOLING) not in sys.path:
    sys.path.insert(0, str(_TOOLING))

from faultproxy import FaultProxy  # noqa: E402
from server_thread import start_in_thread  # noqa: E402

__all__ = ["FaultProxy", "start_in_thread"]
