"""Pointwise: 1x1 convolutions with stride 1 and no padding, as plain matrix products.

Such a convolution's columns are the image's pixels themselves, ``x[n].reshape(C, H W)``,
so with ``W2 = w.reshape(O, C)`` and ``dy2 = dy.reshape(N, O, H W)``:

    y[n]  = W2 @ x[n]                      (one stacked product over the batch)
    dW2   = sum_n dy2[n] @ x[n]^T          (one tensordot over images and pixels)
    dx[n] = W2^T @ dy2[n]

No im2col, no col2im. Only these shapes are supported (:meth:`Pointwise.supports`). When
``x`` (and in the backward ``dy``) are laid out channel-major, ``(C, N H W)`` in memory, as
the training convolutions and BatchNorm hand them on without numba, each of these is one
product over the whole batch, ``Y = W2 X``, ``dW2 = dY X^T``, ``dX = W2^T dY``, whose results
keep that layout; likewise for pixels laid out channels-last, ``(N H W, C)`` in memory (the
layout they have when numba is on): ``Y = X W2^T``, ``dW2 = (X^T dY)^T``, ``dX = dY W2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .epilogue import finish_
from .strategy import Strategy
from .windows import is_pointwise


@dataclass(frozen=True)
class Pointwise(Strategy):
    """1x1 stride-1 unpadded convolutions as products with the pixels themselves."""

    name: ClassVar[str] = "pointwise"

    def supports(self, x_shape, w_shape, stride, padding, dilation=(1, 1), groups=1) -> bool:
        return (super().supports(x_shape, w_shape, stride, padding, dilation, groups)
                and is_pointwise(w_shape, stride, padding))

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None):
        n, c, h, width = x.shape
        o = w.shape[0]
        w2 = np.ascontiguousarray(w).reshape(o, c)
        x_rows, x_pixels = channel_major_rows(x), channels_last_rows(x)
        if x_rows is not None:  # one product, and y in the same channel-major layout
            y = np.matmul(w2, x_rows).reshape(o, n, h * width).transpose(1, 0, 2)
        elif x_pixels is not None:  # one product, and y channels-last as x
            y = from_pixel_rows(np.matmul(x_pixels, w2.T), (n, o, h * width))
        else:
            y = np.matmul(w2, x.reshape(n, c, h * width))  # (N, O, H W)
        finish_(y, scale, bias, negative_slope)
        return y.reshape(n, o, h, width)

    def backward(self, dy, x, w, stride, padding, saved=None, need_dx=True):
        n, c, h, width = x.shape
        o = w.shape[0]
        w2 = np.ascontiguousarray(w).reshape(o, c)
        x_rows, dy_rows = channel_major_rows(x), channel_major_rows(dy)
        if x_rows is not None and dy_rows is not None:  # one product each, no copies
            dw2 = np.matmul(dy_rows, x_rows.T)
            dx = None
            if need_dx:
                dx = np.matmul(w2.T, dy_rows).reshape(c, n, h, width).transpose(1, 0, 2, 3)
            return dx, dw2.reshape(w.shape)
        x_pixels = channels_last_rows(x)
        if x_pixels is not None:  # channels-last: one product each, dx channels-last
            dy_pixels = pixel_rows(dy)
            # dW2 = dY^T X computed as (X^T dY)^T, the faster OpenBLAS operand order
            dw2 = np.matmul(x_pixels.T, dy_pixels).T
            dx = None
            if need_dx:
                dx = from_pixel_rows(np.matmul(dy_pixels, w2), (n, c, h, width))
            return dx, np.ascontiguousarray(dw2).reshape(w.shape)
        dy2 = np.ascontiguousarray(dy).reshape(n, o, h * width)
        dw2 = np.tensordot(dy2, x.reshape(n, c, h * width), axes=([0, 2], [0, 2]))
        dx = np.matmul(w2.T, dy2).reshape(x.shape) if need_dx else None
        return dx, dw2.reshape(w.shape)


def channel_major_rows(a):
    """``a (N, C, ...)`` as its ``(C, N ...)`` matrix when ``a`` is laid out channel-major
    in memory (the training convolution's outputs and BatchNorm's, transposed views), with
    no copy; None for any other layout (and for one image, which is plain NCHW)."""
    n, c = a.shape[:2]
    swapped = np.swapaxes(a, 0, 1)
    return swapped.reshape(c, -1) if swapped.flags.c_contiguous and n > 1 else None


def channels_last_rows(a):
    """``a (N, C, ...)`` as its ``(N ..., C)`` matrix, one row per pixel, when ``a`` is
    laid out channels-last in memory (the training convolutions' outputs and BatchNorm's
    when numba is on, transposed views), with no copy; None for any other layout,
    including a C-contiguous ``a`` (plain NCHW, even when it is both)."""
    if a.flags.c_contiguous:
        return None
    last = a.transpose(_CHANNELS_LAST[a.ndim])
    return last.reshape(-1, a.shape[1]) if last.flags.c_contiguous else None


# Axis orders (N, C, ...) -> (N, ..., C) and back, per number of axes (np.moveaxis costs
# about 5 µs a call, a transpose with a ready tuple well under 1).
_CHANNELS_LAST = {k: (0, *range(2, k), 1) for k in range(2, 9)}
_CHANNELS_FIRST = {k: (0, k - 1, *range(1, k - 1)) for k in range(2, 9)}


def pixel_rows(a):
    """``a (N, C, ...)`` as an ``(N ..., C)`` matrix, one row per pixel: a view when
    ``a`` is channels-last, else a contiguous copy."""
    rows = channels_last_rows(a)
    if rows is None:
        rows = np.ascontiguousarray(a.transpose(_CHANNELS_LAST[a.ndim])).reshape(-1,
                                                                                 a.shape[1])
    return rows


def from_pixel_rows(rows, shape):
    """The ``(N, C, ...)`` view of ``shape`` of pixel rows ``(N ..., C)``: channels-last."""
    n, c, *spatial = shape
    return rows.reshape(n, *spatial, c).transpose(_CHANNELS_FIRST[len(shape)])
