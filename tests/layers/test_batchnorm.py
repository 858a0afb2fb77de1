import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.gradcheck import gradcheck
from xpnn.layers.batchnorm import BatchNorm
from xpnn.testing import assert_close

SHAPES = [(4, 3, 5, 6), (7, 3)]


def axes_of(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def reference_train(x, gamma, beta, eps):
    axes = axes_of(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return channel(gamma, x.ndim) * (x - mean) / np.sqrt(var + eps) + channel(beta, x.ndim)


def reference_eval(x, gamma, beta, mean, var, eps):
    n = x.ndim
    return channel(gamma, n) * (x - channel(mean, n)) / np.sqrt(channel(var, n) + eps) + (
        channel(beta, n)
    )


def make_bn(dtype, seed=0, c=3):
    """A BatchNorm with non-trivial γ, β and running statistics (same on every backend)."""
    bn = BatchNorm(c, eps=1e-3, momentum=0.2, dtype=dtype)
    rng = np.random.default_rng(seed)
    state = {
        "weight": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c),
        "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2.0, c),
    }
    bn.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
    return bn, state


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_running_stats_match_reference(backend, shape):
    x = np.random.default_rng(1).standard_normal(shape) * 2.0 + 0.5
    bn, s = make_bn("float32")
    y, _ = bn.forward(backend.asarray(x, dtype="float32"), train=True)
    assert_close(y, reference_train(x, s["weight"], s["bias"], 1e-3), rtol=1e-4, atol=1e-5,
                 backend=backend)
    axes = axes_of(x)
    m = x.size // x.shape[1]
    batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes) * m / (m - 1)
    assert_close(bn.running_mean.value, 0.8 * s["running_mean"] + 0.2 * batch_mean,
                 rtol=1e-5, atol=1e-6, backend=backend)
    assert_close(bn.running_var.value, 0.8 * s["running_var"] + 0.2 * batch_var,
                 rtol=1e-5, atol=1e-6, backend=backend)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_uses_running_stats_and_changes_nothing(backend, shape):
    x = np.random.default_rng(2).standard_normal(shape)
    bn, s = make_bn("float32")
    before = backends.to_numpy(bn.running_mean.value).copy()
    y = bn(backend.asarray(x, dtype="float32"))
    expected = reference_eval(x, s["weight"], s["bias"], s["running_mean"], s["running_var"],
                              1e-3)
    assert_close(y, expected, rtol=1e-4, atol=1e-5, backend=backend)
    np.testing.assert_array_equal(backends.to_numpy(bn.running_mean.value), before)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(backend, shape, train):
    x = np.random.default_rng(3).standard_normal(shape)
    bn, _ = make_bn("float64")
    errors = gradcheck(bn, x, train=train, eps=1e-5)
    assert set(errors) == {"input", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors


def test_default_state_is_pytorch_initialisation(backend):
    bn = BatchNorm(4)
    state = {k: backends.to_numpy(v) for k, v in bn.state_dict().items()}
    assert list(state) == ["weight", "bias", "running_mean", "running_var"]
    np.testing.assert_array_equal(state["weight"], np.ones(4, dtype="float32"))
    np.testing.assert_array_equal(state["bias"], np.zeros(4, dtype="float32"))
    np.testing.assert_array_equal(state["running_mean"], np.zeros(4, dtype="float32"))
    np.testing.assert_array_equal(state["running_var"], np.ones(4, dtype="float32"))
    assert bn.num_parameters() == 8
    assert_close(bn.weight.value, np.ones(4), backend=backend)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_matches_torch_batch_norm(shape, train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    bn, s = make_bn("float64")
    y, backprop = bn.forward(x, train=train)
    dx = backprop(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(s["weight"], requires_grad=True)
    bt = torch.tensor(s["bias"], requires_grad=True)
    rm, rv = torch.tensor(s["running_mean"]), torch.tensor(s["running_var"])
    yt = torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training=train, momentum=0.2,
                                        eps=1e-3)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.weight.grad, wt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.bias.grad, bt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.running_mean.value, rm.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var.value, rv.numpy(), rtol=1e-12, atol=1e-14)


def test_float32_output_stays_float32_and_on_device(backend):
    bn = BatchNorm(3)
    for train in (True, False):
        y, backprop = bn.forward(np.ones((2, 3, 2, 2), dtype="float32"), train=train)
        assert backends.dtype_name(y.dtype) == "float32"
        assert_close(y, y, backend=backend)
        dx = backprop(y)
        assert backends.dtype_name(dx.dtype) == "float32"
    assert backends.dtype_name(bn.running_var.value.dtype) == "float32"


def test_wrong_channel_count_names_shapes():
    bn = BatchNorm(16)
    with pytest.raises(ShapeError, match=r"BatchNorm\(16.*\(N, 16, H, W\).*\(2, 8, 4, 4\)"):
        bn(np.zeros((2, 8, 4, 4), dtype="float32"))
    with pytest.raises(ShapeError, match="x.shape=\\(2, 16, 4\\)"):
        bn(np.zeros((2, 16, 4), dtype="float32"))


def test_single_value_per_channel_in_training_is_refused():
    bn = BatchNorm(3)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        bn.forward(np.zeros((1, 3), dtype="float32"), train=True)
    bn(np.zeros((1, 3), dtype="float32"))  # inference with one sample is fine


def test_dtype_mismatch_is_refused():
    with pytest.raises(DTypeError, match="float64"):
        BatchNorm(3)(np.zeros((2, 3)))


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": -1e-5}, {"momentum": 1.5},
                                    {"momentum": "0.1"}, {"num_features": 0}])
def test_bad_hyperparameters_raise_config_error(kwargs):
    args = {"num_features": 3, **kwargs}
    with pytest.raises(ConfigError):
        BatchNorm(**args)
