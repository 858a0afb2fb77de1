"""Initializers: the distributions initial weights are drawn from.

Each initializer is ``f(rng, shape, fan_in, fan_out) -> host array`` drawn from a NumPy
``Generator`` on the host; the layer then moves the values to its backend, so one seed
gives the same model on every backend. ``fan_in`` is the number of inputs each output
sums over (``in_features``, or ``in_channels * kh * kw`` for a convolution).

Names accepted wherever a layer takes an initializer: ``"torch"`` (PyTorch's default for
Linear and Conv2d), ``"he_normal"``, ``"he_uniform"``, ``"glorot_normal"``,
``"glorot_uniform"``, ``"zeros"``, ``"ones"``, or a callable with the signature above.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from xpnn.errors import ConfigError


def torch_default(rng, shape, fan_in, fan_out):
    """PyTorch's default for Linear/Conv2d weights and biases: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

    (``kaiming_uniform_(a=sqrt(5))`` for the weight reduces to exactly this bound.)
    """
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape)


def he_normal(rng, shape, fan_in, fan_out):
    """He et al. 2015, eq. (10): N(0, 2/fan_in), suited to ReLU networks."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def he_uniform(rng, shape, fan_in, fan_out):
    """U(-sqrt(6/fan_in), +sqrt(6/fan_in)): the uniform law with He's variance 2/fan_in."""
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def glorot_normal(rng, shape, fan_in, fan_out):
    """Glorot & Bengio 2010, eq. (12) variance 2/(fan_in+fan_out), normal law."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def glorot_uniform(rng, shape, fan_in, fan_out):
    """Glorot & Bengio 2010, eq. (16): U(-sqrt(6/(fan_in+fan_out)), +sqrt(...))."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def zeros(rng, shape, fan_in, fan_out):
    return rng.uniform(0.0, 0.0, size=shape)


def ones(rng, shape, fan_in, fan_out):
    return rng.uniform(1.0, 1.0, size=shape)


INITIALIZERS: dict[str, Callable] = {
    "torch": torch_default,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "zeros": zeros,
    "ones": ones,
}


def get(initializer) -> Callable:
    """Look an initializer up by name, or accept a callable as it is."""
    if callable(initializer):
        return initializer
    try:
        return INITIALIZERS[initializer]
    except (KeyError, TypeError):
        raise ConfigError(
            f"Unknown initializer {initializer!r}. Expected one of "
            f"{', '.join(sorted(INITIALIZERS))}, or a callable f(rng, shape, fan_in, fan_out)."
        ) from None


def name_of(initializer) -> str:
    """The name to record in a config: the registered name of a known initializer, else
    the callable's ``__name__`` (which cannot be rebuilt from a file)."""
    if isinstance(initializer, str):
        return initializer
    for name, function in INITIALIZERS.items():
        if function is initializer:
            return name
    return getattr(initializer, "__name__", "?")
