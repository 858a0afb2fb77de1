"""The compiled training BatchNorm (+ activation) of the NumPy backend
(:mod:`xpnn.backends.numba_batchnorm`) against its portable twin
(:func:`xpnn.backends.portable.batchnorm_train` / ``batchnorm_backward``): the same
outputs, statistics and gradients on every shape class, dtype and activation, the same
handling of infinities and NaN, and the portable path wherever the compiled one does not
apply."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.backends import numba_batchnorm

pytest.importorskip("numba")

NUMPY = backends.make_backend("numpy")
SHAPES = [(64, 16, 28, 28), (3, 5, 7, 2), (2, 4, 1, 1), (9, 6), (2, 1)]
SLOPES = [None, 0.0, 0.1, 1.0]


@pytest.fixture(autouse=True)
def _compiled_on(monkeypatch):
    monkeypatch.delenv("XPNN_NUMBA", raising=False)


def _problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3.0 + 1.5).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def _both(x, gamma, beta, dy, slope, need_dx=True):
    """(portable, compiled) results: y, mean, var, dx, dgamma, dbeta. The portable kernel
    (the reference) gets C-contiguous copies of x and dy: NumPy's float32 sums along
    strided axes are not pairwise, and a rounding-size difference in y can flip the ReLU
    mask of a value near 0, which no tolerance covers."""
    results = []
    for kernels in (NUMPY.ops.portable, NUMPY.ops):
        if kernels is NUMPY.ops.portable:
            args = np.ascontiguousarray(x), np.ascontiguousarray(dy)
        else:
            args = x, dy
        y, mean, var, saved = kernels.batchnorm_train(args[0], gamma, beta, 1e-5,
                                                      negative_slope=slope)
        dx, dgamma, dbeta = kernels.batchnorm_backward(args[1], saved, need_dx=need_dx)
        results.append((y, mean, var, dx, dgamma, dbeta))
    return results


def _in_layout(a, layout):
    """``a (N, C, ...)`` with the same values laid out ``"nchw"`` (C-contiguous),
    ``"channel-major"`` (``(C, N, ...)`` in memory) or ``"channels-last"`` (``(N, ...,
    C)`` in memory)."""
    if layout == "channel-major":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, 0)), 0, 1)
    if layout == "channels-last":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)
    return np.ascontiguousarray(a)


LAYOUTS = ["nchw", "channel-major", "channels-last"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("slope", SLOPES)
def test_compiled_batchnorm_equals_the_portable_kernel(shape, dtype, slope, layout):
    """In every layout the convolutions hand on (x and dy in it; y and dx come back in
    it, x is read in place)."""
    x, gamma, beta, dy = _problem(shape, dtype)
    x, dy = _in_layout(x, layout), _in_layout(dy, layout)
    portable, compiled = _both(x, gamma, beta, dy, slope)
    _, _, _, saved = NUMPY.ops.batchnorm_train(x, gamma, beta, 1e-5, negative_slope=slope)
    assert np.shares_memory(saved.x, x)
    for array in (compiled[0], compiled[3]):
        assert np.array_equal(_in_layout(array, layout), array)
        assert _in_layout(array, layout).strides == array.strides or array.size == 0
    rtol, atol = (2e-5, 2e-6) if dtype == "float32" else (1e-12, 1e-13)
    names = ("y", "mean", "var", "dx", "dgamma", "dbeta")
    for name, want, got in zip(names, portable, compiled, strict=True):
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.mark.parametrize("slope", [None, 0.0, 0.3, 1.0])
@pytest.mark.parametrize("affine", [(True, True), (False, False)])
def test_channels_last_input_gradient_recomputes_the_activation_test_exactly(slope, affine):
    """For channels-last input the input gradient tests the activation on the normalized
    value recomputed from x, not on y: with a constant channel (v exactly beta, or 0 where
    the ReLU's test is at its edge), the compiled dx equals the one the portable kernel
    computes from y."""
    x, gamma, beta, dy = _problem((4, 3, 5, 5), "float64", seed=2)
    x[:, 0] = 0.0  # a constant channel: v = 0 * gain + beta exactly (0 without beta)
    gamma = gamma if affine[0] else None
    beta = beta if affine[1] else None
    portable, compiled = _both(_in_layout(x, "channels-last"), gamma, beta,
                               _in_layout(dy, "channels-last"), slope)
    for want, got in zip(portable, compiled, strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("affine", [(True, False), (False, True), (False, False)])
def test_compiled_batchnorm_without_gamma_or_beta(affine):
    x, gamma, beta, dy = _problem((4, 3, 5, 5), "float64")
    gamma = gamma if affine[0] else None
    beta = beta if affine[1] else None
    portable, compiled = _both(x, gamma, beta, dy, 0.1)
    for want, got in zip(portable, compiled, strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_compiled_backward_without_input_gradient_gives_the_parameter_gradients():
    x, gamma, beta, dy = _problem((4, 3, 5, 5), "float64")
    portable, compiled = _both(x, gamma, beta, dy, 0.1, need_dx=False)
    assert portable[3] is None and compiled[3] is None
    np.testing.assert_allclose(compiled[4], portable[4], rtol=1e-12)
    np.testing.assert_allclose(compiled[5], portable[5], rtol=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("slope", [0.0, 0.1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_compiled_activation_treats_infinities_and_nan_as_the_layers_do(slope, layout):
    """The normalized values are made ±inf or NaN through β; the compiled forward and
    backward must give the portable kernel's values bit for bit at those positions, and
    an infinite gradient must stay as the portable backward leaves it."""
    x, gamma, _, dy = _problem((2, 4, 3, 3), "float32", seed=1)
    beta = np.array([np.inf, -np.inf, np.nan, 0.0], dtype="float32")
    dy[0, 3, 0, 0], dy[1, 3, 1, 1], dy[0, 1, 2, 2] = np.inf, -np.inf, np.inf
    x, dy = _in_layout(x, layout), _in_layout(dy, layout)
    portable, compiled = _both(x, gamma, beta, dy, slope)
    for index in (0, 3):  # y and dx
        want, got = portable[index], compiled[index]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(compiled[0][:, :3], portable[0][:, :3])


def test_compiled_kernel_is_used_only_where_it_applies(monkeypatch):
    x, gamma, beta, dy = _problem((4, 3, 5, 5), "float32")
    _, _, _, saved = NUMPY.ops.batchnorm_train(x, gamma, beta, 1e-5)
    assert isinstance(saved, numba_batchnorm._Saved)

    monkeypatch.setenv("XPNN_NUMBA", "0")  # switched off: the portable kernel's record
    _, _, _, saved = NUMPY.ops.batchnorm_train(x, gamma, beta, 1e-5)
    assert not isinstance(saved, numba_batchnorm._Saved)
    # ... and a backward of either record works whatever the switch says now
    monkeypatch.delenv("XPNN_NUMBA")
    dx, _, _ = NUMPY.ops.batchnorm_backward(dy, saved)
    assert dx.shape == x.shape

    def summed(arrays):  # a one-rank all-reduce: SyncBatchNorm runs the portable kernel
        return arrays

    _, _, _, saved = NUMPY.ops.batchnorm_train(x, gamma, beta, 1e-5, allreduce=summed,
                                               count=x.size // 3)
    assert not isinstance(saved, numba_batchnorm._Saved)
    half = x.astype("float16")
    _, _, _, saved = NUMPY.ops.batchnorm_train(half, None, None, 1e-5)
    assert not isinstance(saved, numba_batchnorm._Saved)


def test_convbnact_training_fuses_the_activation_and_matches_the_three_layers():
    """ConvBNAct in training runs BatchNorm and its activation as one kernel call; the
    result and every gradient equal those of its three layers run one after another."""
    from xpnn.layers import ConvBNAct, Sequential

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8))
    for activation in ("leaky_relu", "relu"):
        fused = ConvBNAct(3, 5, 3, activation=activation, dtype="float64", seed=0)
        layered = Sequential([fused.conv, fused.bn, fused.act])
        dy = rng.standard_normal((4, 5, 8, 8))
        y1, back1 = fused.forward(x, train=True)
        dx1 = back1(dy)
        grads1 = {name: p.grad.copy() for name, p in fused.named_parameters()}
        fused.zero_grad()
        y2, back2 = layered.forward(x, train=True)
        dx2 = back2(dy)
        np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx1, dx2, rtol=1e-10, atol=1e-12)
        for name, p in fused.named_parameters():
            np.testing.assert_allclose(grads1[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_channel_major_input_is_read_without_a_copy_and_its_gradient_keeps_the_layout(
        dtype):
    """The NumPy convolution's training output is the (N, C, H, W) view of a channel-major
    (C, N, H W) product: the compiled kernels read it in place, give the portable results,
    and write y and dx in the same channel-major layout (which the next convolution and the
    convolution's backward read without a copy); dy is read in either layout."""
    rng = np.random.default_rng(3)
    n, c, h, w = 6, 4, 3, 5
    x = np.ascontiguousarray(rng.standard_normal((c, n, h * w)).astype(dtype))
    x = x.transpose(1, 0, 2).reshape(n, c, h, w)
    assert not x.flags.c_contiguous
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal((n, c, h, w)).astype(dtype)
    portable, compiled = _both(x, gamma, beta, dy, 0.1)
    _, _, _, saved = NUMPY.ops.batchnorm_train(x, gamma, beta, 1e-5, negative_slope=0.1)
    assert saved.channel_major and np.shares_memory(saved.x, x)
    rtol = 2e-5 if dtype == "float32" else 1e-12
    for want, got in zip(portable, compiled, strict=True):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    for array in (compiled[0], compiled[3]):  # y and dx channel-major, as x
        assert array.transpose(1, 0, 2, 3).flags.c_contiguous
    dy_channel_major = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    dx, dgamma, dbeta = NUMPY.ops.batchnorm_backward(dy_channel_major, saved)
    np.testing.assert_array_equal(dx, compiled[3])
    np.testing.assert_array_equal(dgamma, compiled[4])
