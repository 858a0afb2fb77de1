"""The convolution and pooling kernels of xpnn.backends.conv: the native fast paths equal
the standard-only portable path, and both equal a direct float64 NumPy reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xpnn import backends
from xpnn.backends import conv, conv_native, conv_portable
from xpnn.errors import BackendError
from xpnn.testing import assert_close
from xpnn.testing import conv2d_reference as conv_reference
from xpnn.testing import max_pool2d_reference as max_pool_reference


def host(array):
    return backends.to_numpy(array)


# -- random problems ----------------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    assume(h + 2 * padding[0] >= kh and w + 2 * padding[1] >= kw)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((o, c, kh, kw))
    bias = rng.standard_normal(o) if draw(st.booleans()) else None
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kw) // stride[1] + 1
    dy = rng.standard_normal((n, o, oh, ow))
    return x, weight, bias, stride, padding, dy


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


def _run_conv(to, problem, path):
    x, w, b, stride, padding, dy = problem
    x, w, dy = to(x), to(w), to(dy)
    y = conv.conv2d(x, w, None if b is None else to(b), stride, padding, path=path)
    dx, dw = conv.conv2d_backward(dy, x, w, stride, padding, path=path)
    return host(y), host(dx), host(dw)


@SETTINGS
@given(problem=conv_problems())
def test_numpy_fast_path_equals_portable_path(problem):
    native = _run_conv(np.asarray, problem, "native")
    portable = _run_conv(np.asarray, problem, "portable")
    for fast, slow in zip(native, portable, strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    x, w, b, stride, padding, _ = problem
    np.testing.assert_allclose(native[0], conv_reference(x, w, b, stride, padding),
                               rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=conv_problems())
def test_torch_fast_path_equals_portable_path(problem):
    torch = pytest.importorskip("torch")
    native = _run_conv(torch.from_numpy, problem, "native")
    portable = _run_conv(torch.from_numpy, problem, "portable")
    for fast, slow in zip(native, portable, strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=pool_problems())
def test_torch_max_pool_equals_portable_path_even_with_ties(problem):
    torch = pytest.importorskip("torch")
    x, kernel, stride, padding = problem
    results = []
    for path in ("native", "portable"):
        xt = torch.from_numpy(x)
        y = conv.max_pool2d(xt, kernel, stride, padding, path=path)
        dy = torch.from_numpy(np.arange(1.0, 1.0 + y.numel()).reshape(tuple(y.shape)))
        results.append((host(y), host(conv.max_pool2d_backward(dy, xt, y, kernel, stride,
                                                                  padding, path=path))))
    np.testing.assert_array_equal(results[0][0], max_pool_reference(x, kernel, stride, padding))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@SETTINGS
@given(problem=conv_problems())
def test_functional_col2im_equals_in_place_col2im(problem):
    """The version for immutable arrays (JAX) builds the same gradient without setitem."""
    x, w, _, stride, padding, dy = problem
    in_place = conv_portable.conv2d_backward(dy, x, w, stride, padding, mutable=True)
    functional = conv_portable.conv2d_backward(dy, x, w, stride, padding, mutable=False)
    np.testing.assert_allclose(functional[0], in_place[0], rtol=1e-12, atol=1e-12)


# -- every backend ------------------------------------------------------------------------------

CASES = [  # (x shape, w shape, stride, padding)
    ((2, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 3, 7, 6), (4, 3, 3, 3), (2, 2), (1, 1)),
    ((1, 2, 5, 5), (3, 2, 1, 1), (1, 1), (0, 0)),  # pointwise: plain matmul
    ((1, 2, 5, 6), (3, 2, 1, 1), (2, 2), (0, 0)),
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), (2, 0)),
]


@pytest.mark.parametrize("path", ["auto", "portable"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_matches_reference_on_every_backend(backend, case, path):
    x_shape, w_shape, stride, padding = case
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(
        w_shape[0])
    y = conv.conv2d(backend.asarray(x, "float32"), backend.asarray(w, "float32"),
                    backend.asarray(b, "float32"), stride, padding, path=path)
    assert backends.dtype_name(y.dtype) == "float32"
    assert_close(y, conv_reference(x, w, b, stride, padding), rtol=1e-4, atol=1e-5,
                 backend=backend)


@pytest.mark.parametrize("path", ["auto", "portable"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_backward_matches_torch_autograd_on_every_backend(backend, case, path):
    torch = pytest.importorskip("torch")
    x_shape, w_shape, stride, padding = case
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    dx, dw = conv.conv2d_backward(backend.asarray(dy), backend.asarray(x), backend.asarray(w),
                                  stride, padding, path=path)
    assert_close(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    assert_close(dw, wt.grad.numpy(), rtol=1e-10, atol=1e-12, backend=backend)
    none, dw_only = conv.conv2d_backward(backend.asarray(dy), backend.asarray(x),
                                         backend.asarray(w), stride, padding, need_dx=False,
                                         path=path)
    assert none is None
    assert_close(dw_only, wt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("window", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                    ((2, 3), (1, 2), (1, 1))], ids=str)
def test_max_pool_matches_reference_on_every_backend(backend, window):
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 7))
    y = conv.max_pool2d(backend.asarray(x, "float32"), *window)
    assert_close(y, max_pool_reference(x, *window), rtol=1e-6, backend=backend)


def test_max_pool_backward_sends_ties_to_the_first_maximum(backend):
    x = backend.asarray(np.ones((1, 1, 2, 4)), "float64")
    y = conv.max_pool2d(x, (2, 2), (2, 2))
    dy = backend.asarray(np.array([[[[3.0, 5.0]]]]), "float64")
    dx = conv.max_pool2d_backward(dy, x, y, (2, 2), (2, 2))
    assert_close(dx, [[[[3.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], backend=backend)


def test_unknown_or_missing_paths_are_clear_errors():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1))
    with pytest.raises(BackendError, match="Unknown kernel path 'fast'"):
        conv.conv2d(x, w, path="fast")
    with pytest.raises(BackendError, match="no native max_pool2d kernel for numpy"):
        conv.max_pool2d(x, 2, 2, path="native")


# -- training: the forward's columns reused by the backward ----------------------------------

KEEP_CASES = [  # (x shape, w shape, stride, padding)
    ((3, 2, 6, 5), (4, 2, 3, 3), (1, 1), (1, 1)),
    ((3, 2, 7, 6), (4, 2, 3, 3), (2, 2), (1, 1)),
    ((2, 3, 5, 6), (2, 3, 1, 1), (2, 2), (0, 0)),  # strided 1x1: not pointwise
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), (2, 0)),
]


@pytest.mark.parametrize("case", KEEP_CASES, ids=str)
@pytest.mark.parametrize("need_dx", [True, False])
def test_kept_columns_give_the_same_gradients_as_recomputing(case, need_dx):
    x_shape, w_shape, stride, padding = case
    rng = np.random.default_rng(8)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(
        w_shape[0])
    y, columns = conv.conv2d(x, w, b, stride, padding, keep_columns=True)
    assert columns is not None  # small outputs, several images: the stacked path keeps them
    np.testing.assert_allclose(y, conv.conv2d(x, w, b, stride, padding), rtol=1e-13,
                               atol=1e-13)
    dy = rng.standard_normal(y.shape)
    kept = conv.conv2d_backward(dy, x, w, stride, padding, need_dx, columns=columns)
    recomputed = conv.conv2d_backward(dy, x, w, stride, padding, need_dx)
    np.testing.assert_allclose(kept[1], recomputed[1], rtol=1e-12, atol=1e-12)
    if need_dx:
        np.testing.assert_allclose(kept[0], recomputed[0], rtol=1e-12, atol=1e-12)
    else:
        assert kept[0] is None
    portable = conv.conv2d_backward(dy, x, w, stride, padding, need_dx, path="portable")
    np.testing.assert_allclose(kept[1], portable[1], rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=conv_problems(), band_rows=st.integers(1, 3),
       stride=st.sampled_from([None, (2, 2), (3, 2), (1, 3)]))
def test_wide_rows_equal_portable_path(monkeypatch, problem, band_rows, stride):
    """Large images with few channels are convolved in bands of output rows over the
    stride phases of the padded image; a band budget of 1-3 rows (and no stacking of
    small images) sends every problem but a plain 1x1 there, with short last bands,
    strides up to 3 and kernels smaller than the stride."""
    x, w, b, stride_drawn, padding, _ = problem
    stride = stride or stride_drawn
    _, c, kh, kw = w.shape
    assume(x.shape[2] + 2 * padding[0] >= kh and x.shape[3] + 2 * padding[1] >= kw)
    out_h = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    row_bytes = c * kh * kw * (-(-(x.shape[3] + 2 * padding[1]) // stride[1])) * x.itemsize
    image_bytes = c * kh * kw * out_h * out_w * x.itemsize  # more than this: the wide path
    wide_calls = []
    wide = conv_native._wide_conv2d
    monkeypatch.setattr(conv_native, "_wide_conv2d",
                        lambda *args: wide_calls.append(1) or wide(*args))
    monkeypatch.setattr(conv_native, "_STACK_BELOW", 0)
    monkeypatch.setattr(conv_native, "_BAND_BYTES",
                        min(band_rows * row_bytes, image_bytes) - 1)
    monkeypatch.setattr(conv_native, "_WIDE_MAX_ROWS", 10**9)
    y = conv.conv2d(x, w, b, stride, padding, path="native")
    pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0)
    assert len(wide_calls) == (0 if pointwise else 1)
    np.testing.assert_allclose(y, conv.conv2d(x, w, b, stride, padding, path="portable"),
                               rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problem=conv_problems(), stride=st.sampled_from([(1, 1), (2, 2), (3, 2), (1, 3)]))
def test_kept_columns_backward_equals_portable_path(problem, stride):
    """The training backward of small outputs (kept columns; the input gradient through
    the stride phases of the padded image) on random shapes, strides up to 3 and kernels
    smaller than the stride."""
    x, w, b, _, padding, _ = problem
    x = np.concatenate([x, x[::-1] * 0.5])  # at least two images: the stacked path
    assume(x.shape[2] + 2 * padding[0] >= w.shape[2] and x.shape[3] + 2 * padding[1]
           >= w.shape[3])
    y, columns = conv.conv2d(x, w, b, stride, padding, keep_columns=True)
    pointwise = w.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
    assert (columns is None) == pointwise
    dy = np.random.default_rng(int(abs(x.sum()) * 1000) % 2**16).standard_normal(y.shape)
    kept = conv.conv2d_backward(dy, x, w, stride, padding, columns=columns)
    portable = conv.conv2d_backward(dy, x, w, stride, padding, path="portable")
    for fast, slow in zip(kept, portable, strict=True):
        np.testing.assert_allclose(fast, host(slow), rtol=1e-12, atol=1e-12)


def test_columns_are_kept_only_when_built_and_within_the_budget(monkeypatch):
    from xpnn.backends import conv_native

    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    assert conv.conv2d(x[:1], w, keep_columns=True)[1] is None  # one image: not stacked
    pointwise = rng.standard_normal((4, 3, 1, 1))  # its columns would be x itself
    assert conv.conv2d(x, pointwise, keep_columns=True)[1] is None
    monkeypatch.setattr(conv_native, "_KEEP_BYTES", 2 * 27 * 25 * 8 - 1)
    y, columns = conv.conv2d(x, w, padding=1, keep_columns=True)
    assert columns is None
    np.testing.assert_allclose(y, conv_reference(x, w, None, (1, 1), (1, 1)), rtol=1e-12,
                               atol=1e-12)
    monkeypatch.setattr(conv_native, "_KEEP_BYTES", 2 * 27 * 25 * 8)
    assert conv.conv2d(x, w, padding=1, keep_columns=True)[1].shape == (27, 2 * 25)


def test_keep_columns_returns_a_pair_on_every_backend(backend):
    x = backend.asarray(np.ones((2, 1, 4, 4)), "float64")
    w = backend.asarray(np.ones((1, 1, 3, 3)), "float64")
    y, columns = conv.conv2d(x, w, keep_columns=True)
    assert_close(y, np.full((2, 1, 2, 2), 9.0), backend=backend)
    dx, dw = conv.conv2d_backward(backend.asarray(np.ones((2, 1, 2, 2)), "float64"), x, w,
                                  columns=columns)
    assert_close(dw, np.full((1, 1, 3, 3), 8.0), backend=backend)
    assert_close(dx, conv_portable.conv2d_backward(np.ones((2, 1, 2, 2)), np.ones((2, 1, 4, 4)),
                                                   np.ones((1, 1, 3, 3)), (1, 1), (0, 0))[0],
                 backend=backend)
