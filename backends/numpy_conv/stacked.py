"""Stacked columns: small outputs, several images per matrix product.

Forward. Below about a thousand output pixels per image (Darknet53's 8x8 and 16x16
stages, the MNIST CNN) a product per image has too few columns for BLAS to run well, more
so with several threads. The columns of ``m`` images are stacked side by side,

    S = [cols[0] | cols[1] | ... | cols[m - 1]]          (C KH KW, m OH OW)

so that ``W2 @ S`` (``(O, m OH OW)``) is one product per chunk; it is then copied to NCHW
order (cheap: the output is small next to the product's work). For a 1x1 stride-1
convolution ``S`` is ``x`` itself, channel-major.

Training. :meth:`Stacked.forward_train` builds the stacked columns of the whole batch
``S (C KH KW, N OH OW)`` (within :attr:`Stacked.keep_bytes`) and keeps them, so the
backward needs no second im2col: with ``D = dy`` as ``(O, N OH OW)``,

    dW2 = D @ S^T,        dS = W2^T D,

and ``dx`` is the col2im of ``dS`` (:func:`input_gradient`: numba's col2im straight into
``dx`` when numba is on, else over the stride phases, :func:`input_gradient_numpy`). When
nothing was kept (over the budget, a 1x1 convolution whose columns are ``x``, or a backward
after an inference forward) the backward is that of :class:`.chunked.Chunked` (of
:class:`.pointwise.Pointwise` for 1x1 stride-1 shapes): building the whole stack again is
what the budget refused.

Training with numba on (:meth:`Stacked._forward_channels_last`): from 8 input channels, and
where the output has at least 8 pixels per output channel, the kept columns have one row per
output pixel, ``P (N OH OW, KH KW C)``
(:func:`.compiled.pixel_im2col`), and with ``Wp`` the weights in that tap-major order
``(O, KH KW C)`` and ``D = dy`` as pixel rows ``(N OH OW, O)``,

    Y = P Wp^T,        dWp = D^T P,        dP = D Wp,

so ``y``, ``dy`` and ``dx`` are channels-last (the ``(N, C, H, W)`` views of ``(N, H, W,
C)`` arrays) and every copy in im2col and col2im is a run of ``C`` or ``KW C`` contiguous
numbers. Measured on the MNIST CNN's 3x3 layers at batch 64 (2 cores): im2col + product +
backward + col2im 1.4-1.8x faster than the channel-major stacked rows (whose copies are
runs of ``OW``, 7-14 numbers), the whole training step 31.5 -> 25 ms. Otherwise (an image
network's first layer, runs of one number; large weights next to few pixels) the stacked
rows are kept, and their product is taken as ``Y = S^T W2^T``, channels-last too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from . import compiled
from .chunked import Chunked
from .epilogue import finish_
from .pointwise import (
    Pointwise,
    channel_major_rows,
    channels_last_rows,
    from_pixel_rows,
    pixel_rows,
)
from .strategy import Strategy
from .windows import Windows, is_pointwise, output_hw, stride_phases

# Columns per stacked product: images per chunk = this / (OH OW), at least one.
STACK_COLUMNS = 1024
# At most this much for the stacked columns of one chunk.
STACK_BYTES = 32 << 20
# Training keeps the stacked columns of the whole batch when they take at most this much
# (the MNIST CNN's largest layer at batch 64: 7 MB).
KEEP_BYTES = 64 << 20
# With numba on, training keeps columns with one row per output pixel from this many input
# channels on (fewer: the stacked rows, see Stacked._forward_channels_last).
PIXEL_COLUMNS_FROM = 8
# ... and when the output has at least this many pixels per output channel (N OH OW >= 8 O):
# the pixel columns need the weights in tap-major order, two reorder copies of the weights
# per step (three when the rule was measured), which only pay where the weights are small
# next to the columns. Darknet53's 8x8 stage at batch 2 (O = 1024, 128 pixels) took 59 ms
# per forward + backward with them against 19 without (benchmarks --only conv, same day);
# 3x3 layers at batch 8, forward + backward, pixel columns against stacked rows: 256->512
# @16 (2048 pixels, 4 O) 68 against 58 ms, 128->256 @16 (8 O) 16.8 against 20.3, 64->128
# @16 (16 O) 4.4 against 4.6.
PIXEL_WEIGHT_RATIO = 8


@dataclass(frozen=True)
class Stacked(Strategy):
    """Stacked columns of several images per product; kept columns for training.

    Parameters
    ----------
    stack_columns : int
        Target number of columns (image pixels) per product.
    stack_bytes : int
        At most this many bytes of stacked columns per chunk of images.
    keep_bytes : int
        :meth:`forward_train` keeps the whole batch's columns when they fit this many
        bytes (0: never).
    recompute : Strategy
        The backward when no columns were kept (except for 1x1 stride-1 shapes, whose
        backward is :class:`.pointwise.Pointwise`'s).
    """

    name: ClassVar[str] = "stacked"
    stack_columns: int = STACK_COLUMNS
    stack_bytes: int = STACK_BYTES
    keep_bytes: int = KEEP_BYTES
    recompute: Strategy = field(default_factory=Chunked)

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None):
        y, _ = self._forward(x, w, stride, padding, keep=False)
        finish_(y, scale, bias, negative_slope)
        return y.reshape(x.shape[0], w.shape[0], *output_hw(x.shape, w.shape, stride, padding))

    def forward_train(self, x, w, bias, stride, padding):
        y, columns = self._forward(x, w, stride, padding, keep=True)
        finish_(y, None, bias, None)
        return y.reshape(x.shape[0], w.shape[0],
                         *output_hw(x.shape, w.shape, stride, padding)), columns

    def _forward(self, x, w, stride, padding, keep):
        """``(y, columns)``: ``conv(x, w)`` as ``(N, O, OH OW)`` and, when ``keep`` and
        they fit :attr:`keep_bytes`, the stacked columns ``(C KH KW, N OH OW)`` of the
        whole batch (else None)."""
        n, c, h, width = x.shape
        o, _, kh, kw = w.shape
        out_hw = output_hw(x.shape, w.shape, stride, padding)
        length, rows = out_hw[0] * out_hw[1], c * kh * kw
        w2 = np.ascontiguousarray(w).reshape(o, rows)
        dtype = np.result_type(x, w2)
        chunk = max(1, min(n, -(-self.stack_columns // length),
                           self.stack_bytes // max(1, rows * length * dtype.itemsize)))
        pointwise = is_pointwise(w.shape, stride, padding)
        windows = None if pointwise else Windows(1, c, h, width, x.dtype, (kh, kw), stride,
                                                 padding, out_hw)
        keep = keep and not pointwise and rows * n * length * x.itemsize <= self.keep_bytes
        if keep and compiled.usable(x, w2):
            return self._forward_channels_last(x, w, out_hw, windows)
        if keep:
            # The whole batch's columns at once (fewer, longer copies), kept, and one
            # product. Its (O, N OH OW) result is returned as the (N, O, OH OW) view of that
            # channel-major layout, without the copy to NCHW: the training BatchNorm reads
            # it as it is, and its gradient comes back channel-major, as the backward
            # wants it (xpnn.backends.numba_batchnorm).
            columns = windows.stacked_columns(x)
            product = np.matmul(w2, columns)  # (O, N OH OW)
            return product.reshape(o, n, length).transpose(1, 0, 2), columns
        x_rows = channel_major_rows(x) if pointwise else None
        if x_rows is not None:  # channel-major pixels are the stacked columns already
            return np.matmul(w2, x_rows).reshape(o, n, length).transpose(1, 0, 2), None
        x_pixels = channels_last_rows(x) if pointwise else None
        if x_pixels is not None:  # channels-last pixels: one product, y channels-last
            return from_pixel_rows(np.matmul(x_pixels, w2.T), (n, o, length)), None
        y = np.empty((n, o, length), dtype=dtype)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            if pointwise:  # the columns are the pixels themselves, channel-major
                matrix = np.ascontiguousarray(x[start:stop].reshape(m, c, length)
                                              .transpose(1, 0, 2)).reshape(c, m * length)
            else:
                matrix = windows.stacked_columns(x[start:stop])
            product = np.matmul(w2, matrix)  # (O, m OH OW)
            y[start:stop] = product.reshape(o, m, length).transpose(1, 0, 2)
        return y, None

    def _forward_channels_last(self, x, w, out_hw, windows):
        """The kept-columns forward when numba is on: ``y (N OH OW, O)`` in one product,
        returned as the channels-last ``(N, O, OH OW)`` view, with the columns kept for the
        backward. With ``C >=`` :data:`PIXEL_COLUMNS_FROM` channels and ``N OH OW >=``
        :data:`PIXEL_WEIGHT_RATIO` ``O`` output pixels the columns have one row per output
        pixel (:class:`PixelColumns`, ``Y = P Wp^T`` with ``Wp`` the weights
        in tap-major ``(O, KH KW C)`` order); otherwise (the first layer of an image
        network, whose runs of one channel are too short; large weights next to few output
        pixels, where reordering the weights costs more than it saves) they are the stacked
        ``S (C KH KW, N OH OW)`` and ``Y = S^T W2^T``."""
        n, c = x.shape[:2]
        o = w.shape[0]
        length = out_hw[0] * out_hw[1]
        if c >= PIXEL_COLUMNS_FROM and o * PIXEL_WEIGHT_RATIO <= n * length:
            columns = compiled.pixel_im2col(x, out_hw, w.shape[2:], windows.stride,
                                            windows.padding)
            weights = _tap_major(w)
            product = np.matmul(columns, weights.T)  # (N OH OW, O)
            kept = PixelColumns(columns, weights)
        else:
            kept = windows.stacked_columns(x)
            product = np.matmul(kept.T, np.ascontiguousarray(w).reshape(o, -1).T)
        return from_pixel_rows(product, (n, o, length)), kept

    def backward(self, dy, x, w, stride, padding, saved=None, need_dx=True):
        if saved is None:
            fallback = Pointwise() if is_pointwise(w.shape, stride, padding) else self.recompute
            return fallback.backward(dy, x, w, stride, padding, None, need_dx)
        if isinstance(saved, PixelColumns):
            return _pixel_backward(dy, x, w.shape, stride, padding, saved, need_dx)
        n, c = x.shape[:2]
        o, _, kh, kw = w.shape
        out_hw = tuple(dy.shape[2:])
        dy2 = dy.reshape(n, o, out_hw[0] * out_hw[1])
        w2 = np.ascontiguousarray(w).reshape(o, c * kh * kw)
        # dy as (O, N OH OW), columns ordered image by image like the kept ones (no copy
        # when dy is channel-major already; a transposed view when it is channels-last)
        dy_pixels = channels_last_rows(dy)
        if dy_pixels is not None:
            stacked_dy = dy_pixels.T
        else:
            stacked_dy = np.ascontiguousarray(dy2.transpose(1, 0, 2)).reshape(o, -1)
        # dW2 = D S^T computed as (S D^T)^T: OpenBLAS runs this operand order 1.2-1.4x
        # faster at the MNIST CNN's shapes ((144, 12544) x (12544, 32): 0.80 against
        # 1.15 ms); the transpose back copies only the small (O, C KH KW) result.
        dw = np.matmul(saved, stacked_dy.T).T.reshape(w.shape)
        dx = input_gradient(w2, stacked_dy, x.shape, (kh, kw), stride, padding,
                            out_hw) if need_dx else None
        return dx, dw


@dataclass(frozen=True)
class PixelColumns:
    """What the channels-last training forward keeps: the columns ``(N OH OW, KH KW C)``,
    one row per output pixel (:func:`.compiled.pixel_im2col`), and the weights in their
    tap-major order ``(O, KH KW C)`` (:func:`_tap_major`), which the backward's ``dP``
    needs again."""

    columns: np.ndarray
    weights: np.ndarray


def _tap_major(w):
    """``w (O, C, KH, KW)`` as ``(O, KH KW C)``: the order of the pixel columns."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)


def _pixel_backward(dy, x, w_shape, stride, padding, kept, need_dx):
    """``(dx, dw)`` from the kept pixel columns ``P (N OH OW, KH KW C)`` and weights ``Wp``
    and ``D = dy`` as pixel rows ``(N OH OW, O)`` (a view when dy is channels-last, as
    BatchNorm returns it):

        dWp = D^T P  (computed as (P^T D)^T, the faster OpenBLAS operand order),
        dP  = D Wp,

    and ``dx`` (channels-last) is the pixel col2im of ``dP``."""
    o, c, kh, kw = w_shape
    d = pixel_rows(dy)
    dwp = np.matmul(kept.columns.T, d).T  # (O, KH KW C)
    dw = np.ascontiguousarray(dwp.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))
    dx = None
    if need_dx:
        taps = np.matmul(d, kept.weights)  # (N OH OW, KH KW C)
        dx = compiled.pixel_col2im(taps, x.shape, tuple(dy.shape[2:]), (kh, kw), stride,
                                   padding)
    return dx, dw


