"""Dense (fully connected) layer: y = x W^T + b.

Shapes: x (N, in), W (out, in), b (out,), y (N, out). Leading axes beyond the first are
allowed: x (..., in) -> y (..., out).

Backward (vector-Jacobian products for dy = dL/dy):
    dL/dx = dy W,   dL/dW = dy^T x,   dL/db = sum over the batch of dy.

``backprop(dy, need_input_grad=False)`` skips dL/dx (a third of the backward work) and
returns None: what a network's first layer needs, since nobody uses the gradient of the data.
"""

from __future__ import annotations

import math

from xpnn import init
from xpnn.backends import host_rng
from xpnn.errors import ShapeError
from xpnn.module import Module, Parameter
from xpnn.validation import float_dtype, grad_shape, positive_int, same_dtype


class Dense(Module):
    """Fully connected layer ``y = x @ W.T + b`` with ``W`` of shape ``(out, in)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
        Learn an additive bias (default True).
    weight_init, bias_init : str or callable
        Initializers from :mod:`xpnn.init`; ``"torch"`` (default) is PyTorch's
        U(-1/sqrt(in), 1/sqrt(in)).
    dtype : str
        ``"float32"`` (default) or ``"float64"`` (for gradient checks).
    seed : int, optional
        Seed of the host generator the initial values are drawn from.

    Examples
    --------
    >>> import numpy as np
    >>> layer = Dense(3, 2, seed=0)
    >>> layer(np.ones((4, 3), dtype="float32")).shape
    (4, 2)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_init="torch", bias_init="torch", dtype="float32", seed=None):
        super().__init__()
        self.in_features = positive_int("Dense", "in_features", in_features)
        self.out_features = positive_int("Dense", "out_features", out_features)
        self.weight_init, self.bias_init = init.get(weight_init), init.get(bias_init)
        self.dtype = float_dtype("Dense", dtype)
        self.weight = Parameter()
        self.bias = Parameter() if bias else None
        self.reset_parameters(host_rng(seed))

    def reset_parameters(self, rng, dtype=None) -> None:
        if dtype is not None:
            self.dtype = float_dtype("Dense", dtype)
        shape, fans = (self.out_features, self.in_features), (self.in_features, self.out_features)
        self.weight.value = self.backend.asarray(self.weight_init(rng, shape, *fans), self.dtype)
        if self.bias is not None:
            bias = self.bias_init(rng, (self.out_features,), *fans)
            self.bias.value = self.backend.asarray(bias, self.dtype)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        ops = self.backend.ops
        weight, bias = self.weight, self.bias
        w = weight.value
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{self.describe()} expected an input of shape (batch, {self.in_features}). "
                f"Received: x.shape={tuple(x.shape)}"
            )
        same_dtype(self, x, w)
        leading = tuple(x.shape[:-1])
        if x.ndim != 2:
            x = xp.reshape(x, (math.prod(leading), self.in_features))
        y = x @ w.T
        if bias is not None:
            y += bias.value
        if len(leading) != 1:
            y = xp.reshape(y, (*leading, self.out_features))

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # before any gradient is touched
            if dy.ndim != 2:
                dy = xp.reshape(dy, (x.shape[0], self.out_features))
            if x.shape[0] == 1:
                # An outer product: a GEMM whose inner dimension is 1 is several times
                # slower (the backend's `outer` kernel, see xpnn.backends.portable).
                weight.add_grad(ops.outer(dy[0, :], x[0, :]))
            else:
                weight.add_grad(dy.T @ x)
            if bias is not None:
                bias.add_grad(xp.sum(dy, axis=0))
            if not need_input_grad:  # the first layer of a network: dL/dx is never used
                return None
            dx = dy @ w
            return dx if len(leading) == 1 else xp.reshape(dx, (*leading, self.in_features))

        return y, backprop

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "weight_init": init.name_of(self.weight_init),
                "bias_init": init.name_of(self.bias_init), "dtype": self.dtype}

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}" + ("" if self.bias else ", bias=False")
