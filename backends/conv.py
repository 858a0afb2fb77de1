"""2-D convolution and max-pooling kernels: the public entry points layers call.

The Array API standard has no convolution, so :class:`xpnn.layers.Conv2D` calls
:func:`conv2d` and :func:`conv2d_backward` here, and these pick an implementation from the
type of the input array:

- NumPy arrays -> the NumPy fast path of :mod:`xpnn.backends.conv_native`;
- torch tensors -> ``torch.nn.functional.conv2d`` and its backward;
- anything else (array-api-strict, CuPy, JAX) -> the standard-only im2col/col2im of
  :mod:`xpnn.backends.conv_portable`.

Pass ``path="portable"`` to force the standard-only version (tests compare the two), or
``path="native"`` to require the fast one.

Shapes (NCHW): ``x (N, C, H, W)``, ``w (O, C, KH, KW)``, ``y (N, O, OH, OW)`` with
``OH = (H + 2 ph - KH) // sh + 1`` (and likewise for the width). ``stride`` and ``padding``
are ``(height, width)`` pairs; padding is symmetric zeros.

Examples
--------
>>> import numpy as np
>>> from xpnn.backends import conv
>>> x, w = np.ones((1, 2, 4, 4), "float32"), np.ones((3, 2, 3, 3), "float32")
>>> conv.conv2d(x, w, padding=(1, 1)).shape
(1, 3, 4, 4)
>>> float(conv.conv2d(x, w)[0, 0, 0, 0])
18.0
"""

from __future__ import annotations

from xpnn.backends import conv_native, conv_portable
from xpnn.backends.conv_portable import output_size
from xpnn.errors import BackendError

__all__ = [
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "output_size",
]

_PATHS = ("auto", "native", "portable")

_NATIVE = {
    "numpy": {
        "conv2d": conv_native.numpy_conv2d,
        "conv2d_backward": conv_native.numpy_conv2d_backward,
    },
    "torch": {
        "conv2d": conv_native.torch_conv2d,
        "conv2d_backward": conv_native.torch_conv2d_backward,
        "max_pool2d": conv_native.torch_max_pool2d,
        "max_pool2d_backward": conv_native.torch_max_pool2d_backward,
    },
}


def _library(x) -> str:
    return type(x).__module__.split(".")[0]


def _choose(operation: str, x, path: str | None):
    """The implementation of ``operation`` for arrays like ``x``."""
    path = path or "auto"
    if path not in _PATHS:
        raise BackendError(
            f"Unknown kernel path {path!r}. Expected one of: {', '.join(_PATHS)}."
        )
    if path != "portable":
        native = _NATIVE.get(_library(x), {}).get(operation)
        if native is not None:
            return native
        if path == "native":
            raise BackendError(
                f"There is no native {operation} kernel for {_library(x)} arrays. "
                f"Use path='auto' or path='portable'."
            )
    return getattr(conv_portable, operation)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv2d(x, w, bias=None, stride=(1, 1), padding=(0, 0), *, path: str | None = None,
           scale=None, negative_slope: float | None = None, keep_columns: bool = False):
    """Cross-correlation ``y[n, o] = sum_{c,i,j} w[o, c, i, j] x_pad[n, c, sh a + i, sw b + j]
    + bias[o]`` (what deep-learning libraries call convolution), optionally with a
    per-channel scale and a (leaky) ReLU: ``act(scale[o] * conv(x, w)[n, o] + bias[o])``.

    Parameters
    ----------
    x : array (N, C, H, W)
    w : array (O, C, KH, KW)
    bias : array (O,) or None
    stride, padding : int or (int, int)
    path : {"auto", "native", "portable"}, optional
    scale : array (O,), optional
        Multiply each output channel before the bias: inference-mode BatchNorm folded
        into the output instead of into a copy of the weights (no second copy of them).
    negative_slope : float in [0, 1], optional
        Apply ``max(y, negative_slope * y)`` (LeakyReLU; 0 gives ReLU) to the result.
        ``y > 0`` exactly where the activation's input was > 0, which is all its
        backward pass needs.

    keep_columns : bool
        Training: return ``(y, columns)`` where ``columns`` is whatever the kernel built
        that :func:`conv2d_backward` can reuse (on the NumPy path the im2col columns of
        small outputs, when they fit a memory budget), or None. Pass it back as
        ``conv2d_backward(..., columns=columns)``; inference leaves this False.

    On the NumPy path scale, bias and activation run together over cache-sized blocks of
    the output, in place: one pass over memory instead of three with fresh arrays.

    Returns
    -------
    y : array (N, O, OH, OW), same dtype, namespace and device as ``x``
        (``(y, columns)`` with ``keep_columns=True``).
    """
    if negative_slope is not None and not 0.0 <= negative_slope <= 1.0:
        raise BackendError(
            f"conv2d fuses a LeakyReLU only for slopes in [0, 1]. "
            f"Received: negative_slope={negative_slope!r}"
        )
    run = _choose("conv2d", x, path)
    if keep_columns and run is conv_native.numpy_conv2d:
        return run(x, w, bias, _pair(stride), _pair(padding), scale=scale,
                   negative_slope=negative_slope, keep_columns=True)
    if scale is None and negative_slope is None:
        y = run(x, w, bias, _pair(stride), _pair(padding))
    else:
        y = run(x, w, bias, _pair(stride), _pair(padding), scale=scale,
                negative_slope=negative_slope)
    return (y, None) if keep_columns else y


def conv2d_backward(dy, x, w, stride=(1, 1), padding=(0, 0), need_dx: bool = True, *,
                    path: str | None = None, columns=None):
    """Vector-Jacobian products of :func:`conv2d` (without the bias, whose gradient is
    ``dy.sum(axis=(0, 2, 3))``).

    ``columns``: what ``conv2d(..., keep_columns=True)`` returned for the same ``x``,
    ``w``, stride and padding (None: recompute whatever is needed).

    Returns
    -------
    (dx, dw) : ``dx`` (N, C, H, W) — None when ``need_dx`` is False — and ``dw``
        (O, C, KH, KW), both freshly allocated.
    """
    run = _choose("conv2d_backward", x, path)
    if columns is not None and run is conv_native.numpy_conv2d_backward:
        return run(dy, x, w, _pair(stride), _pair(padding), need_dx, columns=columns)
    return run(dy, x, w, _pair(stride), _pair(padding), need_dx)


def max_pool2d(x, kernel_size, stride, padding=(0, 0), *, path: str | None = None):
    """Maximum of every ``KH x KW`` window: ``y[n, c, a, b] = max_{i,j} x_pad[n, c, sh a + i,
    sw b + j]`` with ``-inf`` padding (floor mode, as PyTorch's default)."""
    return _choose("max_pool2d", x, path)(
        x, _pair(kernel_size), _pair(stride), _pair(padding)
    )


def max_pool2d_backward(dy, x, y, kernel_size, stride, padding=(0, 0), *,
                        path: str | None = None):
    """Gradient of :func:`max_pool2d`: each ``dy`` entry goes to the first (row-major)
    maximum of its window, as in PyTorch; ``y`` is the forward output."""
    return _choose("max_pool2d_backward", x, path)(
        dy, x, y, _pair(kernel_size), _pair(stride), _pair(padding)
    )
