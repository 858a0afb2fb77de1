"""2-D convolution over NCHW images: y = W * x + b.

Shapes: x (N, C, H, W), weight (O, C / G, KH, KW), bias (O,), y (N, O, OH, OW) with G
groups, dilation (dh, dw) and

    OH = (H + 2 ph - dh (KH - 1) - 1) // sh + 1,      likewise OW,
    y[n, o, a, b] = b[o] + sum_{c < C / G, i, j} weight[o, c, i, j]
                           x_pad[n, g C / G + c, sh a + dh i, sw b + dw j],

where g = o // (O / G) is the group of output channel o: each group of O / G output
channels sees only its own C / G input channels (G = C is a depthwise convolution), and
the kernel taps are dh (dw) pixels apart (dilation 1: adjacent).

Backward (vector-Jacobian products for dy = dL/dy), computed by the backend's kernels
``conv2d_train`` / ``conv2d_backward`` (:mod:`xpnn.backends.portable`: im2col / col2im, or
a backend's own implementation):

    dL/dweight = sum_{n,a,b} dy[n, :, a, b] (x) window(n, a, b),    dL/db = sum_{n,a,b} dy,
    dL/dx      = the transposed convolution of dy with the weight,

window(n, a, b) being the (dilated) window of output pixel (a, b) in the group of o.

``backprop(dy, need_input_grad=False)`` skips dL/dx and returns None (a network's first
layer: the gradient of the data is never used).
"""

from __future__ import annotations

import math

from xpnn import init
from xpnn.backends import host_rng
from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module, Parameter
from xpnn.validation import (
    float_dtype,
    grad_shape,
    int_pair,
    is_int,
    positive_int,
    rank,
    same_dtype,
)


