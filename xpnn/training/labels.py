"""Class labels checked once on the host, and the one way a loss is called per batch.

Checking that class indices lie in ``[0, C)`` on the device costs a host synchronization
per batch (one boolean read back), which stalls a GPU. When the labels are host NumPy
integer arrays, ``fit`` and ``evaluate`` read their minimum and maximum once, on the host,
and compare them with the number of classes ``C = logits.shape[-1]`` of the first batch.
After that every batch calls

    loss(logits, y, check_labels=False)   if the loss has a ``check_labels`` keyword
    loss(logits, y)                       otherwise

Whether the keyword exists is decided once per run with :func:`inspect.signature`, which
sees through :func:`functools.partial`, so ``partial(softmax_cross_entropy,
label_smoothing=0.1)`` is treated exactly like ``softmax_cross_entropy`` (no loss is
recognized by identity). Every loss in :mod:`xpnn.losses` has the keyword. A loss without
it, or labels that are not 1-D host integer arrays (one-hot rows, probabilities, device
arrays), is called unchanged and does its own checks.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from xpnn.errors import ConfigError, ShapeError

__all__ = ["HostCheckedLoss", "accepts_check_labels", "host_label_range", "per_batch_loss"]

_KEYWORD_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def accepts_check_labels(loss) -> bool:
    """Whether ``loss`` has a parameter named ``check_labels`` that can be passed by
    keyword (``**kwargs`` does not count: it may not be forwarded to a loss that has it)."""
    try:
        parameters = inspect.signature(loss).parameters
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    parameter = parameters.get("check_labels")
    return parameter is not None and parameter.kind in _KEYWORD_KINDS


def host_label_range(*label_sets) -> tuple[int, int] | None:
    """``(min, max)`` over the given label arrays (``None`` entries are skipped) when every
    one is a non-empty 1-D NumPy integer array; otherwise ``None``."""
    labels = [y for y in label_sets if y is not None]
    if not labels or not all(
        isinstance(y, np.ndarray) and y.ndim == 1 and y.size
        and np.issubdtype(y.dtype, np.integer) for y in labels
    ):
        return None
    return min(int(y.min()) for y in labels), max(int(y.max()) for y in labels)


def loss_name(loss) -> str:
    """The name of the function behind ``loss`` (through any ``functools.partial``)."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return getattr(loss, "__name__", type(loss).__name__)


class HostCheckedLoss:
    """``loss`` with the class-index range checked once on the host (against the classes
    of the first logits) and ``check_labels=False`` passed on every call.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.losses import softmax_cross_entropy
    >>> checked = HostCheckedLoss(softmax_cross_entropy, low=0, high=3)
    >>> loss, _ = checked(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(float(loss), 6)
    1.386294
    """

    def __init__(self, loss, low: int, high: int):
        self.loss, self.low, self.high = loss, low, high
        self.classes: int | None = None

    def __call__(self, logits, labels):
        if self.classes is None:
            if logits.ndim != 2:  # not class scores: let the loss say what is wrong
                return self.loss(logits, labels)
            self._check(int(logits.shape[-1]))
        return self.loss(logits, labels, check_labels=False)

    def _check(self, classes: int) -> None:
        if self.low < 0 or self.high >= classes:
            raise ShapeError(
                f"{loss_name(self.loss)} expected class indices in [0, {classes}) for "
                f"{classes} classes. Received: labels with min={self.low}, max={self.high}. "
                f"Check that the number of output units matches the number of classes."
            )
        self.classes = classes


def ignored_label(loss) -> int | None:
    """The ``ignore_index`` ``loss`` would use (its default, or the value a
    ``functools.partial`` binds), or None when it has no such keyword."""
    try:
        parameter = inspect.signature(loss).parameters.get("ignore_index")
    except (TypeError, ValueError):
        return None
    if parameter is None or not isinstance(parameter.default, int | np.integer):
        return None
    return int(parameter.default)


def per_batch_loss(loss, *label_sets):
    """The callable to run per batch: a :class:`HostCheckedLoss` when ``loss`` accepts
    ``check_labels`` and every label set is host integer class indices, else ``loss``.

    Labels equal to the loss's ``ignore_index`` (e.g. -100 for padding) are refused with a
    ConfigError: fit's loss and accuracy sums weight each batch by its size and would count
    them (use :func:`xpnn.training.train_step` in a loop of your own for such data)."""
    if not accepts_check_labels(loss):
        return loss
    ignored = ignored_label(loss)
    for y in label_sets:
        if ignored is not None and isinstance(y, np.ndarray) and np.any(y == ignored):
            raise ConfigError(
                f"fit and evaluate expected no label equal to the loss's ignore_index "
                f"({ignored}): their loss and accuracy would count those samples. Received: "
                f"{int(np.sum(y == ignored))} such labels. Drop those samples, or train with "
                f"xpnn.train_step in a loop of your own."
            )
    span = host_label_range(*label_sets)
    if span is None:
        return loss
    return HostCheckedLoss(loss, *span)
