"""fedloom.privacy.sweep through the simulator, called from Python."""

from __future__ import annotations

import math
from pathlib import Path

import fedloom.privacy as privacy


def test_a_real_sweep_from_python(tmp_path: Path) -> None:
    from fedloom.assemble import trial_runner
    from fedloom.config import load_config

    config = load_config(
        None,
        [
            f'output_dir="{tmp_path}"',
            "rounds=2",
            "partition.num_clients=20",
            "server.clients_per_round=5",
            'privacy.accountant="rdp"',
        ],
    )
    result = privacy.sweep([2.0, math.inf], trial_runner(config))
    private, plain = result.rows
    assert private.outcome.noise_multiplier > 0 and plain.outcome.noise_multiplier == 0.0
    assert 0 < private.outcome.spent_epsilon <= 2.0 + 1e-9
    assert plain.outcome.spent_epsilon == math.inf
    assert Path(private.outcome.run).name == "digits-fedavg-eps2"
    assert all(0 <= r.outcome.accuracy <= 1 for r in result.rows)
