"""The end every benchmark shares: print each target (met or missed) and write the
result, whose last key is the ``targets`` list, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def finish(result: dict[str, Any], path: Path | None) -> None:
    """Print ``result["targets"]`` (and ``total_s`` if measured); write ``result`` to
    ``path`` as indented JSON when given."""
    for t in result["targets"]:
        met = "met" if t["met"] else "MISSED"
        print(f"target {t['name']}: {json.dumps(t['value'])} (goal {t['goal']}) {met}")
    if "total_s" in result:
        print(f"total {result['total_s']} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
