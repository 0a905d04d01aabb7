"""steps_for_each / examples_seen_each: every client gets what its own plan gives it,
whether the cohort's plans are one shared object, equal copies or different plans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedloom.client.schedule import examples_seen, examples_seen_each, steps_for, steps_for_each
from fedloom.records import TrainPlan


def _one_by_one(fn, sizes, plans, caps):  # noqa: ANN001, ANN202
    return np.array(
        [
            fn(sizes[i : i + 1], p, None if caps is None else caps[i : i + 1])[0]
            for i, p in enumerate(plans)
        ]
    )


def test_each_client_gets_its_own_plans_work() -> None:
    sizes = np.array([5, 40, 17, 1, 64, 33, 9], dtype=np.int64)
    base = TrainPlan(local_epochs=2, batch_size=8, lr=0.1)
    small = replace(base, batch_size=3)
    steps = replace(base, local_steps=4)
    equal_copy = replace(small)  # equal by value, another object
    plans = [base, small, base, steps, equal_copy, small, steps]
    for caps in (None, np.array([1, 100, 2, 100, 3, 0, 100], dtype=np.int64)):
        for each, fn in ((steps_for_each, steps_for), (examples_seen_each, examples_seen)):
            got = each(sizes, plans, caps)
            assert got.tolist() == _one_by_one(fn, sizes, plans, caps).tolist()
    shared = [base] * len(sizes)
    assert steps_for_each(sizes, shared).tolist() == steps_for(sizes, base).tolist()
    assert steps_for_each(sizes[:0], []).tolist() == []
