"""``backprop(dy, need_input_grad=False)``: parameter gradients are exactly those of the full
backward pass, the input gradient is skipped (None), on every backend; and the inference
paths that keep no closures (``Sequential(...)(x)``, ``Residual(...)(x)``) equal forward."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.layers import (
    BatchNorm,
    Conv2D,
    ConvBNAct,
    Dense,
    Flatten,
    GlobalAvgPool,
    Identity,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from xpnn.module import Module
from xpnn.testing import assert_close, check_backprop_contract, check_layer


def _grads(model):
    return {name: p.grad for name, p in model.named_parameters()}


def _both_ways(model, x, dy, train=True):
    """Parameter gradients and dx with the flag on (default) and off."""
    results = []
    for flag in (True, False):
        model.zero_grad()
        _, backprop = model.forward(x, train=train)
        dx = backprop(dy) if flag else backprop(dy, need_input_grad=False)
        results.append((dx, _grads(model)))
    return results


MODELS = {
    "mlp": (lambda: Sequential([Flatten(), Dense(12, 5), ReLU(), Dense(5, 3)], seed=0),
            (4, 3, 4), (4, 3)),
    "dense": (lambda: Dense(6, 3, seed=0), (2, 6), (2, 3)),
    "conv": (lambda: Sequential([Conv2D(2, 3, 3, padding=1, seed=0), LeakyReLU(0.1),
                                 Conv2D(3, 4, 3, stride=2, seed=1)]), (2, 2, 7, 7), (2, 4, 3, 3)),
    "cnn": (lambda: Sequential([ConvBNAct(1, 4, 3, seed=0),
                                Residual(Sequential([ConvBNAct(4, 2, 1, seed=1),
                                                     ConvBNAct(2, 4, 3, seed=2)])),
                                GlobalAvgPool(), Dense(4, 3, seed=3)]), (3, 1, 6, 6), (3, 3)),
    "residual_first": (lambda: Residual(Sequential([Dense(4, 4, seed=0), Tanh()])), (3, 4),
                       (3, 4)),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [True, False])
def test_skipping_the_input_gradient_keeps_parameter_gradients(backend, name, train):
    make, x_shape, y_shape = MODELS[name]
    rng = np.random.default_rng(0)
    with backends.use(backend):
        model = make()
    x = backend.asarray(rng.standard_normal(x_shape), dtype="float32")
    dy = backend.asarray(rng.standard_normal(y_shape), dtype="float32")
    with backends.use(backend):
        (dx_full, full), (dx_skipped, skipped) = _both_ways(model, x, dy, train=train)
    assert dx_skipped is None
    assert tuple(dx_full.shape) == x_shape
    assert set(full) == set(skipped) and full
    for key in full:
        assert_close(skipped[key], backends.to_numpy(full[key]), rtol=1e-6, atol=1e-6,
                     backend=backend)


class Doubled(Module):
    """A user layer written to the contract of xpnn.module: it passes the flag on."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, *, train=False):
        y, inner_backprop = self.inner.forward(x, train=train)

        def backprop(dy, *, need_input_grad=True):
            return inner_backprop(2.0 * dy, need_input_grad=need_input_grad)

        return 2.0 * y, backprop


def test_a_user_layer_that_passes_the_flag_on_gets_its_gradients():
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((3, 4)).astype("float32"), rng.standard_normal((3, 2))
    model = Sequential([Flatten(), Doubled(Dense(4, 2, seed=0))])
    (dx_full, full), (dx_skipped, skipped) = _both_ways(model, x, dy.astype("float32"))
    assert dx_skipped is None and dx_full.shape == (3, 4)
    np.testing.assert_allclose(skipped["1.inner.weight"], full["1.inner.weight"], rtol=1e-6)
    assert np.abs(full["1.inner.weight"]).sum() > 0


def test_a_model_without_parameters_returns_none():
    _, backprop = Sequential([Flatten(), ReLU()]).forward(np.ones((2, 3), "float32"), train=True)
    assert backprop(np.ones((2, 3), "float32"), need_input_grad=False) is None


LAYERS = {  # every layer class, with an input shape it accepts
    "ReLU": (ReLU, (2, 3)),
    "LeakyReLU": (lambda: LeakyReLU(0.2), (2, 3)),
    "Sigmoid": (Sigmoid, (2, 3)),
    "Tanh": (Tanh, (2, 3)),
    "Softmax": (Softmax, (2, 3)),
    "Flatten": (Flatten, (2, 3, 2)),
    "Identity": (Identity, (2, 3)),
    "MaxPool2D": (lambda: MaxPool2D(2), (2, 3, 4, 4)),
    "GlobalAvgPool": (GlobalAvgPool, (2, 3, 4, 4)),
    "BatchNorm": (lambda: BatchNorm(3, dtype="float64"), (4, 3)),
    "Dense": (lambda: Dense(3, 2, dtype="float64", seed=0), (2, 3)),
    "Conv2D": (lambda: Conv2D(3, 2, 3, padding=1, dtype="float64", seed=0), (2, 3, 4, 4)),
    "ConvBNAct": (lambda: ConvBNAct(3, 2, 3, dtype="float64", seed=0), (2, 3, 4, 4)),
    "Sequential": (lambda: Sequential([Dense(3, 3), ReLU()], seed=0, dtype="float64"), (2, 3)),
    "Residual": (lambda: Residual(Sequential([Dense(3, 3), Tanh()], seed=0, dtype="float64")),
                 (2, 3)),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("train", [True, False])
def test_every_layer_keeps_the_backprop_contract(backend, name, train):
    """``backprop(dy, *, need_input_grad=True)`` everywhere: with False it returns None and
    accumulates the same parameter gradients (no class attribute to probe)."""
    make, shape = LAYERS[name]
    with backends.use(backend):
        layer = make()
    x = np.random.default_rng(2).standard_normal(shape)
    check_backprop_contract(layer, x, backend, train=train)


@pytest.mark.parametrize("slope", [0.0, 1.0, 1.5, -0.2])
def test_leaky_relu_slopes_outside_the_max_trick(backend, slope):
    """Slopes in [0, 1] use max(x, a x) and read the sign from y; others use where()."""
    x = np.random.default_rng(3).standard_normal((3, 5)) * 3
    check_layer(lambda dtype: LeakyReLU(slope), x, lambda x, p: np.where(x > 0, x, slope * x),
                backend=backend)


def test_inference_call_equals_forward_and_keeps_no_closures(backend):
    rng = np.random.default_rng(4)
    with backends.use(backend):
        model = MODELS["cnn"][0]()
        x = backend.asarray(rng.standard_normal((2, 1, 6, 6)), dtype="float32")
        y_forward, _ = model.forward(x, train=False)
        y_call = model(x)
        block = model[1]
        assert_close(block(model[0](x)), backends.to_numpy(block.forward(model[0](x))[0]),
                     rtol=1e-6, atol=1e-6, backend=backend)
    assert_close(y_call, backends.to_numpy(y_forward), rtol=1e-6, atol=1e-6, backend=backend)
