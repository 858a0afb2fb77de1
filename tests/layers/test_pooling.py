import numpy as np
import pytest

from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.layers.pooling import GlobalAvgPool, MaxPool2D
from xpnn.testing import assert_close, check_layer
from xpnn.testing import max_pool2d_reference as max_pool_reference

POOLS = {  # kernel_size, stride, padding
    "2x2": (2, None, 0),
    "3x3_stride2_pad1": (3, 2, 1),
    "overlapping": (2, 1, 0),
    "2x3_mixed": ((2, 3), (1, 2), (1, 1)),
}


@pytest.mark.parametrize("name", POOLS)
def test_max_pool_matches_reference_and_gradients(backend, name):
    kernel_size, stride, padding = POOLS[name]
    layer = MaxPool2D(kernel_size, stride, padding)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    check_layer(
        lambda dtype: MaxPool2D(kernel_size, stride, padding), x,
        lambda x, p: max_pool_reference(x, layer.kernel_size, layer.stride, layer.padding),
        backend=backend,
    )


@pytest.mark.parametrize("name", POOLS)
def test_max_pool_matches_torch_forward_and_backward_with_ties(backend, name):
    torch = pytest.importorskip("torch")
    kernel_size, stride, padding = POOLS[name]
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(2, 3, 6, 7)).astype(np.float64)  # many ties
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, kernel_size, stride, padding)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    y, backprop = MaxPool2D(kernel_size, stride, padding).forward(backend.asarray(x), train=True)
    assert_close(y, yt.detach().numpy(), rtol=0, backend=backend)
    assert_close(backprop(backend.asarray(dy)), xt.grad.numpy(), rtol=1e-12, backend=backend)


def test_global_avg_pool_matches_reference_and_gradients(backend):
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    check_layer(lambda dtype: GlobalAvgPool(), x, lambda x, p: x.mean(axis=(2, 3)), backend=backend)


def test_global_avg_pool_backward_spreads_evenly(backend):
    x = backend.asarray(np.zeros((1, 2, 2, 2)), "float64")
    _, backprop = GlobalAvgPool().forward(x, train=True)
    dx = backprop(backend.asarray(np.array([[4.0, 8.0]]), "float64"))
    assert_close(dx, np.array([1.0, 2.0])[None, :, None, None] * np.ones((1, 2, 2, 2)),
                 backend=backend)


def test_max_pool_default_stride_config_and_repr():
    layer = MaxPool2D(2)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((2, 2), (2, 2), (0, 0))
    assert repr(layer) == "MaxPool2D(kernel_size=2, stride=2, padding=0)"
    assert MaxPool2D(**MaxPool2D(3, 2, 1).config()).config() == {
        "kernel_size": 3, "stride": 2, "padding": 1}


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_size": 0}, "kernel_size"),
    ({"kernel_size": 2, "stride": 0}, "stride"),
    ({"kernel_size": 2, "padding": 2}, "at most half the kernel size"),
])
def test_bad_pool_hyperparameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MaxPool2D(**kwargs)


@pytest.mark.parametrize("layer", [MaxPool2D(2), GlobalAvgPool()], ids=repr)
def test_pools_refuse_non_nchw_input(layer):
    with pytest.raises(ShapeError, match=r"expected a 4-D NCHW input\. Received: x.shape=\(4, 4\)"):
        layer(np.zeros((4, 4), dtype="float32"))


@pytest.mark.parametrize("layer", [MaxPool2D(2), GlobalAvgPool()], ids=repr)
def test_pools_refuse_integer_input(layer):
    with pytest.raises(DTypeError, match=r"floating-point.*uint8"):
        layer(np.zeros((1, 1, 4, 4), dtype="uint8"))


def test_max_pool_refuses_too_small_images():
    with pytest.raises(ShapeError, match=r"at least 3x3 pixels.*\(1, 1, 2, 8\)"):
        MaxPool2D(3)(np.zeros((1, 1, 2, 8), dtype="float32"))
