"""The CuPy backend's kernel overrides: convolution, max pooling and training BatchNorm (+ a
(leaky) ReLU) in a few hand-written CUDA kernels around cuBLAS, each the twin of the kernel
of the same name in :mod:`xpnn.backends.portable`.

=======================  ===================================================================
``conv2d``               im2col kernel, one cuBLAS product per chunk of images, and the
                         epilogue ``act(scale y + bias)`` in one elementwise kernel
``conv2d_train``         im2col kernel and one cuBLAS product; the columns are kept in
                         ``saved`` for the backward
``conv2d_backward``      ``dw`` and ``dcols`` as cuBLAS products, then a col2im kernel that
                         gathers, per input pixel, the entries read from it (no atomics:
                         deterministic, summed in the portable col2im's order)
``max_pool2d``           one kernel over the outputs
``max_pool2d_backward``  one kernel picking each window's element (PyTorch's rule, as the
                         portable kernel), one gathering ``dy`` per input pixel
``batchnorm_train``      per-channel sums accumulated in float64, then ``y = act((x - μ) g +
                         β)`` in one elementwise kernel
``batchnorm_backward``   the two per-channel sums (float64), then ``dx`` in one elementwise
                         kernel
=======================  ===================================================================

Each runs for float32/float64 arrays of one dtype; everything else goes to the portable
kernel: dilated or grouped convolutions, other dtypes (float16), empty arrays, activation
slopes outside [0, 1], and BatchNorm with a data-parallel ``allreduce`` (SyncBatchNorm) in
the forward. A backward given a ``saved`` record it did not write (the portable forward's)
computes the same thing: the convolution recomputes its columns, BatchNorm calls the
portable backward.

The elementwise kernels keep the portable code's operation order and are compiled without
contracting multiplies and adds into FMAs (``--fmad=false``), so the convolution epilogue,
im2col, col2im and the pooling kernels give the portable results bit for bit (given the
same cuBLAS products); BatchNorm differs from it only through its sums (float64 here,
CuPy's float32 reductions there). The ReLU (``negative_slope=0``) is ``maximum(v, 0)``, so
``-inf`` gives 0, as in the ReLU layer and :func:`xpnn.backends.portable.leaky_relu`.

The CUDA sources are in :mod:`xpnn.backends.cupy_sources`. CuPy is imported only when a
kernel runs, and each CUDA kernel is built on first use
(``functools.cache`` getters) and compiled by CuPy on its first call: importing this module
needs no CuPy and no GPU. **None of this has run on a GPU yet**: it is written against
CuPy's documented ``ElementwiseKernel`` / ``ReductionKernel`` API, and
``tests/backends/test_cupy_kernels.py`` compares every kernel with its portable twin
wherever CuPy runs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xpnn.backends import portable
from xpnn.backends.cupy_sources import (
    BN_CENTRED_SQUARES,
    BN_INPUT_GRADIENT,
    BN_NORMALIZE,
    BN_SUM_DZ,
    BN_SUM_DZ_CENTRED,
    COL2IM,
    EPILOGUE,
    IM2COL,
    MAX_POOL,
    MAX_POOL_CHOICE,
    MAX_POOL_GATHER,
    PREAMBLE,
)

# Bytes of im2col columns built at a time by the inference convolution (a chunk of images;
# at least one image per chunk). The training convolution keeps the whole batch's columns.
COLUMN_BYTES = 256 << 20
# The training convolution keeps its columns for the backward when they take at most this
# much (KH KW times the input's memory); larger ones are rebuilt by the backward, so a deep
# network at a large batch holds one layer's columns at a time, not every layer's.
KEEP_BYTES = 256 << 20

# The activation after the affine map, as the kernels take it.
NO_ACTIVATION, RELU, LEAKY_RELU = 0, 1, 2

_FLOATS = (np.dtype("float32"), np.dtype("float64"))

# No FMA contraction: the elementwise kernels round each operation as CuPy's separate
# multiply and add kernels in the portable code do.
_OPTIONS = ("--fmad=false",)

# -- building the kernels (on first use) --------------------------------------------------------


def _cupy():
    import cupy

    return cupy


def _elementwise(source, name: str):
    in_params, out_params, body = source
    return _cupy().ElementwiseKernel(in_params, out_params, body, name, preamble=PREAMBLE,
                                     options=_OPTIONS)


def _channel_sum(source, name: str):
    in_params, map_expr = source
    return _cupy().ReductionKernel(in_params, "float64 total", map_expr, "a + b", "total = a",
                                   "0", name, reduce_type="double", preamble=PREAMBLE,
                                   options=_OPTIONS)


@functools.cache
def _kernel(name: str):
    """The CuPy kernel object ``name`` (built once; CuPy compiles it on its first call and
    caches the binary on disk)."""
    elementwise = {"im2col": IM2COL, "col2im": COL2IM, "epilogue": EPILOGUE,
                   "max_pool": MAX_POOL, "max_pool_choice": MAX_POOL_CHOICE,
                   "max_pool_gather": MAX_POOL_GATHER, "bn_normalize": BN_NORMALIZE,
                   "bn_input_gradient": BN_INPUT_GRADIENT}
    sums = {"bn_centred_squares": BN_CENTRED_SQUARES, "bn_sum_dz": BN_SUM_DZ,
            "bn_sum_dz_centred": BN_SUM_DZ_CENTRED}
    if name in elementwise:
        return _elementwise(elementwise[name], "xpnn_" + name)
    return _channel_sum(sums[name], "xpnn_" + name)


def _activation(slope) -> tuple[int, float]:
    """``(mode, slope)`` for the kernels from a ``negative_slope`` (None: no activation)."""
    if slope is None:
        return NO_ACTIVATION, 0.0
    return (RELU if slope == 0.0 else LEAKY_RELU), float(slope)


def _slope_ok(slope) -> bool:
    return slope is None or 0.0 <= slope <= 1.0


def _same_float(*arrays) -> bool:
    """Whether every array given (None skipped) is float32, or every one float64."""
    dtypes = {a.dtype for a in arrays if a is not None}
    return len(dtypes) == 1 and dtypes <= set(_FLOATS)


def _flat(cupy, a):
    """``a`` contiguous and one-dimensional, for a raw kernel parameter."""
    return cupy.ascontiguousarray(a).ravel()


# -- convolution --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvSaved:
    """What :func:`conv2d_train` keeps for :func:`conv2d_backward`."""

    cols: Any  # (N, C KH KW, OH OW): im2col columns, or x itself reshaped when pointwise


def _conv_out_hw(x, w, stride, padding, dilation, groups, *others):
    """``(OH, OW)`` when the CuPy kernels apply (4-D float32/float64 arrays of one dtype, no
    dilation or groups, a non-empty output), else None (the portable kernel runs)."""
    if tuple(dilation) != (1, 1) or groups != 1 or x.ndim != 4 or w.ndim != 4:
        return None
    if not _same_float(x, w, *others) or x.size == 0 or w.size == 0:
        return None
    oh = portable.output_size(x.shape[2], w.shape[2], stride[0], padding[0])
    ow = portable.output_size(x.shape[3], w.shape[3], stride[1], padding[1])
    return (oh, ow) if oh > 0 and ow > 0 else None


def _is_pointwise(kernel_hw, stride, padding) -> bool:
    return tuple(kernel_hw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _columns(cupy, x, kernel_hw, stride, padding, out_hw):
    """``cols (N, C KH KW, OH OW)`` of ``x (N, C, H, W)``: the pixels themselves for a 1x1
    stride-1 unpadded convolution, else one im2col kernel."""
    n, c, h, w = x.shape
    (kh, kw), (oh, ow) = kernel_hw, out_hw
    if _is_pointwise(kernel_hw, stride, padding):
        return cupy.ascontiguousarray(x).reshape(n, c, h * w)
    cols = cupy.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    _kernel("im2col")(_flat(cupy, x), c, h, w, kh, kw, stride[0], stride[1], padding[0],
                      padding[1], oh, ow, cols)
    return cols


def _epilogue(cupy, products, scale, bias, slope, out):
    """``out = act(scale products + bias)`` for ``products, out (n, O, L)`` (``out`` may be
    ``products`` itself)."""
    o, length = products.shape[1], products.shape[2]
    mode, slope = _activation(slope)
    dtype = products.dtype
    # A raw parameter needs an array even when its flag says it is unused: products.
    scale_arg = products if scale is None else _flat(cupy, scale)
    bias_arg = products if bias is None else _flat(cupy, bias)
    _kernel("epilogue")(products, scale_arg, bias_arg, length, o, int(scale is not None),
                        int(bias is not None), mode, dtype.type(slope), out)


def conv2d(backend, x, w, bias, stride, padding, *, scale=None, negative_slope=None,
           dilation=(1, 1), groups=1):
    """:func:`xpnn.backends.portable.conv2d` on CuPy: per chunk of images (at most
    :data:`COLUMN_BYTES` of columns) one im2col kernel and one cuBLAS product, then the
    epilogue ``act(scale y + bias)`` in one elementwise kernel."""
    out_hw = _conv_out_hw(x, w, stride, padding, dilation, groups, bias, scale)
    if out_hw is None or not _slope_ok(negative_slope):
        return portable.conv2d(backend, x, w, bias, stride, padding, scale=scale,
                               negative_slope=negative_slope, dilation=dilation, groups=groups)
    cupy = _cupy()
    n, o = x.shape[0], w.shape[0]
    length = out_hw[0] * out_hw[1]
    has_epilogue = scale is not None or bias is not None or negative_slope is not None
    with backend.device:
        w2 = w.reshape(o, -1)
        column_bytes = w2.shape[1] * length * x.dtype.itemsize
        pointwise = _is_pointwise(w.shape[2:], stride, padding)  # x is its own columns
        per_chunk = n if pointwise else max(1, COLUMN_BYTES // column_bytes)
        if per_chunk >= n:  # one chunk: the epilogue runs in place on the product
            y = cupy.matmul(w2, _columns(cupy, x, w.shape[2:], stride, padding, out_hw))
            if has_epilogue:
                _epilogue(cupy, y, scale, bias, negative_slope, y)
        else:
            y = cupy.empty((n, o, length), dtype=x.dtype)
            for first in range(0, n, per_chunk):
                part = slice(first, min(n, first + per_chunk))
                cols = _columns(cupy, x[part], w.shape[2:], stride, padding, out_hw)
                _epilogue(cupy, cupy.matmul(w2, cols), scale, bias, negative_slope, y[part])
        return y.reshape(n, o, *out_hw)


def conv2d_train(backend, x, w, bias, stride, padding, *, dilation=(1, 1), groups=1):
    """:func:`xpnn.backends.portable.conv2d_train` on CuPy: ``(conv(x, w) + bias, saved)``
    from one im2col kernel and one cuBLAS product over the whole batch; ``saved`` keeps the
    columns for :func:`conv2d_backward` (``KH KW`` times the input's memory, until the
    backward pass) when they fit :data:`KEEP_BYTES`, else None (the backward rebuilds
    them)."""
    out_hw = _conv_out_hw(x, w, stride, padding, dilation, groups, bias)
    if out_hw is None:
        return portable.conv2d_train(backend, x, w, bias, stride, padding, dilation=dilation,
                                     groups=groups)
    cupy = _cupy()
    n, o = x.shape[0], w.shape[0]
    with backend.device:
        cols = _columns(cupy, x, w.shape[2:], stride, padding, out_hw)
        y = cupy.matmul(w.reshape(o, -1), cols)
        if bias is not None:
            _epilogue(cupy, y, None, bias, None, y)
        saved = _ConvSaved(cols) if cols.nbytes <= KEEP_BYTES else None
        return y.reshape(n, o, *out_hw), saved


def conv2d_backward(backend, dy, x, w, stride, padding, saved, *, need_dx=True,
                    dilation=(1, 1), groups=1):
    """:func:`xpnn.backends.portable.conv2d_backward` on CuPy: ``dW2 = Σ_n dy2[n]
    cols[n]^T`` (one tensordot, as the portable code), ``dcols = W2^T dy2`` (one batched
    cuBLAS product) and a col2im kernel that gathers per input pixel. The columns come from
    :func:`conv2d_train`'s ``saved``, or are rebuilt by the im2col kernel."""
    out_hw = _conv_out_hw(x, w, stride, padding, dilation, groups, dy)
    if out_hw is None or tuple(dy.shape[2:]) != out_hw:
        return portable.conv2d_backward(backend, dy, x, w, stride, padding, saved,
                                        need_dx=need_dx, dilation=dilation, groups=groups)
    cupy = _cupy()
    n, c, h, width = x.shape
    o, _, kh, kw = w.shape
    length = out_hw[0] * out_hw[1]
    with backend.device:
        expected = (n, c * kh * kw, length)
        if isinstance(saved, _ConvSaved) and tuple(saved.cols.shape) == expected:
            cols = saved.cols
        else:
            cols = _columns(cupy, x, (kh, kw), stride, padding, out_hw)
        dy2 = cupy.ascontiguousarray(dy).reshape(n, o, length)
        dw = cupy.tensordot(dy2, cols, axes=([0, 2], [0, 2])).reshape(w.shape)
        if not need_dx:
            return None, dw
        dcols = cupy.matmul(w.reshape(o, -1).T, dy2)  # (C KH KW, O) @ (N, O, L)
        if _is_pointwise((kh, kw), stride, padding):
            return dcols.reshape(x.shape), dw
        dx = cupy.empty(x.shape, dtype=x.dtype)
        _kernel("col2im")(_flat(cupy, dcols), c, h, width, kh, kw, stride[0], stride[1],
                          padding[0], padding[1], out_hw[0], out_hw[1], dx)
        return dx, dw