class Conv2D(Module):
    """2-D convolution (cross-correlation, as in PyTorch's ``Conv2d``) over NCHW input.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride : int or (int, int)
    padding : int, (int, int) or "same"
        Zeros added on both sides of each spatial axis, at most ``kernel_size - 1`` (a
        larger padding only adds outputs that see no input pixel; PyTorch accepts it, xpnn
        refuses it with a ConfigError). ``"same"`` keeps the spatial size;
        it needs stride 1 and odd kernel sizes (the padding is then ``dilation (k - 1) // 2``
        on each side, symmetric, which is what PyTorch's ``padding="same"`` gives for odd
        kernels). With a dilation the limit is ``dilation (kernel_size - 1)``.
    bias : bool
        Learn an additive bias per output channel (default True).
    dilation : int or (int, int)
        Spacing of the kernel taps (default 1: adjacent), as in PyTorch.
    groups : int
        Split the channels into this many independent convolutions (default 1); it must
        divide ``in_channels`` and ``out_channels``. ``groups=in_channels`` is a depthwise
        convolution (``out_channels = k in_channels``: a channel multiplier ``k``).
    weight_init, bias_init : str or callable
        Initializers from :mod:`xpnn.init`; ``"torch"`` (default) is PyTorch's
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = in_channels / groups * kh * kw``.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int, optional
        Seed of the host generator the initial values are drawn from.

    Attributes
    ----------
    weight : Parameter (out_channels, in_channels / groups, kh, kw)
    bias : Parameter (out_channels,) or None
    kernel_size, stride, padding, dilation : (int, int)
    groups : int

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2D(3, 8, 3, padding=1, seed=0)
    >>> conv(np.zeros((2, 3, 16, 16), dtype="float32")).shape
    (2, 8, 16, 16)
    >>> Conv2D(3, 8, 3, stride=2, padding=1, bias=False)
    Conv2D(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    >>> depthwise = Conv2D(8, 16, 3, padding=2, dilation=2, groups=8)
    >>> depthwise.weight.shape, depthwise(np.zeros((1, 8, 9, 9), dtype="float32")).shape
    ((16, 1, 3, 3), (1, 16, 9, 9))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, dilation=1, groups: int = 1, weight_init="torch",
                 bias_init="torch", dtype="float32", seed=None):
        super().__init__()
        self.in_channels = positive_int("Conv2D", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2D", "out_channels", out_channels)
        self.kernel_size = int_pair("Conv2D", "kernel_size", kernel_size)
        self.stride = int_pair("Conv2D", "stride", stride)
        self.dilation = int_pair("Conv2D", "dilation", dilation)
        self.groups = positive_int("Conv2D", "groups", groups)
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.groups:
                raise ConfigError(
                    f"Conv2D expected groups to divide {name}={getattr(self, name)}. "
                    f"Received: groups={groups!r}"
                )
        self._padding_arg = padding
        self.padding = self._resolve_padding(padding)
        self.weight_init, self.bias_init = init.get(weight_init), init.get(bias_init)
        self.dtype = float_dtype("Conv2D", dtype)
        self.weight = Parameter()
        self.bias = Parameter() if bias else None
        self.reset_parameters(host_rng(seed))

    @classmethod
    def values_from_config(cls, config: dict) -> int:
        """The number of parameter values the layer ``config`` describes, ``in_channels /
        groups * out_channels * kh * kw`` plus ``out_channels`` with a bias (used to refuse
        forged files before anything is built; values the constructor refuses count 0)."""
        ins, outs = config.get("in_channels"), config.get("out_channels")
        if not (is_int(ins, 1) and is_int(outs, 1)):
            return 0  # the constructor reports it
        groups = config.get("groups", 1)
        kernel = config.get("kernel_size", 1)
        kernel = (kernel, kernel) if is_int(kernel) else kernel
        area = 1
        if isinstance(kernel, list | tuple) and all(is_int(k, 1) for k in kernel):
            area = math.prod(int(k) for k in kernel)
        weights = int(ins) // (int(groups) if is_int(groups, 1) else 1) * int(outs) * area
        return weights + (int(outs) if config.get("bias", True) else 0)

    def _resolve_padding(self, padding) -> tuple[int, int]:
        if isinstance(padding, str):
            if padding != "same":
                raise ConfigError(
                    f"Conv2D expected padding to be an integer, a pair or 'same'. "
                    f"Received: padding={padding!r}"
                )
            even = [k for k in self.kernel_size if k % 2 == 0]
            if self.stride != (1, 1) or even:
                raise ConfigError(
                    f"Conv2D supports padding='same' only with stride 1 and odd kernel sizes. "
                    f"Received: kernel_size={self.kernel_size}, stride={self.stride}. "
                    f"Give the padding explicitly, e.g. padding={self.kernel_size[0] // 2}."
                )
            reach = self._reach()
            return (reach[0] - 1) // 2, (reach[1] - 1) // 2
        pair = int_pair("Conv2D", "padding", padding, minimum=0)
        if any(p > r - 1 for p, r in zip(pair, self._reach(), strict=True)):
            # Beyond reach - 1 ("full" convolution) the extra output rows and columns see
            # only zeros (they hold the bias alone), and a huge padding would allocate a
            # huge padded input before anything failed.
            limit = ("kernel_size - 1" if self.dilation == (1, 1)
                     else "dilation * (kernel_size - 1)")
            raise ConfigError(
                f"Conv2D expected padding to be at most {limit} on each axis (every output "
                f"then sees at least one input pixel). Received: padding={padding!r}, "
                f"kernel_size={self.kernel_size}"
                + ("" if self.dilation == (1, 1) else f", dilation={self.dilation}")
            )
        return pair

    def _reach(self) -> tuple[int, int]:
        """The extent of the dilated kernel, ``dilation (kernel_size - 1) + 1`` per axis."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size,
                                                     strict=True))

    def reset_parameters(self, rng, dtype=None) -> None:
        if dtype is not None:
            self.dtype = float_dtype("Conv2D", dtype)
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        fans = (self.in_channels // self.groups * kh * kw, self.out_channels * kh * kw)
        self.weight.value = self.backend.asarray(self.weight_init(rng, shape, *fans), self.dtype)
        if self.bias is not None:
            bias = self.bias_init(rng, (self.out_channels,), *fans)
            self.bias.value = self.backend.asarray(bias, self.dtype)

    def _check(self, x) -> None:
        rank("Conv2D", x, 4, "NCHW")
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self.describe()} expected {self.in_channels} input channels (axis 1 of "
                f"NCHW). Received: {x.shape[1]} channels, x.shape={tuple(x.shape)}"
            )
        (kh, kw), (ph, pw) = self._reach(), self.padding
        h, w = x.shape[2], x.shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            dilated = "" if self.dilation == (1, 1) else f" (dilation {self.dilation})"
            raise ShapeError(
                f"{self.describe()} needs a padded input of at least {kh}x{kw} pixels"
                f"{dilated}. Received: x.shape={tuple(x.shape)}, which is "
                f"{h + 2 * ph}x{w + 2 * pw} after padding. Use larger images or fewer "
                f"downsampling layers before it."
            )
        same_dtype(self, x, self.weight.value)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        self._check(x)
        weight, bias = self.weight, self.bias
        w = weight.value
        stride, padding = self.stride, self.padding
        geometry = {"dilation": self.dilation, "groups": self.groups}
        b = None if bias is None else bias.value
        ops = self.backend.ops
        if train:
            # `saved`: whatever the backend's kernel wants back for the backward pass.
            y, saved = ops.conv2d_train(x, w, b, stride, padding, **geometry)
        else:
            y, saved = ops.conv2d(x, w, b, stride, padding, **geometry), None

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            dx, dw = ops.conv2d_backward(dy, x, w, stride, padding, saved,
                                         need_dx=need_input_grad, **geometry)
            weight.add_grad(dw)
            if bias is not None:
                bias.add_grad(xp.sum(dy, axis=(0, 2, 3)))
            return dx

        return y, backprop

    def config(self) -> dict:
        config = {"in_channels": self.in_channels, "out_channels": self.out_channels,
                  "kernel_size": self.kernel_size, "stride": self.stride,
                  "padding": self._padding_arg if isinstance(self._padding_arg, str)
                  else self.padding,
                  "bias": self.bias is not None, "weight_init": init.name_of(self.weight_init),
                  "bias_init": init.name_of(self.bias_init), "dtype": self.dtype}
        # Recorded only when set, so the records of plain convolutions (and files saved
        # before these arguments existed, which rebuild with the defaults) stay the same.
        if self.dilation != (1, 1):
            config["dilation"] = self.dilation
        if self.groups != 1:
            config["groups"] = self.groups
        return config

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if isinstance(self._padding_arg, str):
            text += f", padding={self._padding_arg}"
        elif self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + ("" if self.bias is not None else ", bias=False")
