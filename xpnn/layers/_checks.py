"""Argument and input checks shared by layers, with messages in one pattern:
what was wrong, what was expected, what was received."""

from __future__ import annotations

from xpnn.backends import dtype_name
from xpnn.errors import ConfigError, DTypeError, ShapeError


def positive_int(layer: str, argument: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{layer} expected {argument} to be a positive integer. Received: {argument}={value!r}"
        )
    return value


def float_dtype(layer: str, dtype) -> str:
    name = dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise ConfigError(
            f"{layer} expected dtype float32 or float64. Received: dtype={dtype!r}"
        )
    return name


def same_dtype(layer, x, parameter) -> None:
    """Raise unless ``x`` has the dtype of ``parameter``. ``layer`` is the module, described
    only when the check fails (building its description costs more than the check)."""
    if x.dtype != parameter.dtype:
        who = layer.describe()
        got, want = dtype_name(x.dtype), dtype_name(parameter.dtype)
        hint = " Scale images with x.astype('float32') / 255." if got.startswith("uint") else ""
        raise DTypeError(
            f"{who} expected a {want} input (the dtype of its parameters). "
            f"Received: x.dtype={got}. Convert the input with x.astype({want!r}), or build "
            f"the model with dtype={got!r}.{hint}"
        )


def rank(who: str, x, expected: int, layout: str) -> None:
    if x.ndim != expected:
        raise ShapeError(
            f"{who} expected a {expected}-D {layout} input. Received: x.shape={tuple(x.shape)}"
        )
