"""conv2d's fused epilogue ``act(scale * conv(x, w) + bias)``: the native paths (the NumPy
blocked in-place epilogue, torch's in-place ops) equal the portable path and a float64
reference written here, including outputs split over many cache blocks."""

import numpy as np
import pytest

from xpnn.backends import conv, conv_native
from xpnn.errors import BackendError
from xpnn.testing import assert_close, conv2d_reference


def reference(x, w, scale, bias, stride, padding, slope):
    y = conv2d_reference(x, w, None, stride, padding)
    if scale is not None:
        y = y * scale[None, :, None, None]
    if bias is not None:
        y = y + bias[None, :, None, None]
    if slope is not None:
        y = np.where(y > 0, y, slope * y)
    return y


CASES = [
    # (x shape, w shape, stride, padding, scale?, bias?, slope)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1), True, True, 0.1),
    ((1, 5, 8, 8), (6, 5, 3, 3), (2, 2), (1, 1), True, True, 0.0),
    ((2, 4, 5, 5), (3, 4, 1, 1), (1, 1), (0, 0), True, False, 1.0),
    ((2, 4, 5, 5), (3, 4, 1, 1), (1, 1), (0, 0), False, True, 0.01),
    ((1, 2, 6, 6), (3, 2, 3, 3), (1, 1), (0, 0), True, True, None),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["auto", "portable"])
def test_fused_epilogue_matches_reference(backend, case, path):
    x_shape, w_shape, stride, padding, with_scale, with_bias, slope = case
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    scale = rng.uniform(0.5, 2.0, w_shape[0]) if with_scale else None
    bias = rng.standard_normal(w_shape[0]) if with_bias else None

    def as32(a):
        return None if a is None else backend.asarray(a, dtype="float32")

    y = conv.conv2d(as32(x), as32(w), as32(bias), stride, padding, path=path,
                    scale=as32(scale), negative_slope=slope)
    assert_close(y, reference(x, w, scale, bias, stride, padding, slope), rtol=1e-4,
                 atol=1e-4, backend=backend)


def test_numpy_epilogue_over_many_blocks(monkeypatch):
    """Blocks of 2 rows of 20 channels, so partial last blocks are exercised too."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5)).astype("float32")
    w = rng.standard_normal((5, 3, 3, 3)).astype("float32")
    scale = rng.uniform(0.5, 2.0, 5).astype("float32")
    bias = rng.standard_normal(5).astype("float32")
    monkeypatch.setattr(conv_native, "_EPILOGUE_BYTES", 2 * 30 * 4)
    y = conv_native.numpy_conv2d(x, w, bias, (1, 1), (1, 1), scale=scale, negative_slope=0.1)
    expected = reference(x.astype(np.float64), w, scale, bias, (1, 1), (1, 1), 0.1)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_slopes_outside_zero_one_are_refused():
    x, w = np.ones((1, 1, 3, 3), "float32"), np.ones((1, 1, 1, 1), "float32")
    with pytest.raises(BackendError, match="negative_slope"):
        conv.conv2d(x, w, negative_slope=1.5)


@pytest.mark.parametrize("case", CASES)
def test_numpy_epilogue_on_wide_rows(monkeypatch, case):
    """With a budget of one output row and no stacking, every convolution but a plain 1x1
    runs band by band over wide rows, the epilogue dropping the extra columns."""
    x_shape, w_shape, stride, padding, with_scale, with_bias, slope = case
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    scale = rng.uniform(0.5, 2.0, w_shape[0]) if with_scale else None
    bias = rng.standard_normal(w_shape[0]) if with_bias else None
    monkeypatch.setattr(conv_native, "_BAND_BYTES", 8)
    monkeypatch.setattr(conv_native, "_STACK_BELOW", 0)
    y = conv_native.numpy_conv2d(x, w, bias, stride, padding, scale=scale,
                                 negative_slope=slope)
    np.testing.assert_allclose(y, reference(x, w, scale, bias, stride, padding, slope),
                               rtol=1e-12, atol=1e-12)