# -- max pooling --------------------------------------------------------------------------------


def _pool_applies(x, *others) -> bool:
    return x.ndim == 4 and x.size > 0 and _same_float(x, *others)


def max_pool2d(backend, x, kernel_size, stride, padding):
    """:func:`xpnn.backends.portable.max_pool2d` on CuPy: one kernel over the outputs
    (``-inf`` padding, NaN propagates)."""
    if not _pool_applies(x):
        return portable.max_pool2d(backend, x, kernel_size, stride, padding)
    (kh, kw), (_, _, h, w) = kernel_size, x.shape
    oh = portable.output_size(h, kh, stride[0], padding[0])
    ow = portable.output_size(w, kw, stride[1], padding[1])
    if oh <= 0 or ow <= 0:
        return portable.max_pool2d(backend, x, kernel_size, stride, padding)
    cupy = _cupy()
    with backend.device:
        y = cupy.empty((*x.shape[:2], oh, ow), dtype=x.dtype)
        _kernel("max_pool")(_flat(cupy, x), h, w, kh, kw, stride[0], stride[1], padding[0],
                            padding[1], oh, ow, x.dtype.type(-math.inf), y)
        return y


def max_pool2d_backward(backend, dy, x, y, kernel_size, stride, padding):
    """:func:`xpnn.backends.portable.max_pool2d_backward` on CuPy: one kernel picks, per
    window, the element PyTorch's CPU kernel picks (first maximum; the last NaN of a window
    whose maximum is NaN; the first real element of an all ``-inf`` window; never the
    padding), compared against the given ``y`` as the portable kernel does; a second one
    sums, per input pixel, the ``dy`` of the windows that picked it (no atomics)."""
    if not _pool_applies(x, dy, y) or tuple(dy.shape) != tuple(y.shape) or y.size == 0:
        return portable.max_pool2d_backward(backend, dy, x, y, kernel_size, stride, padding)
    cupy = _cupy()
    (kh, kw), (_, _, h, w), (oh, ow) = kernel_size, x.shape, y.shape[2:]
    geometry = (h, w, kh, kw, stride[0], stride[1], padding[0], padding[1], oh, ow)
    with backend.device:
        choice = cupy.empty(y.shape, dtype=cupy.int32)
        _kernel("max_pool_choice")(cupy.ascontiguousarray(y), _flat(cupy, x), *geometry, choice)
        dx = cupy.empty(x.shape, dtype=dy.dtype)
        _kernel("max_pool_gather")(_flat(cupy, dy), choice.ravel(), *geometry, dx)
        return dx


