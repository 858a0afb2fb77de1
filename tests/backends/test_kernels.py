"""The kernel tables of every backend (``backend.ops``): each override keeps the portable
kernel's signature and computes what the portable kernel computes, and both equal a
direct float64 NumPy reference (or PyTorch autograd for the backward passes).

The NumPy convolution's strategies are tested one by one in ``test_numpy_conv.py``.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpnn import backends
from xpnn.backends import portable
from xpnn.backends.backend import signature_mismatch
from xpnn.testing import assert_close
from xpnn.testing import conv2d_reference as conv_reference
from xpnn.testing import max_pool2d_reference as max_pool_reference


def host(array):
    return backends.to_numpy(array)


# -- the tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_override_keeps_the_portable_signature(name):
    library = backends.selector.library(name)
    for kernel, function in library.KERNELS.items():
        assert kernel in portable.KERNELS, f"{name} overrides unknown kernel {kernel!r}"
        problem = signature_mismatch(function, portable.KERNELS[kernel])
        assert not problem, f"{name}.{kernel}: {problem}"


def test_a_signature_that_differs_is_reported():
    def conv2d(backend, x, w, bias, stride, padding, *, scale=None):  # negative_slope missing
        return x

    def extended(backend, x, w, bias, stride, padding, *, scale=None, negative_slope=None,
                 dilation=(1, 1), groups=1, strategy=None):
        return x

    def without_groups(backend, x, w, bias, stride, padding, *, scale=None,
                       negative_slope=None, dilation=(1, 1)):
        return x

    assert signature_mismatch(conv2d, portable.conv2d)
    assert not signature_mismatch(extended, portable.conv2d)
    assert signature_mismatch(without_groups, portable.conv2d)


def test_unknown_kernel_names_are_refused_when_the_backend_is_built(monkeypatch):
    from xpnn.backends import numpy_backend
    from xpnn.errors import BackendError

    monkeypatch.setitem(numpy_backend.KERNELS, "conv3d", lambda backend, x: x)
    with pytest.raises(BackendError, match="overrides unknown kernels: conv3d"):
        backends.make_backend("numpy")


def test_every_kernel_name_is_an_attribute_of_ops(backend):
    for name in portable.KERNELS:
        assert callable(getattr(backend.ops, name))
        assert callable(getattr(backend.ops.portable, name))


# -- random problems ----------------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    """``(x, w, bias, stride, padding, dy, dilation, groups)``: dilations up to 2, up to 3
    groups (of up to 2 channels each)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    groups = draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    c, o = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if groups == 1 else (
        groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    reach = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    assume(h + 2 * padding[0] >= reach[0] and w + 2 * padding[1] >= reach[1])
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((o, c // groups, kh, kw))
    bias = rng.standard_normal(o) if draw(st.booleans()) else None
    oh = (h + 2 * padding[0] - reach[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - reach[1]) // stride[1] + 1
    dy = rng.standard_normal((n, o, oh, ow))
    return x, weight, bias, stride, padding, dy, dilation, groups


@st.composite
def pool_problems(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kernel[0], 7)), draw(st.integers(kernel[1], 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    # Small integers make ties common: both paths must send the gradient to the first max.
    x = rng.integers(-3, 4, size=(n, c, h, w)).astype(np.float64)
    return x, kernel, stride, padding


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run_conv(backend, kernels, problem):
    x, w, b, stride, padding, dy, dilation, groups = (
        None if a is None else backend.asarray(a) if isinstance(a, np.ndarray) else a
        for a in problem)
    geometry = {"dilation": dilation, "groups": groups}
    y = kernels.conv2d(x, w, b, stride, padding, **geometry)
    y_train, saved = kernels.conv2d_train(x, w, b, stride, padding, **geometry)
    dx, dw = kernels.conv2d_backward(dy, x, w, stride, padding, saved, **geometry)
    none, dw_only = kernels.conv2d_backward(dy, x, w, stride, padding, saved, need_dx=False,
                                            **geometry)
    assert none is None
    return host(y), host(y_train), host(dx), host(dw), host(dw_only)


@SETTINGS
@given(problem=conv_problems())
def test_overridden_convolutions_equal_the_portable_one(backend, problem):
    if not {"conv2d", "conv2d_train", "conv2d_backward"} & backend.ops.overridden:
        pytest.skip(f"{backend.name} runs the portable convolution")
    native = _run_conv(backend, backend.ops, problem)
    reference = _run_conv(backend, backend.ops.portable, problem)
    for fast, slow in zip(native, reference, strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    x, w, b, stride, padding, _, dilation, groups = problem
    np.testing.assert_allclose(native[0],
                               conv_reference(x, w, b, stride, padding, dilation, groups),
                               rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=pool_problems())
def test_overridden_max_pooling_equals_the_portable_one_even_with_ties(backend, problem):
    if not {"max_pool2d", "max_pool2d_backward"} & backend.ops.overridden:
        pytest.skip(f"{backend.name} runs the portable max pooling")
    x_host, kernel, stride, padding = problem
    x = backend.asarray(x_host)
    results = []
    for kernels in (backend.ops, backend.ops.portable):
        y = kernels.max_pool2d(x, kernel, stride, padding)
        dy = backend.asarray(np.arange(1.0, 1.0 + np.prod(y.shape)).reshape(tuple(y.shape)))
        results.append((host(y), host(kernels.max_pool2d_backward(dy, x, y, kernel, stride,
                                                                  padding))))
    np.testing.assert_array_equal(results[0][0],
                                  max_pool_reference(x_host, kernel, stride, padding))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@SETTINGS
@given(problem=conv_problems())
def test_functional_col2im_equals_in_place_col2im(problem):
    """The version for immutable arrays (JAX) builds the same gradient without setitem."""
    x, w, _, stride, padding, dy, dilation, groups = problem
    mutable = backends.make_backend("numpy")
    immutable = backends.make_backend("numpy")
    immutable.mutable = False
    geometry = {"dilation": dilation, "groups": groups}
    in_place = portable.conv2d_backward(mutable, dy, x, w, stride, padding, None, **geometry)
    functional = portable.conv2d_backward(immutable, dy, x, w, stride, padding, None,
                                          **geometry)
    np.testing.assert_allclose(functional[0], in_place[0], rtol=1e-12, atol=1e-12)


# -- every backend ------------------------------------------------------------------------------

CASES = [  # (x shape, w shape, stride, padding[, dilation, groups])
    ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 3, 7, 6), (4, 3, 3, 3), (2, 2), (1, 1)),
    ((1, 2, 5, 5), (3, 2, 1, 1), (1, 1), (0, 0)),  # pointwise: plain matmul
    ((1, 2, 5, 6), (3, 2, 1, 1), (2, 2), (0, 0)),
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), (2, 0)),
    ((2, 3, 8, 7), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2), 1),  # dilated
    ((2, 3, 9, 8), (4, 3, 3, 2), (2, 1), (1, 2), (1, 3), 1),
    ((2, 4, 6, 5), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2),  # two groups
    ((2, 4, 7, 6), (8, 1, 3, 3), (2, 2), (1, 1), (1, 1), 4),  # depthwise, multiplier 2
    ((2, 4, 9, 8), (6, 2, 3, 3), (2, 2), (2, 1), (2, 2), 2),  # all together
    ((1, 4, 5, 5), (6, 2, 1, 1), (1, 1), (0, 0), (1, 1), 2),  # grouped pointwise
]


def geometry(case) -> dict:
    """The dilation and groups of a case as keyword arguments (none for a plain one)."""
    return dict(zip(("dilation", "groups"), case[4:], strict=False))


@pytest.mark.parametrize("kernels", ["ops", "portable"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_matches_reference_on_every_backend(backend, case, kernels):
    ops = backend.ops if kernels == "ops" else backend.ops.portable
    x_shape, w_shape, stride, padding = case[:4]
    options = geometry(case)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(
        w_shape[0])
    args = (backend.asarray(x, "float32"), backend.asarray(w, "float32"),
            backend.asarray(b, "float32"), stride, padding)
    expected = conv_reference(x, w, b, stride, padding, **options)
    y = ops.conv2d(*args, **options)
    assert backends.dtype_name(y.dtype) == "float32"
    assert_close(y, expected, rtol=1e-4, atol=1e-5, backend=backend)
    y_train, _ = ops.conv2d_train(*args, **options)
    assert_close(y_train, expected, rtol=1e-4, atol=1e-5, backend=backend)
    scale = rng.uniform(0.5, 2.0, w_shape[0])
    fused = ops.conv2d(*args[:2], backend.asarray(b, "float32"), stride, padding,
                       scale=backend.asarray(scale, "float32"), negative_slope=0.1, **options)
    expected = conv_reference(x, w, None, stride, padding, **options) \
        * scale[None, :, None, None] + b[None, :, None, None]
    assert_close(fused, np.maximum(expected, 0.1 * expected), rtol=1e-4, atol=1e-5,
                 backend=backend)


@pytest.mark.parametrize("kernels", ["ops", "portable"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_backward_matches_torch_autograd_on_every_backend(backend, case, kernels):
    torch = pytest.importorskip("torch")
    ops = backend.ops if kernels == "ops" else backend.ops.portable
    x_shape, w_shape, stride, padding = case[:4]
    options = geometry(case)
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, **options)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    xb, wb = backend.asarray(x), backend.asarray(w)
    _, saved = ops.conv2d_train(xb, wb, None, stride, padding, **options)
    dx, dw = ops.conv2d_backward(backend.asarray(dy), xb, wb, stride, padding, saved,
                                 **options)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    none, dw_only = ops.conv2d_backward(backend.asarray(dy), xb, wb, stride, padding, saved,
                                        need_dx=False, **options)
    assert none is None
    assert_close(dw_only, wt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)


@pytest.mark.parametrize("window", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                    ((2, 3), (1, 2), (1, 1))], ids=str)
def test_max_pool_matches_reference_on_every_backend(backend, window):
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 7))
    y = backend.ops.max_pool2d(backend.asarray(x, "float32"), *window)
    assert_close(y, max_pool_reference(x, *window), rtol=1e-6, backend=backend)


def test_max_pool_backward_sends_ties_to_the_first_maximum(backend):
    x = backend.asarray(np.ones((1, 1, 2, 4)), "float64")
    window = ((2, 2), (2, 2), (0, 0))
    y = backend.ops.max_pool2d(x, *window)
    dy = backend.asarray(np.array([[[[3.0, 5.0]]]]), "float64")
    dx = backend.ops.max_pool2d_backward(dy, x, y, *window)
    assert_close(dx, [[[[3.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], backend=backend)


@pytest.mark.parametrize("window", [((2, 2), (2, 2), (0, 0)), ((2, 2), (2, 2), (1, 1)),
                                    ((3, 3), (1, 1), (1, 1))], ids=str)
def test_portable_max_pool_backward_routes_nan_and_minus_inf_windows_as_torch(backend,
                                                                              window):
    """A window holding NaN routes its dy to its last NaN, one holding only -inf to its
    first real element (never to the padding): what PyTorch's CPU kernel does."""
    torch = pytest.importorskip("torch")
    nan, ninf = np.nan, -np.inf
    x_host = np.array([[[[ninf, ninf, 1.0, nan, 0.5],
                         [ninf, ninf, nan, 2.0, nan],
                         [3.0, nan, ninf, ninf, 1.0],
                         [nan, 4.0, ninf, ninf, ninf]]]])
    x_torch = torch.tensor(x_host, requires_grad=True)
    y_torch = torch.nn.functional.max_pool2d(x_torch, *window)
    dy_host = np.arange(1.0, 1.0 + y_torch.numel()).reshape(tuple(y_torch.shape))
    y_torch.backward(torch.tensor(dy_host))
    x = backend.asarray(x_host, "float64")
    y = backend.ops.portable.max_pool2d(x, *window)
    np.testing.assert_array_equal(host(y), y_torch.detach().numpy())
    dx = backend.ops.portable.max_pool2d_backward(backend.asarray(dy_host, "float64"), x, y,
                                                   *window)
    np.testing.assert_array_equal(host(dx), x_torch.grad.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outer_is_the_product_of_every_pair_on_every_backend(backend, dtype):
    rng = np.random.default_rng(0)
    a_host, b_host = rng.standard_normal(128), rng.standard_normal(784)
    a, b = backend.asarray(a_host, dtype), backend.asarray(b_host, dtype)
    for kernels in (backend.ops, backend.ops.portable):
        product = kernels.outer(a, b)
        assert tuple(product.shape) == (128, 784)
        assert product.dtype == a.dtype
        assert_close(product, np.multiply.outer(a_host, b_host).astype(dtype), rtol=1e-6,
                     backend=backend)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum, nesterov, weight_decay",
                         [(0.0, False, 0.0), (0.9, False, 1e-4), (0.9, True, 1e-4)])
def test_sgd_update_is_one_sgd_step_on_every_backend(backend, dtype, momentum, nesterov,
                                                     weight_decay):
    """``(param, buf)`` after two steps, against the SGD rule in float64 NumPy; the
    override and the portable kernel give the same bits (the caller assigns both results
    back, so JAX's new arrays count as well)."""
    rng = np.random.default_rng(0)
    p0, buf0 = rng.standard_normal((5, 3)), np.zeros((5, 3))
    grads = [rng.standard_normal((5, 3)) for _ in range(2)]
    results = []
    for kernels in (backend.ops, backend.ops.portable):
        param = backend.asarray(p0, dtype)
        buf = backend.asarray(buf0, dtype) if momentum else None
        for grad in grads:
            param, buf = kernels.sgd_update(param, backend.asarray(grad, dtype), buf, 0.1,
                                            momentum, nesterov, weight_decay)
        assert param.dtype == backend.dtype(dtype)
        results.append((host(param), None if buf is None else host(buf)))
    want_p, want_buf = p0.copy(), buf0.copy()
    for grad in grads:
        g = grad + weight_decay * want_p
        if momentum:
            want_buf = momentum * want_buf + g
            g = g + momentum * want_buf if nesterov else want_buf
        want_p = want_p - 0.1 * g
    (got_p, got_buf), (portable_p, portable_buf) = results
    np.testing.assert_array_equal(got_p, portable_p)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(got_p, want_p, rtol=rtol, atol=rtol)
    if momentum:
        np.testing.assert_array_equal(got_buf, portable_buf)
        np.testing.assert_allclose(got_buf, want_buf, rtol=rtol, atol=rtol)
    else:
        assert got_buf is None and portable_buf is None


def softmax_cross_entropy_reference(logits, labels):
    """The mean cross-entropy and its gradient in float64 NumPy, for labels that may be
    out of range (such rows add no loss term and have no target)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n, c = logits.shape
    targets = (np.arange(c) == labels[:, None]).astype(float)
    return -(targets * log_p).sum() / n, (np.exp(log_p) - targets) / n


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n, c", [(1, 1), (1, 10), (32, 10), (7, 1000)])
def test_softmax_cross_entropy_mean_on_every_backend(backend, dtype, n, c):
    """The override and the portable kernel against float64 NumPy, large logits included
    (no overflow), and one label outside [0, C) (no loss term, no target)."""
    rng = np.random.default_rng(n * c)
    logits = rng.standard_normal((n, c)) * 30.0
    logits[0, 0] = 500.0
    labels = rng.integers(0, c, n)
    if n > 1:
        labels[1] = c  # out of range: check_labels=False lets it through
    want_loss, want_grad = softmax_cross_entropy_reference(logits, labels)
    rtol = 2e-6 if dtype == "float32" else 1e-13
    for kernels in (backend.ops, backend.ops.portable):
        loss, dlogits = kernels.softmax_cross_entropy_mean(backend.asarray(logits, dtype),
                                                           backend.asarray(labels, "int64"))
        assert tuple(loss.shape) == () and loss.dtype == backend.dtype(dtype)
        assert dlogits.dtype == backend.dtype(dtype)
        np.testing.assert_allclose(host(loss), want_loss, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(host(dlogits), want_grad, rtol=rtol, atol=rtol / n)


@pytest.mark.parametrize("values", [[7], [3, -2, 9, 0, 9], list(range(-300, 300, 7))],
                         ids=["one", "few", "many"])
@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_value_range_is_the_smallest_and_largest_label_as_python_ints(backend, values, dtype):
    """The losses' label check: the override and the portable kernel give the same
    ``(min, max)`` as Python ints, negative values and a single label included."""
    labels = backend.asarray(np.array(values), dtype)
    for kernels in (backend.ops, backend.ops.portable):
        low, high = kernels.value_range(labels)
        assert (low, high) == (min(values), max(values))
        assert type(low) is int and type(high) is int


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_mean_keeps_nan_and_infinities_where_the_portable_kernel_does(
        backend, dtype):
    """Rows with NaN, +inf and -inf logits: the override gives NaN exactly where the
    portable kernel does, and the same finite values elsewhere."""
    logits = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0],
                       [np.nan, 0.0, 0.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 1, 2, 2, 1])
    results = []
    for kernels in (backend.ops, backend.ops.portable):
        loss, dlogits = kernels.softmax_cross_entropy_mean(backend.asarray(logits, dtype),
                                                           backend.asarray(labels, "int64"))
        results.append((host(loss), host(dlogits)))
    (loss, got), (portable_loss, want) = results
    assert np.isnan(loss) and np.isnan(portable_loss)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernels", ["ops", "portable"])
def test_the_fused_relu_maps_minus_infinity_to_zero_as_the_relu_layer(backend, kernels):
    """``negative_slope=0`` is the ReLU layer's ``maximum(v, 0)`` (``-inf`` gives 0, NaN
    stays NaN); a slope in (0, 1] keeps ``-inf``."""
    ops = backend.ops if kernels == "ops" else backend.ops.portable
    x = backend.asarray(np.array([-np.inf, np.nan, -2.0, 3.0]).reshape(1, 1, 2, 2), "float32")
    w = backend.asarray(np.ones((1, 1, 1, 1)), "float32")
    relu = host(ops.conv2d(x, w, None, (1, 1), (0, 0), negative_slope=0.0)).ravel()
    leaky = host(ops.conv2d(x, w, None, (1, 1), (0, 0), negative_slope=0.5)).ravel()
    np.testing.assert_array_equal(relu, [0.0, np.nan, 0.0, 3.0])
    np.testing.assert_array_equal(leaky, [-np.inf, np.nan, -1.0, 3.0])