def input_gradient(w2, stacked_dy, x_shape, kernel_size, stride, padding, out_hw):
    """``dx (N, C, H, W)`` from ``stacked_dy (O, N OH OW)``: the column gradient ``dS = W2^T
    dy`` (``(C KH KW, N OH OW)``, one product) added back to the pixels the columns were
    read from by the compiled col2im (:func:`.compiled.col2im`), which writes ``dx`` directly
    (an NCHW view of a channel-major array, the layout the training outputs and BatchNorm
    pass on). Without numba: :func:`input_gradient_numpy`.

    One product, not one per block of images: taking it in L2-sized blocks (1 MB) was 6 %
    faster on an idle machine, but 3-6x slower on a loaded one, where every BLAS call waits
    for its descheduled second thread (benchmarks/results/NOTES.md, 2026-12-02)."""
    if not compiled.usable(w2, stacked_dy):
        return input_gradient_numpy(w2, stacked_dy, x_shape, kernel_size, stride, padding,
                                    out_hw)
    taps = np.matmul(w2.T, stacked_dy)  # (C KH KW, N OH OW)
    n, c, h, width = x_shape  # dx laid out channel-major, as the training outputs are
    dx = np.empty((c, n, h, width), dtype=taps.dtype).transpose(1, 0, 2, 3)
    compiled.col2im(taps, dx, out_hw, kernel_size, stride, padding, stacked=True)
    return dx


