"""The CuPy backend's kernels (:mod:`xpnn.backends.cupy_kernels`) against their portable
twins on the same GPU (``backend.ops`` against ``backend.ops.portable``): convolutions over
kernel sizes 1/3/5, strides 1/2, paddings 0/1, batches 1/3, float32/float64, with and without
the fused scale, bias and (leaky) ReLU; max pooling with ties, NaN and ``-inf`` windows;
training BatchNorm (+ activation) on 4-D and 2-D inputs. These skip where CuPy cannot run.

The first tests run everywhere: importing the modules needs no CuPy, the overrides keep the
portable signatures, and what the CuPy kernels do not handle reaches the portable kernel
before CuPy is imported.
"""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from xpnn import backends
from xpnn.backends import cupy_backend, cupy_kernels, portable
from xpnn.backends.backend import signature_mismatch

OVERRIDDEN = {"conv2d", "conv2d_train", "conv2d_backward", "max_pool2d",
              "max_pool2d_backward", "batchnorm_train", "batchnorm_backward"}


# -- everywhere ---------------------------------------------------------------------------------


def test_importing_the_cupy_backend_and_its_kernels_imports_no_cupy():
    code = ("import sys, xpnn.backends.cupy_backend, xpnn.backends.cupy_kernels; "
            "assert 'cupy' not in sys.modules, 'imported cupy'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cupy_overrides_keep_the_portable_signatures():
    assert set(cupy_backend.KERNELS) == OVERRIDDEN
    for name, function in cupy_backend.KERNELS.items():
        assert not signature_mismatch(function, portable.KERNELS[name]), name


NUMPY = backends.make_backend("numpy")


def test_what_the_cupy_kernels_do_not_handle_runs_the_portable_kernel():
    """Dilation, groups, float16 and SyncBatchNorm reach the portable kernel before CuPy is
    imported (here on NumPy arrays, where importing CuPy would fail)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 4, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    cases = [({"dilation": (2, 2)}, w[:, :1].repeat(4, axis=1)), ({"groups": 2}, w)]
    for options, weight in cases:
        want = portable.conv2d(NUMPY, x, weight, None, (1, 1), (1, 1), **options)
        got = cupy_kernels.conv2d(NUMPY, x, weight, None, (1, 1), (1, 1), **options)
        np.testing.assert_array_equal(got, want)
        y, saved = cupy_kernels.conv2d_train(NUMPY, x, weight, None, (1, 1), (1, 1), **options)
        dx, dw = cupy_kernels.conv2d_backward(NUMPY, y, x, weight, (1, 1), (1, 1), saved,
                                              **options)
        want_dx, want_dw = portable.conv2d_backward(NUMPY, y, x, weight, (1, 1), (1, 1), None,
                                                    **options)
        np.testing.assert_array_equal(dx, want_dx)
        np.testing.assert_array_equal(dw, want_dw)
    half = x.astype("float16")
    np.testing.assert_array_equal(cupy_kernels.max_pool2d(NUMPY, half, (2, 2), (2, 2), (0, 0)),
                                  portable.max_pool2d(NUMPY, half, (2, 2), (2, 2), (0, 0)))
    y, mean, var, saved = cupy_kernels.batchnorm_train(NUMPY, x, None, None, 1e-5,
                                                       allreduce=lambda arrays: arrays,
                                                       count=72)
    want = portable.batchnorm_train(NUMPY, x, None, None, 1e-5, count=72)
    np.testing.assert_allclose(y, want[0], rtol=1e-12)
    dx, _, dbeta = cupy_kernels.batchnorm_backward(NUMPY, x, saved)  # the portable record
    want_dx, _, want_dbeta = portable.batchnorm_backward(NUMPY, x, want[3])
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-12)


# -- on a GPU -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu():
    can_run, _, reason = backends.probe("cupy")
    if not can_run:
        pytest.skip(f"cupy backend unavailable: {reason}")
    backend = backends.make_backend("cupy")
    assert backend.ops.overridden == OVERRIDDEN
    return backend


def _tolerance(dtype):
    return {"rtol": 2e-5, "atol": 2e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}


def _close(gpu, got, want, dtype, what):
    if want is None:
        assert got is None, what
        return
    got, want = gpu.to_numpy(got), gpu.to_numpy(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    tolerance = _tolerance(dtype)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0, where=np.isfinite(want))))
    np.testing.assert_allclose(got, want, rtol=tolerance["rtol"],
                               atol=tolerance["atol"] * scale, err_msg=str(what))


CONV_CASES = list(itertools.product([1, 3, 5], [1, 2], [0, 1], [1, 3], ["float32", "float64"]))


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "image-chunks"])
@pytest.mark.parametrize(("k", "stride", "padding", "n", "dtype"), CONV_CASES, ids=str)
def test_cupy_convolution_equals_the_portable_one(gpu, monkeypatch, k, stride, padding, n,
                                                  dtype, chunked):
    if chunked:  # one image per chunk of columns; training keeps no columns
        monkeypatch.setattr(cupy_kernels, "COLUMN_BYTES", 1)
        monkeypatch.setattr(cupy_kernels, "KEEP_BYTES", 0)
    rng = np.random.default_rng(k * 100 + stride * 10 + padding + n)
    c, o, h, w = 3, 5, 11, 9
    x = gpu.asarray(rng.standard_normal((n, c, h, w)), dtype)
    weight = gpu.asarray(rng.standard_normal((o, c, k, k)), dtype)
    scales = [None, gpu.asarray(rng.uniform(0.5, 2.0, o), dtype)]
    biases = [None, gpu.asarray(rng.standard_normal(o), dtype)]
    geometry = ((stride, stride), (padding, padding))
    for scale, bias, slope in itertools.product(scales, biases, [None, 0.0, 0.1]):
        what = ("conv2d", scale is None, bias is None, slope)
        outputs = [kernels.conv2d(x, weight, bias, *geometry, scale=scale, negative_slope=slope)
                   for kernels in (gpu.ops, gpu.ops.portable)]
        _close(gpu, *outputs, dtype, what)
    for bias in biases:
        y, saved = gpu.ops.conv2d_train(x, weight, bias, *geometry)
        want_y, _ = gpu.ops.portable.conv2d_train(x, weight, bias, *geometry)
        _close(gpu, y, want_y, dtype, ("conv2d_train", bias is None))
        dy = gpu.asarray(rng.standard_normal(tuple(want_y.shape)), dtype)
        want = gpu.ops.portable.conv2d_backward(dy, x, weight, *geometry, None)
        for record, need_dx in itertools.product([saved, None], [True, False]):
            got = gpu.ops.conv2d_backward(dy, x, weight, *geometry, record, need_dx=need_dx)
            what = ("conv2d_backward", record is None, need_dx)
            _close(gpu, got[0], want[0] if need_dx else None, dtype, what)
            _close(gpu, got[1], want[1], dtype, what)


NAN, NINF = np.nan, -np.inf
SPECIAL = np.array([[[[NINF, NINF, 1.0, NAN, 0.5, 2.0],
                      [NINF, NINF, NAN, 2.0, NAN, 2.0],
                      [3.0, NAN, NINF, NINF, 1.0, 1.0],
                      [NAN, 4.0, NINF, NINF, NINF, 1.0],
                      [1.0, 1.0, 1.0, 1.0, NINF, NAN]]]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("window", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)),
                                    ((3, 3), (2, 2), (1, 1))], ids=str)
def test_cupy_max_pooling_equals_the_portable_one_with_ties_nan_and_minus_inf(gpu, window,
                                                                              dtype):
    ties = np.random.default_rng(1).integers(-2, 3, size=(3, 4, 8, 7))  # small ints: ties
    for x_host in (SPECIAL, ties):
        x = gpu.asarray(x_host, dtype)
        results = []
        for kernels in (gpu.ops, gpu.ops.portable):
            y = kernels.max_pool2d(x, *window)
            dy = gpu.asarray(np.arange(1.0, 1.0 + y.size).reshape(tuple(y.shape)), dtype)
            results.append((gpu.to_numpy(y),
                            gpu.to_numpy(kernels.max_pool2d_backward(dy, x, y, *window))))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("affine", [(True, True), (False, True), (True, False), (False, False)],
                         ids=["gamma-beta", "beta", "gamma", "neither"])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(8, 16, 14, 14), (3, 5, 7, 2), (9, 6), (2, 4, 1, 1)], ids=str)
def test_cupy_batchnorm_equals_the_portable_one(gpu, shape, dtype, slope, affine):
    rng = np.random.default_rng(2)
    c = shape[1]
    x = gpu.asarray(rng.standard_normal(shape) * 3.0 + 1.5, dtype)
    gamma = gpu.asarray(rng.standard_normal(c), dtype) if affine[0] else None
    beta = gpu.asarray(rng.standard_normal(c), dtype) if affine[1] else None
    dy = gpu.asarray(rng.standard_normal(shape), dtype)
    count = int(np.prod(shape)) // c
    results = []
    for kernels in (gpu.ops, gpu.ops.portable):
        y, mean, var, saved = kernels.batchnorm_train(x, gamma, beta, 1e-5,
                                                      negative_slope=slope, count=count)
        dx, dgamma, dbeta = kernels.batchnorm_backward(dy, saved)
        none, dgamma_only, dbeta_only = kernels.batchnorm_backward(dy, saved, need_dx=False)
        assert none is None
        results.append((y, mean, var, dx, dgamma, dbeta, dgamma_only, dbeta_only))
    names = ("y", "mean", "var", "dx", "dgamma", "dbeta", "dgamma only", "dbeta only")
    for name, got, want in zip(names, *results, strict=True):
        _close(gpu, got, want, dtype, name)
