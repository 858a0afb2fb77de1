"""AvgPool2D and AdaptiveAvgPool2D: float64 references from the definitions, gradient checks
on every backend, PyTorch's forward and backward, configs, errors and saved models."""

import math

import numpy as np
import pytest

from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.io import load_model, save
from xpnn.layers import AdaptiveAvgPool2D, AvgPool2D, Conv2D, Flatten, ReLU, Sequential
from xpnn.testing import assert_close, check_layer

POOLS = {  # kernel_size, stride, padding, count_include_pad
    "2x2": (2, None, 0, True),
    "3x3_stride2_pad1": (3, 2, 1, True),
    "3x3_stride2_pad1_exclude_pad": (3, 2, 1, False),
    "overlapping": (2, 1, 0, True),
    "2x3_mixed": ((2, 3), (1, 2), (1, 1), True),
    "2x3_mixed_exclude_pad": ((2, 3), (1, 2), (1, 1), False),
    "3x2_stride_3x1_pad_1x0": ((3, 2), (3, 1), (1, 0), False),
}
ADAPTIVE = {  # input (H, W), output_size
    "7to3": ((7, 7), 3),
    "5to2": ((5, 5), 2),
    "bigger_2to5": ((2, 3), 5),
    "non_square_7x5_to_3x2": ((7, 5), (3, 2)),
    "mixed_up_and_down_4x6_to_6x4": ((4, 6), (6, 4)),
    "none_keeps_width": ((5, 6), (2, None)),
    "global_1x1": ((5, 4), 1),
    "identity": ((3, 4), (3, 4)),
}


def avg_pool_reference(x, kernel, stride, padding, count_include_pad):
    """Average pooling from the definition, in float64: the mean of each window of the
    zero-padded input, divided by the window size or by its number of real pixels."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    real = np.pad(np.ones(x.shape[2:]), ((ph, ph), (pw, pw)))
    x = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    y = np.empty(x.shape[:2] + (oh, ow))
    for a in range(oh):
        for b in range(ow):
            rows, cols = slice(a * sh, a * sh + kh), slice(b * sw, b * sw + kw)
            count = kh * kw if count_include_pad else real[rows, cols].sum()
            y[:, :, a, b] = x[:, :, rows, cols].sum(axis=(2, 3)) / count
    return y


def adaptive_reference(x, output_size):
    """Adaptive average pooling from PyTorch's bin definition, in float64."""
    h, w = x.shape[2:]
    oh, ow = output_size
    y = np.empty(x.shape[:2] + (oh, ow))
    for a in range(oh):
        r0, r1 = math.floor(a * h / oh), math.ceil((a + 1) * h / oh)
        for b in range(ow):
            c0, c1 = math.floor(b * w / ow), math.ceil((b + 1) * w / ow)
            y[:, :, a, b] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def _pair(value, default):
    value = default if value is None else value
    return (value, value) if isinstance(value, int) else tuple(value)


def _output_pair(output_size, hw):
    sizes = _pair(output_size, None)
    return tuple(given if size is None else size for size, given in zip(sizes, hw, strict=True))


# -- AvgPool2D --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POOLS)
def test_avg_pool_matches_reference_and_gradients(backend, name):
    kernel_size, stride, padding, include = POOLS[name]
    kernel = _pair(kernel_size, None)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    check_layer(
        lambda dtype: AvgPool2D(kernel_size, stride, padding, count_include_pad=include), x,
        lambda x, p: avg_pool_reference(x, kernel, _pair(stride, kernel), _pair(padding, 0),
                                        include),
        backend=backend,
    )


@pytest.mark.parametrize("shape", [(2, 3, 6, 7), (1, 2, 9, 4), (3, 1, 5, 5)])
@pytest.mark.parametrize("name", POOLS)
def test_avg_pool_matches_torch_forward_and_backward(backend, name, shape):
    torch = pytest.importorskip("torch")
    kernel_size, stride, padding, include = POOLS[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, kernel_size, stride, padding,
                                        count_include_pad=include)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    layer = AvgPool2D(kernel_size, stride, padding, count_include_pad=include)
    y, backprop = layer.forward(backend.asarray(x), train=True)
    assert_close(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15, backend=backend)
    assert_close(backprop(backend.asarray(dy)), xt.grad.numpy(), rtol=1e-12, atol=1e-15,
                 backend=backend)


def test_avg_pool_matches_torch_module_with_positional_arguments():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    expected = torch.nn.AvgPool2d(3, 2, 1, False, False)(torch.from_numpy(x)).numpy()
    assert_close(AvgPool2D(3, 2, 1, False, False)(x), expected, rtol=1e-12)


def test_avg_pool_backward_spreads_each_gradient_over_its_window(backend):
    x = backend.asarray(np.zeros((1, 1, 4, 4)), "float64")
    _, backprop = AvgPool2D(2).forward(x, train=True)
    dx = backprop(backend.asarray(np.array([[[[4.0, 8.0], [12.0, 16.0]]]]), "float64"))
    expected = np.kron(np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2)))[None, None]
    assert_close(dx, expected, backend=backend)


def test_avg_pool_need_input_grad_false_returns_none(backend):
    x = backend.asarray(np.ones((1, 1, 4, 4)), "float32")
    y, backprop = AvgPool2D(2).forward(x, train=True)
    assert backprop(backend.asarray(np.ones(tuple(y.shape)), "float32"),
                    need_input_grad=False) is None


