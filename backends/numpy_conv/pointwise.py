"""Pointwise: 1x1 convolutions with stride 1 and no padding, as plain matrix products.

Such a convolution's columns are the image's pixels themselves, ``x[n].reshape(C, H W)``,
so with ``W2 = w.reshape(O, C)`` and ``dy2 = dy.reshape(N, O, H W)``:

    y[n]  = W2 @ x[n]                      (one stacked product over the batch)
    dW2   = sum_n dy2[n] @ x[n]^T          (one tensordot over images and pixels)
    dx[n] = W2^T @ dy2[n]

No im2col, no col2im. Only these shapes are supported (:meth:`Pointwise.supports`). When
``x`` (and in the backward ``dy``) are laid out channel-major, ``(C, N H W)`` in memory, as
the training convolutions and BatchNorm hand them on, each of these is one product over the
whole batch, ``Y = W2 X``, ``dW2 = dY X^T``, ``dX = W2^T dY``, whose results keep that
layout.
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
        x_rows = channel_major_rows(x)
        if x_rows is not None:  # one product, and y in the same channel-major layout
            y = np.matmul(w2, x_rows).reshape(o, n, h * width).transpose(1, 0, 2)
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