def input_gradient_numpy(w2, stacked_dy, x_shape, kernel_size, stride, padding, out_hw):
    """:func:`input_gradient` in NumPy: the column gradient ``W2^T dy`` added back to the
    pixels the columns were read from (col2im), in long runs.

    A plain col2im adds each tap's ``(C, N, OH, OW)`` block into a strided window of the
    padded gradient, row by row: for 7x7 outputs, 130,000 additions of 7 numbers per layer.
    Here the padded gradient is split into its ``sh sw`` stride phases (the pixels ``(sh r
    + p, sw q + p')``), each of ``HQ x WQ = ceil(Hp / sh) x ceil(Wp / sw)`` pixels per image.
    Output pixel ``(a, b)`` of tap ``(i, j)`` lands in phase ``(i mod sh, j mod sw)`` at
    ``(a + i // sh, b + j // sw)``. So if ``dy`` is first laid out with the phases' row
    length, ``(O, N, HQ, WQ)`` with zeros beyond ``(OH, OW)``, every tap's whole ``(C, N HQ
    WQ)`` block of ``W2^T dy`` lands at one constant flat offset ``(i // sh) WQ + j // sw``
    of its phase: ``KH KW`` additions of long contiguous rows. The zero columns add zeros
    (harmlessly, also past an image's end); they cost ``HQ WQ / (OH OW)`` more work in the
    product (1.15-1.65x for the MNIST CNN). Measured (batch 64): 1.3-2.2x faster than
    product + strided col2im (benchmarks/results/NOTES.md, 2026-11-24, change 6).
    """
    n, c, h, width = x_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_size, stride, padding, out_hw
    hq, wq = stride_phases((h + 2 * ph, width + 2 * pw), stride)
    o, length = stacked_dy.shape[0], n * hq * wq
    wide_dy = np.zeros((o, n, hq, wq), dtype=stacked_dy.dtype)
    wide_dy[:, :, :oh, :ow] = stacked_dy.reshape(o, n, oh, ow)
    taps = np.matmul(w2.T, wide_dy.reshape(o, length)).reshape(c, kh, kw, length)
    reach = ((kh - 1) // sh) * wq + (kw - 1) // sw  # the largest offset
    phases = np.zeros((sh, sw, c, length + reach), dtype=taps.dtype)
    for i in range(kh):
        for j in range(kw):
            offset = (i // sh) * wq + j // sw
            phases[i % sh, j % sw, :, offset : offset + length] += taps[:, i, j]
    if sh == sw == 1:
        gradient = phases[0, 0, :, :length].reshape(c, n, hq, wq)
    else:  # interleave the phases back into the padded gradient (C, N, Hp, Wp)
        gradient = np.empty((c, n, hq * sh, wq * sw), dtype=taps.dtype)
        for pi in range(sh):
            for pj in range(sw):
                gradient[:, :, pi::sh, pj::sw] = phases[pi, pj, :, :length].reshape(
                    c, n, hq, wq)
    return np.ascontiguousarray(gradient[:, :, ph : ph + h, pw : pw + width]
                                .transpose(1, 0, 2, 3))
