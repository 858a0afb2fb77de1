import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.layers import Dense
from xpnn.testing import assert_close, check_layer


def dense_reference(x, params):
    return x @ params["weight"].T + params.get("bias", 0.0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 5])
def test_dense_matches_reference_and_gradients(backend, bias, batch):
    x = np.random.default_rng(0).standard_normal((batch, 7))
    check_layer(lambda dtype: Dense(7, 4, bias=bias, dtype=dtype, seed=3), x, dense_reference,
                backend=backend)


def test_dense_accepts_extra_leading_axes(backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 7))
    check_layer(lambda dtype: Dense(7, 4, dtype=dtype, seed=3), x, dense_reference,
                backend=backend)


def test_dense_default_init_is_pytorch_uniform_bound():
    layer = Dense(400, 30, seed=0)
    weight = backends.to_numpy(layer.weight.value)
    bound = 1 / np.sqrt(400)
    assert weight.shape == (30, 400)
    assert np.abs(weight).max() <= bound
    assert np.abs(weight).max() > 0.9 * bound  # spread over the whole interval


def test_same_seed_gives_same_parameters_on_every_backend(backend):
    layer = Dense(5, 3, seed=11)
    with backends.use("numpy"):
        on_numpy = Dense(5, 3, seed=11)
    assert_close(layer.weight.value, on_numpy.weight.value, rtol=0, backend=backend)
    assert_close(layer.bias.value, on_numpy.bias.value, rtol=0, backend=backend)


def test_wrong_input_width_names_layer_and_shapes():
    layer = Dense(784, 128)
    with pytest.raises(ShapeError, match=r"Dense\(784, 128\).*\(batch, 784\).*\(32, 100\)"):
        layer(np.zeros((32, 100), dtype="float32"))


def test_integer_input_is_refused_with_a_fix():
    layer = Dense(4, 2)
    with pytest.raises(DTypeError, match=r"float32.*uint8.*astype"):
        layer(np.zeros((3, 4), dtype="uint8"))


def test_float64_input_to_float32_layer_is_refused_not_upcast():
    layer = Dense(4, 2)
    with pytest.raises(DTypeError, match="float64"):
        layer(np.zeros((3, 4)))


@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.5, 3), (True, 3)])
def test_bad_sizes_raise_config_error(args):
    with pytest.raises(ConfigError, match="positive integer"):
        Dense(*args)


def test_bad_dtype_raises_config_error():
    with pytest.raises(ConfigError, match="float32 or float64"):
        Dense(3, 2, dtype="int32")
