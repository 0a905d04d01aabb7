"""Server optimizers against Reddi et al. (2021) Algorithm 2 and Hsu et al. (2019), by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import ConfigError, FedloomError
from fedloom.optim import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    ServerOptimizer,
    make_server_optimizer,
)

NAMES = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def run(
    opt: ServerOptimizer, x0: np.ndarray, deltas: list[np.ndarray]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Params after each step, and the final state."""
    state = opt.init(x0)
    x, out = x0, []
    for d in deltas:
        x, state = opt.step(x, d, state)
        out.append(x)
    return out, state


def close(actual: np.ndarray, expected: list[float]) -> None:
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-5, atol=1e-7)


def test_fedavg_lr_one_is_x_plus_delta() -> None:
    x, d = f32(1.0, -2.5, 3.25), f32(0.125, 0.5, -1.0)
    (x1,), state = run(FedAvg(), x, [d])
    assert np.array_equal(x1, x + d)
    assert state["step"] == 1


def test_fedavg_lr_scales_delta() -> None:
    xs, _ = run(FedAvg(lr=0.5), f32(1.0, 2.0), [f32(0.5, -1.0), f32(2.0, 2.0)])
    close(xs[0], [1.0 + 0.5 * 0.5, 2.0 + 0.5 * -1.0])
    close(xs[1], [1.25 + 0.5 * 2.0, 1.5 + 0.5 * 2.0])


def test_fedavgm_accumulates_momentum() -> None:
    deltas = [f32(1.0, 2.0), f32(1.0, 0.0), f32(0.0, 0.0)]
    xs, state = run(FedAvgM(lr=1.0, momentum=0.5), f32(0.0, 0.0), deltas)
    # m1 = [1, 2]; m2 = 0.5*m1 + [1, 0] = [1.5, 1]; m3 = 0.5*m2 = [0.75, 0.5]
    close(xs[0], [1.0, 2.0])
    close(xs[1], [1.0 + 1.5, 2.0 + 1.0])
    close(xs[2], [2.5 + 0.75, 3.0 + 0.5])
    close(state["m"], [0.75, 0.5])
    assert state["step"] == 3


def test_fedavgm_lr_and_nesterov() -> None:
    deltas = [f32(1.0, 2.0), f32(1.0, 0.0)]
    xs, _ = run(FedAvgM(lr=0.1, momentum=0.5, nesterov=True), f32(0.0, 0.0), deltas)
    # m1 = [1, 2], step along 0.5*m1 + d1 = [1.5, 3]
    close(xs[0], [0.1 * 1.5, 0.1 * 3.0])
    # m2 = [1.5, 1], step along 0.5*m2 + d2 = [1.75, 0.5]
    close(xs[1], [0.15 + 0.1 * 1.75, 0.3 + 0.1 * 0.5])


def test_fedadagrad_matches_paper() -> None:
    opt = FedAdagrad(lr=0.1, beta1=0.0, tau=0.1)
    xs, state = run(opt, f32(1.0, 2.0), [f32(1.0, -2.0), f32(0.5, 0.0)])
    # v0 = tau^2 = 0.01; v1 = 0.01 + d1^2 = [1.01, 4.01]; m1 = d1
    x1 = [1.0 + 0.1 * 1.0 / (math.sqrt(1.01) + 0.1), 2.0 + 0.1 * -2.0 / (math.sqrt(4.01) + 0.1)]
    close(xs[0], x1)
    # v2 = [1.01 + 0.25, 4.01]; m2 = d2
    close(xs[1], [x1[0] + 0.1 * 0.5 / (math.sqrt(1.26) + 0.1), x1[1]])
    close(state["v"], [1.26, 4.01])


