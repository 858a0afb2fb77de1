"""Fast convolution and pooling kernels for backends that have their own: NumPy and torch.

They compute exactly what :mod:`xpnn.backends.conv_portable` computes (the tests compare
the two on random shapes); only the means differ.

NumPy
    im2col writes the ``KH KW`` strided windows of a chunk of images into a preallocated
    buffer laid out ``(n, C, KH, KW, OH, OW)``, so that ``cols = buffer.reshape(n, C KH KW,
    OH OW)`` is free and ``y[k] = W2 @ cols[k]`` (stacked BLAS calls) lands directly in NCHW
    order. A fused per-channel scale, bias and (leaky) ReLU runs over cache-sized blocks of
    the output in place.
    Backward: ``dW2 = sum_k dy[k] @ cols[k]^T`` (one tensordot per chunk); ``dx``
    for stride 1 as the correlation of ``dy`` (padded by ``k - 1 - p``) with the spatially
    flipped, channel-swapped kernel, otherwise as col2im: in-place strided ``+=`` into a
    zeroed padded buffer.
    Training (``keep_columns=True``): small outputs, whose forward builds the stacked
    columns ``(C KH KW, N OH OW)`` of the batch anyway, keep them (within
    ``_KEEP_BYTES``) for the backward: ``dW2 = dy^T @ cols^T`` is then one product with no
    second im2col, and ``dx`` one product ``W2^T dy^T`` and a whole-batch col2im over the
    stride phases (:func:`_stacked_input_gradient`).
torch
    ``torch.nn.functional.conv2d`` forward and ``aten.convolution_backward`` (what autograd
    calls) backward; ``max_pool2d_with_indices`` and its backward for pooling.
"""

from __future__ import annotations

import numpy as np

from xpnn.backends.conv_portable import output_size

# -- NumPy ------------------------------------------------------------------------------------
#
# The NumPy kernels walk the batch in chunks of images through buffers allocated once per
# call: the padded chunk, its columns ``(n, C, KH, KW, OH, OW)`` and, backward, the padded
# gradient. A chunk holds as many images as keep the columns within ``_CHUNK_BYTES``: one
# image for Darknet53-sized inputs (the buffer stays in cache and is never page-faulted
# again, ~3x faster than building the columns of a whole batch), many for 28x28 digits
# (where per-image Python overhead would dominate). Each chunk's product
# ``W2 (O, C KH KW) @ cols[k] (C KH KW, OH OW)`` is one stacked BLAS call in NCHW order.
# Small outputs (fewer than ``_STACK_BELOW`` pixels per image) go through
# :func:`_stacked_conv2d` instead: one wide product per chunk.

_CHUNK_BYTES = 4 << 20


