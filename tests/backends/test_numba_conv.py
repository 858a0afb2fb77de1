"""The numba-compiled im2col / col2im (backends/numpy_conv/compiled.py) against their NumPy
twins: the columns and the column gradients added back must be the same numbers (exactly:
copies, and sums taken in the same order), and whole convolutions with ``XPNN_NUMBA`` on and
off must agree (to float rounding where a product of another shape is involved)."""

from __future__ import annotations

import numpy as np
import pytest

from xpnn.backends import numba_support, numpy_conv
from xpnn.backends.numpy_conv import compiled, stacked
from xpnn.backends.numpy_conv.windows import Windows, output_hw

pytest.importorskip("numba")

# (N, C, H, W, KH, KW, stride, padding): kernels 1/3/5/7, strides 1/2/3, paddings 0/1/2,
# odd and non-square sizes, one image and several, one channel and several.
SHAPES = [
    (1, 1, 5, 5, 1, 1, (1, 1), (0, 0)),
    (3, 2, 6, 7, 1, 1, (2, 2), (1, 1)),
    (2, 3, 9, 8, 3, 3, (1, 1), (1, 1)),
    (4, 1, 28, 28, 3, 3, (1, 1), (1, 1)),
    (3, 5, 11, 13, 3, 3, (2, 2), (1, 1)),
    (2, 4, 7, 7, 3, 3, (3, 3), (0, 0)),
    (1, 3, 10, 9, 3, 3, (2, 1), (2, 0)),
    (2, 2, 9, 11, 5, 5, (1, 1), (2, 2)),
    (3, 2, 12, 10, 5, 3, (2, 3), (2, 1)),
    (1, 2, 13, 13, 7, 7, (2, 2), (2, 2)),
    (2, 1, 15, 14, 7, 7, (3, 3), (1, 1)),
    (2, 3, 5, 6, 3, 3, (1, 1), (2, 2)),  # padding wider than half the kernel
    (5, 2, 4, 4, 3, 3, (3, 3), (1, 1)),  # stride larger than the tail
    (2, 2, 3, 3, 5, 5, (1, 1), (2, 2)),  # kernel larger than the image
    # 8 channels and more: the training convolution keeps one row of columns per pixel
    (2, 8, 9, 9, 3, 3, (2, 2), (1, 1)),
    (3, 16, 7, 7, 3, 3, (1, 1), (1, 1)),
    (2, 9, 6, 7, 5, 3, (1, 2), (2, 1)),
    (2, 8, 3, 3, 5, 5, (1, 1), (2, 2)),
    (1, 8, 6, 5, 3, 3, (1, 1), (1, 1)),  # one image
]
DTYPES = [np.float32, np.float64]


def shape_id(shape) -> str:
    n, c, h, w, kh, kw, s, p = shape
    return f"x{n}x{c}x{h}x{w}-k{kh}x{kw}-s{s[0]}{s[1]}-p{p[0]}{p[1]}"


@pytest.fixture
def numba_on(monkeypatch):
    """The compiled kernels on (whatever the environment said)."""
    monkeypatch.delenv(numba_support.SWITCH, raising=False)
    assert numba_support.enabled()


def images(shape, dtype, contiguous=True, seed=0):
    """Random ``(N, C, H, W)`` images, optionally a non-contiguous view (every other column
    of a twice-as-wide array, channels last in memory)."""
    n, c, h, w = shape[:4]
    rng = np.random.default_rng(seed)
    if contiguous:
        return rng.standard_normal((n, c, h, w)).astype(dtype)
    wide = rng.standard_normal((n, h, 2 * w, c)).astype(dtype)
    x = wide[:, :, ::2, :].transpose(0, 3, 1, 2)
    assert not x.flags.c_contiguous and x.shape == (n, c, h, w)
    return x


