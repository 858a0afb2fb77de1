import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.layers.conv import Conv2D
from xpnn.testing import assert_close, check_layer, conv2d_reference


def conv_reference(x, params, stride=(1, 1), padding=(0, 0)):
    """The definition (xpnn.testing.conv2d_reference) with the layer's parameters."""
    return conv2d_reference(x, params["weight"], params.get("bias"), stride, padding)


CONFIGS = {  # kernel_size, stride, padding, bias
    "3x3": (3, 1, 0, True),
    "3x3_pad1_nobias": (3, 1, 1, False),
    "3x3_stride2_pad1": (3, 2, 1, True),
    "1x1": (1, 1, 0, True),
    "1x1_stride2": (1, 2, 0, False),
    "2x3_mixed": ((2, 3), (2, 1), (1, 0), True),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_matches_reference_and_gradients(backend, name):
    kernel_size, stride, padding, bias = CONFIGS[name]
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))

    def make(dtype):
        return Conv2D(3, 4, kernel_size, stride, padding, bias=bias, dtype=dtype, seed=1)

    layer = make("float32")
    errors = check_layer(
        make, x,
        lambda x, p: conv_reference(x, p, layer.stride, layer.padding),
        backend=backend, rtol=1e-4, atol=1e-5,
    )
    assert set(errors) == {"input", "weight"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0), (1, 2)])
def test_conv2d_forward_and_backward_match_torch(backend, stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 6))
    layer = Conv2D(3, 5, 3, stride, padding, dtype="float64", seed=4)
    w, b = (torch.tensor(backends.to_numpy(p.value), requires_grad=True)
            for p in (layer.weight, layer.bias))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, w, b, stride=stride, padding=padding)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))

    y, backprop = layer.forward(backend.asarray(x), train=True)
    dx = backprop(backend.asarray(dy))
    assert_close(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(layer.weight.grad, w.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(layer.bias.grad, b.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)


def test_gradients_accumulate_over_two_backward_passes():
    layer = Conv2D(2, 3, 3, padding=1, dtype="float64", seed=0)
    x = np.random.default_rng(3).standard_normal((1, 2, 4, 4))
    _, backprop = layer.forward(x, train=True)
    dy = np.ones((1, 3, 4, 4))
    backprop(dy)
    once = layer.weight.grad.copy()
    backprop(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)


def test_attributes_and_default_init_follow_pytorch():
    layer = Conv2D(16, 8, 3, seed=0)
    assert layer.weight.shape == (8, 16, 3, 3) and layer.bias.shape == (8,)
    assert (layer.in_channels, layer.out_channels) == (16, 8)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (1, 1), (0, 0))
    bound = 1 / np.sqrt(16 * 3 * 3)  # fan_in = in_channels * kh * kw
    for parameter in (layer.weight, layer.bias):
        values = backends.to_numpy(parameter.value)
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.8 * bound


def test_same_seed_gives_same_weights_on_every_backend(backend):
    layer = Conv2D(3, 4, 3, seed=9)
    with backends.use("numpy"):
        reference = Conv2D(3, 4, 3, seed=9)
    assert_close(layer.weight.value, reference.weight.value, rtol=0, backend=backend)


def test_same_padding_keeps_the_spatial_size():
    layer = Conv2D(2, 3, (3, 5), padding="same", seed=0)
    assert layer.padding == (1, 2)
    assert layer(np.zeros((1, 2, 7, 9), dtype="float32")).shape == (1, 3, 7, 9)
    assert layer.config()["padding"] == "same"
    assert "padding=same" in repr(layer)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 3, "stride": 2}, {"kernel_size": 2}])
def test_same_padding_refuses_strides_and_even_kernels(kwargs):
    with pytest.raises(ConfigError, match="padding='same' only with stride 1 and odd"):
        Conv2D(2, 3, padding="same", **kwargs)


def test_config_rebuilds_the_layer_and_repr_reads_like_pytorch():
    layer = Conv2D(32, 64, 3, stride=2, padding=1, bias=False)
    assert repr(layer) == (
        "Conv2D(32, 64, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"
    )
    assert repr(Conv2D(3, 8, 1)) == "Conv2D(3, 8, kernel_size=(1, 1), stride=(1, 1))"
    rebuilt = Conv2D(**layer.config())
    assert rebuilt.config() == layer.config()
    assert rebuilt.weight.shape == layer.weight.shape and rebuilt.bias is None


