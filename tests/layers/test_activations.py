import numpy as np
import pytest

from xpnn.errors import ConfigError
from xpnn.layers import Flatten, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from xpnn.layers.activations import where_positive
from xpnn.testing import assert_close, check_layer


def softmax_reference(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


CASES = {
    "relu": (ReLU, lambda x, p: np.maximum(x, 0)),
    "leaky_relu": (lambda: LeakyReLU(0.1), lambda x, p: np.where(x > 0, x, 0.1 * x)),
    "sigmoid": (Sigmoid, lambda x, p: 1 / (1 + np.exp(-x))),
    "tanh": (Tanh, lambda x, p: np.tanh(x)),
    "softmax": (Softmax, lambda x, p: softmax_reference(x)),
    "softmax_axis1": (lambda: Softmax(axis=1), lambda x, p: softmax_reference(x, axis=1)),
    "flatten": (Flatten, lambda x, p: x.reshape(x.shape[0], -1)),
    "identity": (Identity, lambda x, p: x),
}


@pytest.mark.parametrize("name", CASES)
def test_activation_matches_reference_and_gradients(backend, name):
    make, reference = CASES[name]
    x = np.random.default_rng(2).standard_normal((3, 4, 5)) * 3
    check_layer(lambda dtype: make(), x, reference, backend=backend)


def test_sigmoid_and_softmax_do_not_overflow(backend):
    x = backend.asarray(np.array([[-1000.0, 0.0, 1000.0]]), dtype="float32")
    assert_close(Sigmoid()(x), [[0.0, 0.5, 1.0]], atol=1e-7)
    assert_close(Softmax()(x), [[0.0, 0.0, 1.0]], atol=1e-7)


def test_leaky_relu_refuses_non_numeric_slope():
    with pytest.raises(ConfigError, match="negative_slope"):
        LeakyReLU("0.1")


@pytest.mark.parametrize("make", [ReLU, LeakyReLU, Sigmoid, Tanh])
def test_nan_propagates_so_divergence_is_visible(backend, make):
    x = backend.asarray(np.array([[np.nan, 1.0, -1.0]]), dtype="float32")
    assert np.isnan(backend.to_numpy(make()(x))[0, 0])


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 1.0, -0.5, 2.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_where_positive_equals_where_bit_for_bit(backend, slope, dtype):
    rng = np.random.default_rng(5)
    values, signs = rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((4, 3, 5, 5))
    signs[0, 0, 0, :3] = [0.0, -0.0, 1e-30]  # zeros go to the scaled side
    got = where_positive(backend.asarray(values, dtype), backend.asarray(signs, dtype), slope,
                         backend.xp)
    values = values.astype(dtype)
    expected = np.where(signs.astype(dtype) > 0, values, values * np.asarray(slope, dtype))
    np.testing.assert_array_equal(backend.to_numpy(got), expected)
    assert got.dtype == backend.asarray(values, dtype).dtype


def test_where_positive_keeps_a_nan_gradient_visible():
    values = np.array([np.nan, np.inf, 1.0], dtype="float32")
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN: the point of the test
        got = where_positive(values, np.array([-1.0, -1.0, -1.0], dtype="float32"), 0.0, np)
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 0.0
