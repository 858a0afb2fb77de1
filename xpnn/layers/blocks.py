"""ConvBNAct: convolution (no bias) → BatchNorm → activation, the unit Darknet53 is made of.

Attribute names follow timm's ``ConvNormAct`` (``conv``, ``bn``), so the state names are
``conv.weight``, ``bn.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``.

In evaluation mode BatchNorm is an affine map per output channel, so it folds into the
convolution (Ioffe & Szegedy 2015, §3.2; with s = γ / sqrt(running_var + eps), and γ = 1,
β = 0 for a BatchNorm built with ``affine=False``):

    BN(conv(x; w)) = s · conv(x; w) + b',    b' = β - s · running_mean

The scale s is applied to the convolution's *output*, together with b' and the activation,
in one fused pass of the backend's convolution kernel (``backend.ops.conv2d`` with
``scale=``, see :mod:`xpnn.backends.portable`): no copy of the weights (Darknet53 would
hold its 167 MB twice) and one pass over the output instead of a convolution and four
elementwise passes. (s, b') are recomputed at every call: a few operations on vectors of
``out_channels`` values, and always in step with γ, β and the running statistics, however
they were changed.

Backward through the folded path (rare: evaluation mode) works with w' = s · w, built
only when it runs, and maps the gradients of (w', b') back to the real parameters:

    dw = s · dw',    dβ = db',    dγ = (Σ_{c,kh,kw} dw' · w - running_mean · db') / sqrt(var + eps)

(without ``affine`` only dw). A BatchNorm built with ``track_running_stats=False`` has no
running statistics to fold: it normalizes with the batch's own statistics in evaluation
mode too, so the block then runs as in training.

In training (batch statistics) the convolution runs, then BatchNorm and the activation in
one call of the backend's ``batchnorm_train`` kernel (``BatchNorm.forward_activated``,
for ReLU and LeakyReLU with a slope in (0, 1]): on NumPy with numba two passes over the
data each way instead of about ten. Other activations, and half-precision inputs under
mixed precision, run the three layers in turn.
"""

from __future__ import annotations

from xpnn.errors import ConfigError
from xpnn.layers.activations import LeakyReLU, ReLU, relu_backward, where_positive
from xpnn.layers.batchnorm import BatchNorm
from xpnn.layers.conv import Conv2D
from xpnn.layers.shape import Identity
from xpnn.module import Module
from xpnn.validation import float_dtype, grad_shape, positive_int

ACTIVATIONS = ("leaky_relu", "relu", "identity")