@pytest.mark.parametrize("argument, value", [
    ("kernel_size", 0), ("kernel_size", (3, 0)), ("kernel_size", (1, 2, 3)),
    ("stride", 0), ("stride", 1.5), ("padding", -1), ("padding", "valid"),
])
def test_bad_hyperparameters_raise_config_error(argument, value):
    kwargs = {"kernel_size": 3, argument: value}
    with pytest.raises(ConfigError, match=argument):
        Conv2D(2, 3, **kwargs)


def test_wrong_rank_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"Conv2D expected a 4-D NCHW input\. "
                                         r"Received: x.shape=\(28, 28\)"):
        Conv2D(1, 4, 3)(np.zeros((28, 28), dtype="float32"))


def test_wrong_channel_count_names_both_counts():
    with pytest.raises(ShapeError, match=r"expected 3 input channels.*Received: 1 channels"):
        Conv2D(3, 4, 3)(np.zeros((2, 1, 8, 8), dtype="float32"))


def test_too_small_image_is_a_clear_shape_error(backend):
    with pytest.raises(ShapeError, match=r"at least 3x3 pixels.*2x5 after padding"):
        Conv2D(1, 4, 3)(backend.asarray(np.zeros((1, 1, 2, 5)), "float32"))


def test_wrong_dtype_is_refused():
    with pytest.raises(DTypeError, match=r"float32.*uint8.*astype"):
        Conv2D(1, 4, 3)(np.zeros((1, 1, 8, 8), dtype="uint8"))


def test_training_hands_the_kernels_saved_state_to_the_backward(backend, monkeypatch):
    """A training forward calls the backend's ``conv2d_train`` and hands what it saved to
    ``conv2d_backward``; an inference forward calls ``conv2d`` and hands None. The gradients
    are the same either way."""
    calls = []
    ops = backend.ops
    train_kernel, inference_kernel, backward = ops.conv2d_train, ops.conv2d, ops.conv2d_backward

    def spy_train(*args, **kwargs):
        y, saved = train_kernel(*args, **kwargs)
        calls.append(("train", saved))
        return y, saved

    def spy_inference(*args, **kwargs):
        calls.append(("inference", None))
        return inference_kernel(*args, **kwargs)

    def spy_backward(*args, **kwargs):
        calls.append(("backward", args[-1]))
        return backward(*args, **kwargs)

    monkeypatch.setattr(ops, "conv2d_train", spy_train)
    monkeypatch.setattr(ops, "conv2d", spy_inference)
    monkeypatch.setattr(ops, "conv2d_backward", spy_backward)
    rng = np.random.default_rng(11)
    x, dy = rng.standard_normal((3, 2, 7, 6)), rng.standard_normal((3, 4, 4, 3))
    grads = {}
    for train in (True, False):
        layer = Conv2D(2, 4, 3, stride=2, padding=1, dtype="float64", seed=5)
        _, backprop = layer.forward(backend.asarray(x), train=train)
        dx = backprop(backend.asarray(dy))
        grads[train] = [backends.to_numpy(a) for a in (dx, layer.weight.grad, layer.bias.grad)]
    for kept, recomputed in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(kept, recomputed, rtol=1e-12, atol=1e-12)
    (train_kind, saved), (_, handed), (inference_kind, _), (_, none) = calls
    assert (train_kind, inference_kind) == ("train", "inference")
    assert handed is saved and none is None


# -- dilation and groups ------------------------------------------------------------------

GEOMETRIES = {  # in, out, kernel_size, stride, padding, dilation, groups, bias
    "dilation2_pad2": (4, 6, 3, 1, 2, 2, 1, True),
    "dilation1x2_stride2": (4, 6, 3, 2, (1, 2), (1, 2), 1, False),
    "groups2": (4, 6, 3, 1, 1, 1, 2, True),
    "depthwise_multiplier2": (4, 8, 3, 1, 1, 1, 4, True),
    "groups2_stride2_dilation2": (4, 6, (3, 2), 2, (2, 1), 2, 2, False),
    "groups2_1x1": (4, 6, 1, 1, 0, 1, 2, True),
}