def _chunk_size(n: int, per_image_elements: int, itemsize: int) -> int:
    return max(1, min(n, _CHUNK_BYTES // max(1, per_image_elements * itemsize)))


class _Windows:
    """Reusable buffers that turn a chunk of images ``(n, C, H, W)`` into columns."""

    def __init__(self, chunk, c, h, w, dtype, kernel_size, stride, padding, out_hw):
        (self.kh, self.kw), self.stride, self.padding = kernel_size, stride, padding
        (ph, pw), self.out_hw = padding, out_hw
        self.hw = (h, w)
        # The border of the padded images stays zero; only the interior is rewritten.
        self.padded = np.zeros((chunk, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
        self.gradient = None  # the padded image gradient, allocated by the first col2im
        self.cols = np.empty((chunk, c, self.kh, self.kw, *out_hw), dtype=dtype)
        self.matrix = self.cols.reshape(chunk, c * self.kh * self.kw, out_hw[0] * out_hw[1])

    def _slices(self, i, j):
        (sh, sw), (oh, ow) = self.stride, self.out_hw
        return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
                slice(j, j + sw * (ow - 1) + 1, sw))

    def im2col(self, images: np.ndarray) -> np.ndarray:
        """The columns ``(n, C * KH * KW, OH * OW)`` of ``images (n, C, H, W)`` (a view of a
        reused buffer; ``n`` may be smaller than the chunk for the last one)."""
        (ph, pw), (h, w) = self.padding, self.hw
        n = images.shape[0]
        padded = self.padded[:n]
        padded[:, :, ph : ph + h, pw : pw + w] = images
        for i in range(self.kh):
            for j in range(self.kw):
                self.cols[:n, :, i, j, :, :] = padded[self._slices(i, j)]
        return self.matrix[:n]

    def stacked_columns(self, images: np.ndarray) -> np.ndarray:
        """The columns of ``images (n, C, H, W)`` side by side, ``(C * KH * KW, n * OH * OW)``
        (rows ordered like ``w.reshape(O, C * KH * KW)``, columns image by image)."""
        (ph, pw), (h, w), (oh, ow) = self.padding, self.hw, self.out_hw
        n, c = images.shape[:2]
        padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=images.dtype)
        padded[:, :, ph : ph + h, pw : pw + w] = images
        cols = np.empty((c, self.kh, self.kw, n, oh, ow), dtype=images.dtype)
        for i in range(self.kh):
            for j in range(self.kw):
                cols[:, i, j] = padded[self._slices(i, j)].transpose(1, 0, 2, 3)
        return cols.reshape(c * self.kh * self.kw, n * oh * ow)

    def col2im(self, matrix: np.ndarray, out: np.ndarray) -> None:
        """Add every entry of ``matrix (n, C * KH * KW, OH * OW)`` back to the pixel it was
        read from, writing the image gradients ``(n, C, H, W)`` into ``out``."""
        (ph, pw), (h, w) = self.padding, self.hw
        n = matrix.shape[0]
        cols = matrix.reshape(n, *self.cols.shape[1:])
        if self.gradient is None:
            self.gradient = np.zeros_like(self.padded)
        gradient = self.gradient[:n]
        gradient[...] = 0
        for i in range(self.kh):
            for j in range(self.kw):
                gradient[self._slices(i, j)] += cols[:, :, i, j, :, :]
        out[...] = gradient[:, :, ph : ph + h, pw : pw + w]


def _pointwise(w, stride, padding) -> bool:
    return w.shape[2:] == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _out_hw(x, w, stride, padding) -> tuple[int, int]:
    return (output_size(x.shape[2], w.shape[2], stride[0], padding[0]),
            output_size(x.shape[3], w.shape[3], stride[1], padding[1]))


def numpy_conv2d(x, w, bias=None, stride=(1, 1), padding=(0, 0), scale=None,
                 negative_slope=None, keep_columns: bool = False):
    """``conv(x, w)`` with the optional fused epilogue. With ``keep_columns=True`` it returns
    ``(y, columns)``: the stacked columns ``(C KH KW, N OH OW)`` of the whole batch when
    they were built anyway (small outputs) and fit :data:`_KEEP_BYTES`, else None; pass
    them to :func:`numpy_conv2d_backward` to skip building them again for ``dW``."""
    n, c, h, width = x.shape
    o, _, kh, kw = w.shape
    out_hw = _out_hw(x, w, stride, padding)
    w2 = np.ascontiguousarray(w).reshape(o, c * kh * kw)
    length = out_hw[0] * out_hw[1]
    columns = None
    if n > 1 and length < _STACK_BELOW:
        y, columns = _stacked_conv2d(x, w2, (kh, kw), stride, padding, out_hw, keep_columns)
    elif _pointwise(w, stride, padding):
        y = np.matmul(w2, x.reshape(n, c, h * width))  # (N, O, H * W)
    elif c * kh * kw <= _WIDE_MAX_ROWS and c * kh * kw * length * x.itemsize > _BAND_BYTES:
        y = _wide_conv2d(x, w2, (kh, kw), stride, padding, out_hw,
                         (scale, bias, negative_slope))
        y = y.reshape(n, o, *out_hw)
        return (y, columns) if keep_columns else y
    else:
        y = np.empty((n, o, out_hw[0] * out_hw[1]), dtype=np.result_type(x, w))
        chunk = _chunk_size(n, c * kh * kw * out_hw[0] * out_hw[1], x.dtype.itemsize)
        windows = _Windows(chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            np.matmul(w2, windows.im2col(x[start:stop]), out=y[start:stop])
    if scale is not None or negative_slope is not None:
        _epilogue_(y, scale, bias, negative_slope)
    elif bias is not None:
        y += bias.reshape(1, o, 1)
    y = y.reshape(n, o, *out_hw)
    return (y, columns) if keep_columns else y


# Large images with few input channels (Darknet53's first three 3x3 convolutions: 3-32
# channels at 128-256 pixels a side, whose columns take 7-19 MB per image and cost more
# to build than to multiply) take the "wide row" path of _wide_conv2d: bands of output
# rows whose columns stay in the L2 cache (_BAND_BYTES), each column row one contiguous
# copy. Measured in Darknet53 (2 cores): those layers 18-24 % faster at batch 8 and 8-25 %
# at batch 1; the whole model 1-3 % (paired runs). With 64 channels (C KH KW = 576) it
# gained nothing: there the product dominates.
_BAND_BYTES = 2 << 20
_WIDE_MAX_ROWS = 288  # C KH KW


def _wide_conv2d(x, w2, kernel_size, stride, padding, out_hw, epilogue):
    """``act(scale * conv(x, w) + bias)`` as ``(N, O, OH, OW)``, image by image, one band
    of output rows at a time.

    The padded image is split into its ``s_h s_w`` stride phases (pixels ``(s_h r + p,
    s_w q + p')``), each of ``HQ x WQ`` pixels stored row after row. Tap ``(i, j)`` of
    output pixel ``(a, b)`` reads phase ``(i mod s_h, j mod s_w)`` at ``(a + i // s_h,
    b + j // s_w)``, so with output pixels numbered ``a WQ + b`` ("wide" rows of ``WQ``,
    of which the last ``WQ - OW`` are discarded) the columns of a band of output rows are,
    for every tap and channel, one contiguous slice of a phase: ``C KH KW`` long copies
    instead of ``C KH KW x rows`` short strided ones. The product is wider by ``WQ / OW``
    (1-3 % for 64-256 pixel rows); the activation drops the extra columns as it writes the
    output, so they cost no pass of their own.

    The scale and the bias ride in the product: ``[s W2 | b] @ [columns; 1]`` (the weights
    of these layers are small, so scaling a copy per call is cheap), which leaves only the
    activation to apply to the output. A per-channel scale or bias applied to the output
    is a broadcast multiply, about 2.5x slower per element than a plain one with NumPy.
    """
    n, c, h, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_size, stride, padding, out_hw
    scale, bias, slope = epilogue
    o, rows_k = w2.shape
    dtype = np.result_type(x, w2)
    if scale is not None:
        w2 = w2 * np.asarray(scale, dtype=dtype).reshape(o, 1)
    extra = 0 if bias is None else 1  # a column of biases, times a row of ones
    if extra:
        w2 = np.concatenate([w2, np.asarray(bias, dtype=dtype).reshape(o, 1)], axis=1)
    hq, wq = -(-(h + 2 * ph) // sh), -(-(width + 2 * pw) // sw)
    reach = ((kh - 1) // sh) * wq + (kw - 1) // sw  # the furthest tap, for discarded columns
    phases = np.zeros((sh, sw, c, hq * wq + reach), dtype=x.dtype)
    copies = []  # each phase's pixels that come from the image (the rest is zero padding)
    for pi in range(sh):
        for pj in range(sw):
            first_r, first_q = -(-(ph - pi) // sh), -(-(pw - pj) // sw)
            last_r, last_q = (ph + h - 1 - pi) // sh, (pw + width - 1 - pj) // sw
            if first_r <= last_r and first_q <= last_q:
                target = phases[pi, pj, :, : hq * wq].reshape(c, hq, wq)[
                    :, first_r : last_r + 1, first_q : last_q + 1]
                rows = slice(sh * first_r + pi - ph, sh * last_r + pi - ph + 1, sh)
                cols = slice(sw * first_q + pj - pw, sw * last_q + pj - pw + 1, sw)
                copies.append((target, (slice(None), rows, cols)))
    band = max(1, min(oh, _BAND_BYTES // (rows_k * wq * x.itemsize)))
    columns = np.empty((rows_k + extra) * band * wq, dtype=x.dtype)
    product = np.empty((o, band * wq), dtype=dtype)
    scratch = np.empty((o, band, ow), dtype=dtype) if slope else None
    y = np.empty((n, o, oh, ow), dtype=dtype)
    for k in range(n):
        for target, source in copies:
            target[...] = x[k][source]
        for top in range(0, oh, band):
            rows = min(band, oh - top)
            length = rows * wq
            matrix = columns[: (rows_k + extra) * length].reshape(rows_k + extra, length)
            taps = matrix[:rows_k].reshape(c, kh, kw, length)
            for i in range(kh):
                for j in range(kw):
                    start = (top + i // sh) * wq + j // sw
                    taps[:, i, j] = phases[i % sh, j % sw, :, start : start + length]
            if extra:
                matrix[rows_k] = 1.0
            wide = product[:, :length]
            np.matmul(w2, matrix, out=wide)
            # the activation, writing only the OW kept columns of each wide row
            kept = wide.reshape(o, rows, wq)[:, :, :ow]
            out = y[k, :, top : top + rows]
            if slope == 0.0:
                np.maximum(kept, 0.0, out=out)
            elif slope is not None:
                np.multiply(kept, slope, out=scratch[:, :rows])
                np.maximum(kept, scratch[:, :rows], out=out)
            else:
                out[...] = kept
    return y


# Below this many output pixels per image (Darknet53's last stages: 8x8, 16x16) a product
# per image has too few columns for BLAS to run well, and more so with several threads.
# Such convolutions stack the columns of several images side by side, ``(C KH KW, n OH OW)``,
# so that one BLAS call covers the chunk; its ``(O, n OH OW)`` result is then copied to
# NCHW order (cheap: the output is small next to the product's work).
_STACK_BELOW = 1024
_STACK_COLUMNS = 1024  # columns per stacked product (images per chunk = this / OH OW)
_STACK_BYTES = 32 << 20  # at most this much for the stacked columns of one chunk
# Training keeps the stacked columns of the whole batch for the weight gradient when they
# take at most this much (the MNIST CNN's largest layer at batch 64: 7 MB).
_KEEP_BYTES = 64 << 20


def _stacked_conv2d(x, w2, kernel_size, stride, padding, out_hw, keep_columns=False):
    """``(y, columns)``: ``conv(x, w)`` as ``(N, O, OH OW)`` through one matrix product per
    chunk of images, and, when ``keep_columns`` and they fit :data:`_KEEP_BYTES`, the
    stacked columns ``(C KH KW, N OH OW)`` of the whole batch (else None)."""
    n, c, h, width = x.shape
    (kh, kw), (ph, pw), length = kernel_size, padding, out_hw[0] * out_hw[1]
    o, rows = w2.shape
    dtype = np.result_type(x, w2)
    chunk = max(1, min(n, -(-_STACK_COLUMNS // length),
                       _STACK_BYTES // max(1, rows * length * dtype.itemsize)))
    y = np.empty((n, o, length), dtype=dtype)
    pointwise = (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and (ph, pw) == (0, 0)
    windows = None if pointwise else _Windows(1, c, h, width, x.dtype, kernel_size, stride,
                                              padding, out_hw)
    columns = None
    if keep_columns and not pointwise and rows * n * length * x.itemsize <= _KEEP_BYTES:
        # Build the whole batch's columns at once (fewer, longer copies) and keep them.
        columns = windows.stacked_columns(x)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        m = stop - start
        if columns is not None:
            matrix = columns[:, start * length : stop * length]
        elif pointwise:  # the columns are the pixels themselves, channel-major
            matrix = np.ascontiguousarray(x[start:stop].reshape(m, c, length)
                                          .transpose(1, 0, 2)).reshape(c, m * length)
        else:
            matrix = windows.stacked_columns(x[start:stop])
        product = np.matmul(w2, matrix)  # (O, m OH OW)
        y[start:stop] = product.reshape(o, m, length).transpose(1, 0, 2)
    return y, columns


# Bytes of output the epilogue handles at a time: small enough for the L2 cache, so the
# bias, the product with the slope and the maximum each read cached data, and the one
# temporary is reused (a fresh full-size temporary costs a page fault per 4 KiB).
_EPILOGUE_BYTES = 256 << 10


def _epilogue_(y, scale, bias, slope) -> None:
    """In place on ``y (N, O, L)``: ``y = act(scale y + bias)`` with ``act(v) = max(v,
    slope v)`` (0 <= slope <= 1; no activation when ``slope`` is None), one block of
    channels of one image at a time."""
    n, o, length = y.shape
    rows = max(1, min(o, _EPILOGUE_BYTES // max(1, length * y.itemsize)))
    scratch = np.empty((rows, length), dtype=y.dtype) if slope else None
    columns = [None if v is None else np.asarray(v, dtype=y.dtype).reshape(o, 1)
               for v in (scale, bias)]
    for image in range(n):
        for first in range(0, o, rows):
            block = y[image, first:first + rows]
            if columns[0] is not None:
                block *= columns[0][first:first + rows]
            if columns[1] is not None:
                block += columns[1][first:first + rows]
            if slope == 0.0:
                np.maximum(block, 0.0, out=block)
            elif slope is not None:
                product = scratch[: block.shape[0]]
                np.multiply(block, slope, out=product)
                np.maximum(block, product, out=block)


def numpy_conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx: bool = True,
                          columns=None):
    """``(dx, dw)``. ``columns``: the stacked columns ``(C KH KW, N OH OW)`` of ``x`` that
    ``numpy_conv2d(..., keep_columns=True)`` returned; then ``dW2 = dy^T @ columns^T`` is
    one product and ``x`` is not read again for it."""
    n, c, h, width = x.shape
    o, _, kh, kw = w.shape
    out_hw = tuple(dy.shape[2:])
    dy2 = np.ascontiguousarray(dy).reshape(n, o, out_hw[0] * out_hw[1])
    w2 = np.ascontiguousarray(w).reshape(o, c * kh * kw)
    if columns is not None:
        # dy as (O, N OH OW), columns ordered image by image like the kept ones.
        stacked_dy = np.ascontiguousarray(dy2.transpose(1, 0, 2)).reshape(o, -1)
        dw = np.matmul(stacked_dy, columns.T).reshape(w.shape)
        dx = _stacked_input_gradient(w2, stacked_dy, x.shape, (kh, kw), stride, padding,
                                     out_hw) if need_dx else None
        return dx, dw
    if _pointwise(w, stride, padding):
        # dW2 = sum_n dy[n] @ x[n]^T, one BLAS call over the batch and pixel axes together.
        dw2 = np.tensordot(dy2, x.reshape(n, c, h * width), axes=([0, 2], [0, 2]))
        dx = np.matmul(w2.T, dy2).reshape(x.shape) if need_dx else None
        return dx, dw2.reshape(w.shape)
    return _chunked_backward(dy2, x, w, w2, stride, padding, out_hw, need_dx, True)


def _stacked_input_gradient(w2, stacked_dy, x_shape, kernel_size, stride, padding, out_hw):
    """``dx (N, C, H, W)`` from ``stacked_dy (O, N OH OW)``: the column gradient ``W2^T dy``
    added back to the pixels the columns were read from (col2im), with long runs.

    A plain col2im adds each tap's ``(C, N, OH, OW)`` block into a strided window of the
    padded gradient, row by row: for 7x7 outputs, 130,000 additions of 7 numbers per layer.
    Here the padded gradient is split into its ``s_h s_w`` stride phases (the pixels
    ``(s_h r + p, s_w q + p')``), each of ``HQ x WQ = ceil(Hp / s_h) x ceil(Wp / s_w)``
    pixels per image. Output pixel ``(a, b)`` of tap ``(i, j)`` lands in phase
    ``(i mod s_h, j mod s_w)`` at ``(a + i // s_h, b + j // s_w)``. So if ``dy`` is first
    laid out with the phases' row length, ``(O, N, HQ, WQ)`` with zeros beyond
    ``(OH, OW)``, every tap's whole ``(C, N HQ WQ)`` block of ``W2^T dy`` lands at one
    constant flat offset ``(i // s_h) WQ + j // s_w`` of its phase: ``KH KW`` additions of
    long contiguous rows. The zero columns add zeros (harmlessly, also past an image's end);
    they cost ``HQ WQ / (OH OW)`` more work in the product (1.15-1.65x for the MNIST CNN).
    Measured (batch 64): 1.3-2.2x faster than product + strided col2im.
    """
    n, c, h, width = x_shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel_size, stride, padding, out_hw
    hq, wq = -(-(h + 2 * ph) // sh), -(-(width + 2 * pw) // sw)
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


def _chunked_backward(dy2, x, w, w2, stride, padding, out_hw, need_dx, need_dw):
    """``(dx, dw)`` (each None unless asked for) chunk by chunk of images; ``dy2`` is
    ``(N, O, OH OW)``."""
    n, c, h, width = x.shape
    o, _, kh, kw = w.shape
    chunk = _chunk_size(n, c * kh * kw * out_hw[0] * out_hw[1], x.dtype.itemsize)
    full = need_dx and _full_correlation_applies(w, stride, padding)
    windows = None if full and not need_dw else _Windows(
        chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw)
    dw2 = np.zeros((o, c * kh * kw), dtype=w2.dtype) if need_dw else None
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    if full:
        # For stride 1, dx is the correlation of dy, padded by (k - 1 - p), with the kernel
        # flipped in space and with in/out channels swapped: an im2col of dy and one matmul,
        # cheaper than a col2im of W2^T dy.
        (ph, pw), (oh, ow) = padding, out_hw
        flipped = np.ascontiguousarray(np.flip(w, axis=(2, 3)).transpose(1, 0, 2, 3))
        flipped = flipped.reshape(c, o * kh * kw)
        dy_windows = _Windows(chunk, o, oh, ow, dy2.dtype, (kh, kw), (1, 1),
                              (kh - 1 - ph, kw - 1 - pw), (h, width))
        dy4, dx2 = dy2.reshape(n, o, oh, ow), dx.reshape(n, c, h * width)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if need_dw:
            cols = windows.im2col(x[start:stop])
            # sum over the chunk's images and pixels of dy[k] @ cols[k]^T in one BLAS call
            dw2 += np.tensordot(dy2[start:stop], cols, axes=([0, 2], [0, 2]))
        if full:
            np.matmul(flipped, dy_windows.im2col(dy4[start:stop]), out=dx2[start:stop])
        elif need_dx:
            windows.col2im(np.matmul(w2.T, dy2[start:stop]), dx[start:stop])
    return dx, None if dw2 is None else dw2.reshape(w.shape)


def _full_correlation_applies(w, stride, padding) -> bool:
    kh, kw = w.shape[2:]
    return tuple(stride) == (1, 1) and padding[0] <= kh - 1 and padding[1] <= kw - 1


# -- torch ------------------------------------------------------------------------------------


def torch_conv2d(x, w, bias=None, stride=(1, 1), padding=(0, 0), scale=None,
                 negative_slope=None):
    import torch.nn.functional as F

    if scale is None:
        y = F.conv2d(x, w, bias, stride=tuple(stride), padding=tuple(padding))
    else:
        y = F.conv2d(x, w, None, stride=tuple(stride), padding=tuple(padding))
        y.mul_(scale.reshape(1, -1, 1, 1))
        if bias is not None:
            y.add_(bias.reshape(1, -1, 1, 1))
    if negative_slope is not None:
        y = F.leaky_relu_(y, negative_slope) if negative_slope else F.relu_(y)
    return y


def torch_conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx: bool = True):
    import torch

    dx, dw, _ = torch.ops.aten.convolution_backward(
        dy.contiguous(), x, w, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
        [need_dx, True, False],
    )
    return (dx if need_dx else None), dw


def torch_max_pool2d(x, kernel_size, stride, padding):
    import torch.nn.functional as F

    return F.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding))


def torch_max_pool2d_backward(dy, x, y, kernel_size, stride, padding):
    import torch

    _, indices = torch.ops.aten.max_pool2d_with_indices(
        x, list(kernel_size), list(stride), list(padding), [1, 1], False
    )
    return torch.ops.aten.max_pool2d_with_indices_backward(
        dy.contiguous(), x, list(kernel_size), list(stride), list(padding), [1, 1], False, indices
    )
