"""Chunked im2col: the general strategy, a few images at a time through reused buffers.

Forward. The batch is walked in chunks of ``m`` images; each chunk's columns ``cols (m, C
KH KW, OH OW)`` are written into one buffer allocated per call (:class:`.windows.Windows`)
and ``y[k] = W2 @ cols[k]`` (``W2 = w.reshape(O, C KH KW)``) is one stacked BLAS call
that writes NCHW order directly; the epilogue (:mod:`.epilogue`) follows in place.

Backward (``dy2 = dy.reshape(N, O, OH OW)``):

    dW2 = sum_k dy2[k] @ cols[k]^T

one ``tensordot`` per chunk over its images and pixels together. For stride 1 (and
``p <= K - 1``) the input gradient is the correlation of ``dy`` zero-padded by ``K - 1 - p``
with the kernel flipped in space and with input and output channels swapped (the
transposed convolution of a unit-stride one is a unit-stride convolution with padding
``K - 1 - p``: Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep
learning", Sec. 4.2), i.e. another im2col and one product, cheaper than a col2im. Otherwise
``dcols[k] = W2^T dy2[k]`` goes back through col2im (strided ``+=`` into a zeroed padded
buffer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .epilogue import finish_
from .strategy import Strategy
from .windows import Windows, output_hw

# A chunk holds as many images as keep its columns within this many bytes: one image for
# Darknet53-sized inputs (the buffer stays in cache and is never page-faulted again: about
# 3x faster than building the columns of a whole batch at once), many for 28x28 digits
# (where the per-image Python overhead would dominate).
CHUNK_BYTES = 4 << 20


def chunk_size(n: int, per_image_elements: int, itemsize: int, budget: int) -> int:
    """Images per chunk: as many as keep ``per_image_elements`` each within ``budget``
    bytes, at least one, at most ``n``."""
    return max(1, min(n, budget // max(1, per_image_elements * itemsize)))


@dataclass(frozen=True)
class Chunked(Strategy):
    """Per-chunk im2col into reused buffers, one stacked product per chunk.

    Parameters
    ----------
    chunk_bytes : int
        Bytes of columns per chunk of images (at least one image per chunk).
    """

    name: ClassVar[str] = "chunked"
    chunk_bytes: int = CHUNK_BYTES

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None):
        n, c, h, width = x.shape
        o, _, kh, kw = w.shape
        out_hw = output_hw(x.shape, w.shape, stride, padding)
        length = out_hw[0] * out_hw[1]
        w2 = np.ascontiguousarray(w).reshape(o, c * kh * kw)
        y = np.empty((n, o, length), dtype=np.result_type(x, w))
        chunk = chunk_size(n, c * kh * kw * length, x.dtype.itemsize, self.chunk_bytes)
        windows = Windows(chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            np.matmul(w2, windows.im2col(x[start:stop]), out=y[start:stop])
        finish_(y, scale, bias, negative_slope)
        return y.reshape(n, o, *out_hw)

    def backward(self, dy, x, w, stride, padding, saved=None, need_dx=True):
        n, c, h, width = x.shape
        o, _, kh, kw = w.shape
        out_hw = tuple(dy.shape[2:])
        dy2 = np.ascontiguousarray(dy).reshape(n, o, out_hw[0] * out_hw[1])
        w2 = np.ascontiguousarray(w).reshape(o, c * kh * kw)
        chunk = chunk_size(n, c * kh * kw * out_hw[0] * out_hw[1], x.dtype.itemsize,
                           self.chunk_bytes)
        windows = Windows(chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw)
        dw2 = np.zeros((o, c * kh * kw), dtype=w2.dtype)
        dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
        full = need_dx and tuple(stride) == (1, 1) and padding[0] <= kh - 1 \
            and padding[1] <= kw - 1
        if full:
            # dx = corr(pad(dy, K - 1 - p), flip(w) with in/out channels swapped)
            (ph, pw), (oh, ow) = padding, out_hw
            flipped = np.ascontiguousarray(np.flip(w, axis=(2, 3)).transpose(1, 0, 2, 3))
            flipped = flipped.reshape(c, o * kh * kw)
            dy_windows = Windows(chunk, o, oh, ow, dy2.dtype, (kh, kw), (1, 1),
                                 (kh - 1 - ph, kw - 1 - pw), (h, width))
            dy4, dx2 = dy2.reshape(n, o, oh, ow), dx.reshape(n, c, h * width)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            cols = windows.im2col(x[start:stop])
            # the chunk's sum over images and pixels of dy2[k] @ cols[k]^T, one BLAS call
            dw2 += np.tensordot(dy2[start:stop], cols, axes=([0, 2], [0, 2]))
            if full:
                np.matmul(flipped, dy_windows.im2col(dy4[start:stop]), out=dx2[start:stop])
            elif need_dx:
                windows.col2im(np.matmul(w2.T, dy2[start:stop]), dx[start:stop])
        return dx, dw2.reshape(w.shape)
