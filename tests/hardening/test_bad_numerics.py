"""Bad numbers and bad gradients, on every backend, compared with PyTorch.

* Non-finite values (NaN, ``±inf``, signed zeros, huge magnitudes) fuzzed through every
  activation, max pooling and the losses: forward values and gradients must match
  PyTorch's, NaN for NaN and ``inf`` for ``inf`` (issue 13, item 22).
* The tails of the logistic function: relative precision down to ``x = -80`` in float32
  and float64, for ``Sigmoid`` and the gradient of ``binary_cross_entropy_with_logits``
  (item 23).
* A ``dy`` of the wrong shape given to every layer's ``backprop``: a ShapeError naming the
  expected shape, raised before any parameter gradient changes, so the next correct call
  gives the right gradients (item 7).
* Dtype errors that advise only what works on the backend, and inputs and arguments
  refused at the door: bfloat16, torch tensors that require grad, ``Softmax(axis=True)``,
  huge Conv2D padding (items 6 and 21).
* Float32 BatchNorm as accurate as PyTorch's own, and an optimizer state dict with no
  float64 array on the device (item 23).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from xpnn import backends  # noqa: E402
from xpnn.errors import ConfigError, DTypeError, ShapeError  # noqa: E402
from xpnn.layers import (  # noqa: E402
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
from xpnn.losses import binary_cross_entropy_with_logits  # noqa: E402
from xpnn.optim import SGD, Adam  # noqa: E402
from xpnn.testing import check_wrong_dy  # noqa: E402

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 3.5, -3.5,
            80.0, -80.0, 1e4, -1e4]
GRAD_SPECIALS = [np.nan, np.inf, -np.inf, 0.0, 1.0, -1.0, 2.5, -1e-3]


def same_numbers(got, want, rtol: float, what: str, atol: float = 0.0) -> None:
    """NaN exactly where ``want`` has NaN, the same infinities, finite values close."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf")
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=atol, err_msg=what)


def fuzzed(seed: int, shape, values) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(values, dtype=np.float64), size=shape)


def torch_vjp(function, x_host, dy_host, dtype):
    """PyTorch's output and input gradient of ``function`` at ``x_host`` for ``dy_host``."""
    kind = getattr(torch, dtype)
    x = torch.tensor(x_host, dtype=kind, requires_grad=True)
    y = function(x)
    y.backward(torch.tensor(dy_host, dtype=kind))
    return y.detach().numpy(), x.grad.numpy()


