"""im2col and col2im for NumPy into buffers allocated once per call.

im2col (Chellapilla et al. 2006, "High performance convolutional neural networks for
document processing"): for an input ``x (N, C, H, W)`` zero-padded to ``xp``, kernel tap
``(i, j)`` sees, at output pixel ``(a, b)``, the pixel ``xp[:, :, sh a + i, sw b + j]``. The
``KH KW`` strided slices

    xp[:, :, i : i + sh (OH - 1) + 1 : sh, j : j + sw (OW - 1) + 1 : sw]      (N, C, OH, OW)

written into a buffer laid out ``(N, C, KH, KW, OH, OW)`` give, by a free reshape, the
columns ``cols (N, C KH KW, OH OW)`` whose rows are ordered like ``W2 = w.reshape(O, C KH
KW)``, so that ``y[n] = W2 @ cols[n]`` is already in NCHW order. col2im is the adjoint: each
tap's slice of a column gradient is added back into the strided window it was read from
(within one tap the windows never overlap, so a plain ``+=`` on a strided view is exact).
With a dilation ``(dh, dw)`` tap ``(i, j)``'s slice starts at ``(dh i, dw j)`` instead.
For a stride above 1 (undilated) the NumPy twin first splits the padded images into their
stride phases, so that every tap is a unit-stride slice of one phase
(:meth:`Windows.im2col_by_phases`).

When numba is on (:func:`.compiled.usable`) :meth:`Windows.im2col`,
:meth:`Windows.stacked_columns` and :meth:`Windows.col2im` run the compiled kernels of
:mod:`.compiled` instead (same numbers: copies, and sums in the same order); the NumPy code
above stays as their twins, the ``*_numpy`` methods.
"""

from __future__ import annotations

import numpy as np

from . import compiled