def make_geometry(name, dtype="float32", seed=1):
    c, o, kernel_size, stride, padding, dilation, groups, bias = GEOMETRIES[name]
    return Conv2D(c, o, kernel_size, stride, padding, bias=bias, dilation=dilation,
                  groups=groups, dtype=dtype, seed=seed)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dilated_and_grouped_conv2d_match_reference_and_gradients(backend, name):
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 8))
    layer = make_geometry(name)

    def reference(x, p):
        return conv2d_reference(x, p["weight"], p.get("bias"), layer.stride, layer.padding,
                                layer.dilation, layer.groups)

    errors = check_layer(lambda dtype: make_geometry(name, dtype), x, reference,
                         backend=backend, rtol=1e-4, atol=1e-5)
    assert set(errors) == {"input", "weight"} | ({"bias"} if layer.bias else set())


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dilated_and_grouped_conv2d_match_torch_forward_and_backward(backend, name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 9, 8))
    layer = make_geometry(name, "float64", seed=4)
    w = torch.tensor(backends.to_numpy(layer.weight.value), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, w, stride=layer.stride, padding=layer.padding,
                                    dilation=layer.dilation, groups=layer.groups)
    if layer.bias is not None:
        yt = yt + torch.tensor(backends.to_numpy(layer.bias.value))[None, :, None, None]
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))

    for train in (True, False):
        layer.zero_grad()
        y, backprop = layer.forward(backend.asarray(x), train=train)
        dx = backprop(backend.asarray(dy))
        assert_close(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12, backend=backend)
        assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
        assert_close(layer.weight.grad, w.grad.numpy(), rtol=1e-10, atol=1e-12,
                     backend=backend)


def test_grouped_weight_shape_and_init_follow_pytorch():
    layer = Conv2D(8, 16, 3, groups=4, seed=0)
    assert layer.weight.shape == (16, 2, 3, 3)
    bound = 1 / np.sqrt(2 * 3 * 3)  # fan_in = in_channels / groups * kh * kw
    values = backends.to_numpy(layer.weight.value)
    assert 0.8 * bound < np.abs(values).max() <= bound
    assert Conv2D(8, 8, 3, groups=8, seed=0).weight.shape == (8, 1, 3, 3)  # depthwise


def test_dilation_and_groups_in_config_and_repr(tmp_path):
    import xpnn.io

    layer = Conv2D(4, 8, 3, padding=2, dilation=2, groups=4, bias=False, seed=0)
    assert layer.dilation == (2, 2) and layer.groups == 4
    assert repr(layer) == ("Conv2D(4, 8, kernel_size=(3, 3), stride=(1, 1), padding=(2, 2), "
                           "dilation=(2, 2), groups=4, bias=False)")
    config = layer.config()
    assert (config["dilation"], config["groups"]) == ((2, 2), 4)
    assert Conv2D(**config).config() == config
    plain = Conv2D(4, 8, 3).config()  # plain records stay as they were
    assert "dilation" not in plain and "groups" not in plain
    rebuilt = Conv2D(**plain)  # a record without them: dilation 1, one group
    assert (rebuilt.dilation, rebuilt.groups) == ((1, 1), 1)
    path = tmp_path / "conv.safetensors"
    xpnn.io.save(layer, path)
    loaded = xpnn.io.load_model(path)
    x = np.random.default_rng(0).standard_normal((1, 4, 7, 7)).astype("float32")
    np.testing.assert_array_equal(backends.to_numpy(loaded(x)), backends.to_numpy(layer(x)))
    assert (loaded.dilation, loaded.groups) == ((2, 2), 4)


def test_same_padding_with_dilation_keeps_the_spatial_size():
    layer = Conv2D(2, 4, (3, 5), padding="same", dilation=(2, 3), groups=2, seed=0)
    assert layer.padding == (2, 6)
    assert layer(np.zeros((1, 2, 9, 14), dtype="float32")).shape == (1, 4, 9, 14)


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 3}, r"Conv2D expected groups to divide in_channels=4\. Received: groups=3"),
    ({"groups": 4, "out": 6}, r"expected groups to divide out_channels=6\. Received: groups=4"),
    ({"groups": 0}, r"groups"),
    ({"groups": 2.0}, r"groups"),
    ({"dilation": 0}, r"dilation"),
    ({"dilation": (2, -1)}, r"dilation"),
    ({"dilation": 2, "padding": 5}, r"at most dilation \* \(kernel_size - 1\).*dilation=\(2, 2\)"),
])
def test_bad_dilation_and_groups_raise_config_error(kwargs, message):
    kwargs = dict(kwargs)
    out = kwargs.pop("out", 8)
    with pytest.raises(ConfigError, match=message):
        Conv2D(4, out, 3, **kwargs)


def test_dilation_allows_padding_up_to_the_dilated_kernel():
    assert Conv2D(1, 1, 3, padding=4, dilation=2).padding == (4, 4)


def test_input_smaller_than_the_dilated_kernel_is_a_shape_error(backend):
    layer = Conv2D(1, 2, 3, dilation=3)  # reaches 7x7 pixels
    with pytest.raises(ShapeError, match=r"at least 7x7 pixels \(dilation \(3, 3\)\).*6x9"):
        layer(backend.asarray(np.zeros((1, 1, 6, 9)), "float32"))