def windows_for(shape, dtype, chunk=1, dilation=(1, 1)) -> Windows:
    n, c, h, w, kh, kw, stride, padding = shape
    out_hw = output_hw((n, c, h, w), (1, c, kh, kw), stride, padding, dilation)
    return Windows(chunk, c, h, w, dtype, (kh, kw), stride, padding, out_hw, dilation)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_stacked_columns_equal_the_numpy_twin(numba_on, shape, dtype, contiguous):
    x = images(shape, dtype, contiguous)
    windows = windows_for(shape, dtype)
    got = windows.stacked_columns(x)
    want = windows.stacked_columns_numpy(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_chunk_columns_equal_the_numpy_twin(numba_on, shape, dtype, contiguous):
    x = images(shape, dtype, contiguous)
    n = shape[0]
    # a chunk larger than the batch: the buffer's tail stays unused
    got = windows_for(shape, dtype, chunk=n + 1).im2col(x).copy()
    want = windows_for(shape, dtype, chunk=n + 1).im2col_numpy(x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_col2im_equals_the_numpy_twin_exactly(numba_on, shape, dtype):
    """Same column gradient in, the same sums (same order) out, into a strided ``out``."""
    n, c, h, w = shape[:4]
    windows = windows_for(shape, dtype, chunk=n)
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal(windows.matrix.shape).astype(dtype)
    got = np.full((n, c, h, 2 * w), np.nan, dtype=dtype)[:, :, :, ::2]  # not contiguous
    want = np.empty((n, c, h, w), dtype=dtype)
    windows.col2im(matrix, got)
    windows.col2im_numpy(matrix, want)
    np.testing.assert_array_equal(got, want)


def pixel_order(stacked_columns, shape):
    """Stacked columns ``(C KH KW, N OH OW)`` reordered as the pixel columns ``(N OH OW,
    KH KW C)``."""
    c, kh, kw = shape[1], shape[4], shape[5]
    return (stacked_columns.reshape(c, kh, kw, -1).transpose(3, 1, 2, 0)
            .reshape(-1, kh * kw * c))


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_pixel_columns_are_the_stacked_columns_reordered(numba_on, shape, dtype, contiguous):
    """One row per output pixel, taps row-major, channels innermost: the same copies."""
    x = images(shape, dtype, contiguous)
    windows = windows_for(shape, dtype)
    got = compiled.pixel_im2col(x, windows.out_hw, shape[4:6], shape[6], shape[7])
    np.testing.assert_array_equal(got, pixel_order(windows.stacked_columns_numpy(x), shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_pixel_col2im_is_the_adjoint_of_the_pixel_columns(numba_on, shape, dtype):
    """The pixel col2im adds each column entry back where it was read from, as the NumPy
    col2im does for the same entries in the stacked order. It sums in another order, so
    the entries are small integers (every partial sum exact): equal exactly. dx comes back
    channels-last."""
    n, c, h, w = shape[:4]
    windows = windows_for(shape, dtype, chunk=n)
    rng = np.random.default_rng(1)
    stacked_grad = rng.integers(-8, 8, (c * shape[4] * shape[5], n * windows.out_hw[0]
                                        * windows.out_hw[1])).astype(dtype)
    got = compiled.pixel_col2im(pixel_order(stacked_grad, shape), (n, c, h, w),
                                windows.out_hw, shape[4:6], shape[6], shape[7])
    want = np.empty((n, c, h, w), dtype=dtype)
    matrix = stacked_grad.reshape(c * shape[4] * shape[5], n, -1).transpose(1, 0, 2)
    windows.col2im_numpy(np.ascontiguousarray(matrix), want)
    np.testing.assert_array_equal(got, want)
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("dilation", [(2, 2), (1, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dilated_columns_and_col2im_equal_the_numpy_twin(numba_on, dtype, dilation):
    shape = (2, 3, 13, 12, 3, 3, (2, 1), (2, 1))
    x = images(shape, dtype)
    windows = windows_for(shape, dtype, chunk=2, dilation=dilation)
    np.testing.assert_array_equal(windows.im2col(x).copy(), windows.im2col_numpy(x))
    matrix = np.random.default_rng(2).standard_normal(windows.matrix.shape).astype(dtype)
    got, want = np.empty_like(x), np.empty_like(x)
    windows.col2im(matrix, got)
    windows.col2im_numpy(matrix, want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_input_gradient_matches_the_stride_phase_twin(numba_on, shape, dtype):
    """The compiled path multiplies ``W2^T dy`` without the stride phases' zero columns, so
    the product may round differently: equal to float rounding."""
    n, c, h, w, kh, kw, stride, padding = shape
    o = 4
    out_hw = output_hw((n, c, h, w), (o, c, kh, kw), stride, padding)
    rng = np.random.default_rng(3)
    w2 = rng.standard_normal((o, c * kh * kw)).astype(dtype)
    stacked_dy = rng.standard_normal((o, n * out_hw[0] * out_hw[1])).astype(dtype)
    args = (w2, stacked_dy, (n, c, h, w), (kh, kw), stride, padding, out_hw)
    got = stacked.input_gradient(*args)
    want = stacked.input_gradient_numpy(*args)
    # channel-major, as the training convolution's outputs (a transposed NCHW view)
    assert got.dtype == want.dtype and got.transpose(1, 0, 2, 3).flags.c_contiguous
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * o)


def convolution_problem(shape, dtype, contiguous=True, o=3):
    n, c, h, w, kh, kw, stride, padding = shape
    x = images(shape, dtype, contiguous, seed=4)
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((o, c, kh, kw)).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    out_hw = output_hw(x.shape, weight.shape, stride, padding)
    dy = rng.standard_normal((n, o, *out_hw)).astype(dtype)
    return x, weight, bias, dy


def train_and_backward(monkeypatch, switch, strategy, x, weight, bias, dy, stride, padding,
                       **options):
    """``(y, dx, dw)`` of conv2d_train + conv2d_backward with ``XPNN_NUMBA=switch``."""
    monkeypatch.setenv(numba_support.SWITCH, switch)
    y, saved = numpy_conv.conv2d_train(None, x, weight, bias, stride, padding,
                                       strategy=strategy, **options)
    dx, dw = numpy_conv.conv2d_backward(None, dy, x, weight, stride, padding, saved,
                                        strategy=strategy, **options)
    return y, dx, dw


@pytest.mark.parametrize("strategy", [None, "stacked", "chunked"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_training_convolution_is_the_same_with_numba_on_and_off(monkeypatch, shape, dtype,
                                                                contiguous, strategy):
    stride, padding = shape[6], shape[7]
    x, weight, bias, dy = convolution_problem(shape, dtype, contiguous)
    on = train_and_backward(monkeypatch, "1", strategy, x, weight, bias, dy, stride, padding)
    off = train_and_backward(monkeypatch, "0", strategy, x, weight, bias, dy, stride, padding)
    # The chunked strategy multiplies the same columns the same way either way: y and dw
    # identical. The stacked one keeps channels-last columns with numba on (one row per
    # output pixel, or the stacked rows multiplied in the other operand order): equal to
    # float rounding, like dx everywhere.
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    for got, want in zip(on, off, strict=True):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * 10)
    if strategy == "chunked":
        np.testing.assert_array_equal(on[0], off[0])
        np.testing.assert_array_equal(on[2], off[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inference_and_grouped_convolutions_are_the_same_with_numba_on_and_off(
        monkeypatch, dtype):
    shape = (3, 4, 11, 10, 3, 3, (2, 1), (1, 2))
    stride, padding = shape[6], shape[7]
    x, weight, bias, dy = convolution_problem(shape, dtype, o=4)
    results = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(numba_support.SWITCH, switch)
        results[switch] = [numpy_conv.conv2d(None, x, weight, bias, stride, padding,
                                             negative_slope=0.1, strategy=name)
                           for name in ("chunked", "stacked")]
    for got, want in zip(results["1"], results["0"], strict=True):
        np.testing.assert_array_equal(got, want)
    # grouped and dilated: the grouped strategy's Windows take the compiled path too
    grouped_w = weight[:, :2]
    out_hw = output_hw(x.shape, grouped_w.shape, stride, padding, (2, 1))
    grouped_dy = np.random.default_rng(6).standard_normal((3, 4, *out_hw)).astype(dtype)
    options = {"dilation": (2, 1), "groups": 2}
    on = train_and_backward(monkeypatch, "1", None, x, grouped_w, bias, grouped_dy, stride,
                            padding, **options)
    off = train_and_backward(monkeypatch, "0", None, x, grouped_w, bias, grouped_dy, stride,
                             padding, **options)
    for got, want in zip(on, off, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_switch_picks_the_compiled_kernels(monkeypatch):
    """With numba on, the strategies call the compiled kernels (else the comparisons above
    compare the twin with itself); with ``XPNN_NUMBA=0`` they do not."""
    calls = []
    for name in ("im2col", "col2im"):
        real = getattr(compiled, name)

        def spy(*args, _name=name, _real=real, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(compiled, name, spy)
    shape = (2, 3, 9, 9, 3, 3, (2, 2), (1, 1))
    x, weight, bias, dy = convolution_problem(shape, np.float32)
    for strategy in ("stacked", "chunked"):
        calls.clear()
        train_and_backward(monkeypatch, "1", strategy, x, weight, bias, dy, (2, 2), (1, 1))
        assert "im2col" in calls and "col2im" in calls, strategy
        calls.clear()
        train_and_backward(monkeypatch, "0", strategy, x, weight, bias, dy, (2, 2), (1, 1))
        assert calls == [], strategy


def test_other_dtypes_take_the_numpy_twin(numba_on):
    """float16 (not compiled) still works, through the NumPy code."""
    shape = (2, 2, 7, 7, 3, 3, (1, 1), (1, 1))
    x = images(shape, np.float16)
    assert not compiled.usable(x)
    windows = windows_for(shape, np.float16)
    np.testing.assert_array_equal(windows.stacked_columns(x),
                                  windows.stacked_columns_numpy(x))


def test_inference_alone_does_not_load_numba_and_training_does():
    """Loading numba costs 120-150 MB of resident memory: an inference convolution in a
    process that has not loaded it runs the NumPy twins (same numbers); training loads it."""
    import os
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from xpnn import backends
ops = backends.make_backend("numpy").ops
x, w = np.ones((2, 3, 9, 9), "float32"), np.ones((4, 3, 3, 3), "float32")
ops.conv2d(x, w, None, (1, 1), (1, 1))
print("numba" in sys.modules)
ops.conv2d_train(x, w, None, (1, 1), (1, 1))
print("numba" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "XPNN_NUMBA": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_training_blocks_pass_the_finite_difference_check(numba_on, stride):
    """A ConvBNAct -> 1x1 ConvBNAct -> 3x3 ConvBNAct chain in float64 whose 3x3 layers take
    the pixel columns (8 and more input channels, at least 8 output pixels per output
    channel) and whose activations flow channels-last: input and parameter gradients
    against central differences."""
    from xpnn.gradcheck import gradcheck
    from xpnn.layers import ConvBNAct, Sequential

    model = Sequential([ConvBNAct(8, 4, 3, stride=stride), ConvBNAct(4, 8, 1),
                        ConvBNAct(8, 2, 3)], seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 8))
    _, saved = numpy_conv.conv2d_train(None, x, model.layers[0].conv.weight.value, None,
                                       (stride, stride), (1, 1))
    assert isinstance(saved, stacked.PixelColumns)  # the path under test
    errors = gradcheck(model, x, max_checks=30)
    assert max(errors.values()) < 1e-6, errors
