"""2-D convolution over NCHW images: y = W * x + b.

Shapes: x (N, C, H, W), weight (O, C, KH, KW), bias (O,), y (N, O, OH, OW) with

    OH = (H + 2 ph - KH) // sh + 1,      OW = (W + 2 pw - KW) // sw + 1,
    y[n, o, a, b] = b[o] + sum_{c, i, j} weight[o, c, i, j] x_pad[n, c, sh a + i, sw b + j].

Backward (vector-Jacobian products for dy = dL/dy), computed by the backend's kernels
``conv2d_train`` / ``conv2d_backward`` (:mod:`xpnn.backends.portable`: im2col / col2im, or
a backend's own implementation):

    dL/dweight = sum_{n,a,b} dy[n, :, a, b] (x) window(n, a, b),    dL/db = sum_{n,a,b} dy,
    dL/dx      = the transposed convolution of dy with the weight.

``backprop(dy, need_input_grad=False)`` skips dL/dx and returns None (a network's first
layer: the gradient of the data is never used).
"""

from __future__ import annotations

from xpnn import init
from xpnn.backends import host_rng
from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module, Parameter
from xpnn.validation import float_dtype, grad_shape, int_pair, positive_int, rank, same_dtype


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
        it needs stride 1 and odd kernel sizes (the padding is then ``(k - 1) // 2`` on each
        side, symmetric, which is what PyTorch's ``padding="same"`` gives for odd kernels).
    bias : bool
        Learn an additive bias per output channel (default True).
    weight_init, bias_init : str or callable
        Initializers from :mod:`xpnn.init`; ``"torch"`` (default) is PyTorch's
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = in_channels * kh * kw``.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int, optional
        Seed of the host generator the initial values are drawn from.

    Attributes
    ----------
    weight : Parameter (out_channels, in_channels, kh, kw)
    bias : Parameter (out_channels,) or None
    kernel_size, stride, padding : (int, int)

    Examples
    --------
    >>> import numpy as np
    >>> conv = Conv2D(3, 8, 3, padding=1, seed=0)
    >>> conv(np.zeros((2, 3, 16, 16), dtype="float32")).shape
    (2, 8, 16, 16)
    >>> Conv2D(3, 8, 3, stride=2, padding=1, bias=False)
    Conv2D(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, weight_init="torch", bias_init="torch",
                 dtype="float32", seed=None):
        super().__init__()
        self.in_channels = positive_int("Conv2D", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2D", "out_channels", out_channels)
        self.kernel_size = int_pair("Conv2D", "kernel_size", kernel_size)
        self.stride = int_pair("Conv2D", "stride", stride)
        self._padding_arg = padding
        self.padding = self._resolve_padding(padding)
        self.weight_init, self.bias_init = init.get(weight_init), init.get(bias_init)
        self.dtype = float_dtype("Conv2D", dtype)
        self.weight = Parameter()
        self.bias = Parameter() if bias else None
        self.reset_parameters(host_rng(seed))

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
            return (self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2
        pair = int_pair("Conv2D", "padding", padding, minimum=0)
        if any(p > k - 1 for p, k in zip(pair, self.kernel_size, strict=True)):
            # Beyond k - 1 ("full" convolution) the extra output rows and columns see
            # only zeros (they hold the bias alone), and a huge padding would allocate a
            # huge padded input before anything failed.
            raise ConfigError(
                f"Conv2D expected padding to be at most kernel_size - 1 on each axis (every "
                f"output then sees at least one input pixel). Received: padding={padding!r}, "
                f"kernel_size={self.kernel_size}"
            )
        return pair

    def reset_parameters(self, rng, dtype=None) -> None:
        if dtype is not None:
            self.dtype = float_dtype("Conv2D", dtype)
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        fans = (self.in_channels * kh * kw, self.out_channels * kh * kw)
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
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2], x.shape[3]
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ShapeError(
                f"{self.describe()} needs a padded input of at least {kh}x{kw} pixels. "
                f"Received: x.shape={tuple(x.shape)}, which is {h + 2 * ph}x{w + 2 * pw} "
                f"after padding. Use larger images or fewer downsampling layers before it."
            )
        same_dtype(self, x, self.weight.value)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        self._check(x)
        weight, bias = self.weight, self.bias
        w = weight.value
        stride, padding = self.stride, self.padding
        b = None if bias is None else bias.value
        ops = self.backend.ops
        if train:
            # `saved`: whatever the backend's kernel wants back for the backward pass.
            y, saved = ops.conv2d_train(x, w, b, stride, padding)
        else:
            y, saved = ops.conv2d(x, w, b, stride, padding), None

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            dx, dw = ops.conv2d_backward(dy, x, w, stride, padding, saved,
                                         need_dx=need_input_grad)
            weight.add_grad(dw)
            if bias is not None:
                bias.add_grad(xp.sum(dy, axis=(0, 2, 3)))
            return dx

        return y, backprop

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self._padding_arg if isinstance(self._padding_arg, str)
                else self.padding,
                "bias": self.bias is not None, "weight_init": init.name_of(self.weight_init),
                "bias_init": init.name_of(self.bias_init), "dtype": self.dtype}

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if isinstance(self._padding_arg, str):
            text += f", padding={self._padding_arg}"
        elif self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text + ("" if self.bias is not None else ", bias=False")