def output_hw(x_shape, w_shape, stride, padding, dilation=(1, 1)) -> tuple[int, int]:
    """``(OH, OW)`` with ``OH = (H + 2 ph - dh (KH - 1) - 1) // sh + 1`` (floor mode),
    likewise ``OW``."""
    return ((x_shape[2] + 2 * padding[0] - dilation[0] * (w_shape[2] - 1) - 1) // stride[0] + 1,
            (x_shape[3] + 2 * padding[1] - dilation[1] * (w_shape[3] - 1) - 1) // stride[1] + 1)


def is_pointwise(w_shape, stride, padding) -> bool:
    """Whether the convolution is a plain 1x1 one (stride 1, no padding): ``y[n] = W2 x[n]``
    with the pixels of ``x`` as its own columns."""
    return (tuple(w_shape[2:]) == (1, 1) and tuple(stride) == (1, 1)
            and tuple(padding) == (0, 0))


class Windows:
    """Reusable buffers that turn a chunk of images ``(n, C, H, W)`` into columns.

    Parameters
    ----------
    chunk : int
        The most images one call of :meth:`im2col` or :meth:`col2im` handles.
    c, h, w : int
        Channels and size of each image.
    dtype : numpy dtype
    kernel_size, stride, padding : (int, int)
    out_hw : (int, int)
        The output size ``(OH, OW)``.
    dilation : (int, int)
        The spacing of the kernel taps (default: adjacent).
    """

    def __init__(self, chunk, c, h, w, dtype, kernel_size, stride, padding, out_hw,
                 dilation=(1, 1)):
        (self.kh, self.kw), self.stride, self.padding = kernel_size, stride, padding
        self.dilation = dilation
        (ph, pw), self.out_hw = padding, out_hw
        self.hw = (h, w)
        # The NumPy twins' padded images and padded image gradient, allocated on their first
        # use (the compiled kernels need neither). The border of the padded images stays
        # zero; only the interior is rewritten.
        self.padded_shape, self.dtype = (chunk, c, h + 2 * ph, w + 2 * pw), dtype
        self.padded = None
        self.phases = None
        self.gradient = None
        self.cols = np.empty((chunk, c, self.kh, self.kw, *out_hw), dtype=dtype)
        self.matrix = self.cols.reshape(chunk, c * self.kh * self.kw, out_hw[0] * out_hw[1])

    def _slices(self, i, j):
        """The strided window of the padded images that tap ``(i, j)`` reads."""
        (sh, sw), (oh, ow), (dh, dw) = self.stride, self.out_hw, self.dilation
        i, j = dh * i, dw * j
        return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
                slice(j, j + sw * (ow - 1) + 1, sw))

    def _geometry(self):
        """``(kernel_size, stride, padding, dilation)`` for the compiled kernels."""
        return (self.kh, self.kw), self.stride, self.padding, self.dilation

    def im2col(self, images: np.ndarray) -> np.ndarray:
        """The columns ``(n, C KH KW, OH OW)`` of ``images (n, C, H, W)``: a view of a
        reused buffer (``n`` may be smaller than the chunk, for the last one)."""
        if not compiled.usable(images, self.cols):
            return self.im2col_numpy(images)
        n = images.shape[0]
        compiled.im2col(images, self.matrix[:n], self.out_hw, *self._geometry(),
                        stacked=False)
        return self.matrix[:n]

    def im2col_numpy(self, images: np.ndarray) -> np.ndarray:
        """:meth:`im2col` in NumPy: :meth:`im2col_by_phases` for a strided, undilated
        convolution, else :meth:`im2col_by_slices`."""
        if self._by_phases():
            return self.im2col_by_phases(images)
        return self.im2col_by_slices(images)

    def im2col_by_slices(self, images: np.ndarray) -> np.ndarray:
        """The padded copy, then one strided slice of it per tap."""
        if self.padded is None:
            self.padded = np.zeros(self.padded_shape, dtype=self.dtype)
        n = images.shape[0]
        return self._fill(self._sliced_windows(images, self.padded[:n]), n)

    def im2col_by_phases(self, images: np.ndarray) -> np.ndarray:
        """:meth:`im2col_by_slices` for a stride other than 1, through the stride phases
        (:meth:`_phase_windows`)."""
        if self.phases is None:
            self.phases = np.zeros(self._phases_shape(self.padded_shape[0]), dtype=self.dtype)
        n = images.shape[0]
        return self._fill(self._phase_windows(images, self.phases[:, :, :n]), n)

    def _fill(self, windows, n: int) -> np.ndarray:
        """The columns of ``n`` images from their ``((i, j), window)`` pairs."""
        for (i, j), window in windows:
            self.cols[:n, :, i, j] = window
        return self.matrix[:n]

    def _by_phases(self) -> bool:
        """Whether the NumPy twins read the taps from the stride phases: a stride above 1
        and no dilation."""
        return tuple(self.stride) != (1, 1) and tuple(self.dilation) == (1, 1)

    def _phases_shape(self, n: int) -> tuple[int, ...]:
        """``(sh, sw, n, C, HQ, WQ)``: the stride phases of ``n`` padded images."""
        hq, wq = stride_phases(self.padded_shape[2:], self.stride)
        return (*self.stride, n, self.padded_shape[1], hq, wq)

    def _sliced_windows(self, images, padded):
        """``((i, j), window)`` per tap: the ``(n, C, OH, OW)`` strided slice of the padded
        images that tap ``(i, j)`` reads. ``padded`` is a buffer of the padded images'
        shape with a zero border; its interior is overwritten with ``images``."""
        (ph, pw), (h, w) = self.padding, self.hw
        padded[:, :, ph : ph + h, pw : pw + w] = images
        for i in range(self.kh):
            for j in range(self.kw):
                yield (i, j), padded[self._slices(i, j)]

    def _phase_windows(self, images, phases):
        """:meth:`_sliced_windows` through the stride phases, for a stride ``(sh, sw)``
        other than 1 without dilation: phase ``(p, q)`` holds the padded pixels ``(sh r +
        p, sw s + q)`` (:func:`stride_phases`), read from the images with one strided copy
        each into ``phases`` (zeros where the padding is; that border is never
        overwritten). Tap ``(i, j)``'s output pixel ``(a, b)`` reads padded pixel ``(sh a
        + i, sw b + j)``, which is pixel ``(a + i // sh, b + j // sw)`` of phase ``(i mod
        sh, j mod sw)``: every window is then a unit-stride slice of one phase, where the
        slices read every tap with the stride (Darknet53's five stride-2 layers at batch
        1, in cache: 8.9 -> 6.4 ms)."""
        (sh, sw), (ph, pw), (h, w), (oh, ow) = self.stride, self.padding, self.hw, self.out_hw
        for p in range(sh):
            # phase row r is padded row sh r + p, i.e. image row sh r + p - ph
            r0 = max(0, -(-(ph - p) // sh))
            if sh * r0 + p - ph >= h:
                continue
            rows = images[:, :, sh * r0 + p - ph::sh]
            for q in range(sw):
                c0 = max(0, -(-(pw - q) // sw))
                if sw * c0 + q - pw >= w:
                    continue
                part = rows[:, :, :, sw * c0 + q - pw::sw]
                phases[p, q, :, :, r0:r0 + part.shape[2], c0:c0 + part.shape[3]] = part
        for i in range(self.kh):
            for j in range(self.kw):
                yield (i, j), phases[i % sh, j % sw, :, :, i // sh:i // sh + oh,
                                     j // sw:j // sw + ow]

    def stacked_columns(self, images: np.ndarray) -> np.ndarray:
        """The columns of ``images (n, C, H, W)`` side by side, ``(C KH KW, n OH OW)``: rows
        ordered like ``w.reshape(O, C KH KW)``, columns image by image. A fresh array (it
        may be kept for the backward)."""
        if not compiled.usable(images):
            return self.stacked_columns_numpy(images)
        (oh, ow), (n, c) = self.out_hw, images.shape[:2]
        cols = np.empty((c * self.kh * self.kw, n * oh * ow), dtype=images.dtype)
        compiled.im2col(images, cols, self.out_hw, *self._geometry(), stacked=True)
        return cols

    def stacked_columns_numpy(self, images: np.ndarray) -> np.ndarray:
        """:meth:`stacked_columns` in NumPy: the taps' windows as :meth:`im2col_numpy`
        reads them (from fresh padded images or stride phases), transposed to
        channel-major."""
        (ph, pw), (h, w), (oh, ow) = self.padding, self.hw, self.out_hw
        n, c = images.shape[:2]
        if self._by_phases():
            windows = self._phase_windows(
                images, np.zeros(self._phases_shape(n), dtype=images.dtype))
        else:
            padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=images.dtype)
            windows = self._sliced_windows(images, padded)
        cols = np.empty((c, self.kh, self.kw, n, oh, ow), dtype=images.dtype)
        for (i, j), window in windows:
            cols[:, i, j] = window.transpose(1, 0, 2, 3)
        return cols.reshape(c * self.kh * self.kw, n * oh * ow)

    def col2im(self, matrix: np.ndarray, out: np.ndarray) -> None:
        """Add every entry of ``matrix (n, C KH KW, OH OW)`` back to the pixel it was read
        from, writing the image gradients ``(n, C, H, W)`` into ``out``."""
        if not compiled.usable(matrix, out):
            return self.col2im_numpy(matrix, out)
        compiled.col2im(np.ascontiguousarray(matrix), out, self.out_hw, *self._geometry(),
                        stacked=False)
        return None

    def col2im_numpy(self, matrix: np.ndarray, out: np.ndarray) -> None:
        """:meth:`col2im` in NumPy: strided ``+=`` of each tap into a zeroed padded
        gradient, then its interior copied to ``out``."""
        (ph, pw), (h, w) = self.padding, self.hw
        n = matrix.shape[0]
        cols = matrix.reshape(n, *self.cols.shape[1:])
        if self.gradient is None:
            self.gradient = np.zeros(self.padded_shape, dtype=self.dtype)
        gradient = self.gradient[:n]
        gradient[...] = 0
        for i in range(self.kh):
            for j in range(self.kw):
                gradient[self._slices(i, j)] += cols[:, :, i, j, :, :]
        out[...] = gradient[:, :, ph : ph + h, pw : pw + w]


def stride_phases(size_hw, stride) -> tuple[int, int]:
    """``(HQ, WQ)``: the size of each of the ``sh sw`` stride phases of an image of
    ``size_hw`` pixels (the padded image's pixels ``(sh r + p, sw q + p')`` for one phase
    ``(p, p')``), ``HQ = ceil(Hp / sh)``, ``WQ = ceil(Wp / sw)``."""
    return -(-size_hw[0] // stride[0]), -(-size_hw[1] // stride[1])
