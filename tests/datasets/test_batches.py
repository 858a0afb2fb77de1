"""Preprocessing (normalize, flatten, one_hot) and the batch iterators, on every backend."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.datasets.batches import (
    BatchLoader,
    batches,
    epoch_order,
    flatten,
    normalize,
    one_hot,
)
from xpnn.errors import ConfigError, DataError, DTypeError, ShapeError

N = 23  # not a multiple of the batch sizes used below


def data(n=N, features=3):
    """x whose first column is the sample index, so batches reveal which samples they hold."""
    x = np.zeros((n, features), dtype=np.float32)
    x[:, 0] = np.arange(n)
    y = (np.arange(n) % 10).astype(np.uint8)
    return x, y


def order_of(batch_list):
    return np.concatenate([backends.to_numpy(xb)[:, 0] for xb, _ in batch_list]).astype(int)


# -- preprocessing ---------------------------------------------------------------------------


def test_normalize_scales_to_unit_interval():
    images = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    out = normalize(images)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_allclose(out, images.astype(np.float64) / 255.0, rtol=1e-7)
    assert normalize(images, dtype="float64").dtype == np.float64


def test_normalize_standardises_in_unit_scale():
    images = np.array([0, 255, 51], dtype=np.uint8)
    out = normalize(images, mean=0.1307, std=0.3081)
    expected = (np.array([0.0, 1.0, 0.2]) - 0.1307) / 0.3081
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32  # the float64 statistics did not upcast


def test_normalize_rejects_bad_input():
    with pytest.raises(DTypeError, match="raw integer pixels"):
        normalize(np.zeros(3, dtype=np.float32))
    with pytest.raises(DTypeError, match="floating dtype"):
        normalize(np.zeros(3, dtype=np.uint8), dtype="int32")
    with pytest.raises(ConfigError, match="std > 0"):
        normalize(np.zeros(3, dtype=np.uint8), std=0.0)


def test_flatten():
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    flat = flatten(images)
    assert flat.shape == (2, 784)
    np.testing.assert_array_equal(flat[1], images[1].ravel())
    with pytest.raises(ShapeError):
        flatten(np.float32(3.0))


def test_one_hot():
    out = one_hot(np.array([3, 0, 9], dtype=np.uint8), 10)
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [3, 0, 9])
    np.testing.assert_array_equal(out.sum(axis=1), [1.0, 1.0, 1.0])
    assert one_hot(np.array([1]), 2, dtype="float64").dtype == np.float64
    with pytest.raises(DataError, match="labels in 0..9"):
        one_hot(np.array([10]), 10)
    with pytest.raises(ShapeError, match="1-D array of integer labels"):
        one_hot(np.array([[1]]), 10)


# -- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [1, 5, 23, 100])
def test_every_sample_exactly_once(backend, shuffle, batch_size):
    x, y = data()
    got = list(batches(x, y, batch_size, shuffle=shuffle, seed=0))
    assert len(got) == -(-N // batch_size)
    order = order_of(got)
    assert sorted(order.tolist()) == list(range(N))
    if not shuffle:
        assert order.tolist() == list(range(N))
    for xb, yb in got:
        index = backends.to_numpy(xb)[:, 0].astype(int)
        np.testing.assert_array_equal(backends.to_numpy(yb), y[index])


def test_batches_live_on_the_current_backend(backend):
    x, y = data()
    xb, yb = next(iter(batches(x, y, 8, seed=1)))
    for array in (xb, yb):
        assert isinstance(array, backend.array_type)
        if backend.name != "numpy":
            assert array.device == backend.device
    assert xb.shape == (8, 3) and xb.dtype == backend.dtype("float32")
    assert yb.shape == (8,) and yb.dtype == backend.dtype("int64")


def test_float_targets_keep_their_dtype(backend):
    x, y = data()
    _, yb = next(iter(batches(x, one_hot(y, 10), 4, shuffle=False)))
    assert yb.dtype == backend.dtype("float32") and yb.shape == (4, 10)


def test_drop_last():
    x, y = data()
    got = list(batches(x, y, 5, seed=0, drop_last=True, backend="numpy"))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5]
    assert len(set(order_of(got).tolist())) == 20


def test_same_seed_same_order_other_epoch_or_seed_other_order():
    x, y = data()

    def order(**kwargs):
        return order_of(list(batches(x, y, 4, backend="numpy", **kwargs)))

    np.testing.assert_array_equal(order(seed=3, epoch=2), order(seed=3, epoch=2))
    assert not np.array_equal(order(seed=3, epoch=2), order(seed=3, epoch=3))
    assert not np.array_equal(order(seed=3, epoch=2), order(seed=4, epoch=2))
    np.testing.assert_array_equal(order(seed=3, epoch=2),
                                  np.random.default_rng([3, 2]).permutation(N))


def test_invalid_arguments():
    x, y = data()
    with pytest.raises(ShapeError, match="same number of samples"):
        list(batches(x, y[:-1], 4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            list(batches(x, y, bad))


# -- BatchLoader -------------------------------------------------------------------------------


def test_loader_len_and_coverage(backend):
    x, y = data()
    loader = BatchLoader(x, y, 4, seed=0)
    assert len(loader) == 6
    assert len(BatchLoader(x, y, 4, seed=0, drop_last=True)) == 5
    got = list(loader)
    assert len(got) == len(loader)
    assert sorted(order_of(got).tolist()) == list(range(N))
    assert isinstance(got[0][0], backend.array_type)


def test_loader_epochs_advance_and_resume_reproduces_them():
    x, y = data()
    first = BatchLoader(x, y, 4, seed=11, backend="numpy")
    epochs = [order_of(list(first)) for _ in range(3)]
    assert first.epoch == 3
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    resumed = BatchLoader(x, y, 4, seed=11, backend="numpy")
    resumed.set_epoch(2)
    np.testing.assert_array_equal(order_of(list(resumed)), epochs[2])
    for k, order in enumerate(epochs):
        np.testing.assert_array_equal(order, epoch_order(N, 11, k))
        np.testing.assert_array_equal(first.order(k), order)


def test_loader_without_shuffle_keeps_data_order():
    x, y = data()
    loader = BatchLoader(x, y, 10, shuffle=False, backend="numpy")
    assert order_of(list(loader)).tolist() == list(range(N))
    assert order_of(list(loader)).tolist() == list(range(N))


def test_loader_default_seed_comes_from_xpnn_seed(monkeypatch):
    import xpnn

    monkeypatch.setattr(backends.random, "_global", backends.random._global)  # restore after
    x, y = data()
    xpnn.seed(5)
    a = BatchLoader(x, y, 4, backend="numpy")
    xpnn.seed(5)
    b = BatchLoader(x, y, 4, backend="numpy")
    assert a.seed == b.seed
    np.testing.assert_array_equal(order_of(list(a)), order_of(list(b)))
    state = backends.random._global.bit_generator.state
    BatchLoader(x, y, 4, shuffle=False, backend="numpy")  # needs no seed: draws nothing
    assert backends.random._global.bit_generator.state == state


def test_loader_resolves_backend_at_iteration_time():
    if not backends.probe("array_api_strict")[0]:
        pytest.skip("array_api_strict is not installed")
    x, y = data()
    loader = BatchLoader(x, y, 4, seed=0)
    with backends.use("array_api_strict", device="device1") as strict:
        xb, _ = next(iter(loader))
        assert isinstance(xb, strict.array_type) and xb.device == strict.device
    with backends.use("numpy"):
        xb, _ = next(iter(loader))
        assert isinstance(xb, np.ndarray)


def test_set_epoch_rejects_negative():
    x, y = data()
    with pytest.raises(ConfigError):
        BatchLoader(x, y, 4, seed=0).set_epoch(-1)
