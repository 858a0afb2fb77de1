"""numba-compiled im2col and col2im: the fast path of :mod:`.windows` and :mod:`.stacked`.

Row ``r = (c KH + i) KW + j`` of the columns holds tap ``(i, j)`` of channel ``c``; its
``OH OW`` numbers for image ``n`` form one contiguous block,

    cols[r, n, a, b] = x[n, c, sh a + dh i - ph, sw b + dw j - pw]     (0 outside x)

found at ``r row_step + n image_step`` in the flat buffer: ``row_step = N OH OW``,
``image_step = OH OW`` for the stacked columns ``(C KH KW, N OH OW)`` of
:meth:`.windows.Windows.stacked_columns`, and ``row_step = OH OW``, ``image_step = C KH KW
OH OW`` for the per-image columns ``(N, C KH KW, OH OW)`` of :meth:`.windows.Windows.im2col`.

Both kernels walk the ``(image, channel)`` planes one at a time through a zero-padded copy
of the plane, ``Hp x Wp = (H + 2 ph) x (W + 2 pw)`` numbers that stay in the L1/L2 cache:
im2col copies the plane in, then reads every tap's block out of it row by row (no bounds
tests); col2im adds every tap's block into a zeroed padded plane and copies its interior to
``dx (N, C, H, W)``. That replaces the NumPy twins' padded copy of the whole batch, their
strided slice per tap and (for the stacked backward) the stride phases, their interleave
and the final transpose: one pass over the columns, straight into NCHW.

col2im is the adjoint, ``dx[n, c, y, x] = sum of cols[r, n, a, b]`` over the taps and output
pixels that read ``(y, x)``. Each pixel's sum is taken over the taps in ``(i, j)`` row-major
order starting from zero (within one tap the targets are distinct), which is the order of
the NumPy twins (one tap after the other added into a zeroed gradient): for the same
columns the results are bit-identical. ``fastmath`` stays off.

One thread. The planes are independent (a ``prange`` over them is race-free), but on the
2-core benchmark machine numba's OpenMP workers, spinning after each kernel, fought
OpenBLAS's threads for the cores: whole MNIST CNN steps ran 300-1600 ms instead of about 40
(benchmarks/results/NOTES.md, 2026-12-02), as :mod:`xpnn.backends.numba_batchnorm` found too.

numba is imported only when a kernel is first needed (:func:`kernels`, called only when
:func:`usable` says so), so importing xpnn never needs it.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

from xpnn.errors import ShapeError

from .. import numba_support

# The element types the kernels are compiled for; anything else takes the NumPy twin.
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_INFERENCE = ContextVar("xpnn_numpy_conv_inference", default=False)


@contextmanager
def inference():
    """While active, :func:`usable` is False unless numba is loaded already.

    The inference convolution (:func:`xpnn.backends.numpy_conv.conv2d`) runs under it:
    loading numba and the compiled code adds about 120-150 MB of resident memory to a
    process, which for Darknet53 inference at batch 1 and 8 took the peak from 0.55-0.59 of
    PyTorch's to 0.80-0.83, for a 5-8 % faster model (im2col is a small part of the time
    next to the products). A process that trains has loaded numba anyway, and its
    evaluations use the compiled im2col (bit-identical columns either way).
    """
    token = _INFERENCE.set(True)
    try:
        yield
    finally:
        _INFERENCE.reset(token)


def usable(*arrays) -> bool:
    """Whether the compiled kernels should run on ``arrays``: numba is on
    (:func:`~xpnn.backends.numba_support.enabled`, read at every call), not an inference
    call in a process without numba loaded (:func:`inference`), and every array is
    float32 or float64 of one dtype."""
    if not numba_support.enabled():
        return False
    if _INFERENCE.get() and "numba" not in sys.modules:
        return False
    dtypes = {a.dtype for a in arrays}
    return len(dtypes) == 1 and dtypes.pop() in DTYPES


@functools.cache
def kernels():
    """``(im2col, col2im)`` compiled by numba (one thread, ``fastmath=False``), built on
    the first call; numba compiles each once per dtype and array layout (and caches that on
    disk). Only call when :func:`usable` (numba imports)."""
    from numba import uint64  # numba is importable here: usable() said so

    jit = numba_support.jit(fastmath=False)

    # Index arithmetic: every flat index is non-negative by construction and is cast to
    # uint64 where it is used, because numba adds a negative-index wrap-around test to every
    # signed index, which keeps LLVM from vectorizing the copies (2-3x slower rows).

    @jit
    def im2col_kernel(x, cols, row_step, image_step, oh, ow, kernel, stride, padding,
                      dilation):
        """Fill the flat columns ``cols`` with the windows of ``x (N, C, H, W)`` (any
        strides): row ``r`` of image ``n`` is the ``OH OW`` block at ``r row_step + n
        image_step``. Plane by plane: the plane is copied into the interior of a padded
        plane whose border stays zero, then each tap's block is read from it."""
        n_images, channels, height, width = x.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        dh, dw = dilation
        wp = width + 2 * pw
        padded = np.zeros((height + 2 * ph) * wp, dtype=x.dtype)
        images_inner = row_step > image_step  # visit the planes in the order of cols
        for plane in range(n_images * channels):
            if images_inner:
                c, n = plane // n_images, plane % n_images
            else:
                n, c = plane // channels, plane % channels
            for y in range(height):
                start = uint64((y + ph) * wp + pw)
                for xx in range(width):
                    padded[start + uint64(xx)] = x[n, c, y, xx]
            for i in range(kh):
                for j in range(kw):
                    block = ((c * kh + i) * kw + j) * row_step + n * image_step
                    for a in range(oh):
                        # output (a, b) reads padded pixel (sh a + dh i, sw b + dw j)
                        source = uint64((sh * a + dh * i) * wp + dw * j)
                        target = uint64(block + a * ow)
                        if sw == 1:
                            for b in range(uint64(ow)):
                                cols[target + b] = padded[source + b]
                        else:
                            step = uint64(sw)
                            for b in range(uint64(ow)):
                                cols[target + b] = padded[source + step * b]

    @jit
    def col2im_kernel(cols, dx, row_step, image_step, oh, ow, kernel, stride, padding,
                      dilation):
        """Write into ``dx (N, C, H, W)`` (any strides) the sum of every entry of the flat
        columns ``cols`` (laid out as in :func:`im2col_kernel`) at the pixel it was read
        from. Plane by plane: each tap's block is added into a zeroed padded plane, taps in
        ``(i, j)`` order, then the plane's interior is copied to ``dx``."""
        n_images, channels, height, width = dx.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        dh, dw = dilation
        wp = width + 2 * pw
        gradient = np.empty((height + 2 * ph) * wp, dtype=dx.dtype)
        for plane in range(n_images * channels):
            n, c = plane // channels, plane % channels
            gradient[:] = 0
            for i in range(kh):
                for j in range(kw):
                    block = ((c * kh + i) * kw + j) * row_step + n * image_step
                    for a in range(oh):
                        # output (a, b) was read from padded pixel (sh a + dh i, sw b + dw j)
                        target = uint64((sh * a + dh * i) * wp + dw * j)
                        source = uint64(block + a * ow)
                        if sw == 1:
                            for b in range(uint64(ow)):
                                gradient[target + b] += cols[source + b]
                        else:
                            step = uint64(sw)
                            for b in range(uint64(ow)):
                                gradient[target + step * b] += cols[source + b]
            for y in range(height):
                start = uint64((y + ph) * wp + pw)
                for xx in range(width):
                    dx[n, c, y, xx] = gradient[start + uint64(xx)]

    return im2col_kernel, col2im_kernel