ACTIVATIONS = {
    "relu": (ReLU, F.relu),
    "leaky_relu_0": (lambda: LeakyReLU(0.0), lambda x: F.leaky_relu(x, 0.0)),
    "leaky_relu_0.01": (lambda: LeakyReLU(0.01), lambda x: F.leaky_relu(x, 0.01)),
    "leaky_relu_1": (lambda: LeakyReLU(1.0), lambda x: F.leaky_relu(x, 1.0)),
    "leaky_relu_2": (lambda: LeakyReLU(2.0), lambda x: F.leaky_relu(x, 2.0)),
    "leaky_relu_-0.5": (lambda: LeakyReLU(-0.5), lambda x: F.leaky_relu(x, -0.5)),
    "sigmoid": (Sigmoid, torch.sigmoid),
    "tanh": (Tanh, torch.tanh),
    "softmax": (Softmax, lambda x: torch.softmax(x, dim=-1)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_non_finite_values_through_activations_match_torch(backend, name, dtype):
    make, reference = ACTIVATIONS[name]
    rtol = 2e-6 if dtype == "float32" else 1e-13
    for seed in range(4):
        x_host = fuzzed(seed, (6, 15), SPECIALS)
        dy_host = fuzzed(100 + seed, (6, 15), GRAD_SPECIALS)
        if name == "softmax":  # keep most rows finite so that the values are compared too
            x_host[:3] = np.where(np.isfinite(x_host[:3]), x_host[:3], 0.5)
            dy_host[:3] = np.where(np.isfinite(dy_host[:3]), dy_host[:3], 0.5)
        want_y, want_dx = torch_vjp(reference, x_host, dy_host, dtype)
        with np.errstate(all="ignore"):
            y, backprop = make().forward(backend.asarray(x_host, dtype), train=True)
            dx = backprop(backend.asarray(dy_host, dtype))
        same_numbers(backend.to_numpy(y), want_y, rtol, f"{name} forward, seed {seed}")
        # 1 - y^2 and y (1 - y) cancel near |y| = 1: an ulp of y apart (NumPy's and
        # PyTorch's tanh differ by one) is an absolute error of about eps |dy|.
        atol = 10 * np.finfo(dtype).eps
        same_numbers(backend.to_numpy(dx), want_dx, rtol, f"{name} backward, seed {seed}",
                     atol=atol)


def test_relu_passes_the_gradient_at_a_nan_input_and_zeroes_an_infinite_one(backend):
    x = backend.asarray(np.array([np.nan, -1.0, 0.0, 2.0]), "float32")
    _, backprop = ReLU().forward(x, train=True)
    dx = backend.to_numpy(backprop(backend.asarray(np.array([3.0, np.inf, -np.inf, 5.0]),
                                                   "float32")))
    np.testing.assert_array_equal(dx, [3.0, 0.0, 0.0, 5.0])  # PyTorch: the same


POOLS = [((2, 2), (2, 2), (0, 0)), ((2, 2), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)),
         ((3, 2), (2, 1), (1, 0)), ((2, 3), (1, 2), (0, 1))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("window", POOLS, ids=str)
def test_max_pool_with_nan_and_infinite_windows_matches_torch(backend, window, dtype):
    kernel, stride, padding = window
    for seed in range(6):
        rng = np.random.default_rng(seed)
        x_host = rng.standard_normal((2, 3, 6, 7))
        special = rng.random(x_host.shape)
        x_host[special < 0.15] = -np.inf
        x_host[(special > 0.15) & (special < 0.25)] = np.nan
        x_host[(special > 0.25) & (special < 0.28)] = np.inf
        x_host[0, 0] = -np.inf  # a whole plane of -inf: every window holds only -inf
        x_host[1, 1, :3, :3] = np.nan  # windows full of NaN
        layer = MaxPool2D(kernel, stride, padding)
        kind = getattr(torch, dtype)
        x_torch = torch.tensor(x_host, dtype=kind, requires_grad=True)
        y_torch = F.max_pool2d(x_torch, kernel, stride, padding)
        dy_host = rng.standard_normal(tuple(y_torch.shape))
        y_torch.backward(torch.tensor(dy_host, dtype=kind))
        want_y, want_dx = y_torch.detach().numpy(), x_torch.grad.numpy()
        y, backprop = layer.forward(backend.asarray(x_host, dtype), train=True)
        dx = backprop(backend.asarray(dy_host, dtype))
        same_numbers(backend.to_numpy(y), want_y, 0.0, f"max pool forward, seed {seed}")
        # Overlapping windows add several dy into one dx, in another order than PyTorch.
        same_numbers(backend.to_numpy(dx), want_dx, 1e-12 if dtype == "float64" else 1e-5,
                     f"max pool backward, seed {seed}", atol=20 * np.finfo(dtype).eps)


def test_max_pool_backward_of_finite_inputs_is_unchanged(backend):
    """The NaN padding of the backward changes nothing for finite inputs: each gradient
    goes to the first maximum of its window, as PyTorch (and the float64 reference)."""
    rng = np.random.default_rng(3)
    x_host = np.round(rng.standard_normal((2, 2, 7, 7)), 1)  # ties
    x_torch = torch.tensor(x_host, requires_grad=True)
    y_torch = F.max_pool2d(x_torch, 3, 2, 1)
    dy_host = rng.standard_normal(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(dy_host))
    _, backprop = MaxPool2D(3, 2, 1).forward(backend.asarray(x_host, "float64"), train=True)
    got = backend.to_numpy(backprop(backend.asarray(dy_host, "float64")))
    np.testing.assert_array_equal(got != 0, x_torch.grad.numpy() != 0)  # the same routes
    np.testing.assert_allclose(got, x_torch.grad.numpy(), rtol=1e-14)  # sums in any order


# -- the logistic tails ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_keeps_relative_precision_down_to_minus_80(backend, dtype):
    x_host = np.linspace(-80.0, 30.0, 2201).astype(dtype)
    want = torch.sigmoid(torch.tensor(x_host, dtype=torch.float64)).numpy()
    y, backprop = Sigmoid().forward(backend.asarray(x_host, dtype), train=True)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(backend.to_numpy(y), want, rtol=rtol, atol=0.0)
    dx = backend.to_numpy(backprop(backend.asarray(np.ones_like(x_host), dtype)))
    want_dx = want * (1.0 - want)
    tail = x_host <= 0  # y (1 - y) cancels above 0 (1 - y of a rounded y), as in PyTorch
    np.testing.assert_allclose(dx[tail], want_dx[tail], rtol=4 * rtol, atol=0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_with_logits_gradient_keeps_relative_precision_in_the_tails(backend, dtype):
    logits = np.linspace(-80.0, 80.0, 1601).astype(dtype)
    for target in (0.0, 1.0):
        targets = np.full_like(logits, target)
        z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
        want_loss = F.binary_cross_entropy_with_logits(z, torch.tensor(targets,
                                                                       dtype=torch.float64))
        want_loss.backward()
        loss, dz = binary_cross_entropy_with_logits(backend.asarray(logits, dtype),
                                                    backend.asarray(targets, dtype))
        want_dz = z.grad.numpy()
        rtol = 2e-6 if dtype == "float32" else 1e-13
        got = backend.to_numpy(dz)
        # sigmoid(z) - y is well conditioned where y = 0, and where y = 1 for z <= 0 (the
        # tails the issue is about); where y = 1 and z > 0 it is 1 - sigmoid(z), whose
        # absolute error is an ulp of 1 (/ size), in PyTorch as well.
        # Subnormal results (below about -78 here, once divided by the size) may be
        # flushed to zero (XLA on CPU does).
        tiny = np.finfo(dtype).tiny
        tail = ((logits <= 0) if target else np.ones(logits.shape, bool)) & (
            np.abs(want_dz) >= tiny)
        np.testing.assert_allclose(got[tail], want_dz[tail], rtol=rtol, atol=0.0)
        np.testing.assert_allclose(got[~tail], want_dz[~tail], rtol=0.0,
                                   atol=2 * np.finfo(dtype).eps / logits.size)
        np.testing.assert_allclose(float(backend.to_numpy(loss)), want_loss.item(),
                                   rtol=rtol)


# -- wrong dy shapes -------------------------------------------------------------------------

IMAGES = (2, 3, 6, 6)


def _layers():
    """(id, make the layer, input shape, train) for every layer and combinator."""
    return [
        ("dense", lambda: Dense(6, 4, seed=0), (3, 6), True),
        ("dense-3d", lambda: Dense(6, 4, seed=0), (2, 3, 6), True),
        ("dense-no-bias", lambda: Dense(6, 4, bias=False, seed=0), (1, 6), True),
        ("conv", lambda: Conv2D(3, 4, 3, padding=1, seed=0), IMAGES, True),
        ("conv-eval", lambda: Conv2D(3, 4, 3, stride=2, seed=0), IMAGES, False),
        ("batchnorm", lambda: BatchNorm(3), IMAGES, True),
        ("batchnorm-eval", lambda: BatchNorm(3), IMAGES, False),
        ("batchnorm-2d", lambda: BatchNorm(3), (4, 3), True),
        ("maxpool", lambda: MaxPool2D(2), IMAGES, True),
        ("global-avg-pool", GlobalAvgPool, IMAGES, True),
        ("flatten", Flatten, IMAGES, True),
        ("identity", Identity, (3, 5), True),
        ("relu", ReLU, (3, 5), True),
        ("leaky-relu", LeakyReLU, (3, 5), True),
        ("leaky-relu-2", lambda: LeakyReLU(2.0), (3, 5), True),
        ("sigmoid", Sigmoid, (3, 5), True),
        ("tanh", Tanh, (3, 5), True),
        ("softmax", Softmax, (3, 5), True),
        ("sequential", lambda: Sequential([Conv2D(3, 4, 3, seed=0), ReLU(), Flatten(),
                                           Dense(64, 5, seed=1)]), IMAGES, True),
        ("residual", lambda: Residual(Sequential([Dense(5, 5, seed=0), Tanh()])), (3, 5),
         True),
        ("conv-bn-act", lambda: ConvBNAct(3, 4, 3, seed=0), IMAGES, True),
        ("conv-bn-act-folded", lambda: ConvBNAct(3, 4, 3, seed=0), IMAGES, False),
        ("conv-bn-relu-folded", lambda: ConvBNAct(3, 4, 3, activation="relu", seed=0),
         IMAGES, False),
    ]


@pytest.mark.parametrize("case", _layers(), ids=lambda case: case[0])
def test_wrong_dy_shape_raises_before_any_gradient_changes(backend, case):
    _, make, shape, train = case
    x = backend.asarray(np.random.default_rng(0).standard_normal(shape), "float64")
    layer = make()
    layer.initialize(0, "float64") if layer.parameters() else None
    y, backprop = layer.forward(x, train=train)
    dy = backend.asarray(np.random.default_rng(1).standard_normal(tuple(y.shape)), "float64")
    check_wrong_dy(layer, backprop, y, backend)  # nothing accumulated yet
    backprop(dy)
    first = {name: backend.to_numpy(p.grad).copy() for name, p in layer.named_parameters()}
    check_wrong_dy(layer, backprop, y, backend)  # the accumulated gradients stay as they are
    layer.zero_grad()
    dx = backprop(dy)  # the next correct call gives the right gradients
    assert tuple(dx.shape) == shape
    for name, parameter in layer.named_parameters():
        np.testing.assert_array_equal(backend.to_numpy(parameter.grad), first[name])


def test_wrong_dy_message_names_the_expected_shape(backend):
    layer = Dense(6, 4, seed=0)
    _, backprop = layer.forward(backend.asarray(np.ones((3, 6)), "float32"), train=True)
    with pytest.raises(ShapeError, match=r"Dense\(6, 4\) backprop expected dy of shape "
                                         r"\(3, 4\).*Received: dy\.shape=\(4, 3\)"):
        backprop(backend.asarray(np.ones((4, 3)), "float32"))
    assert layer.weight.grad is None and layer.bias.grad is None


# -- dtype advice, refused inputs and arguments ----------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int64", "bool", "float16"])
def test_dtype_error_never_advises_a_dtype_the_layers_refuse(backend, dtype):
    if dtype == "float16" and backend.name == "array_api_strict":
        pytest.skip("array-api-strict has no float16")
    x = backend.asarray(np.ones((2, 6)), dtype)
    with pytest.raises(DTypeError) as error:
        Dense(6, 4)(x)
    message = str(error.value)
    assert "build the model with dtype" not in message, message
    assert backend.astype_hint("float32") in message, message


def test_dtype_error_advises_the_other_float_dtype_and_the_backend_conversion(backend):
    with pytest.raises(DTypeError) as error:
        Conv2D(3, 4, 3)(backend.asarray(np.ones(IMAGES), "float64"))
    message = str(error.value)
    assert "dtype='float64'" in message and backend.astype_hint("float32") in message
    with backends.use("numpy"):
        Dense(6, 4, dtype="float64")(np.ones((2, 6)))  # the advice works


def test_astype_hints_are_spelled_for_each_library():
    assert backends.make_backend("numpy").astype_hint("float32") == "x.astype('float32')"
    assert backends.make_backend("torch").astype_hint("float32") == "x.to(torch.float32)"
    assert backends.make_backend("array_api_strict").astype_hint("float64") == (
        "xp.astype(x, xp.float64)")
    # The torch hint works on a torch tensor.
    x = torch.ones(2, dtype=torch.float64)
    assert eval(backends.make_backend("torch").astype_hint("float32"),  # noqa: S307
                {"x": x, "torch": torch}).dtype == torch.float32


def test_torch_dtype_error_suggests_torch_not_numpy():
    with backends.use("torch"):
        with pytest.raises(DTypeError) as error:
            Dense(6, 4)(torch.ones(2, 6, dtype=torch.int64))
    assert "x.to(torch.float32)" in str(error.value) and "astype" not in str(error.value)


@pytest.mark.parametrize("make", [lambda: Dense(6, 4), ReLU, Sigmoid, Tanh, Softmax,
                                  LeakyReLU, lambda: BatchNorm(6)])
def test_bfloat16_input_is_refused_with_float32_or_float64_expected(make):
    with backends.use("torch"):
        with pytest.raises(DTypeError, match=r"float32.*Received: x\.dtype=bfloat16"):
            make()(torch.ones(2, 6, dtype=torch.bfloat16))


@pytest.mark.parametrize("make", [lambda: MaxPool2D(2), GlobalAvgPool,
                                  lambda: Conv2D(3, 4, 3)])
def test_bfloat16_images_are_refused(make):
    with backends.use("torch"):
        with pytest.raises(DTypeError, match=r"float32.*bfloat16"):
            make()(torch.ones(IMAGES, dtype=torch.bfloat16))


def test_torch_tensor_that_requires_grad_is_detached():
    with backends.use("torch"):
        model = Sequential([Dense(6, 3, seed=0), BatchNorm(3), ReLU()])
        x = torch.ones(4, 6, requires_grad=True) * torch.arange(4.0)[:, None]
        y, backprop = model.forward(x, train=True)
        assert not y.requires_grad
        assert not model[1].running_mean.value.requires_grad
        assert not model[1].running_var.value.requires_grad
        dx = backprop(torch.ones_like(y))
        assert not dx.requires_grad and x.grad is None
        assert not any(p.grad.requires_grad for p in model.parameters())


@pytest.mark.parametrize("axis", [True, False, 1.0, "1", None])
def test_softmax_axis_must_be_an_integer(axis):
    with pytest.raises(ConfigError, match=r"Softmax expected axis to be an integer"):
        Softmax(axis=axis)
    assert Softmax(axis=np.int64(1)).axis == 1


@pytest.mark.parametrize("padding", [3, (0, 3), 10**9])
def test_conv_padding_beyond_kernel_minus_one_is_refused(padding):
    with pytest.raises(ConfigError, match=r"at most kernel_size - 1"):
        Conv2D(1, 1, 3, padding=padding)
    Conv2D(1, 1, 3, padding=2)  # a "full" convolution is fine


def test_max_pool_padding_beyond_half_the_kernel_is_refused():
    with pytest.raises(ConfigError, match=r"at most half the kernel size"):
        MaxPool2D(2, padding=10**9)


# -- BatchNorm accuracy and the optimizer state ----------------------------------------------


def test_float32_batchnorm_is_as_accurate_as_torch_on_a_large_batch(backend):
    rng = np.random.default_rng(0)
    shape = (64, 64, 64, 64)
    x_host = (rng.standard_normal(shape, dtype=np.float32) * 3 + 5)
    dy_host = rng.standard_normal(shape, dtype=np.float32)

    def ours(on, dtype):
        layer = BatchNorm(64, dtype=dtype)
        y, backprop = layer.forward(on.asarray(x_host, dtype), train=True)
        dx = backprop(on.asarray(dy_host, dtype))
        return [on.to_numpy(a).astype(np.float64) for a in
                (y, dx, layer.weight.grad, layer.bias.grad, layer.running_var.value)]

    with backends.use("numpy"):
        exact = ours(backends.current(), "float64")
    x = torch.tensor(x_host, requires_grad=True)
    weight, bias = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    running_var = torch.ones(64)
    y = F.batch_norm(x, torch.zeros(64), running_var, weight, bias, training=True)
    y.backward(torch.tensor(dy_host))
    theirs = [a.detach().numpy().astype(np.float64)
              for a in (y, x.grad, weight.grad, bias.grad, running_var)]
    got = ours(backend, "float32")
    for name, mine, torchs, want in zip(["y", "dx", "dweight", "dbias", "running_var"],
                                        got, theirs, exact, strict=True):
        scale = np.max(np.abs(want))
        error, torch_error = np.max(np.abs(mine - want)) / scale, np.max(
            np.abs(torchs - want)) / scale
        assert error <= 2.5 * torch_error + 1e-7, (name, error, torch_error)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: Adam(ps, lr=1e-3)], ids=["sgd", "adam"])
def test_optimizer_state_dict_creates_no_float64_array_on_the_device(backend, make):
    model = Dense(3, 2, seed=0)
    optimizer = make(model.parameters())
    _, backprop = model.forward(backend.asarray(np.ones((4, 3)), "float32"), train=True)
    backprop(backend.asarray(np.ones((4, 2)), "float32"))
    optimizer.step()
    state = optimizer.state_dict()
    for key, value in state.items():
        if key == "lr" or key.endswith("step"):
            assert isinstance(value, np.ndarray), (key, type(value))  # host scalars
        else:
            assert backends.dtype_name(value.dtype) == "float32", (key, value.dtype)
    assert state["lr"].dtype == np.float64 and float(state["lr"][0]) == optimizer.lr
    again = make(model.parameters()).load_state_dict(state)
    assert again.lr == optimizer.lr and again.step_count == optimizer.step_count


def test_loss_dtype_errors_spell_the_conversion_for_the_backend(backend):
    from xpnn.losses import mean_squared_error, softmax_cross_entropy

    ints = backend.asarray(np.ones((2, 3)), "int64")
    with pytest.raises(DTypeError) as error:
        mean_squared_error(ints, ints)
    assert backend.astype_hint("float32", "pred") in str(error.value)
    with pytest.raises(DTypeError) as error:
        softmax_cross_entropy(backend.asarray(np.ones((2, 3)), "float32"),
                              backend.asarray(np.ones(2), "float32"))
    assert backend.astype_hint("int64", "labels") in str(error.value)
