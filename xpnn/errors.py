"""The one error hierarchy of xpnn.

Every error xpnn raises on purpose is an :class:`XpnnError`. Each subclass also derives
from the built-in exception a user would already catch, so ``except ValueError`` keeps
working around a bad shape and ``except OSError`` around a bad file.

Messages follow one pattern: what was wrong, what was expected, what was received, and
how to fix it.
"""


class XpnnError(Exception):
    """Base class of every error xpnn raises on purpose."""


class BackendError(XpnnError, RuntimeError):
    """A backend is unknown, not installed, or has no usable device; or arrays of two
    backends or devices were mixed."""


class ShapeError(XpnnError, ValueError):
    """An array has the wrong rank or shape for the layer or function it was given to."""


class DTypeError(XpnnError, TypeError):
    """An array has a dtype the layer or function does not accept."""


class WeightsError(XpnnError, ValueError):
    """A weights file or state dict does not match the model: missing or unexpected
    names, wrong shapes or dtypes, or a corrupt file."""


class DataError(XpnnError, OSError):
    """A data file is missing, truncated or malformed."""


class ConfigError(XpnnError, ValueError):
    """A hyperparameter or argument has a value outside what it accepts."""


class MissingFileError(DataError, FileNotFoundError):
    """A file that was asked for does not exist."""
