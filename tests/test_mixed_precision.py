"""Mixed precision (xpnn.mixed_precision): half-precision steps, float32 masters, loss
scaling, and fit / checkpoints with ``precision=``."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError
from xpnn.layers import BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool, ReLU, Sequential
from xpnn.losses import softmax_cross_entropy
from xpnn.mixed_precision import LossScaler, MixedPrecision
from xpnn.models import mnist_cnn
from xpnn.optim import SGD
from xpnn.training import fit, train_step


def cnn():
    return Sequential([Conv2D(1, 4, 3, padding=1, seed=0), BatchNorm(4), ReLU(),
                       GlobalAvgPool(), Flatten(), Dense(4, 3, seed=1)])


def batch(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, n)


def host(array):
    return np.asarray(backends.to_numpy(array), dtype=np.float64)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_step_computes_in_half_precision_and_keeps_float32_masters(backend, policy):
    half = policy.split("_")[1]
    if not hasattr(backend.xp, half):
        pytest.skip(f"{backend.name} has no {half}")
    x, y = batch()
    with backends.use(backend):
        model = cnn()
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        reference = cnn()
        reference_optimizer = SGD(reference.parameters(), lr=0.1, momentum=0.9)
    mixed = MixedPrecision(policy)
    for _ in range(3):
        loss, logits = train_step(model, softmax_cross_entropy, optimizer, x, y,
                                  precision=mixed)
        train_step(reference, softmax_cross_entropy, reference_optimizer, x, y)
    assert backends.dtype_name(logits.dtype) == half
    assert backends.dtype_name(loss.dtype) == "float32"
    for name, value in model.state_dict().items():  # parameters and statistics float32
        assert backends.dtype_name(value.dtype) == "float32", name
        assert backend.owns(value)
        tolerance = 2e-2 if half == "bfloat16" else 3e-3
        np.testing.assert_allclose(host(value), host(reference.state_dict()[name]),
                                   rtol=tolerance, atol=tolerance, err_msg=name)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_an_overflowing_step_is_skipped_and_the_scale_backs_off():
    x, y = batch()
    model = cnn()
    optimizer = SGD(model.parameters(), lr=0.1)
    mixed = MixedPrecision("mixed_float16", LossScaler(initial_scale=1e30))
    before = {name: host(value) for name, value in model.state_dict().items()}
    train_step(model, softmax_cross_entropy, optimizer, x, y, precision=mixed)
    assert mixed.scaler.skipped == 1 and mixed.scaler.scale == 5e29
    for name, parameter in model.named_parameters():
        np.testing.assert_array_equal(host(parameter.value), before[name])  # not updated
        assert parameter.grad is None
    mixed.scaler.scale = 1024.0
    train_step(model, softmax_cross_entropy, optimizer, x, y, precision=mixed)
    assert mixed.scaler.skipped == 1 and mixed.scaler.good_steps == 1
    changed = [name for name, p in model.named_parameters()
               if not np.array_equal(host(p.value), before[name])]
    assert changed  # this step was taken


def test_the_scale_grows_after_a_run_of_good_steps():
    scaler = LossScaler(initial_scale=4.0, growth_interval=3)
    for _ in range(3):
        scaler.update(True)
    assert scaler.scale == 8.0 and scaler.good_steps == 0
    scaler.update(False)
    assert scaler.scale == 4.0 and scaler.skipped == 1


def test_half_precision_inputs_are_still_refused_outside_a_mixed_step():
    with pytest.raises(DTypeError, match="float16"):
        ReLU()(np.ones(3, dtype=np.float16))


def test_fit_in_mixed_float16_learns_like_float32_and_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1, 6, 6)).astype(np.float32)
    y = (x.reshape(256, -1).sum(axis=1) > 0).astype(np.int64)  # a learnable rule
    options = dict(batch_size=32, verbose=False, progress=False)
    results = {}
    for precision in ("float32", "mixed_float16"):
        model = cnn()
        history = fit(model, (x, y), (x, y), optimizer=SGD(model.parameters(), lr=0.1,
                                                           momentum=0.9),
                      epochs=6, precision=precision, **options)
        results[precision] = history.last["test_accuracy"]
    assert results["mixed_float16"] >= results["float32"] - 0.03, results
    assert results["float32"] > 0.8, results

    straight = cnn()
    fit(straight, (x, y), optimizer=SGD(straight.parameters(), lr=0.1), epochs=2,
        precision="mixed_float16", **options)
    first = cnn()
    fit(first, (x, y), optimizer=SGD(first.parameters(), lr=0.1), epochs=1,
        precision="mixed_float16", checkpoint=tmp_path / "m.safetensors", **options)
    resumed = cnn()
    mixed = MixedPrecision("mixed_float16")
    fit(resumed, (x, y), optimizer=SGD(resumed.parameters(), lr=0.1), epochs=2,
        precision=mixed, resume=tmp_path / "m.safetensors", **options)
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(host(resumed.state_dict()[name]), host(value))
    with pytest.raises(ConfigError, match="precision of the checkpointed run"):
        other = cnn()
        fit(other, (x, y), optimizer=SGD(other.parameters(), lr=0.1), epochs=2,
            resume=tmp_path / "m.safetensors", **options)


def test_an_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="mixed_float16"):
        MixedPrecision("float8")


def test_the_mnist_cnn_runs_a_mixed_step():
    model = mnist_cnn(seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)
    loss, logits = train_step(model, softmax_cross_entropy, SGD(model.parameters(), lr=0.05),
                              x, y, precision=MixedPrecision("mixed_float16"))
    assert np.isfinite(float(loss)) and backends.dtype_name(logits.dtype) == "float16"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_inference_in_half_precision_stays_close_to_float32(backend, policy):
    half = policy.split("_")[1]
    if not hasattr(backend.xp, half):
        pytest.skip(f"{backend.name} has no {half}")
    x, _ = batch()
    with backends.use(backend):
        model = cnn()
        model.forward(backend.asarray(x), train=True)  # running statistics away from 0 and 1
    expected = host(model(x))
    out = MixedPrecision(policy).predict(model, x)
    assert backends.dtype_name(out.dtype) == half
    tolerance = 3e-2 if half == "bfloat16" else 3e-3
    np.testing.assert_allclose(host(out), expected, rtol=tolerance, atol=tolerance)
    assert backends.dtype_name(model.state_dict()["0.weight"].dtype) == "float32"
