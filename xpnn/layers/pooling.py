"""Pooling over NCHW images: MaxPool2D, AvgPool2D, AdaptiveAvgPool2D and GlobalAvgPool.

    MaxPool2D       y[n, c, a, b] = max_{i, j} x_pad[n, c, sh a + i, sw b + j]
                    dx: each dy entry goes to the first (row-major) maximum of its window,
                    as in PyTorch; the padding is -inf and is never chosen. As in
                    PyTorch's kernel, a window holding NaN outputs NaN and routes its
                    dy to its last NaN, and a window holding only -inf routes its dy to
                    its first real element (tests/hardening/test_bad_numerics.py).
                    (the kernels ``max_pool2d`` and ``max_pool2d_backward`` of the
                    backend, :mod:`xpnn.backends.portable`)
    GlobalAvgPool   y[n, c] = (1 / HW) sum_{h, w} x[n, c, h, w]
                    dx[n, c, h, w] = dy[n, c] / HW

Average pooling over rectangular bins, AvgPool2D and AdaptiveAvgPool2D alike: output row
``a`` averages the input rows ``[r0_a, r1_a)``, output column ``b`` the columns
``[c0_b, c1_b)``, divided by ``d[a, b] = dr_a dc_b``. With the 0/1 matrices
``R[a, h] = [r0_a <= h < r1_a]`` (OH, H) and ``C[b, w] = [c0_b <= w < c1_b]`` (OW, W) the
window sums are two matrix products, and the backward is their transpose:

    y  = (R x Cᵀ) / d          (per image and channel: (OH, H) (H, W) (W, OW))
    dx = Rᵀ (dy / d) C

    AvgPool2D          bins of kernel_size rows (columns) every stride, shifted by
                       -padding and clipped to the image (the zero padding adds
                       nothing); d = kh kw with count_include_pad (PyTorch's default),
                       else the number of real pixels in the window
    AdaptiveAvgPool2D  PyTorch's bins: r0_a = floor(a H / OH), r1_a = ceil((a + 1) H / OH),
                       d = (r1_a - r0_a)(c1_b - c0_b); bins may overlap, and an output
                       larger than the input repeats pixels
"""

from __future__ import annotations

from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module
from xpnn.validation import floating_input, grad_shape, int_pair, is_int, rank


def _floating(module, x, xp) -> None:
    """A DTypeError unless ``x`` is float32 or float64 (the dtypes layers compute in)."""
    if x.dtype != xp.float32 and x.dtype != xp.float64:
        floating_input(module, x)


class _PoolWindow(Module):
    """The window of MaxPool2D and AvgPool2D: ``kernel_size``, ``stride`` (default: the
    kernel) and ``padding`` (at most half the kernel, as in PyTorch), as pairs, with the
    arguments as given kept for ``config`` and ``repr``."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        who = type(self).__name__
        self._args = (kernel_size, stride, padding)
        self.kernel_size = int_pair(who, "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else int_pair(who, "stride", stride)
        self.padding = int_pair(who, "padding", padding, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ConfigError(
                f"{who} expected padding to be at most half the kernel size. "
                f"Received: padding={padding!r}, kernel_size={kernel_size!r}"
            )

    def config(self) -> dict:
        kernel_size, stride, padding = self._args
        return {"kernel_size": kernel_size, "stride": stride, "padding": padding}

    def extra_repr(self) -> str:
        kernel_size, stride, padding = self._args
        stride = kernel_size if stride is None else stride
        return f"kernel_size={kernel_size}, stride={stride}, padding={padding}"


class MaxPool2D(_PoolWindow):
    """Maximum over ``kernel_size`` windows of NCHW input (PyTorch's ``MaxPool2d`` in floor
    mode).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (non-overlapping windows).
    padding : int or (int, int)
        Implicit ``-inf`` on both sides; at most half the kernel size, as in PyTorch.

    Examples
    --------
    >>> import numpy as np
    >>> MaxPool2D(2)(np.arange(16, dtype="float32").reshape(1, 1, 4, 4))[0, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        rank("MaxPool2D", x, 4, "NCHW")
        _floating(self, x, xp)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
            raise ShapeError(
                f"{self.describe()} needs a padded input of at least {kh}x{kw} pixels. "
                f"Received: x.shape={tuple(x.shape)}"
            )
        window = (self.kernel_size, self.stride, self.padding)
        ops = self.backend.ops
        y = ops.max_pool2d(x, *window)
        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)
            return ops.max_pool2d_backward(dy, x, y, *window) if need_input_grad else None

        return y, backprop


