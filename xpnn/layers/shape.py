"""Layers that only rearrange or pass values: Flatten and Identity.

Like every layer without parameters, their ``backprop(dy, need_input_grad=False)`` does no
work and returns None."""

from __future__ import annotations

import math

from xpnn.errors import ShapeError
from xpnn.module import Module
from xpnn.validation import grad_shape


class Flatten(Module):
    """Reshape ``(N, d1, d2, ...)`` to ``(N, d1 * d2 * ...)``; backward reshapes back."""

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        if x.ndim < 1:
            raise ShapeError("Flatten expected an input with a batch axis. Received: x.shape=()")
        shape = tuple(x.shape)
        y = xp.reshape(x, (shape[0], math.prod(shape[1:])))

        out_shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)
            return xp.reshape(dy, shape) if need_input_grad else None

        return y, backprop


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        shape = tuple(x.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            return dy if need_input_grad else None

        return x, backprop
