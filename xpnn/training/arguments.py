"""The checks :func:`~xpnn.training.fit` runs before its first batch: arguments, the test
set against the training set, and the checkpoint target, so that no problem is found only
after an epoch of training (ConfigError / ShapeError naming what was wrong)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xpnn.errors import ConfigError, ShapeError
from xpnn.validation import integer, pair_of, positive_int

__all__ = ["check_checkpoint_target", "check_data", "check_fit_arguments", "check_test_set"]


def check_data(name: str, data, labels_word: str = "labels", samples_word: str = "samples"):
    """``(x, y)`` of ``data``: a pair of equally long, non-empty sequences (ConfigError)."""
    x, y = pair_of("fit", name, data)
    if len(x) != len(y):
        raise ConfigError(
            f"fit expected as many {labels_word} as {samples_word}. Received: {len(x)} "
            f"samples, {len(y)} labels"
        )
    if len(x) == 0:
        which = "training" if name == "train" else name
        raise ConfigError(f"fit expected a non-empty {which} set. Received: 0 samples")
    return x, y


def check_test_set(test, x_train, y_train) -> None:
    """The test set is a non-empty pair like the training set (ConfigError/ShapeError)."""
    x_test, y_test = check_data("test", test, "test labels", "test samples")
    for what, train, tested in (("samples", x_train, x_test), ("labels", y_train, y_test)):
        train_shape, test_shape = getattr(train, "shape", None), getattr(tested, "shape", None)
        if train_shape is not None and test_shape is not None \
                and tuple(train_shape[1:]) != tuple(test_shape[1:]):
            raise ShapeError(
                f"fit expected test {what} of the training {what}' shape "
                f"{tuple(train_shape[1:])} (after the count). Received: "
                f"{tuple(test_shape[1:])}"
            )
    train_kind, test_kind = _dtype_kind(y_train), _dtype_kind(y_test)
    if train_kind and test_kind and (train_kind in "iu") != (test_kind in "iu"):
        raise ConfigError(
            f"fit expected test labels of the training labels' kind "
            f"({'integer class indices' if train_kind in 'iu' else 'real-valued'}). "
            f"Received: test labels of dtype {y_test.dtype}"
        )


def _dtype_kind(array) -> str:
    dtype = getattr(array, "dtype", None)
    try:
        return np.dtype(dtype).kind if dtype is not None else ""
    except TypeError:  # a device dtype NumPy does not know
        return ""


def check_checkpoint_target(checkpoint) -> None:
    """The checkpoint can be written: a path whose folder exists and is writable, and which
    is not itself a folder (ConfigError)."""
    if not isinstance(checkpoint, str | os.PathLike) or not os.fspath(checkpoint):
        raise ConfigError(f"fit expected checkpoint to be a file path. Received: "
                          f"checkpoint={checkpoint!r}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ConfigError(f"fit expected checkpoint to be a file path, not a folder. "
                          f"Received: checkpoint={str(path)!r}, an existing folder")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"fit expected checkpoint in an existing folder. Received: "
                          f"checkpoint={str(path)!r}, whose folder {str(folder)!r} does not "
                          f"exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"fit expected checkpoint in a writable folder. Received: "
                          f"checkpoint={str(path)!r}, in the read-only folder {str(folder)!r}")




def check_fit_arguments(optimizer, loss, epochs, target_accuracy, patience, log_every):
    for method in ("step", "zero_grad", "state_dict", "load_state_dict"):
        if not callable(getattr(optimizer, method, None)):
            raise ConfigError(
                f"fit expected an optimizer from xpnn.optim (with {method}()). "
                f"Received: optimizer={optimizer!r}"
            )
    if not callable(loss):
        raise ConfigError(f"fit expected loss to be callable. Received: loss={loss!r}")
    integer("fit", "epochs", epochs, low=0)
    if log_every is not None:
        positive_int("fit", "log_every", log_every)
    if patience is not None:
        positive_int("fit", "patience", patience)
    if target_accuracy is not None and not (
        isinstance(target_accuracy, int | float) and 0.0 <= target_accuracy <= 1.0
    ):
        raise ConfigError(
            f"fit expected target_accuracy in [0, 1]. Received: "
            f"target_accuracy={target_accuracy!r}"
        )
