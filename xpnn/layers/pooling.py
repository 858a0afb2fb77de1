"""Pooling over NCHW images: MaxPool2D and GlobalAvgPool.

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
"""

from __future__ import annotations

from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module
from xpnn.validation import floating_input, grad_shape, int_pair, rank


def _floating(module, x, xp) -> None:
    """A DTypeError unless ``x`` is float32 or float64 (the dtypes layers compute in)."""
    if x.dtype != xp.float32 and x.dtype != xp.float64:
        floating_input(module, x)


class MaxPool2D(Module):
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

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self._args = (kernel_size, stride, padding)
        self.kernel_size = int_pair("MaxPool2D", "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else int_pair("MaxPool2D", "stride",
                                                                       stride)
        self.padding = int_pair("MaxPool2D", "padding", padding, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ConfigError(
                f"MaxPool2D expected padding to be at most half the kernel size. "
                f"Received: padding={padding!r}, kernel_size={kernel_size!r}"
            )

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

    def config(self) -> dict:
        kernel_size, stride, padding = self._args
        return {"kernel_size": kernel_size, "stride": stride, "padding": padding}

    def extra_repr(self) -> str:
        kernel_size, stride, padding = self._args
        stride = kernel_size if stride is None else stride
        return f"kernel_size={kernel_size}, stride={stride}, padding={padding}"


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
