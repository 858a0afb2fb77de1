"""Layer normalization (Ba, Kiros & Hinton 2016), as PyTorch's ``nn.LayerNorm``.

Each sample is normalized over its last ``len(normalized_shape)`` axes, the D values
``x_1 ... x_D`` of one row once those axes are flattened:

    μ = mean(x),   σ² = mean((x - μ)²)  (biased, as PyTorch),   x̂ = (x - μ) / sqrt(σ² + eps)
    y = γ ⊙ x̂ + β        (γ = ``weight``, β = ``bias``, both of shape ``normalized_shape``)

Backward, with g = dy ⊙ γ, means over the D values of a row and sums over the rows
(the batch-norm derivation of Ioffe & Szegedy 2015, §3, with the roles of the axes
swapped; Ba et al. 2016, §3):

    dβ = Σ_rows dy,   dγ = Σ_rows dy ⊙ x̂
    dx = (g - mean(g) - x̂ mean(g ⊙ x̂)) / sqrt(σ² + eps)

``backprop(dy, need_input_grad=False)`` only accumulates dγ and dβ and returns None.
"""

from __future__ import annotations

import math

from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module, Parameter
from xpnn.validation import (
    float_dtype,
    floating_input,
    grad_shape,
    is_int,
    number,
    same_dtype,
)


def _normalized_shape(value) -> tuple[int, ...]:
    """``normalized_shape`` (a positive int or a non-empty sequence of them) as a tuple."""
    items = (value,) if is_int(value) else value
    if not isinstance(items, tuple | list) or not items or not all(
            is_int(item, 1) for item in items):
        raise ConfigError(
            f"LayerNorm expected normalized_shape to be a positive integer or a non-empty "
            f"sequence of them. Received: normalized_shape={value!r}"
        )
    return tuple(int(item) for item in items)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"LayerNorm expected {name} to be True or False. "
                          f"Received: {name}={value!r}")
    return value


class LayerNorm(Module):
    """Normalize each sample over its last axes, then scale and shift (``weight``,
    ``bias``), as PyTorch's ``LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
        The trailing shape to normalize over: ``x.shape[-len(normalized_shape):]`` must
        equal it.
    eps : float
        Added to the variance before the square root (default 1e-5, as PyTorch).
    elementwise_affine : bool
        Learn ``weight`` (ones) and ``bias`` (zeros) of shape ``normalized_shape``
        (default True).
    bias : bool
        With ``elementwise_affine``, learn ``bias`` too (default True, as PyTorch).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int, optional
        Accepted for a uniform layer signature; the initial values are not random.

    Examples
    --------
    >>> import numpy as np
    >>> layer = LayerNorm(4)
    >>> y = layer(np.arange(8, dtype="float32").reshape(2, 4))
    >>> np.round(y, 3)
    array([[-1.342, -0.447,  0.447,  1.342],
           [-1.342, -0.447,  0.447,  1.342]], dtype=float32)
    >>> sorted(layer.state_dict())
    ['bias', 'weight']
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype="float32", seed=None):
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps = number("LayerNorm", "eps", eps, low=0.0, low_inclusive=False)
        self.elementwise_affine = _flag("elementwise_affine", elementwise_affine)
        self._bias = _flag("bias", bias)
        self.dtype = float_dtype("LayerNorm", dtype)
        self.weight = Parameter() if elementwise_affine else None
        self.bias = Parameter() if elementwise_affine and self._bias else None
        self.reset_parameters(None)

    @classmethod
    def values_from_config(cls, config: dict) -> int:
        """The number of parameter values the layer ``config`` describes (used to refuse
        forged files before anything is built)."""
        size = math.prod(_normalized_shape(config.get("normalized_shape")))
        if not config.get("elementwise_affine", True):
            return 0
        return size * (2 if config.get("bias", True) else 1)

    def reset_parameters(self, rng, dtype=None) -> None:
        """γ = 1 and β = 0."""
        if dtype is not None:
            self.dtype = float_dtype("LayerNorm", dtype)
        backend = self.backend
        xp, kind = backend.xp, backend.dtype(self.dtype)
        if self.weight is not None:
            self.weight.value = xp.ones(self.normalized_shape, dtype=kind, device=backend.device)
        if self.bias is not None:
            self.bias.value = xp.zeros(self.normalized_shape, dtype=kind, device=backend.device)

    keeps_float32 = True  # under mixed precision: statistics in float32

    def forward(self, x, *, train: bool = False):
        x, xp = self.prepare(x)
        if self.half_input(x):
            return self.forward_in_float32(x, train=train)
        k = len(self.normalized_shape)
        shape = tuple(x.shape)
        if x.ndim < k or shape[x.ndim - k:] != self.normalized_shape:
            raise ShapeError(
                f"{self.describe()} expected an input whose last {k} axes have the shape "
                f"{self.normalized_shape}: (..., {', '.join(map(str, self.normalized_shape))})"
                f". Received: x.shape={shape}"
            )
        weight, bias = self.weight, self.bias
        if weight is not None:
            same_dtype(self, x, weight.value)
        elif x.dtype != xp.float32 and x.dtype != xp.float64:
            floating_input(self, x)
        # Rows of D values: one reduction axis whatever the rank (and no empty axis tuple,
        # which some libraries read as "every axis").
        size = math.prod(self.normalized_shape)
        rows = xp.reshape(x, (math.prod(shape[: x.ndim - k]), size))
        centred = rows - xp.mean(rows, axis=-1, keepdims=True)
        inv_std = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        normalized = centred * inv_std  # x̂
        gamma = None if weight is None else xp.reshape(weight.value, (size,))
        y = normalized if gamma is None else normalized * gamma
        if bias is not None:
            y = y + xp.reshape(bias.value, (size,))
        y = xp.reshape(y, shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, shape)  # before any gradient is touched
            dy_rows = xp.reshape(dy, tuple(rows.shape))
            if weight is not None:
                weight.add_grad(xp.reshape(xp.sum(dy_rows * normalized, axis=0),
                                           self.normalized_shape))
            if bias is not None:
                bias.add_grad(xp.reshape(xp.sum(dy_rows, axis=0), self.normalized_shape))
            if not need_input_grad:
                return None
            g = dy_rows if gamma is None else dy_rows * gamma
            dx = g - xp.mean(g, axis=-1, keepdims=True)
            dx = dx - normalized * xp.mean(g * normalized, axis=-1, keepdims=True)
            return xp.reshape(dx * inv_std, shape)

        return y, backprop

    def config(self) -> dict:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self._bias,
                "dtype": self.dtype}

    def extra_repr(self) -> str:
        text = f"{self.normalized_shape}, eps={self.eps:g}"
        if not self.elementwise_affine:
            return text + ", elementwise_affine=False"
        return text + ("" if self._bias else ", bias=False")