def test_fedadagrad_with_first_moment() -> None:
    opt = FedAdagrad(lr=1.0, beta1=0.5, tau=0.5)
    xs, _ = run(opt, f32(0.0), [f32(2.0), f32(2.0)])
    # m1 = 0.5*2 = 1; v1 = 0.25 + 4 = 4.25
    x1 = 1.0 / (math.sqrt(4.25) + 0.5)
    close(xs[0], [x1])
    # m2 = 0.5*1 + 0.5*2 = 1.5; v2 = 8.25
    close(xs[1], [x1 + 1.5 / (math.sqrt(8.25) + 0.5)])


def test_fedadam_matches_paper_without_bias_correction() -> None:
    opt = FedAdam(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    xs, state = run(opt, f32(1.0, 2.0), [f32(1.0, -2.0), f32(0.5, 0.5)])
    # m1 = 0.1*d1 = [0.1, -0.2]; v1 = 0.99*1e-6 + 0.01*d1^2
    v1 = [0.99e-6 + 0.01 * 1.0, 0.99e-6 + 0.01 * 4.0]
    x1 = [
        1.0 + 0.01 * 0.1 / (math.sqrt(v1[0]) + 1e-3),
        2.0 + 0.01 * -0.2 / (math.sqrt(v1[1]) + 1e-3),
    ]
    close(xs[0], x1)
    # m2 = 0.9*m1 + 0.1*0.5 = [0.14, -0.13]; v2 = 0.99*v1 + 0.01*0.25
    v2 = [0.99 * v1[0] + 0.0025, 0.99 * v1[1] + 0.0025]
    close(state["m"], [0.14, -0.13])
    close(state["v"], v2)
    close(
        xs[1],
        [
            x1[0] + 0.01 * 0.14 / (math.sqrt(v2[0]) + 1e-3),
            x1[1] + 0.01 * -0.13 / (math.sqrt(v2[1]) + 1e-3),
        ],
    )


def test_fedyogi_matches_paper_both_signs() -> None:
    opt = FedYogi(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    deltas = [f32(1.0, -2.0), f32(0.5, 0.5), f32(0.01, 0.01)]
    xs, state = run(opt, f32(0.0, 0.0), deltas)
    # v0 = 1e-6 < d1^2, so sign(v0 - d1^2) = -1 and v grows: v1 = v0 + 0.01*d1^2
    v1 = [1e-6 + 0.01 * 1.0, 1e-6 + 0.01 * 4.0]
    m1 = [0.1, -0.2]
    x1 = [0.01 * m1[0] / (math.sqrt(v1[0]) + 1e-3), 0.01 * m1[1] / (math.sqrt(v1[1]) + 1e-3)]
    close(xs[0], x1)
    # v1 < 0.25 = d2^2: v2 = v1 + 0.01*0.25
    v2 = [v1[0] + 0.0025, v1[1] + 0.0025]
    m2 = [0.9 * 0.1 + 0.05, 0.9 * -0.2 + 0.05]
    x2 = [
        x1[0] + 0.01 * m2[0] / (math.sqrt(v2[0]) + 1e-3),
        x1[1] + 0.01 * m2[1] / (math.sqrt(v2[1]) + 1e-3),
    ]
    close(xs[1], x2)
    # v2 > 1e-4 = d3^2: sign is +1 and v shrinks: v3 = v2 - 0.01*1e-4
    v3 = [v2[0] - 1e-6, v2[1] - 1e-6]
    m3 = [0.9 * m2[0] + 0.001, 0.9 * m2[1] + 0.001]
    close(state["v"], v3)
    close(
        xs[2],
        [
            x2[0] + 0.01 * m3[0] / (math.sqrt(v3[0]) + 1e-3),
            x2[1] + 0.01 * m3[1] / (math.sqrt(v3[1]) + 1e-3),
        ],
    )


@pytest.mark.parametrize("name", NAMES)
def test_state_layout(name: str) -> None:
    opt = make_server_optimizer(name)
    assert opt.name == name
    x = f32(1.0, 2.0, 3.0)
    state = opt.init(x)
    assert state["step"].shape == () and state["step"].dtype == np.int64
    for key, value in state.items():
        if key != "step":
            assert value.dtype == np.float32 and value.shape == x.shape
    if "v" in state:  # every adaptive default has tau = 1e-3, and v starts at tau^2
        close(state["v"], [1e-6] * 3)
    x1, state1 = opt.step(x, f32(0.1, -0.2, 0.3), state)
    assert x1.dtype == np.float32 and int(state1["step"]) == 1
    assert set(state1) == set(state)


@pytest.mark.parametrize("name", NAMES)
def test_step_does_not_mutate_inputs(name: str) -> None:
    opt = make_server_optimizer(name)
    x, d = f32(1.0, 2.0, 3.0), f32(0.5, -0.5, 0.25)
    x, state = opt.step(x, d, opt.init(x))  # non-trivial momentum buffers
    saved_x, saved_d = x.copy(), d.copy()
    saved_state = {k: v.copy() for k, v in state.items()}
    x2, state2 = opt.step(x, d, state)
    assert np.array_equal(x, saved_x) and np.array_equal(d, saved_d)
    for key, value in saved_state.items():
        assert np.array_equal(state[key], value)
    assert x2 is not x
    assert all(state2[k] is not state[k] for k in state)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_npz(name: str, tmp_path: Path) -> None:
    opt = make_server_optimizer(name)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50).astype(np.float32)
    deltas = [rng.normal(scale=0.1, size=50).astype(np.float32) for _ in range(6)]
    full, _ = run(opt, x0, deltas)

    x, state = x0, opt.init(x0)
    for d in deltas[:3]:
        x, state = opt.step(x, d, state)
    np.savez(tmp_path / "opt.npz", params=x, **state)
    with np.load(tmp_path / "opt.npz") as data:
        loaded = {k: data[k] for k in data.files}
    x = loaded.pop("params")
    for d in deltas[3:]:
        x, loaded = opt.step(x, d, loaded)
    assert np.array_equal(x, full[-1])
    assert int(loaded["step"]) == 6


def test_delta_shape_mismatch_is_rejected() -> None:
    opt = FedAdam()
    x = f32(1.0, 2.0)
    with pytest.raises(FedloomError, match=r"delta has shape \(3,\)"):
        opt.step(x, f32(1.0, 2.0, 3.0), opt.init(x))


def test_missing_state_key_is_rejected() -> None:
    opt = FedAvgM()
    x = f32(1.0)
    with pytest.raises(FedloomError, match="'m'"):
        opt.step(x, f32(1.0), {"step": np.array(0, dtype=np.int64)})


def test_factory_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="'sgd'") as err:
        make_server_optimizer("sgd")
    for name in NAMES:
        assert name in str(err.value)


def test_factory_passes_hyperparameters() -> None:
    assert make_server_optimizer("fedyogi", lr=0.5, tau=0.01) == FedYogi(lr=0.5, tau=0.01)
    assert make_server_optimizer("fedavgm", nesterov=True) == FedAvgM(nesterov=True)


def test_factory_unknown_hyperparameter() -> None:
    with pytest.raises(ConfigError, match="'beta2'"):
        make_server_optimizer("fedadagrad", beta2=0.9)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("fedavg", "lr", 0.0),
        ("fedavg", "lr", -1.0),
        ("fedavgm", "lr", math.nan),
        ("fedadam", "lr", math.inf),
        ("fedavgm", "momentum", 1.0),
        ("fedavgm", "momentum", -0.1),
        ("fedadagrad", "beta1", 1.0),
        ("fedadam", "beta1", -0.5),
        ("fedadam", "beta2", 1.0),
        ("fedyogi", "beta2", 1.5),
        ("fedyogi", "tau", 0.0),
        ("fedadagrad", "tau", -1e-3),
        ("fedavgm", "nesterov", "yes"),
    ],
)
def test_bad_hyperparameters_name_field_and_value(name: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        make_server_optimizer(name, **{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="tau"):
        FedAdam(tau=0)
