"""Data poisoning: label flipping and the backdoor trigger change only the malicious
clients' training examples, on copies."""

import numpy as np
import pytest

from fedloom.attacks import Backdoor, LabelFlip, build_attack
from fedloom.data.arrays import ClientPartition
from fedloom.errors import ConfigError


def pool(shape=(6,), classes=4, sizes=(5, 8, 3, 6)) -> ClientPartition:
    rng = np.random.default_rng(0)
    n = sum(sizes)
    x = rng.uniform(-1, 2, size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return ClientPartition(x, y, offsets, classes)


def test_label_flip_maps_y_to_c_minus_1_minus_y_for_the_malicious_clients_only():
    train = pool()
    x0, y0 = train.x.copy(), train.y.copy()
    bad = np.array([1, 3])
    out = LabelFlip().poison(train, bad, np.random.default_rng(0))
    owner = train.client_index()
    mine = np.isin(owner, bad)
    np.testing.assert_array_equal(out.y[mine], 3 - y0[mine])
    np.testing.assert_array_equal(out.y[~mine], y0[~mine])
    np.testing.assert_array_equal(out.x, x0)
    np.testing.assert_array_equal(out.offsets, train.offsets)
    np.testing.assert_array_equal(train.y, y0)  # the input is left alone


def test_backdoor_poisons_a_share_of_each_malicious_clients_examples():
    train = pool(sizes=(5, 8, 3, 6))
    x0, y0 = train.x.copy(), train.y.copy()
    attack = Backdoor(trigger_size=2, trigger_value=9.0, poison_fraction=0.5, target=2)
    bad = np.array([0, 1])
    out = attack.poison(train, bad, np.random.default_rng(1))
    owner = train.client_index()
    stamped = (out.x[:, -2:] == 9.0).all(1)
    changed = (out.x != x0).any(1) | (out.y != y0)
    assert not changed[~np.isin(owner, bad)].any()  # honest clients untouched
    # ceil(0.5 * size) examples per malicious client: 3 of 5, 4 of 8
    assert np.bincount(owner[stamped], minlength=4).tolist() == [3, 4, 0, 0]
    assert (out.y[stamped] == 2).all()
    np.testing.assert_array_equal(out.x[stamped, :-2], x0[stamped, :-2])
    np.testing.assert_array_equal(out.x[~stamped], x0[~stamped])
    np.testing.assert_array_equal(out.y[~stamped], y0[~stamped])
    np.testing.assert_array_equal(train.x, x0)  # copies, not the shared arrays
    # the same generator picks the same examples
    again = attack.poison(train, bad, np.random.default_rng(1))
    np.testing.assert_array_equal(again.x, out.x)


def test_image_trigger_is_a_corner_square_in_every_channel():
    attack = Backdoor(trigger_size=3, trigger_value=5.0)
    x = np.zeros((2, 3, 8, 8), dtype=np.float32)
    t = attack.apply_trigger(x)
    assert (t[:, :, -3:, -3:] == 5.0).all()
    assert t.sum() == 2 * 3 * 9 * 5.0
    assert (x == 0).all()
    gray = attack.apply_trigger(np.zeros((1, 8, 8), dtype=np.float32))
    assert gray.sum() == 9 * 5.0 and (gray[0, -3:, -3:] == 5.0).all()


def test_trigger_errors():
    with pytest.raises(ConfigError, match="trigger_value"):
        Backdoor().apply_trigger(np.zeros((1, 4)))
    with pytest.raises(ConfigError, match="attack.params.trigger_size = 5"):
        Backdoor(trigger_size=5, trigger_value=1.0).apply_trigger(np.zeros((1, 4)))
    with pytest.raises(ConfigError, match="attack.params.trigger_size = 5"):
        Backdoor(trigger_size=5, trigger_value=1.0).apply_trigger(np.zeros((1, 1, 4, 9)))


def test_poisoning_needs_class_labels_and_a_known_target():
    with pytest.raises(ConfigError, match="attack.params.target = 4: the data has 4 classes"):
        Backdoor(target=4, trigger_value=1.0).poison(pool(), np.array([0]), None)
    x = np.zeros((4, 2), dtype=np.float32)
    values = ClientPartition(x, np.zeros(4, dtype=np.float32), np.array([0, 2, 4]), None)
    for kind in ("label_flip", "backdoor"):
        with pytest.raises(ConfigError, match=f"attack.kind = '{kind}' needs class labels"):
            build_attack(kind, {}).poison(values, np.array([0]), np.random.default_rng(0))
