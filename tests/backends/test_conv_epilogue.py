"""conv2d's fused epilogue ``act(scale * conv(x, w) + bias)`` on every backend: each
backend's kernel (NumPy's blocked in-place epilogue, torch's in-place ops) and the portable
one equal a float64 reference, for every combination of scale, bias and slope (0: ReLU,
1: identity, None: no activation). The NumPy strategies' own epilogue tests (blocks, wide
rows) are in test_numpy_conv.py."""

import numpy as np
import pytest

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


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kernels", ["ops", "portable"])
def test_fused_epilogue_matches_reference(backend, case, kernels):
    x_shape, w_shape, stride, padding, with_scale, with_bias, slope = case
    ops = backend.ops if kernels == "ops" else backend.ops.portable
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    scale = rng.uniform(0.5, 2.0, w_shape[0]) if with_scale else None
    bias = rng.standard_normal(w_shape[0]) if with_bias else None

    def as32(a):
        return None if a is None else backend.asarray(a, dtype="float32")

    y = ops.conv2d(as32(x), as32(w), as32(bias), stride, padding, scale=as32(scale),
                   negative_slope=slope)
    assert_close(y, reference(x, w, scale, bias, stride, padding, slope), rtol=1e-4,
                 atol=1e-4, backend=backend)