def test_avg_pool_default_stride_config_and_repr():
    layer = AvgPool2D(2)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((2, 2), (2, 2), (0, 0))
    assert layer.count_include_pad is True
    assert repr(layer) == "AvgPool2D(kernel_size=2, stride=2, padding=0)"
    assert repr(AvgPool2D(3, 2, 1, count_include_pad=False)) == (
        "AvgPool2D(kernel_size=3, stride=2, padding=1, count_include_pad=False)")
    config = AvgPool2D(3, 2, 1, count_include_pad=False).config()
    assert config == {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}
    assert AvgPool2D(**config).config() == config


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_size": 0}, "kernel_size"),
    ({"kernel_size": 2, "stride": 0}, "stride"),
    ({"kernel_size": 2, "padding": -1}, "padding"),
    ({"kernel_size": 2, "padding": 2}, "at most half the kernel size"),
    ({"kernel_size": 2, "ceil_mode": True}, r"only ceil_mode=False.*Received: ceil_mode=True"),
    ({"kernel_size": 2, "count_include_pad": 1}, r"count_include_pad to be True or False"),
])
def test_bad_avg_pool_hyperparameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AvgPool2D(**kwargs)


def test_avg_pool_refuses_too_small_images():
    with pytest.raises(ShapeError, match=r"at least 3x3 pixels.*Received: x.shape=\(1, 1, 2, 8\)"):
        AvgPool2D(3)(np.zeros((1, 1, 2, 8), dtype="float32"))


# -- AdaptiveAvgPool2D ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_avg_pool_matches_reference_and_gradients(backend, name):
    hw, output_size = ADAPTIVE[name]
    x = np.random.default_rng(3).standard_normal((2, 3, *hw))
    check_layer(
        lambda dtype: AdaptiveAvgPool2D(output_size), x,
        lambda x, p: adaptive_reference(x, _output_pair(output_size, hw)),
        backend=backend,
    )


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_avg_pool_matches_torch_forward_and_backward(backend, name):
    torch = pytest.importorskip("torch")
    hw, output_size = ADAPTIVE[name]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, *hw))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.AdaptiveAvgPool2d(output_size)(xt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    y, backprop = AdaptiveAvgPool2D(output_size).forward(backend.asarray(x), train=True)
    assert_close(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15, backend=backend)
    assert_close(backprop(backend.asarray(dy)), xt.grad.numpy(), rtol=1e-12, atol=1e-15,
                 backend=backend)


def test_adaptive_avg_pool_config_and_repr():
    assert repr(AdaptiveAvgPool2D(3)) == "AdaptiveAvgPool2D(output_size=3)"
    assert repr(AdaptiveAvgPool2D([3, None])) == "AdaptiveAvgPool2D(output_size=(3, None))"
    assert AdaptiveAvgPool2D(3).config() == {"output_size": 3}
    assert AdaptiveAvgPool2D((3, 2)).config() == {"output_size": [3, 2]}
    assert AdaptiveAvgPool2D(**AdaptiveAvgPool2D((None, 2)).config()).output_size == (None, 2)


@pytest.mark.parametrize("output_size", [0, (2,), (2, 0), (2, 3, 4), "2", 2.0, True, (None, -1)])
def test_bad_adaptive_output_size_raises_config_error(output_size):
    with pytest.raises(ConfigError, match=r"AdaptiveAvgPool2D expected output_size .* Received"):
        AdaptiveAvgPool2D(output_size)


def test_adaptive_avg_pool_refuses_empty_images():
    with pytest.raises(ShapeError, match=r"at least one pixel.*\(1, 1, 0, 4\)"):
        AdaptiveAvgPool2D(2)(np.zeros((1, 1, 0, 4), dtype="float32"))


# -- both -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [AvgPool2D(2), AdaptiveAvgPool2D(2)], ids=repr)
def test_avg_pools_refuse_non_nchw_input(layer):
    with pytest.raises(ShapeError, match=r"expected a 4-D NCHW input\. Received: x.shape=\(4, 4\)"):
        layer(np.zeros((4, 4), dtype="float32"))


@pytest.mark.parametrize("layer", [AvgPool2D(2), AdaptiveAvgPool2D(2)], ids=repr)
def test_avg_pools_refuse_integer_input(layer):
    with pytest.raises(DTypeError, match=r"floating-point.*uint8"):
        layer(np.zeros((1, 1, 4, 4), dtype="uint8"))


@pytest.mark.parametrize("layer", [AvgPool2D(2), AdaptiveAvgPool2D(2)], ids=repr)
def test_avg_pools_refuse_a_wrong_dy(layer):
    _, backprop = layer.forward(np.zeros((1, 1, 4, 4), dtype="float32"), train=True)
    with pytest.raises(ShapeError, match=r"dy of shape \(1, 1, 2, 2\).*Received: dy.shape"):
        backprop(np.zeros((1, 1, 4, 4), dtype="float32"))


def test_saved_model_with_avg_pools_round_trips(backend, tmp_path):
    model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(),
                        AvgPool2D(3, 2, 1, count_include_pad=False),
                        AdaptiveAvgPool2D((2, None)), Flatten()], seed=0)
    path = tmp_path / "pools.safetensors"
    save(model, path)
    copy = load_model(path)
    assert repr(copy) == repr(model)
    x = np.random.default_rng(5).standard_normal((2, 1, 7, 6)).astype(np.float32)
    assert_close(copy(x), model(x), rtol=0, backend=backend)