def _window_bins(size: int, kernel: int, stride: int, padding: int, include_pad: bool):
    """``(starts, ends, divisors)`` of the pooling windows along one axis (floor mode):
    window ``a`` covers ``[a stride - padding, a stride - padding + kernel)`` clipped to
    the ``size`` real pixels, and divides by ``kernel`` or, without the padding, by the
    number of real pixels it covers."""
    starts, ends, divisors = [], [], []
    for a in range((size + 2 * padding - kernel) // stride + 1):
        first = a * stride - padding
        start, end = max(first, 0), min(first + kernel, size)
        starts.append(start)
        ends.append(end)
        divisors.append(kernel if include_pad else end - start)
    return starts, ends, divisors


def _adaptive_bins(size: int, count: int):
    """PyTorch's adaptive bins along one axis: ``[floor(a size / count),
    ceil((a + 1) size / count))`` for ``a < count``, divided by their length."""
    starts = [a * size // count for a in range(count)]
    ends = [-(-(a + 1) * size // count) for a in range(count)]
    return starts, ends, [end - start for start, end in zip(starts, ends, strict=True)]


def _bin_matrix(module, xp, dtype, starts, ends, size: int):
    """The 0/1 matrix ``M[a, h] = [starts[a] <= h < ends[a]]`` of shape
    ``(len(starts), size)``, on the module's device."""
    device = module.backend.device
    position = xp.arange(size, dtype=xp.int64, device=device)[None, :]
    start = xp.asarray(starts, dtype=xp.int64, device=device)[:, None]
    end = xp.asarray(ends, dtype=xp.int64, device=device)[:, None]
    return xp.astype(xp.logical_and(position >= start, position < end), dtype)


def _average_bins(module, x, xp, rows, columns):
    """``(y, backprop)`` of average pooling of ``x (N, C, H, W)`` over the bins ``rows``
    and ``columns`` (each ``(starts, ends, divisors)``): ``y = (R x Cᵀ) / d`` and
    ``dx = Rᵀ (dy / d) C`` (the module docstring)."""
    device = module.backend.device
    r = _bin_matrix(module, xp, x.dtype, rows[0], rows[1], x.shape[2])  # (OH, H)
    c = _bin_matrix(module, xp, x.dtype, columns[0], columns[1], x.shape[3])  # (OW, W)
    divisor = (xp.asarray(rows[2], dtype=x.dtype, device=device)[:, None]
               * xp.asarray(columns[2], dtype=x.dtype, device=device)[None, :])  # (OH, OW)
    y = xp.matmul(r, xp.matmul(x, c.T)) / divisor
    out_shape = tuple(y.shape)

    def backprop(dy, *, need_input_grad: bool = True):
        grad_shape(module, dy, out_shape)
        if not need_input_grad:
            return None
        return xp.matmul(r.T, xp.matmul(dy / divisor, c))

    return y, backprop


class AvgPool2D(_PoolWindow):
    """Mean over ``kernel_size`` windows of NCHW input (PyTorch's ``AvgPool2d`` in floor
    mode, ``ceil_mode=False``).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (non-overlapping windows).
    padding : int or (int, int)
        Implicit zeros on both sides; at most half the kernel size, as in PyTorch.
    ceil_mode : bool
        Only False (output sizes rounded down) is supported; the argument is here so that
        PyTorch's positional order (``kernel_size, stride, padding, ceil_mode,
        count_include_pad``) means the same.
    count_include_pad : bool
        Divide by the full window size, padding included (default True, as PyTorch), or
        by the number of real pixels in the window.

    Examples
    --------
    >>> import numpy as np
    >>> AvgPool2D(2)(np.arange(16, dtype="float32").reshape(1, 1, 4, 4))[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    >>> AvgPool2D(3, 1, 1, count_include_pad=False)(np.ones((1, 1, 3, 3), "float32"))[0, 0, 0]
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        if ceil_mode is not False:
            raise ConfigError(
                f"AvgPool2D supports only ceil_mode=False (output sizes rounded down, "
                f"PyTorch's default). Received: ceil_mode={ceil_mode!r}"
            )
        if not isinstance(count_include_pad, bool):
            raise ConfigError(
                f"AvgPool2D expected count_include_pad to be True or False. "
                f"Received: count_include_pad={count_include_pad!r}"
            )
        self.count_include_pad = count_include_pad

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        rank("AvgPool2D", x, 4, "NCHW")
        _floating(self, x, xp)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        _, _, h, w = x.shape
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ShapeError(
                f"{self.describe()} needs a padded input of at least {kh}x{kw} pixels. "
                f"Received: x.shape={tuple(x.shape)}"
            )
        rows = _window_bins(h, kh, sh, ph, self.count_include_pad)
        columns = _window_bins(w, kw, sw, pw, self.count_include_pad)
        return _average_bins(self, x, xp, rows, columns)

    def config(self) -> dict:
        return {**super().config(), "count_include_pad": self.count_include_pad}

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.count_include_pad
                                       else ", count_include_pad=False")


def _output_pair(value) -> tuple:
    """``output_size`` (a positive int, or a pair of positive ints or None) as a pair."""
    items = (value, value) if is_int(value) else value
    if not isinstance(items, tuple | list) or len(items) != 2 or not all(
            item is None or is_int(item, 1) for item in items):
        raise ConfigError(
            f"AdaptiveAvgPool2D expected output_size to be a positive integer or a pair of "
            f"them (None keeps that axis' input size). Received: output_size={value!r}"
        )
    return tuple(None if item is None else int(item) for item in items)


class AdaptiveAvgPool2D(Module):
    """Mean over ``output_size`` bins of NCHW input, whatever its height and width
    (PyTorch's ``AdaptiveAvgPool2d``, with the same bins).

    Parameters
    ----------
    output_size : int or (int or None, int or None)
        ``(OH, OW)``; an int is used for both, None keeps the input's size on that axis.
        It may exceed the input size (bins then overlap and repeat pixels).

    Examples
    --------
    >>> import numpy as np
    >>> AdaptiveAvgPool2D(2)(np.arange(9, dtype="float32").reshape(1, 1, 3, 3))[0, 0]
    array([[2., 3.],
           [5., 6.]], dtype=float32)
    >>> AdaptiveAvgPool2D((1, None))(np.ones((2, 3, 5, 7), "float32")).shape
    (2, 3, 1, 7)
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _output_pair(output_size)
        self._output_size = output_size

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        rank("AdaptiveAvgPool2D", x, 4, "NCHW")
        _floating(self, x, xp)
        _, _, h, w = x.shape
        if h == 0 or w == 0:
            raise ShapeError(
                f"{self.describe()} expected at least one pixel to average (H, W >= 1). "
                f"Received: x.shape={tuple(x.shape)}"
            )
        oh, ow = (size if size is not None else given
                  for size, given in zip(self.output_size, (h, w), strict=True))
        return _average_bins(self, x, xp, _adaptive_bins(h, oh), _adaptive_bins(w, ow))

    def config(self) -> dict:
        value = self._output_size
        return {"output_size": value if is_int(value) else list(self.output_size)}

    def extra_repr(self) -> str:
        value = self._output_size
        return f"output_size={int(value) if is_int(value) else self.output_size}"


class GlobalAvgPool(Module):
    """Mean over the spatial axes: NCHW ``(N, C, H, W)`` -> ``(N, C)``.

    Examples
    --------
    >>> import numpy as np
    >>> GlobalAvgPool()(np.ones((2, 3, 4, 4), dtype="float32")).shape
    (2, 3)
    """

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        rank("GlobalAvgPool", x, 4, "NCHW")
        _floating(self, x, xp)
        shape = tuple(x.shape)
        if shape[2] == 0 or shape[3] == 0:
            raise ShapeError(
                f"GlobalAvgPool expected at least one pixel to average (H, W >= 1). "
                f"Received: x.shape={shape}"
            )
        y = xp.mean(x, axis=(2, 3))

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape[:2])
            if not need_input_grad:
                return None
            share = xp.reshape(dy, (shape[0], shape[1], 1, 1)) * (1.0 / (shape[2] * shape[3]))
            return xp.asarray(xp.broadcast_to(share, shape), copy=True)

        return y, backprop