# -- batch normalization ------------------------------------------------------------------------


@dataclass(frozen=True)
class _BatchNormSaved:
    """What :func:`batchnorm_train` keeps for :func:`batchnorm_backward`."""

    x: Any  # (N, C, L), the input (contiguous)
    y: Any  # (N, C, L), the output, when an activation needs it in the backward; else None
    shape: tuple
    mean: Any
    inv_std: Any
    gain: Any
    count: int
    has_gamma: bool
    mode: int
    slope: float


def batchnorm_train(backend, x, gamma, beta, eps, *, negative_slope=None, allreduce=None,
                    count=None):
    """:func:`xpnn.backends.portable.batchnorm_train` on CuPy: ``μ`` and ``Σ (x - μ)²`` per
    channel accumulated in float64 (two reductions), then ``y = act((x - μ) g + β)`` in one
    elementwise kernel. The portable kernel for an ``allreduce`` (SyncBatchNorm), dtypes
    other than float32/float64 and slopes outside [0, 1]."""
    if (allreduce is not None or x.ndim not in (2, 4) or x.size == 0
            or not _same_float(x, gamma, beta) or not _slope_ok(negative_slope)):
        return portable.batchnorm_train(backend, x, gamma, beta, eps,
                                        negative_slope=negative_slope, allreduce=allreduce,
                                        count=count)
    cupy = _cupy()
    n, c = x.shape[:2]
    with backend.device:
        x3 = cupy.ascontiguousarray(x).reshape(n, c, -1)
        dtype, length = x3.dtype, x3.shape[2]
        values = n * length
        count = values if count is None else count  # as portable: the mean uses this batch's
        mean = (cupy.sum(x3, axis=(0, 2), dtype=cupy.float64) / values).astype(dtype)
        squares = _kernel("bn_centred_squares")(x3, mean.reshape(1, c, 1), axis=(0, 2))
        var = (squares / count).astype(dtype)
        inv_std = 1.0 / cupy.sqrt(var + eps)
        gain = inv_std if gamma is None else gamma * inv_std
        mode, slope = _activation(negative_slope)
        y3 = cupy.empty_like(x3)
        _kernel("bn_normalize")(x3, mean, gain, gain if beta is None else _flat(cupy, beta),
                                length, c, int(beta is not None), mode, dtype.type(slope), y3)
        saved = _BatchNormSaved(x3, None if mode == NO_ACTIVATION else y3, tuple(x.shape),
                                mean, inv_std, gain, count, gamma is not None, mode, slope)
        return y3.reshape(x.shape), mean, var, saved


