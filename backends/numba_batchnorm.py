"""Training BatchNorm (+ a (leaky) ReLU) for the NumPy backend, compiled with numba: the
``batchnorm_train`` and ``batchnorm_backward`` kernels of :mod:`xpnn.backends.portable`,
in two passes over the data each way instead of the NumPy code's eight to ten.

Per channel ``c`` of ``x`` viewed as ``(N, C, L)`` (``L = H W``, or 1 for ``(N, C)``), with
the ``m = N L`` values of the channel:

forward    pass 1: ``μ = Σ x / m``, then ``σ² = Σ (x - μ)² / m`` (two sums over the channel,
           accumulated in float64);
           pass 2: ``y = act((x - μ) g + β)``, ``g = γ / sqrt(σ² + eps)``, written once.
backward   pass 1: ``dz = act'(dy, y)``, ``S₁ = Σ dz``, ``S₂ = Σ dz (x - μ)`` (float64);
           pass 2: ``dx = dz g - ((x - μ) k₁ + k₂)``, ``k₁ = g inv_std² S₂ / m``,
           ``k₂ = g S₁ / m`` (:func:`xpnn.backends.portable.batchnorm_backward`).

One thread: the passes are bound by memory bandwidth, and numba's parallel loops (prange
over channels) ran 60x slower at the MNIST CNN's sizes on 2 cores (thread start-up and
spinning against OpenBLAS's threads; 7.4 ms against 0.12 ms for the sums of a (64, 16,
28, 28) batch). The sums may be reassociated (``fastmath`` ``reassoc`` only, so that they
vectorize: 4x faster than in order); infinities and NaN keep their IEEE meaning. The
elementwise passes use the portable code's operation order, so ``y`` and ``dx`` differ from
it only through the sums (float64 here, float32 pairwise there): the tests compare the two
to float32 rounding. The forward keeps ``x`` (not ``x - μ``) for the backward.

Layouts: the kernels walk ``(rows, L)`` arrays, one row per (image, channel). ``x`` may be
``(N, C, L)`` in memory or channel-major ``(C, N, L)`` (the NumPy convolution's training
output is such a transposed view: its matrix product yields channels first), read without a
copy either way; ``y`` and ``dx`` are written in the layout of ``x``, and ``dy`` is read in
either layout. A channels-last ``x`` (pixel rows ``(N L, C)`` in memory: the training
convolutions' output when numba is on) is read as it is by the ``*_last`` kernels, which
run down the rows with all channels in the inner loop (in-order float64 sums per channel,
vectorized across channels); ``y`` and ``dx`` are then channels-last too and ``dy`` is read
as pixel rows (copied into that layout if it is not). Data thus flows between convolutions
and BatchNorm in training without a transposing copy.

:func:`batchnorm_train` and :func:`batchnorm_backward` are the NumPy backend's overrides:
they run the compiled kernels when :func:`xpnn.backends.numba_support.enabled` and the
arrays are float32/float64 without a data-parallel ``allreduce``, and the portable kernels
otherwise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from xpnn.backends import numba_support, portable
from xpnn.backends.numpy_conv.pointwise import (
    channel_major_rows,
    channels_last_rows,
    from_pixel_rows,
    pixel_rows,
)

# The activation after the normalization, as the compiled kernels take it.
NO_ACTIVATION, RELU, LEAKY_RELU = 0, 1, 2


def _activation(mode: int, slope: float, v):
    """``act(v)``: v; ``maximum(v, 0)``; ``maximum(v, slope v)`` (a NaN stays NaN)."""
    if mode == RELU:
        return 0.0 if v < 0 else v  # -inf gives 0, as maximum(v, 0)
    if mode == LEAKY_RELU:
        return v * slope if v < 0 else v
    return v


def _activation_grad(mode: int, slope: float, dy, y):
    """``dz`` from ``dy`` and the activation's output ``y``: ReLU passes ``dy`` where not
    ``y <= 0`` (PyTorch's threshold_backward), LeakyReLU scales it by the slope where not
    ``y > 0``."""
    if mode == RELU:
        return 0.0 if y <= 0 else dy  # 0 even for an infinite dy
    if mode == LEAKY_RELU:
        return dy if y > 0 else dy * slope
    return dy


def _row(i, ch, n, c, channel_major):
    """The row of image ``i``, channel ``ch`` in a ``(rows, L)`` array: ``ch N + i`` for a
    channel-major ``(C, N, L)`` layout, ``i C + ch`` for ``(N, C, L)``."""
    return ch * n + i if channel_major else i * c + ch


def _channel_stats(x, n, c, channel_major, mean, var):
    """``mean[c] = Σ x / m`` and ``var[c] = Σ (x - mean)² / m`` over the rows of channel
    ``c`` of ``x (rows, L)``."""
    length = x.shape[1]
    count = n * length
    for ch in range(c):
        total = 0.0
        for i in range(n):
            row = x[_row(i, ch, n, c, channel_major)]
            for j in range(length):
                total += row[j]
        mu = total / count
        squares = 0.0
        for i in range(n):
            row = x[_row(i, ch, n, c, channel_major)]
            for j in range(length):
                d = row[j] - mu
                squares += d * d
        mean[ch] = mu
        var[ch] = squares / count


def _normalize(x, n, c, channel_major, mean, gain, beta, has_beta, mode, slope, y):
    """``y = act((x - mean) gain + beta)`` per channel, in the portable operation order;
    ``y`` in the layout of ``x``."""
    length = x.shape[1]
    for ch in range(c):
        mu, g, b = mean[ch], gain[ch], beta[ch]
        for i in range(n):
            row = _row(i, ch, n, c, channel_major)
            source, target = x[row], y[row]
            for j in range(length):
                v = (source[j] - mu) * g
                if has_beta:
                    v += b
                target[j] = _activation(mode, slope, v)


def _gradient_sums(dy, dy_channel_major, y, x, n, c, channel_major, mean, mode, slope,
                   sum_dz, sum_dz_centred):
    """``sum_dz[c] = Σ dz`` and ``sum_dz_centred[c] = Σ dz (x - mean)`` (``y`` in the
    layout of ``x``, ``dy`` in its own)."""
    length = x.shape[1]
    for ch in range(c):
        mu = mean[ch]
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            row = _row(i, ch, n, c, channel_major)
            dy_row = dy[_row(i, ch, n, c, dy_channel_major)]
            y_row, x_row = y[row], x[row]
            for j in range(length):
                dz = _activation_grad(mode, slope, dy_row[j], y_row[j])
                s1 += dz
                s2 += dz * (x_row[j] - mu)
        sum_dz[ch] = s1
        sum_dz_centred[ch] = s2


def _input_gradient(dy, dy_channel_major, y, x, n, c, channel_major, mean, gain, k1, k2,
                    mode, slope, dx):
    """``dx = dz gain - ((x - mean) k1 + k2)`` per channel; ``dx`` in the layout of ``x``."""
    length = x.shape[1]
    for ch in range(c):
        mu, g, a, b = mean[ch], gain[ch], k1[ch], k2[ch]
        for i in range(n):
            row = _row(i, ch, n, c, channel_major)
            dy_row = dy[_row(i, ch, n, c, dy_channel_major)]
            y_row, x_row, dx_row = y[row], x[row], dx[row]
            for j in range(length):
                dz = _activation_grad(mode, slope, dy_row[j], y_row[j])
                dx_row[j] = dz * g - ((x_row[j] - mu) * a + b)


def _channel_stats_last(x, mean, var):
    """:func:`_channel_stats` for pixel rows ``x (N L, C)`` (channels-last): the sums run
    down the rows in order, all channels at once (the inner loop is over contiguous
    channels, so it vectorizes without reassociating)."""
    rows, c = x.shape
    total = np.zeros(c)
    for r in range(rows):
        for ch in range(c):
            total[ch] += x[r, ch]
    mu = total / rows
    squares = np.zeros(c)
    for r in range(rows):
        for ch in range(c):
            d = x[r, ch] - mu[ch]
            squares[ch] += d * d
    for ch in range(c):
        mean[ch] = mu[ch]
        var[ch] = squares[ch] / rows


def _normalize_last(x, mean, gain, beta, has_beta, mode, slope, y):
    """:func:`_normalize` for pixel rows ``x (N L, C)``, ``y`` in the same layout."""
    rows, c = x.shape
    for r in range(rows):
        for ch in range(c):
            v = (x[r, ch] - mean[ch]) * gain[ch]
            if has_beta:
                v += beta[ch]
            y[r, ch] = _activation(mode, slope, v)


def _gradient_sums_last(dy, y, x, mean, mode, slope, sum_dz, sum_dz_centred):
    """:func:`_gradient_sums` for pixel rows (``dy``, ``y`` and ``x`` all ``(N L, C)``)."""
    rows, c = x.shape
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    for r in range(rows):
        for ch in range(c):
            dz = _activation_grad(mode, slope, dy[r, ch], y[r, ch])
            s1[ch] += dz
            s2[ch] += dz * (x[r, ch] - mean[ch])
    for ch in range(c):
        sum_dz[ch] = s1[ch]
        sum_dz_centred[ch] = s2[ch]


def _input_gradient_recomputed(dy, x, mean, gain, shift, k1, k2, mode, slope, dx):
    """:func:`_input_gradient` for pixel rows (``dx`` in that layout) without reading
    ``y``: the activation's gradient tests the normalized value ``v = (x - mean) gain +
    shift`` recomputed as the forward computed it (same operations and order, no fastmath:
    the same bits; ``+ 0`` for no beta turns only a -0 into +0). For the ReLU and a
    LeakyReLU with a slope in (0, 1] (the kernel's contract: slopes in [0, 1], 0 being the
    ReLU), ``y <= 0`` and ``y > 0`` hold exactly when they hold for ``v`` (NaN: for
    neither), so ``dz`` is the same, with one array fewer streamed through memory: 1.9 ->
    1.5 ms per MNIST CNN step (batch 64). The gradient sums keep reading ``y``:
    recomputing there was slower (2.0 -> 2.5 ms), their float64 accumulation already being
    the bottleneck."""
    rows, c = x.shape
    for r in range(rows):
        for ch in range(c):
            centred = x[r, ch] - mean[ch]
            dz = _activation_grad(mode, slope, dy[r, ch], centred * gain[ch] + shift[ch])
            dx[r, ch] = dz * gain[ch] - (centred * k1[ch] + k2[ch])


def _rows(x3):
    """``(rows, channel_major)``: ``x3 (N, C, L)`` as a C-contiguous ``(rows, L)`` array
    without a copy when it is laid out ``(N, C, L)`` or channel-major ``(C, N, L)`` (the
    NumPy convolution's training output and input gradient, transposed views), else as a
    contiguous copy."""
    n, c, length = x3.shape
    if x3.flags.c_contiguous:
        return x3.reshape(n * c, length), False
    channel_major = channel_major_rows(x3)  # (C, N L)
    if channel_major is not None:
        return channel_major.reshape(c * n, length), True
    return np.ascontiguousarray(x3).reshape(n * c, length), False


@functools.cache
def _kernels() -> SimpleNamespace:
    """The compiled kernels (compiled on first call of each, and cached on disk)."""
    jit = numba_support.jit
    inline = jit(inline="always")
    # The kernels call these helpers by their module-level names, which numba resolves when
    # it compiles: they are replaced by their compiled (inlined) versions first.
    for helper in (_activation, _activation_grad, _row):
        globals()[helper.__name__] = inline(helper)
    sums = jit(fastmath={"reassoc"})
    return SimpleNamespace(
        channel_stats=sums(_channel_stats),
        normalize=jit()(_normalize),
        gradient_sums=sums(_gradient_sums),
        input_gradient=jit()(_input_gradient),
        channel_stats_last=jit()(_channel_stats_last),
        normalize_last=jit()(_normalize_last),
        gradient_sums_last=jit()(_gradient_sums_last),
        input_gradient_recomputed=jit()(_input_gradient_recomputed),
    )


@dataclass(frozen=True)
class _Saved:
    """What the compiled forward keeps for its backward."""

    x: np.ndarray  # (N C, L) rows of the input, channel-major or not; or (N L, C)
    channel_major: bool
    y: np.ndarray  # (N C, L) rows of the output, laid out as x (read for dz)
    shape: tuple
    mean: np.ndarray
    inv_std: np.ndarray
    gain: np.ndarray
    count: int
    has_gamma: bool
    mode: int
    slope: float
    channels_last: bool = False  # x, y are pixel rows (N L, C)
    shift: np.ndarray | None = None  # beta (zeros without one): v = (x - mean) gain + shift


def _compiled_applies(x, allreduce) -> bool:
    return (allreduce is None and numba_support.enabled() and isinstance(x, np.ndarray)
            and x.dtype in (np.float32, np.float64) and x.ndim in (2, 4) and x.size > 0)


def batchnorm_train(backend, x, gamma, beta, eps, *, negative_slope=None, allreduce=None,
                    count=None):
    """:func:`xpnn.backends.portable.batchnorm_train`, compiled (see the module docstring)."""
    if not _compiled_applies(x, allreduce):
        return portable.batchnorm_train(backend, x, gamma, beta, eps,
                                        negative_slope=negative_slope, allreduce=allreduce,
                                        count=count)
    kernels = _kernels()
    n, c = x.shape[:2]
    pixels = channels_last_rows(x)
    if pixels is not None:
        rows, channel_major = pixels, False
    else:
        rows, channel_major = _rows(x.reshape(n, c, -1))
    dtype = x.dtype
    count = rows.shape[0] if pixels is not None else n * rows.shape[1]
    mean, var = np.empty(c, dtype=dtype), np.empty(c, dtype=dtype)
    if pixels is not None:
        kernels.channel_stats_last(rows, mean, var)
    else:
        kernels.channel_stats(rows, n, c, channel_major, mean, var)
    inv_std = (1.0 / np.sqrt(var + dtype.type(eps))).astype(dtype, copy=False)
    gain = inv_std if gamma is None else gamma * inv_std
    if negative_slope is None:
        mode, slope = NO_ACTIVATION, 0.0
    else:
        mode, slope = (RELU if negative_slope == 0.0 else LEAKY_RELU), float(negative_slope)
    shift = np.zeros(c, dtype=dtype) if beta is None else beta
    y = np.empty_like(rows)
    if pixels is not None:
        kernels.normalize_last(rows, mean, gain, shift, beta is not None, mode,
                               dtype.type(slope), y)
    else:
        kernels.normalize(rows, n, c, channel_major, mean, gain, shift, beta is not None,
                          mode, dtype.type(slope), y)
    saved = _Saved(rows, channel_major, y, tuple(x.shape), mean, inv_std, gain, count,
                   gamma is not None, mode, slope, pixels is not None, shift)
    return _shaped(y, saved), mean, var, saved


def batchnorm_backward(backend, dy, saved, *, need_dx=True, allreduce=None):
    """:func:`xpnn.backends.portable.batchnorm_backward`, compiled (see the module
    docstring); the portable one for what the portable forward saved."""
    if not isinstance(saved, _Saved):
        return portable.batchnorm_backward(backend, dy, saved, need_dx=need_dx,
                                           allreduce=allreduce)
    kernels = _kernels()
    rows, dtype = saved.x, saved.x.dtype
    n, c = saved.shape[:2]
    dy = np.asarray(dy, dtype=dtype).reshape(saved.shape)
    slope = dtype.type(saved.slope)
    sum_dz, sum_dz_centred = np.empty(c, dtype=dtype), np.empty(c, dtype=dtype)
    if saved.channels_last:  # dy as pixel rows too (a view when it is channels-last)
        dy_rows = pixel_rows(dy)
        kernels.gradient_sums_last(dy_rows, saved.y, rows, saved.mean, saved.mode, slope,
                                   sum_dz, sum_dz_centred)
    else:
        dy_rows, dy_channel_major = _rows(dy.reshape(n, c, -1))
        layout = (saved.y, rows, n, c, saved.channel_major)
        kernels.gradient_sums(dy_rows, dy_channel_major, *layout, saved.mean, saved.mode,
                              slope, sum_dz, sum_dz_centred)
    dgamma = sum_dz_centred * saved.inv_std if saved.has_gamma else None
    if not need_dx:
        return None, dgamma, sum_dz
    gain, inv_std, count = saved.gain, saved.inv_std, saved.count
    k1 = gain * inv_std * inv_std * sum_dz_centred / count
    k2 = gain * sum_dz / count
    dx = np.empty_like(rows)
    if saved.channels_last:  # the activation tested on v recomputed from x, not on y
        kernels.input_gradient_recomputed(dy_rows, rows, saved.mean, gain, saved.shift, k1,
                                          k2, saved.mode, slope, dx)
    else:
        kernels.input_gradient(dy_rows, dy_channel_major, *layout, saved.mean, gain, k1, k2,
                               saved.mode, slope, dx)
    return _shaped(dx, saved), dgamma, sum_dz


def _shaped(rows, saved):
    """``(rows, L)`` (or pixel rows ``(N L, C)``) laid out like the forward's input, as an
    array of its shape (a view of the channel-major or channels-last layout when that is
    the layout)."""
    if saved.channels_last:
        return from_pixel_rows(rows, saved.shape)
    if saved.channel_major:
        n, c = saved.shape[:2]
        return rows.reshape(c, n, -1).transpose(1, 0, 2).reshape(saved.shape)
    return rows.reshape(saved.shape)
