"""ConvBNAct: convolution (no bias) → BatchNorm → activation, the unit Darknet53 is made of.

Attribute names follow timm's ``ConvNormAct`` (``conv``, ``bn``), so the state names are
``conv.weight``, ``bn.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``.

In evaluation mode BatchNorm is an affine map per output channel, so it folds into the
convolution (Ioffe & Szegedy 2015, §3.2; with s = γ / sqrt(running_var + eps)):

    BN(conv(x; w)) = conv(x; w') + b',    w'[o] = s[o] w[o],    b' = β - s · running_mean

one convolution with a bias instead of a convolution and four elementwise passes. The folded
weights are computed on first use and cached together with the arrays they came from; any
new array in the conv weight, γ, β or the running statistics (a load, ``to()``, a functional
optimizer step) rebuilds them, and every training-mode forward drops the cache (in-place
optimizer steps keep array identity, but always follow a training forward).

Backward through the folded path maps the gradients of (w', b') back to the real parameters:

    dw = s · dw',    dβ = db',    dγ = (Σ_{c,kh,kw} dw' · w - running_mean · db') / sqrt(var + eps)
"""

from __future__ import annotations

from xpnn.backends import conv as kernels
from xpnn.errors import ConfigError
from xpnn.layers._checks import float_dtype, positive_int
from xpnn.layers.activations import LeakyReLU, ReLU
from xpnn.layers.batchnorm import BatchNorm
from xpnn.layers.conv import Conv2D
from xpnn.layers.shape import Identity
from xpnn.module import Module

ACTIVATIONS = ("leaky_relu", "relu", "identity")


class ConvBNAct(Module):
    """``activation(BatchNorm(Conv2D(x)))`` with "same" padding (``kernel_size // 2``).

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int
    stride : int
        Convolution stride (default 1).
    activation : str or Module
        ``"leaky_relu"`` (default), ``"relu"``, ``"identity"``, or a Module without
        parameters.
    negative_slope : float
        Slope of LeakyReLU for negative inputs (default 0.1, as darknet; timm uses 0.01).
    eps, momentum : float
        BatchNorm's epsilon (default 1e-5) and running-statistics momentum (default 0.1).
    fold : bool
        Fold BatchNorm into the convolution in evaluation mode (default True).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int or numpy.random.Generator, optional
        Seed (or generator) the convolution's initial weights are drawn from.

    Examples
    --------
    >>> import numpy as np
    >>> block = ConvBNAct(3, 8, 3, stride=2, seed=0)
    >>> block(np.zeros((1, 3, 16, 16), dtype="float32")).shape
    (1, 8, 8, 8)
    >>> sorted(block.state_dict())
    ['bn.bias', 'bn.running_mean', 'bn.running_var', 'bn.weight', 'conv.weight']
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, *, activation="leaky_relu", negative_slope: float = 0.1,
                 eps: float = 1e-5, momentum: float = 0.1, fold: bool = True,
                 dtype="float32", seed=None):
        super().__init__()
        positive_int("ConvBNAct", "kernel_size", kernel_size)
        dtype = float_dtype("ConvBNAct", dtype)
        self.conv = Conv2D(in_channels, out_channels, kernel_size, stride=stride,
                           padding=kernel_size // 2, bias=False, dtype=dtype, seed=seed)
        self.bn = BatchNorm(out_channels, eps=eps, momentum=momentum, dtype=dtype)
        self.act = _activation(activation, negative_slope)
        if activation is None or activation == "linear":
            activation = "identity"
        self.activation = activation if isinstance(activation, str) else type(activation).__name__
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.negative_slope = float(negative_slope)
        self.fold = bool(fold)
        self._fold_cache = None  # (w', b', scale, source arrays): a tuple, not a child

    # -- computing ---------------------------------------------------------------------------
    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        if train:
            self._fold_cache = None
        if train or not self.fold:
            steps = []
            for layer in (self.conv, self.bn, self.act):
                x, step = layer.forward(x, train=train)
                steps.append(step)

            def backprop(dy):
                for step in reversed(steps):
                    dy = step(dy)
                return dy

            return x, backprop
        return self._forward_folded(x)

    def _forward_folded(self, x):
        xp = self.backend.xp
        conv, bn = self.conv, self.bn
        conv._check(x)  # the convolution's own shape and dtype checks
        w_folded, b_folded, scale, sources = self.folded()
        w, _, _, mean, var = sources
        stride, padding = conv.stride, conv.padding
        z = kernels.conv2d(x, w_folded, b_folded, stride, padding)
        y, act_backprop = self.act.forward(z, train=False)

        def backprop(dy):
            dz = act_backprop(dy)
            dx, dw_folded = kernels.conv2d_backward(dz, x, w_folded, stride, padding)
            db_folded = xp.sum(dz, axis=(0, 2, 3))
            conv.weight.add_grad(dw_folded * xp.reshape(scale, (-1, 1, 1, 1)))
            dw_dot_w = xp.sum(dw_folded * w, axis=(1, 2, 3))
            bn.weight.add_grad((dw_dot_w - mean * db_folded) / xp.sqrt(var + bn.eps))
            bn.bias.add_grad(db_folded)
            return dx

        return y, backprop

    def folded(self):
        """``(w', b', s, sources)``: the folded weight and bias, the per-channel scale
        s = γ / sqrt(var + eps), and the arrays they were computed from. Cached until one
        of those arrays is replaced."""
        conv, bn = self.conv, self.bn
        sources = (conv.weight.value, bn.weight.value, bn.bias.value,
                   bn.running_mean.value, bn.running_var.value)
        cache = self._fold_cache
        if cache is not None and all(a is b for a, b in zip(cache[-1], sources, strict=True)):
            return cache
        xp = self.backend.xp
        w, gamma, beta, mean, var = sources
        scale = gamma / xp.sqrt(var + bn.eps)
        w_folded = w * xp.reshape(scale, (-1, 1, 1, 1))
        b_folded = beta - mean * scale
        self._fold_cache = (w_folded, b_folded, scale, sources)
        return self._fold_cache

    # -- describing ------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "activation": self.activation, "negative_slope": self.negative_slope,
                "eps": self.bn.eps, "momentum": self.bn.momentum, "fold": self.fold,
                "dtype": self.bn.dtype}

    def extra_repr(self) -> str:
        act = self.activation + (
            f"({self.negative_slope:g})" if self.activation == "leaky_relu" else ""
        )
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {act}")


def _activation(activation, negative_slope: float) -> Module:
    if isinstance(activation, Module):
        if activation.parameters():
            raise ConfigError(
                f"ConvBNAct expected an activation without parameters. Received: "
                f"{activation.describe()} with {activation.num_parameters()} parameters"
            )
        return activation
    if activation == "leaky_relu":
        return LeakyReLU(negative_slope)
    if activation == "relu":
        return ReLU()
    if activation in ("identity", "linear", None):
        return Identity()
    raise ConfigError(
        f"ConvBNAct expected activation to be one of {', '.join(ACTIVATIONS)} or a Module. "
        f"Received: activation={activation!r}"
    )
