"""LayerNorm: a float64 reference, gradient checks on every backend, PyTorch's forward and
backward (input, weight and bias), configs, errors and saved models."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.io import load_model, model_from_config, save
from xpnn.io.records import minimum_values
from xpnn.layers import Dense, LayerNorm, ReLU, Sequential
from xpnn.testing import assert_close, check_layer

CASES = {  # input shape, normalized_shape, keyword arguments
    "features": ((4, 6), 6, {}),
    "last_two_axes": ((2, 3, 4, 5), (4, 5), {}),
    "tokens": ((2, 5, 8), [8], {"eps": 1e-3}),
    "whole_input": ((2, 3, 4), (2, 3, 4), {}),
    "no_affine": ((3, 5), 5, {"elementwise_affine": False}),
    "no_bias": ((3, 2, 5), (2, 5), {"bias": False}),
}


def layer_norm_reference(x, normalized_shape, eps, weight=None, bias=None):
    """LayerNorm from the definition, in float64."""
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def make(normalized_shape, kwargs, dtype, seed=0):
    """A LayerNorm whose weight and bias are random (not the ones and zeros they start as),
    so that the checks see every term of the backward."""
    layer = LayerNorm(normalized_shape, dtype=dtype, **kwargs)
    rng = np.random.default_rng(seed)
    layer.load_state_dict({name: rng.uniform(0.5, 1.5, p.shape).astype(dtype)
                           for name, p in layer.named_parameters()})
    return layer


@pytest.mark.parametrize("name", CASES)
def test_layer_norm_matches_reference_and_gradients(backend, name):
    shape, normalized_shape, kwargs = CASES[name]
    normalized = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(
        normalized_shape)
    # Not seed 0: gradcheck projects the output on standard_normal draws of seed 0, and an
    # input equal to the projection makes the gradient cancel to rounding noise.
    x = np.random.default_rng(5).standard_normal(shape)
    check_layer(
        lambda dtype: make(normalized_shape, kwargs, dtype), x,
        lambda x, p: layer_norm_reference(x, normalized, kwargs.get("eps", 1e-5),
                                          p.get("weight"), p.get("bias")),
        backend=backend, atol=1e-5,
    )


@pytest.mark.parametrize("name", CASES)
def test_layer_norm_matches_torch_forward_and_backward(backend, name):
    torch = pytest.importorskip("torch")
    shape, normalized_shape, kwargs = CASES[name]
    rng = np.random.default_rng(1)
    x = 3.0 + 2.0 * rng.standard_normal(shape)
    layer = make(normalized_shape, kwargs, "float64")
    reference = torch.nn.LayerNorm(normalized_shape, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name_, parameter in reference.named_parameters():
            parameter.copy_(torch.tensor(backends.to_numpy(layer.state_dict()[name_])))
    xt = torch.tensor(x, requires_grad=True)
    yt = reference(xt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))

    y, backprop = layer.forward(backend.asarray(x), train=True)
    assert_close(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(backprop(backend.asarray(dy)), xt.grad.numpy(), rtol=1e-9, atol=1e-12,
                 backend=backend)
    torch_grads = dict(reference.named_parameters())
    assert sorted(name for name, _ in layer.named_parameters()) == sorted(torch_grads)
    for name_, parameter in layer.named_parameters():
        assert_close(parameter.grad, torch_grads[name_].grad.numpy(), rtol=1e-10, atol=1e-12,
                     backend=backend)


def test_layer_norm_output_has_zero_mean_and_unit_variance_per_sample(backend):
    x = backend.asarray(5.0 + 3.0 * np.random.default_rng(2).standard_normal((4, 3, 8)),
                        "float64")
    y = backends.to_numpy(LayerNorm((3, 8), dtype="float64")(x))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(1, 2)), 1.0, rtol=1e-4)


def test_layer_norm_parameters_start_at_one_and_zero_and_follow_the_model_dtype():
    layer = LayerNorm((2, 3))
    state = {name: backends.to_numpy(value) for name, value in layer.state_dict().items()}
    assert sorted(state) == ["bias", "weight"]
    np.testing.assert_array_equal(state["weight"], np.ones((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(state["bias"], np.zeros((2, 3), dtype=np.float32))
    model = Sequential([Dense(3, 6), LayerNorm(6)], seed=0, dtype="float64")
    assert backends.dtype_name(model[1].weight.dtype) == "float64"
    assert LayerNorm(4, elementwise_affine=False).state_dict() == {}
    assert sorted(LayerNorm(4, bias=False).state_dict()) == ["weight"]


def test_layer_norm_config_repr_and_value_count():
    layer = LayerNorm((4, 5), eps=1e-6)
    assert repr(layer) == "LayerNorm((4, 5), eps=1e-06)"
    assert repr(LayerNorm(4, elementwise_affine=False)) == (
        "LayerNorm((4,), eps=1e-05, elementwise_affine=False)")
    assert repr(LayerNorm(4, bias=False)) == "LayerNorm((4,), eps=1e-05, bias=False)"
    config = layer.config()
    assert config == {"normalized_shape": [4, 5], "eps": 1e-6, "elementwise_affine": True,
                      "bias": True, "dtype": "float32"}
    assert LayerNorm(**config).config() == config
    assert minimum_values({"type": "LayerNorm", "config": config}) == 40
    no_bias = {"type": "LayerNorm", "config": LayerNorm(7, bias=False).config()}
    assert minimum_values(no_bias) == 7
    rebuilt = model_from_config(no_bias)
    assert isinstance(rebuilt, LayerNorm) and rebuilt.bias is None


@pytest.mark.parametrize("kwargs, match", [
    ({"normalized_shape": 0}, "normalized_shape"),
    ({"normalized_shape": ()}, "normalized_shape"),
    ({"normalized_shape": (4, -1)}, "normalized_shape"),
    ({"normalized_shape": 4.0}, "normalized_shape"),
    ({"normalized_shape": 4, "eps": 0.0}, "eps"),
    ({"normalized_shape": 4, "elementwise_affine": "yes"}, "elementwise_affine"),
    ({"normalized_shape": 4, "bias": None}, "bias"),
    ({"normalized_shape": 4, "dtype": "float16"}, "dtype"),
])
def test_bad_layer_norm_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=rf"LayerNorm expected {match}.*Received"):
        LayerNorm(**kwargs)


@pytest.mark.parametrize("shape", [(2, 4), (5,), (3, 5, 4)])
def test_layer_norm_refuses_an_input_of_another_trailing_shape(shape):
    with pytest.raises(ShapeError, match=r"last 2 axes have the shape \(4, 5\).*Received: "
                                         r"x.shape="):
        LayerNorm((4, 5))(np.zeros(shape, dtype="float32"))


def test_layer_norm_refuses_another_dtype():
    with pytest.raises(DTypeError, match="float32 input"):
        LayerNorm(4)(np.zeros((2, 4), dtype="float64"))
    with pytest.raises(DTypeError, match="floating-point"):
        LayerNorm(4, elementwise_affine=False)(np.zeros((2, 4), dtype="int32"))


def test_layer_norm_refuses_a_wrong_dy_before_touching_gradients():
    layer = LayerNorm(4)
    _, backprop = layer.forward(np.ones((2, 4), dtype="float32"), train=True)
    with pytest.raises(ShapeError, match=r"dy of shape \(2, 4\)"):
        backprop(np.ones((2, 5), dtype="float32"))
    assert layer.weight.grad is None and layer.bias.grad is None


def test_saved_model_with_layer_norm_round_trips(backend, tmp_path):
    model = Sequential([Dense(6, 8), LayerNorm(8, eps=1e-4), ReLU(),
                        LayerNorm(8, bias=False), Dense(8, 3)], seed=0)
    model[1].load_state_dict({"weight": np.linspace(0.5, 1.5, 8, dtype=np.float32),
                              "bias": np.linspace(-1, 1, 8, dtype=np.float32)})
    path = tmp_path / "layernorm.safetensors"
    save(model, path)
    copy = load_model(path)
    assert repr(copy) == repr(model)
    assert sorted(copy.state_dict()) == sorted(model.state_dict())
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    assert_close(copy(x), model(x), rtol=0, backend=backend)
