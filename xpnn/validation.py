"""Argument checks shared by every part of xpnn, with messages in one pattern: who
complained, what was expected, what was received (``Conv2D expected stride to be a positive
integer or a pair of them. Received: stride=0``).

Every helper returns the value in its normalized form (an ``int``, a ``float``, a pair) or
raises a :class:`~xpnn.errors.ConfigError` (:class:`~xpnn.errors.ShapeError` and
:class:`~xpnn.errors.DTypeError` for the input checks at the end). Booleans are never
accepted as numbers.

Examples
--------
>>> positive_int("Dense", "out_features", 10)
10
>>> number("SGD", "momentum", 0.9, low=0.0, high=1.0, high_inclusive=False)
0.9
>>> int_pair("Conv2D", "stride", 2)
(2, 2)
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from contextvars import ContextVar

from xpnn.errors import ConfigError, DTypeError, ShapeError

__all__ = [
    "astype_advice",
    "flag",
    "float_dtype",
    "floating_input",
    "grad_shape",
    "int_pair",
    "integer",
    "is_int",
    "is_number_or_none",
    "listing",
    "number",
    "pair_of",
    "positive_int",
    "rank",
    "same_dtype",
]


def is_int(value, low: int | None = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) of at least ``low``."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low))


def is_number_or_none(value) -> bool:
    """Whether ``value`` is None or a real number (not a bool)."""
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def integer(who: str, name: str, value, *, low: int | None = None) -> int:
    """``value`` as an ``int`` (at least ``low`` when given), or a ConfigError."""
    if not is_int(value, low):
        expected = "an integer" if low is None else (
            "a positive integer" if low == 1 else f"an integer >= {low}")
        raise ConfigError(f"{who} expected {name} to be {expected}. Received: {name}={value!r}")
    return int(value)


def positive_int(who: str, name: str, value) -> int:
    """``value`` as an ``int`` >= 1, or a ConfigError."""
    return integer(who, name, value, low=1)


def flag(who: str, name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (a Python bool), or a ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"{who} expected {name} to be True or False. "
                          f"Received: {name}={value!r}")
    return value


def number(who: str, name: str, value, *, low: float | None = None,
           high: float | None = None, low_inclusive: bool = True,
           high_inclusive: bool = True) -> float:
    """``value`` as a finite ``float`` within the given bounds, or a ConfigError whose
    message states the range (``a number >= 0.0``, ``a number in [0.0, 1.0)``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        if low is not None and high is not None:
            expected = (f"a number in {'[' if low_inclusive else '('}{low}, "
                        f"{high}{']' if high_inclusive else ')'}")
        elif low is not None:
            expected = f"a number {'>=' if low_inclusive else '>'} {low}"
        elif high is not None:
            expected = f"a number {'<=' if high_inclusive else '<'} {high}"
        else:
            expected = "a finite number"
        raise ConfigError(f"{who} expected {name} to be {expected}. Received: {name}={value!r}")
    return float(value)


def int_pair(who: str, name: str, value, *, minimum: int = 1) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a ``(height, width)``
    tuple, or a ConfigError naming the argument."""
    items = (value, value) if is_int(value) else value
    if not isinstance(items, tuple | list) or len(items) != 2 or not all(
            is_int(item, minimum) for item in items):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(
            f"{who} expected {name} to be {kind} or a pair of them. Received: {name}={value!r}"
        )
    return int(items[0]), int(items[1])


def pair_of(who: str, name: str, value, what: str = "(x, y) of host arrays"):
    """``value`` when it is a 2-tuple or 2-list, else a ConfigError."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        length = f" of length {len(value)}" if isinstance(value, tuple | list) else ""
        raise ConfigError(
            f"{who} expected {name} as a pair {what}. Received: {type(value).__name__}{length}"
        )
    return value


def listing(names, limit: int = 10) -> str:
    """``'a', 'b', ... (N more)``: at most ``limit`` names of a long list, quoted."""
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# -- dtypes and inputs --------------------------------------------------------------------


def float_dtype(who: str, dtype) -> str:
    """The name ``"float32"`` or ``"float64"`` of ``dtype``, or a ConfigError."""
    from xpnn.backends import dtype_name

    name = dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise ConfigError(f"{who} expected dtype float32 or float64. Received: dtype={dtype!r}")
    return name


def astype_advice(module, got: str, want: str, name: str = "x") -> str:
    """The sentence that tells a user how to fix a ``got`` input where ``want`` was
    expected: the conversion spelled for the module's backend (``module.backend``), and
    ``dtype=`` at construction only when ``got`` is a dtype layers can be built with."""
    backend = getattr(module, "backend", None)
    convert = (backend.astype_hint(want, name) if backend is not None
               else f"xp.astype({name}, xp.{want})")
    advice = f" Convert the input with {convert}"
    if got in ("float32", "float64") and got != want:
        advice += f", or build the model with dtype={got!r}"
    advice += "."
    if got.startswith("uint"):
        advice += f" Scale images with {convert} / 255."
    return advice


def same_dtype(layer, x, parameter) -> None:
    """Raise a DTypeError unless ``x`` has the dtype of ``parameter``. ``layer`` is the
    module, described only when the check fails (building its description costs more than
    the check). The advice names only what works: the conversion spelled for the layer's
    backend, and ``dtype=`` only for float32 / float64 inputs."""
    if x.dtype != parameter.dtype:
        from xpnn.backends import dtype_name

        who = layer.describe()
        got, want = dtype_name(x.dtype), dtype_name(parameter.dtype)
        raise DTypeError(
            f"{who} expected a {want} input (the dtype of its parameters). "
            f"Received: x.dtype={got}.{astype_advice(layer, got, want)}"
        )


_HALF_ALLOWED: ContextVar[str | None] = ContextVar("xpnn_half_precision", default=None)


@contextmanager
def computing_in(dtype: str):
    """While active, layers accept inputs of ``dtype`` (``"float16"`` or ``"bfloat16"``):
    :mod:`xpnn.mixed_precision` runs its training steps inside it. Elsewhere half-precision
    inputs stay refused, so a stray float16 batch is still an error."""
    token = _HALF_ALLOWED.set(dtype)
    try:
        yield
    finally:
        _HALF_ALLOWED.reset(token)


def half_precision_allowed(dtype: str) -> bool:
    """Whether a mixed-precision step computing in ``dtype`` is under way."""
    return dtype in ("float16", "bfloat16") and _HALF_ALLOWED.get() == dtype


def floating_input(module, x) -> None:
    """Raise a DTypeError unless ``x`` is float32 or float64 (the only dtypes layers
    compute in: integers, booleans, float16 and bfloat16 are refused), or the half
    precision of a mixed-precision step (:func:`computing_in`)."""
    from xpnn.backends import dtype_name

    got = dtype_name(x.dtype)
    if got not in ("float32", "float64") and got != _HALF_ALLOWED.get():
        raise DTypeError(
            f"{module.describe()} expected a floating-point input of dtype float32 or "
            f"float64. "
            f"Received: x.dtype={got}.{astype_advice(module, got, 'float32')}"
        )


def grad_shape(module, dy, shape) -> None:
    """Raise a ShapeError unless the upstream gradient ``dy`` has ``shape`` (the shape of
    the forward's output). Every ``backprop`` calls it before touching any gradient, so a
    wrong ``dy`` never leaves parameters with partial gradients."""
    if tuple(dy.shape) != shape:
        raise ShapeError(
            f"{module.describe()} backprop expected dy of shape {shape} (the shape of the "
            f"forward's output). Received: dy.shape={tuple(dy.shape)}"
        )


def rank(who: str, x, expected: int, layout: str) -> None:
    """Raise a ShapeError unless ``x`` has ``expected`` axes (``layout`` names them)."""
    if x.ndim != expected:
        raise ShapeError(
            f"{who} expected a {expected}-D {layout} input. Received: x.shape={tuple(x.shape)}"
        )
