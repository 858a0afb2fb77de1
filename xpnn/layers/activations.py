"""Element-wise activations and softmax, each with its hand-written backward.

Every backward is ``dx = dy * f'(x)``, written in terms of whichever of x or y makes the
derivative cheapest:

    ReLU        y = max(x, 0)                 dx = dy where not x <= 0, else 0
    LeakyReLU   y = x if x > 0 else a x       dx = dy where x > 0, else a dy
    Sigmoid     y = 1 / (1 + e^-x)            dx = dy y (1 - y)
    Tanh        y = tanh x                    dx = dy (1 - y^2)
    Softmax     y_i = e^x_i / sum_j e^x_j     dx = y (dy - sum_j dy_j y_j)

ReLU and LeakyReLU (with a slope in (0, 1]) read the sign of x from y, which has the same
sign, so the forward pass stores no mask and inference computes none. Every ``backprop``
accepts ``need_input_grad=False`` (then it returns None: these layers have no parameters,
so there is nothing else to compute) and first checks that ``dy`` has the shape of ``y``.

Non-finite values follow PyTorch exactly (``tests/hardening/test_bad_numerics.py``):

* ReLU's backward passes ``dy`` where the input is NaN (``NaN <= 0`` is false, as in
  PyTorch's ``threshold_backward``) and gives exactly 0 elsewhere below zero, even for an
  infinite ``dy``;
* LeakyReLU keeps ``±inf`` (``inf`` stays ``inf``; ``-inf`` becomes ``a · -inf``) for any
  slope, and its backward gives ``a · dy`` below zero, so an infinite ``dy`` stays
  infinite (with ``a = 0`` it is ``0 · inf = NaN``, as in PyTorch);
* Sigmoid is computed in two halves (``e^x / (1 + e^x)`` below zero), accurate in
  relative terms far into the negative tail (``sigmoid(-80)`` is ``1.8e-35``, not 0).
"""

from __future__ import annotations

import math
import numbers

from xpnn.backends.portable import relu_backward, slope_factor, where_positive
from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module
from xpnn.validation import floating_input, grad_shape, is_int


def _floating(module, x, xp) -> None:
    """A DTypeError for a floating-point ``x`` other than float32 or float64 (bfloat16,
    float16: xpnn computes in float32 or float64 only). Integer inputs follow the array
    library, as before."""
    if x.dtype != xp.float32 and x.dtype != xp.float64 and xp.isdtype(x.dtype,
                                                                      "real floating"):
        floating_input(module, x)


class ReLU(Module):
    """``max(x, 0)``. NaN inputs stay NaN and their gradient passes, as in PyTorch, so a
    diverging run is seen."""

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        _floating(self, x, xp)
        y = xp.maximum(x, 0.0)
        shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            if not need_input_grad:
                return None
            # PyTorch's threshold_backward: 0 where x <= 0 (y <= 0 exactly there; a NaN
            # input gives y = NaN and passes dy), dy elsewhere, even for an infinite dy.
            return relu_backward(dy, y, xp)

        return y, backprop


class LeakyReLU(Module):
    """``x`` for positive ``x``, ``negative_slope * x`` otherwise (default slope 0.01, as
    PyTorch; Darknet's weights use 0.1). Infinite inputs and gradients stay infinite."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not math.isfinite(negative_slope):
            raise ConfigError(
                f"LeakyReLU expected negative_slope to be a number (finite, e.g. 0.01). "
                f"Received: negative_slope={negative_slope!r}"
            )
        self.negative_slope = float(negative_slope)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        _floating(self, x, xp)
        slope = self.negative_slope
        if 0.0 < slope <= 1.0:
            # max(x, a x) is x for x >= 0 and a x for x < 0 when 0 < a <= 1: two passes
            # over the data instead of three, and y has the sign of x. (With a = 0 it
            # would give max(inf, inf * 0) = NaN for x = inf.)
            y = xp.maximum(x, x * slope)
            factor = None
        else:
            factor = slope_factor(x, slope, x.dtype, xp)
            y = x * factor  # inf * 1 and -inf * a, as PyTorch (-inf * 0 is NaN there too)
        shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            if not need_input_grad:
                return None
            if factor is None:
                return where_positive(dy, y, slope, xp)
            return dy * factor

        return y, backprop

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


def sigmoid(x, xp):
    """The logistic function ``1 / (1 + e^-x)``, accurate in relative terms everywhere.

    Computed as ``e^x / (1 + e^x)`` for ``x < 0`` and ``1 / (1 + e^-x)`` otherwise, with
    ``t = e^-|x|`` (never overflows): both halves round once per operation, so the result
    keeps full relative precision down to the smallest normal numbers (``x`` about -87 in
    float32, -708 in float64), where ``0.5 + 0.5 tanh(x / 2)`` lost all digits below
    ``x`` about -17 (float32) or -37 (float64).
    """
    t = xp.exp(-xp.abs(x))
    inv = 1.0 / (1.0 + t)
    return xp.where(x >= 0, inv, t * inv)


class Sigmoid(Module):
    """The logistic function, accurate in relative terms in both tails (see
    :func:`sigmoid`)."""

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        _floating(self, x, xp)
        y = sigmoid(x, xp)
        shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            return dy * y * (1.0 - y) if need_input_grad else None

        return y, backprop


class Tanh(Module):
    """The hyperbolic tangent."""

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        _floating(self, x, xp)
        y = xp.tanh(x)
        shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            return dy * (1.0 - y * y) if need_input_grad else None

        return y, backprop


class Softmax(Module):
    """Softmax along ``axis`` (default the last). For classification training prefer
    :func:`xpnn.losses.softmax_cross_entropy` on logits: it fuses both and is exact."""

    def __init__(self, axis: int = -1):
        super().__init__()
        if not is_int(axis):
            raise ConfigError(
                f"Softmax expected axis to be an integer (not a bool). Received: axis={axis!r}"
            )
        self.axis = int(axis)

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        _floating(self, x, xp)
        axis = self.axis
        if not -x.ndim <= axis < x.ndim or x.shape[axis] == 0:
            raise ShapeError(
                f"{self.describe()} expected an input with at least one value along axis "
                f"{axis}. Received: x.shape={tuple(x.shape)}"
            )
        shifted = xp.exp(x - xp.max(x, axis=axis, keepdims=True))  # stable: exponents <= 0
        y = shifted / xp.sum(shifted, axis=axis, keepdims=True)
        shape = tuple(y.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)
            if not need_input_grad:
                return None
            return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))

        return y, backprop

    def config(self) -> dict:
        return {"axis": self.axis}

    def extra_repr(self) -> str:
        return "" if self.axis == -1 else f"axis={self.axis}"