def batchnorm_backward(backend, dy, saved, *, need_dx=True, allreduce=None):
    """:func:`xpnn.backends.portable.batchnorm_backward` on CuPy: ``Σ dz`` and ``Σ dz (x -
    μ)`` per channel (float64, two reductions), then ``dx = dz g - ((x - μ) k₁ + k₂)`` in one
    elementwise kernel. The portable backward for what the portable forward saved."""
    if not isinstance(saved, _BatchNormSaved):
        return portable.batchnorm_backward(backend, dy, saved, need_dx=need_dx,
                                           allreduce=allreduce)
    cupy = _cupy()
    x3 = saved.x
    dtype, c, length = x3.dtype, x3.shape[1], x3.shape[2]
    with backend.device:
        dy3 = cupy.ascontiguousarray(dy, dtype=dtype).reshape(x3.shape)
        y3 = dy3 if saved.y is None else saved.y  # without an activation y is never read
        slope = dtype.type(saved.slope)
        mean3 = saved.mean.reshape(1, c, 1)
        sum_dz = _kernel("bn_sum_dz")(dy3, y3, saved.mode, slope, axis=(0, 2)).astype(dtype)
        sum_dz_centred = _kernel("bn_sum_dz_centred")(dy3, y3, x3, mean3, saved.mode, slope,
                                                      axis=(0, 2)).astype(dtype)
        dgamma = sum_dz_centred * saved.inv_std if saved.has_gamma else None
        if not need_dx:
            return None, dgamma, sum_dz
        dbeta = sum_dz
        if allreduce is not None:  # as portable: copies, the all-reduce works in place
            sum_dz, sum_dz_centred = allreduce([sum_dz.copy(), sum_dz_centred.copy()])
        gain, inv_std, count = saved.gain, saved.inv_std, saved.count
        k1 = gain * inv_std * inv_std * sum_dz_centred / count
        k2 = gain * sum_dz / count
        dx3 = cupy.empty_like(x3)
        _kernel("bn_input_gradient")(dy3, y3, x3, saved.mean, gain, k1, k2, length, c,
                                     saved.mode, slope, dx3)
        return dx3.reshape(saved.shape), dgamma, dbeta