@functools.cache
def pixel_kernels():
    """``(pixel_im2col, pixel_col2im)`` compiled by numba: the columns with one row per
    output pixel (see :func:`pixel_im2col`). Only call when :func:`usable`."""
    from numba import uint64

    jit = numba_support.jit(fastmath=False)

    @jit
    def pixel_im2col_kernel(x, cols, oh, ow, kernel, stride, padding):
        """Row ``(n OH + a) OW + b`` of ``cols`` is output pixel ``(n, a, b)``'s window of
        ``x (N, H, W, C)`` (C-contiguous), taps ``(i, j)`` row-major, channels innermost:
        ``KW C`` contiguous numbers per tap row, copied in one run when the whole row of
        taps is inside the image."""
        n_images, height, width, channels = x.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        source, target = x.reshape(-1), cols.reshape(-1)
        run = uint64(kw * channels)  # one tap row: KW pixels of C channels
        row = 0
        for n in range(n_images):
            for a in range(oh):
                for b in range(ow):
                    left = sw * b - pw  # the first tap's column (may be outside x)
                    inside = left >= 0 and left + kw <= width
                    for i in range(kh):
                        t = uint64((row * kh + i) * kw * channels)
                        y = sh * a + i - ph
                        if y < 0 or y >= height:
                            for k in range(run):
                                target[t + k] = 0
                        elif inside:
                            s = uint64(((n * height + y) * width + left) * channels)
                            for k in range(run):
                                target[t + k] = source[s + k]
                        else:
                            for j in range(kw):
                                xx = left + j
                                tj = t + uint64(j * channels)
                                if xx < 0 or xx >= width:
                                    for k in range(uint64(channels)):
                                        target[tj + k] = 0
                                else:
                                    s = uint64(((n * height + y) * width + xx) * channels)
                                    for k in range(uint64(channels)):
                                        target[tj + k] = source[s + k]
                    row += 1

    @jit
    def pixel_col2im_kernel(cols, dx, oh, ow, kernel, stride, padding):
        """``dx (N, H, W, C)`` (C-contiguous) = the sum of every entry of ``cols`` (laid
        out as in :func:`pixel_im2col_kernel`) at the pixel it was read from: zeroed,
        then each output pixel's window added in, taps in row-major order."""
        n_images, height, width, channels = dx.shape
        kh, kw = kernel
        sh, sw = stride
        ph, pw = padding
        source, target = cols.reshape(-1), dx.reshape(-1)
        target[:] = 0
        run = uint64(kw * channels)
        row = 0
        for n in range(n_images):
            for a in range(oh):
                for b in range(ow):
                    left = sw * b - pw
                    inside = left >= 0 and left + kw <= width
                    for i in range(kh):
                        y = sh * a + i - ph
                        if y < 0 or y >= height:
                            continue
                        s = uint64((row * kh + i) * kw * channels)
                        if inside:
                            t = uint64(((n * height + y) * width + left) * channels)
                            for k in range(run):
                                target[t + k] += source[s + k]
                        else:
                            for j in range(kw):
                                xx = left + j
                                if xx < 0 or xx >= width:
                                    continue
                                sj = s + uint64(j * channels)
                                t = uint64(((n * height + y) * width + xx) * channels)
                                for k in range(uint64(channels)):
                                    target[t + k] += source[sj + k]
                    row += 1

    return pixel_im2col_kernel, pixel_col2im_kernel