class ConvBNAct(Module):
    """``activation(BatchNorm(Conv2D(x)))`` with "same" padding (``kernel_size // 2``).

    ``backprop`` accepts ``need_input_grad=False`` (the first layer of a network): the
    convolution then skips its transposed convolution and returns None.

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
    affine, track_running_stats : bool
        BatchNorm's options (default True, see :class:`~xpnn.layers.BatchNorm`): without
        ``affine`` no γ and β; without ``track_running_stats`` no running statistics, and
        evaluation normalizes with the batch's statistics (nothing is folded).
    fold : bool
        Fold BatchNorm into the convolution in evaluation mode (default True; only when
        it keeps running statistics).
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
                 eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, fold: bool = True,
                 dtype="float32", seed=None):
        super().__init__()
        positive_int("ConvBNAct", "kernel_size", kernel_size)
        dtype = float_dtype("ConvBNAct", dtype)
        self.conv = Conv2D(in_channels, out_channels, kernel_size, stride=stride,
                           padding=kernel_size // 2, bias=False, dtype=dtype, seed=seed)
        self.bn = BatchNorm(out_channels, eps=eps, momentum=momentum, affine=affine,
                            track_running_stats=track_running_stats, dtype=dtype)
        self.act = _activation(activation, negative_slope)
        if activation is None or activation == "linear":
            activation = "identity"
        # A Module activation is recorded as a nested config, which xpnn.io.load_model rebuilds.
        self.activation = activation if isinstance(activation, str) else {
            "type": type(activation).__name__, "config": activation.config()}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.negative_slope = float(negative_slope)
        self.fold = bool(fold)

    # -- computing ---------------------------------------------------------------------------
    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        if train or not self.fold or self.bn.running_mean is None:  # nothing to fold
            x, conv_backprop = self.conv.forward(x, train=train)
            slope = self._batch_fusable_slope(train, x)
            if slope is None:
                x, bn_backprop = self.bn.forward(x, train=train)
                x, act_backprop = self.act.forward(x, train=train)
                after_conv = [act_backprop, bn_backprop]  # in backward order
            else:  # BatchNorm and activation in one kernel call (backend.ops.batchnorm_train)
                x, bn_act_backprop = self.bn.forward_activated(x, train=train,
                                                               negative_slope=slope)
                after_conv = [bn_act_backprop]
            out_shape = tuple(x.shape)

            def backprop(dy, *, need_input_grad: bool = True):
                grad_shape(self, dy, out_shape)  # before any gradient is touched
                for step in after_conv:
                    dy = step(dy)
                return conv_backprop(dy, need_input_grad=need_input_grad)

            return x, backprop
        return self._forward_folded(x)

    def _forward_folded(self, x):
        xp, ops = self.backend.xp, self.backend.ops
        conv, bn = self.conv, self.bn
        conv._check(x)  # the convolution's own shape and dtype checks
        scale, shift = self.folded()
        if scale.dtype != x.dtype:  # half-precision inference (xpnn.mixed_precision)
            scale, shift = xp.astype(scale, x.dtype), xp.astype(shift, x.dtype)
        w, mean, var = conv.weight.value, bn.running_mean.value, bn.running_var.value
        bn_weight, bn_bias = bn.weight, bn.bias
        stride, padding = conv.stride, conv.padding
        slope = self._fusable_slope()
        if slope is None:
            z = ops.conv2d(x, w, shift, stride, padding, scale=scale)
            y, act_backprop = self.act.forward(z, train=False)
        else:
            # conv, scale, shift and activation in one kernel call; y > 0 exactly where z > 0.
            y = ops.conv2d(x, w, shift, stride, padding, scale=scale, negative_slope=slope)

            def act_backprop(dy):
                if slope == 0.0:  # ReLU's backward, as the ReLU layer computes it
                    return relu_backward(dy, y, xp)
                return where_positive(dy, y, slope, xp)

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            dz = act_backprop(dy)
            w_folded = w * xp.reshape(scale, (-1, 1, 1, 1))
            dx, dw_folded = ops.conv2d_backward(dz, x, w_folded, stride, padding, None,
                                                need_dx=need_input_grad)
            conv.weight.add_grad(dw_folded * xp.reshape(scale, (-1, 1, 1, 1)))
            if bn_weight is not None:  # γ and β, unless the BatchNorm has none (affine=False)
                db_folded = xp.sum(dz, axis=(0, 2, 3))
                dw_dot_w = xp.sum(dw_folded * w, axis=(1, 2, 3))
                bn_weight.add_grad((dw_dot_w - mean * db_folded) / xp.sqrt(var + bn.eps))
                bn_bias.add_grad(db_folded)
            return dx

        return y, backprop

    def _batch_fusable_slope(self, train: bool, z) -> float | None:
        """The slope to fuse into the BatchNorm kernel when it normalizes with the batch's
        statistics: 0 for ReLU, the LeakyReLU slope when it is in (0, 1] (a LeakyReLU of
        slope 0 maps -inf to NaN, as PyTorch's, not to 0 as ReLU); None for any other
        activation, evaluation with running statistics, or a half-precision ``z``."""
        bn = self.bn
        if not bn.uses_batch_statistics(train) or bn.half_input(z):
            return None
        slope = self._fusable_slope()
        if slope == 0.0 and type(self.act) is LeakyReLU:
            return None
        return slope

    def _fusable_slope(self) -> float | None:
        """The slope to fuse into the convolution kernel: 0 for ReLU, the LeakyReLU slope
        when it is in [0, 1]; None for any other activation."""
        act = self.act
        if type(act) is ReLU:
            return 0.0
        if type(act) is LeakyReLU and 0.0 <= act.negative_slope <= 1.0:
            return act.negative_slope
        return None

    def folded(self):
        """``(s, b')``: the per-channel scale s = γ / sqrt(var + eps) and shift
        b' = β - s · running_mean of BatchNorm in evaluation mode (γ = 1, β = 0 without
        ``affine``). A ConfigError for a BatchNorm without running statistics."""
        bn, xp = self.bn, self.backend.xp
        if bn.running_mean is None:
            raise ConfigError(
                f"{self.describe()} has no running statistics to fold "
                f"(track_running_stats=False): its BatchNorm normalizes with the batch's "
                f"statistics in evaluation mode too.")
        std = xp.sqrt(bn.running_var.value + bn.eps)
        if bn.weight is None:
            scale = 1.0 / std
            return scale, -(bn.running_mean.value * scale)
        scale = bn.weight.value / std
        return scale, bn.bias.value - bn.running_mean.value * scale

    # -- describing ------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "activation": self.activation, "negative_slope": self.negative_slope,
                "eps": self.bn.eps, "momentum": self.bn.momentum, "affine": self.bn.affine,
                "track_running_stats": self.bn.track_running_stats, "fold": self.fold,
                "dtype": self.bn.dtype}

    def extra_repr(self) -> str:
        if isinstance(self.activation, dict):
            act = self.act.describe()
        else:
            act = self.activation + (
                f"({self.negative_slope:g})" if self.activation == "leaky_relu" else "")
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {act}")
        if not self.bn.affine:
            text += ", affine=False"
        if not self.bn.track_running_stats:
            text += ", track_running_stats=False"
        return text


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
