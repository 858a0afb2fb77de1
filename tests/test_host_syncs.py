"""Training and evaluation read nothing back to the host per batch (a GPU would wait at
every read): counted on array-api-strict's non-default device, where every way an array
reaches the host (``float()``, ``int()``, ``bool()``, ``to_numpy``) is wrapped by a counter.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from xpnn import backends
from xpnn.losses import softmax_cross_entropy
from xpnn.models import mnist_cnn, mnist_mlp
from xpnn.optim import SGD
from xpnn.training import evaluate, fit, train_step

strict = pytest.importorskip("array_api_strict")


@pytest.fixture
def reads(monkeypatch):
    """A counter of device-to-host reads of arrays on ``device1``."""
    if not backends.probe("array_api_strict")[0]:
        pytest.skip("array-api-strict cannot run here")
    from xpnn.backends import array_api_strict_backend as library

    cpu = strict.Device("CPU_DEVICE")
    counter = {"reads": 0}
    array = type(strict.asarray(0.0))

    def counted(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if self.device != cpu:
                counter["reads"] += 1
            return method(self, *args, **kwargs)
        return wrapper

    for name in ("__float__", "__int__", "__bool__", "__complex__", "__index__"):
        monkeypatch.setattr(array, name, counted(getattr(array, name)))
    monkeypatch.setattr(library, "to_numpy", counted(library.to_numpy))
    with backends.use("array_api_strict", device="device1"):
        yield counter


def data(n, shape):
    rng = np.random.default_rng(0)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("build, shape", [(mnist_mlp, (784,)), (mnist_cnn, (1, 28, 28))],
                         ids=["mlp", "cnn"])
def test_fit_reads_the_host_once_per_log_interval_whatever_the_batch_count(reads, build,
                                                                            shape):
    counts = {}
    for batches in (2, 6):
        model = build()
        x, y = data(16 * batches, shape)
        reads["reads"] = 0
        fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.01), epochs=1,
            batch_size=16, verbose=False, progress=False, log_every=1000)
        counts[batches] = reads["reads"]
    assert counts == {2: 1, 6: 1}  # the sums and the finite flag at the epoch's end

    model = build()
    x, y = data(16 * 6, shape)
    reads["reads"] = 0
    fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.01), epochs=1,
        batch_size=16, verbose=False, progress=False, log_every=2)
    assert reads["reads"] == 3  # after batches 2, 4 and 6


def test_a_training_step_reads_nothing(reads):
    model = mnist_cnn()
    optimizer = SGD(model.parameters(), lr=0.01)
    loss = functools.partial(softmax_cross_entropy, check_labels=False)
    x, y = data(8, (1, 28, 28))
    train_step(model, loss, optimizer, x, y)  # first step: the optimizer makes its state
    reads["reads"] = 0
    for _ in range(3):
        train_step(model, loss, optimizer, x, y)
    assert reads["reads"] == 0


def test_evaluate_reads_the_host_once_whatever_the_batch_count(reads):
    model = mnist_mlp()
    x, y = data(64, (784,))
    for batch_size in (64, 8):
        reads["reads"] = 0
        evaluate(model, x, y, batch_size=batch_size)
        assert reads["reads"] == 1, batch_size


def test_the_counter_sees_a_read(reads):
    """The counter is not blind: float() of a device1 array counts."""
    value = backends.current().asarray(np.ones(1, dtype=np.float32))
    float(value[0])
    backends.to_numpy(value)
    assert reads["reads"] == 2


def test_log_points_by_time_read_once_per_interval(reads):
    """The default log points come by time (log_seconds): 0 s reads after every batch, a
    long interval only at the epoch's end."""
    x, y = data(16 * 5, (784,))
    for seconds, expected in ((0.0, 5), (3600.0, 1)):
        model = mnist_mlp()
        reads["reads"] = 0
        fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.01), epochs=1,
            batch_size=16, verbose=False, progress=False, log_seconds=seconds)
        assert reads["reads"] == expected, seconds


def test_read_together_keeps_float64_precision_and_takes_host_numbers():
    from xpnn.training.metrics import read_together

    xp = backends.current().xp
    values = [xp.asarray(1.0, dtype=xp.float32), xp.asarray(1 + 1e-10, dtype=xp.float64),
              xp.asarray(2**25 + 1, dtype=xp.int64), xp.asarray(True), 0.5, np.float32(2.0)]
    assert read_together(values) == [1.0, 1 + 1e-10, 2**25 + 1, 1.0, 0.5, 2.0]
