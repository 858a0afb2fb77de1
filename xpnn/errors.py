"""The one error hierarchy of xpnn.

Every error xpnn raises on purpose is an :class:`XpnnError`. Each subclass also derives
from the built-in exception a user would already catch, so ``except ValueError`` keeps
working around a bad shape and ``except OSError`` around a bad file:

==========================  =========================  ====================================
class                       also a                     raised for
==========================  =========================  ====================================
``BackendError``            ``RuntimeError``           unknown/unusable backend, mixed
                                                       backends or devices
``ShapeError``              ``ValueError``             wrong rank or shape, empty batch
                                                       where a mean is undefined, labels
                                                       outside the class range
``DTypeError``              ``TypeError``              an array dtype a function refuses
``ConfigError``             ``ValueError``             a hyperparameter or argument outside
                                                       what it accepts
``WeightsError``            ``ValueError``             corrupt weights file or checkpoint,
                                                       or weights that do not fit the model
``DataError``               ``OSError``                a data file that cannot be read or
                                                       is malformed (IDX, images, I/O
                                                       failures while saving)
``MissingFileError``        ``DataError``,             a file that was asked for does not
                            ``FileNotFoundError``      exist
``DataNotFoundError``       ``MissingFileError``       a dataset is not on disk and could
                                                       not be downloaded
``TrainingStopped``         ``RuntimeError``           training stopped on a NaN/Inf loss
==========================  =========================  ====================================

Messages follow one pattern: what was wrong, what was expected, what was received, and
how to fix it.

Examples
--------
>>> import numpy as np
>>> from xpnn.layers import Dense
>>> try:
...     Dense(3, 2)(np.zeros((4, 5), dtype="float32"))
... except ValueError as error:  # a ShapeError is a ValueError too
...     print(type(error).__name__)
ShapeError
"""

from __future__ import annotations

import errno as _errno


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
    """A data file is missing, truncated or malformed, or a file cannot be written."""


class ConfigError(XpnnError, ValueError):
    """A hyperparameter or argument has a value outside what it accepts."""


class MissingFileError(DataError, FileNotFoundError):
    """A file that was asked for does not exist.

    ``errno`` is ``ENOENT`` and ``filename`` the path (when given), as for the built-in
    :class:`FileNotFoundError`; ``str(error)`` is the full message.
    """

    def __init__(self, message: str = "", filename=None):
        super().__init__(_errno.ENOENT, message)
        self.filename = filename

    def __str__(self) -> str:
        return str(self.strerror)


class DataNotFoundError(MissingFileError):
    """The files of a dataset are not on disk and could not be downloaded."""


class TrainingStopped(XpnnError, RuntimeError):
    """Training stopped before its last epoch because the loss became NaN or infinite.

    Attributes
    ----------
    epoch, batch : int or None
        1-based epoch and batch (within the epoch): the batch that produced the non-finite
        value when ``fit(..., diagnose=True)`` replayed it, else the batch whose periodic
        check found it (the message gives the range it came from).
    layer : str or None
        Dotted name of the first layer found with a non-finite value (``""`` for the
        model itself), ``None`` when the replay could not locate one.
    where : str or None
        What went non-finite first: ``"input"``, ``"parameters"``, ``"output"``,
        ``"loss"``, ``"gradient"`` (of the layer's parameters or input) or ``"update"``
        (the optimizer step made the parameters non-finite).
    """

    def __init__(self, message: str, *, epoch=None, batch=None, layer=None, where=None):
        super().__init__(message)
        self.epoch, self.batch, self.layer, self.where = epoch, batch, layer, where
