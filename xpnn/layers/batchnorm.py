"""Batch normalization (Ioffe & Szegedy 2015) for NCHW images and (N, C) features.

Per channel c, over the m = N·H·W values of a batch (m = N for (N, C) inputs):

    training:   μ = mean(x),  σ² = mean((x - μ)²)  (biased),   x̂ = (x - μ) / sqrt(σ² + eps)
    evaluation: μ, σ² = running_mean, running_var
    output:     y = γ x̂ + β         (γ = ``weight``, β = ``bias``: PyTorch's names)

As PyTorch's ``BatchNorm2d`` / ``BatchNorm1d``: with ``affine=False`` there is no γ or β
(``weight`` and ``bias`` are None) and y = x̂; with ``track_running_stats=False`` there are
no running statistics (``running_mean`` and ``running_var`` are None) and the batch's own
μ and σ² are used in evaluation mode too, so evaluation then also needs more than one
value per channel.

In training mode the running statistics move towards the batch's, as PyTorch does, with
the *unbiased* variance:

    running_mean ← (1 - momentum) running_mean + momentum μ
    running_var  ← (1 - momentum) running_var  + momentum σ² m / (m - 1)

Backward, with sums over the m values of each channel (Ioffe & Szegedy 2015, §3; γ = 1
without ``affine``):

    dβ = Σ dy,   dγ = Σ dy x̂
    batch statistics:   dx = γ / (m sqrt(σ² + eps)) · (m dy - Σ dy - x̂ Σ dy x̂)
    running statistics: dx = γ / sqrt(σ² + eps) · dy      (an affine map of x)

``backprop(dy, need_input_grad=False)`` only accumulates dγ and dβ and returns None
(without ``affine`` it does nothing).

Data-parallel training (:mod:`xpnn.distributed`): by default each rank normalizes with the
statistics of its own slice of the batch. With ``layer.communicator`` set (by
:func:`xpnn.distributed.sync_batchnorm`, PyTorch's SyncBatchNorm) the per-channel sums
``Σ x``, ``Σ (x - μ)²`` and the count, and in the backward pass ``Σ dy`` and
``Σ dy (x - μ)``, are summed over the ranks in training mode, so μ, σ², m and dx are those
of the global batch; dγ and dβ stay this rank's own sums (the gradient all-reduce adds them
up). Evaluation mode never talks to the other ranks (as PyTorch's SyncBatchNorm): without
running statistics each rank normalizes with its own batch's.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from xpnn.backends import dtype_name
from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Buffer, Module, Parameter
from xpnn.validation import (
    flag,
    float_dtype,
    grad_shape,
    is_int,
    number,
    positive_int,
    same_dtype,
)


class BatchNorm(Module):
    """Normalize each channel with batch statistics (training) or running ones (inference).

    Parameters
    ----------
    num_features : int
        Number of channels C of an ``(N, C, H, W)`` or ``(N, C)`` input.
    eps : float
        Added to the variance before the square root (default 1e-5, as PyTorch).
    momentum : float
        Weight of the new batch in the running statistics (default 0.1, as PyTorch).
    affine : bool
        Learn a scale γ (``weight``) and shift β (``bias``) per channel (default True).
        False: no parameters at all, y = x̂.
    track_running_stats : bool
        Keep ``running_mean`` and ``running_var`` for evaluation mode (default True).
        False: no buffers, and evaluation normalizes with the batch's own statistics.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int, optional
        Accepted for a uniform layer signature; the initial values are not random
        (``weight`` ones, ``bias`` zeros, ``running_mean`` zeros, ``running_var`` ones).

    Examples
    --------
    >>> import numpy as np
    >>> bn = BatchNorm(3)
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype("float32")
    >>> y, _ = bn.forward(x, train=True)
    >>> bool(abs(float(y.mean())) < 1e-5)
    True
    >>> sorted(bn.state_dict())
    ['bias', 'running_mean', 'running_var', 'weight']
    >>> BatchNorm(3, affine=False, track_running_stats=False)
    BatchNorm(3, eps=1e-05, momentum=0.1, affine=False, track_running_stats=False)
    >>> sorted(BatchNorm(3, affine=False).state_dict())
    ['running_mean', 'running_var']
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 dtype="float32", seed=None):
        super().__init__()
        self.num_features = positive_int("BatchNorm", "num_features", num_features)
        self.eps = number("BatchNorm", "eps", eps, low=0.0, low_inclusive=False)
        self.momentum = number("BatchNorm", "momentum", momentum, low=0.0, high=1.0)
        self.affine = flag("BatchNorm", "affine", affine)
        self.track_running_stats = flag("BatchNorm", "track_running_stats",
                                        track_running_stats)
        self.dtype = float_dtype("BatchNorm", dtype)
        self.weight = Parameter() if affine else None
        self.bias = Parameter() if affine else None
        self.running_mean = Buffer() if track_running_stats else None
        self.running_var = Buffer() if track_running_stats else None
        self.communicator = None  # set by xpnn.distributed.sync_batchnorm; not saved
        self.reset_parameters(None)

    @classmethod
    def values_from_config(cls, config: dict) -> int:
        """The number of parameter and buffer values the layer ``config`` describes (used
        to refuse forged files before anything is built)."""
        size = config.get("num_features")
        if not is_int(size, 1):
            return 0  # the constructor reports it
        arrays = (2 if config.get("affine", True) is not False else 0) + (
            2 if config.get("track_running_stats", True) is not False else 0)
        return int(size) * arrays

    def reset_parameters(self, rng, dtype=None) -> None:
        """γ = 1, β = 0 and fresh running statistics (mean 0, variance 1), where kept."""
        if dtype is not None:
            self.dtype = float_dtype("BatchNorm", dtype)
        backend = self.backend
        xp, shape = backend.xp, (self.num_features,)
        kind = backend.dtype(self.dtype)
        for slot, fill in ((self.weight, xp.ones), (self.bias, xp.zeros),
                           (self.running_mean, xp.zeros), (self.running_var, xp.ones)):
            if slot is not None:
                slot.value = fill(shape, dtype=kind, device=backend.device)

    keeps_float32 = True  # under mixed precision: statistics in float32

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        if self.half_input(x):
            return self.forward_in_float32(x, train=train)
        return self._forward(x, xp, train, None)

    def uses_batch_statistics(self, train: bool) -> bool:
        """Whether ``forward(x, train=train)`` normalizes with the batch's statistics
        (training, or no running statistics kept)."""
        return train or self.running_mean is None

    def forward_activated(self, x, *, train: bool, negative_slope: float):
        """``forward`` followed by a (leaky) ReLU of ``negative_slope`` (in [0, 1]; 0: the
        ReLU layer's, else the LeakyReLU layer's) in the same kernel call, for
        :class:`~xpnn.layers.ConvBNAct`. Only where :meth:`uses_batch_statistics` and for
        inputs of the layer's own dtype (no mixed-precision half input)."""
        x, xp = self.prepare(x)
        if self.half_input(x) or not self.uses_batch_statistics(train):
            raise ConfigError(
                f"{self.describe()}.forward_activated needs batch statistics and an input of "
                f"the layer's dtype. Received: train={train}, x.dtype={dtype_name(x.dtype)}")
        return self._forward(x, xp, train, negative_slope)

    def _forward(self, x, xp, train, negative_slope):
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ShapeError(
                f"{self.describe()} expected an input of shape (N, {self.num_features}, H, W) "
                f"or (N, {self.num_features}). Received: x.shape={tuple(x.shape)}"
            )
        same_dtype(self, x, self._dtype_reference())
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        channel = (1, self.num_features) + (1,) * (x.ndim - 2)  # broadcast (C,) over x
        count = math.prod(x.shape[a] for a in axes)
        if self.uses_batch_statistics(train):
            return self._forward_batch_stats(x, count, train, negative_slope)

        weight, bias = self.weight, self.bias
        inv_std = 1.0 / xp.sqrt(xp.reshape(self.running_var.value, channel) + self.eps)
        centred = x - xp.reshape(self.running_mean.value, channel)
        scale = inv_std if weight is None else xp.reshape(weight.value, channel) * inv_std
        y = centred * scale
        if bias is not None:
            y = y + xp.reshape(bias.value, channel)
        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            if weight is not None:
                weight.add_grad(xp.sum(dy * centred * inv_std, axis=axes))
            if bias is not None:
                bias.add_grad(xp.sum(dy, axis=axes))
            return dy * scale if need_input_grad else None

        return y, backprop

    def _dtype_reference(self):
        """What the input's dtype is checked against: γ, the running mean, or (with
        neither) the layer's dtype."""
        for slot in (self.weight, self.running_mean):
            if slot is not None:
                return slot.value
        return SimpleNamespace(dtype=self.backend.dtype(self.dtype))

    def _forward_batch_stats(self, x, count, train, negative_slope=None):
        """Normalize with the batch's statistics (the backend's ``batchnorm_train`` kernel,
        :mod:`xpnn.backends.portable`), then apply a (leaky) ReLU of ``negative_slope`` when
        given (:class:`~xpnn.layers.ConvBNAct` fuses its activation here)."""
        # Only training synchronizes (PyTorch's SyncBatchNorm does the same): evaluation
        # without running statistics uses this rank's batch, and never waits for others.
        communicator = self.communicator if train else None
        if communicator is not None and communicator.size == 1:
            communicator = None
        allreduce = None if communicator is None else communicator.allreduce
        if communicator is not None:  # the global batch's count (a host number)
            count = int(communicator.allreduce_host([count])[0])
        if count < 2:
            if train and self.running_mean is not None:
                why, advice = "in training mode", ", or call the layer with train=False"
            else:  # without running statistics, evaluation uses the batch's too
                why, advice = ("in training and evaluation mode (it keeps no running "
                               "statistics: track_running_stats=False)"), ""
            raise ShapeError(
                f"{self.describe()} needs more than one value per channel {why} to "
                f"estimate a variance. Received: x.shape={tuple(x.shape)}. Use a batch of "
                f"at least 2{advice}."
            )
        weight, bias = self.weight, self.bias
        ops = self.backend.ops
        y, mean, var, saved = ops.batchnorm_train(
            x, None if weight is None else weight.value, None if bias is None else bias.value,
            self.eps, negative_slope=negative_slope, allreduce=allreduce, count=count)

        if train and self.running_mean is not None:
            # Running statistics: new arrays (functional update, valid on every backend).
            momentum = self.momentum
            self.running_mean.value = (1.0 - momentum) * self.running_mean.value + momentum * mean
            unbiased = var * (count / (count - 1))
            self.running_var.value = (
                (1.0 - momentum) * self.running_var.value + momentum * unbiased)

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            if weight is None and not need_input_grad:
                return None  # no parameters, and nobody wants dx
            dx, dgamma, dbeta = ops.batchnorm_backward(dy, saved, need_dx=need_input_grad,
                                                       allreduce=allreduce)
            if weight is not None:  # this rank's share of dγ and dβ
                weight.add_grad(dgamma)
            if bias is not None:
                bias.add_grad(dbeta)
            return dx

        return y, backprop

    def config(self) -> dict:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "dtype": self.dtype}

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"
        if not self.affine:
            text += ", affine=False"
        if not self.track_running_stats:
            text += ", track_running_stats=False"
        return text
