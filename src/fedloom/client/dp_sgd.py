"""Sample-level DP-SGD inside a client: clipped per-sample gradients plus Gaussian noise.

One step's gradient is ``(sum_i clip(g_i, C) + N(0, (z C)^2 I)) / B`` for a batch of B
samples. The noise of a client's step is drawn from a generator keyed by the client's
seed and the step index, so the sequential and the vectorized executors add exactly the
same noise and train the same model. That is for simulation only: the seed is chosen by
the server, which could replay the noise and subtract it, so a deployed client draws its
DP-SGD noise from its own OS CSPRNG instead (``TorchTrainer.train(dp_noise=...)``).

References: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
"""

from __future__ import annotations

import numpy as np


def step_noise(seeds: np.ndarray, step: int, dim: int) -> np.ndarray:
    """Standard normal noise ``[len(seeds), dim]`` (float32) for one local step."""
    return np.stack(
        [np.random.default_rng([int(s), 13, step]).standard_normal(dim, np.float32) for s in seeds]
    )