def pixel_im2col(x, out_hw, kernel, stride, padding):
    """The columns of ``x (N, C, H, W)`` (any strides; no copy when laid out channels-last,
    as the training convolutions and BatchNorm pass it on) with one row per output pixel:
    ``(N OH OW, KH KW C)``, row ``(n OH + a) OW + b`` holding ``x[n, c, sh a + i - ph,
    sw b + j - pw]`` (0 outside ``x``) at column ``(i KW + j) C + c``. With channels
    innermost every tap is a contiguous run of ``C`` numbers (``KW C`` for a row of taps
    inside the image), where the row-per-tap layout of :func:`im2col` copies runs of
    ``OW`` (7-14 numbers in the MNIST CNN)."""
    n, c = x.shape[:2]
    pixels = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # (N, H, W, C), a view if so
    cols = np.empty((n * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * c), dtype=x.dtype)
    pixel_kernels()[0](pixels, cols, int(out_hw[0]), int(out_hw[1]), _pair(kernel),
                       _pair(stride), _pair(padding))
    return cols


def pixel_col2im(cols, x_shape, out_hw, kernel, stride, padding):
    """The adjoint of :func:`pixel_im2col`: ``dx (N, C, H, W)`` laid out channels-last
    (the ``(N, C, H, W)`` view of an ``(N, H, W, C)`` array) from the column gradient
    ``cols (N OH OW, KH KW C)``. Each pixel sums its contributions output pixel by output
    pixel, in a fixed order (deterministic; not the order of :func:`col2im`)."""
    n, c, h, w = x_shape
    dx = np.empty((n, h, w, c), dtype=cols.dtype)
    pixel_kernels()[1](np.ascontiguousarray(cols), dx, int(out_hw[0]), int(out_hw[1]),
                       _pair(kernel), _pair(stride), _pair(padding))
    return dx.transpose(0, 3, 1, 2)


def _pair(values) -> tuple[int, int]:
    """``values`` as a tuple of two Python ints (one compiled specialization for all)."""
    return int(values[0]), int(values[1])


def _flat(cols, images_shape, out_hw, kernel, stacked: bool):
    """``(flat cols, row_step, image_step)`` for columns of images ``(N, C, H, W)``:
    ``cols`` is C-contiguous, ``(C KH KW, N OH OW)`` when ``stacked`` (the rows of the
    whole batch side by side) or ``(N, C KH KW, OH OW)`` (any split of those axes)."""
    n, c = images_shape[:2]
    rows, length = c * kernel[0] * kernel[1], out_hw[0] * out_hw[1]
    if not cols.flags.c_contiguous or cols.size != n * rows * length:
        raise ShapeError(f"columns of shape {cols.shape} do not hold {n} images' "
                         f"{rows} x {length} columns contiguously")
    if stacked:
        return cols.reshape(-1), n * length, length
    return cols.reshape(-1), length, rows * length


def im2col(x, cols, out_hw, kernel, stride, padding, dilation=(1, 1), *,
           stacked: bool) -> None:
    """Fill ``cols`` (C-contiguous, ``x``'s dtype) with the columns of ``x (N, C, H, W)``
    (any strides), ``(C KH KW, N OH OW)`` when ``stacked``, else ``(N, C KH KW, OH OW)``:
    the compiled twin of the NumPy im2col."""
    flat, row_step, image_step = _flat(cols, x.shape, out_hw, kernel, stacked)
    kernels()[0](x, flat, row_step, image_step, int(out_hw[0]), int(out_hw[1]),
                 _pair(kernel), _pair(stride), _pair(padding), _pair(dilation))


def col2im(cols, dx, out_hw, kernel, stride, padding, dilation=(1, 1), *,
           stacked: bool) -> None:
    """Write into ``dx (N, C, H, W)`` (any strides, ``cols``' dtype) the col2im of
    ``cols``, laid out as in :func:`im2col`: the compiled twin of the NumPy col2im
    (bit-identical for the same ``cols``)."""
    flat, row_step, image_step = _flat(cols, dx.shape, out_hw, kernel, stacked)
    kernels()[1](flat, dx, row_step, image_step, int(out_hw[0]), int(out_hw[1]),
                 _pair(kernel), _pair(stride), _pair(padding), _pair(dilation))
