"""One entry point for the examples: :func:`load_dataset` by name, with a line saying
where the data came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xpnn.datasets.mnist import DATASETS, download_folder, given_source, load_with_folder
from xpnn.datasets.sample import load_mnist_sample
from xpnn.errors import ConfigError, DataNotFoundError

__all__ = ["Dataset", "load_dataset"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded image-classification dataset and where it came from.

    Attributes
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"mnist-sample"`` (what was actually loaded).
    x_train, y_train, x_test, y_test : numpy.ndarray
        uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.
    source : str
        One line for humans, e.g. ``"full MNIST from /data/mnist"``.
    class_names : tuple of str
        Name of each label.

    It also unpacks as ``(x_train, y_train), (x_test, y_test), source``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    class_names: tuple[str, ...]

    def __iter__(self):
        """Unpack as ``(x_train, y_train), (x_test, y_test), source = load_dataset(...)``."""
        return iter((self.train, self.test, self.source))

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test


_SAMPLE_TITLE = "embedded 5,000-image MNIST sample (4,000 train / 1,000 test)"


def load_dataset(name: str = "mnist", data_dir=None, download: bool = False,
                 fallback: bool = True) -> Dataset:
    """Load ``"mnist"``, ``"fashion-mnist"`` or ``"mnist-sample"`` with a source line.

    Which source is used, and when the embedded sample replaces full MNIST:

    * ``data_dir`` given: the files must be in it (or its ``mnist`` / ``fashion-mnist``
      subfolder), or be downloaded into that subfolder when ``download=True``. If some
      are missing, or the download fails, :class:`~xpnn.errors.DataNotFoundError` is
      raised, naming the missing files (and each mirror's network error). Never the
      sample.
    * else ``XPNN_DATA`` set (not empty): the same, with that folder.
    * else the per-user cache; with ``download=True`` a failed download is an error too.
    * Only with no ``data_dir``, no ``XPNN_DATA`` and ``download=False`` (the default)
      does ``"mnist"`` fall back to the embedded sample when the cache lacks the files;
      ``source`` then says so and how to get the full set. ``"fashion-mnist"`` has no
      sample and raises :class:`~xpnn.errors.DataNotFoundError` instead.

    Corrupt files, non-regular files (FIFOs, devices, directories) and failed hash
    checks always raise :class:`~xpnn.errors.DataError`.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "mnist-sample"}
        The dataset.
    data_dir : str or path-like, optional
        The folder holding the files; passed to
        :func:`~xpnn.datasets.mnist.load_mnist` as ``root``.
    download : bool
        Download missing files (default False). A failed download raises.
    fallback : bool
        Allow the fallback to the embedded sample described above (``"mnist"`` only);
        False makes every missing file an error.

    Returns
    -------
    Dataset
        The arrays, the dataset's ``name`` (``"mnist-sample"`` after a fallback) and a
        ``source`` line saying where they came from.

    Raises
    ------
    DataNotFoundError
        A given source lacks files, a download failed, or (no source given)
        Fashion-MNIST is not in the cache.
    DataError
        A file is corrupt or not a regular file, or a download failed its hash check.
    ConfigError
        Unknown ``name``.

    Examples
    --------
    >>> data = load_dataset("mnist-sample")
    >>> data.source
    'embedded 5,000-image MNIST sample (4,000 train / 1,000 test)'
    >>> data.x_train.shape
    (4000, 28, 28)
    """
    key = str(name).strip().lower().replace("_", "-")
    if key in ("mnist-sample", "sample"):
        (x_train, y_train), (x_test, y_test) = load_mnist_sample()
        return Dataset("mnist-sample", x_train, y_train, x_test, y_test, _SAMPLE_TITLE,
                       DATASETS["digits"].class_names)
    if key not in ("mnist", "fashion-mnist"):
        raise ConfigError(
            f"Unknown dataset {name!r}. Expected 'mnist', 'fashion-mnist' or 'mnist-sample'."
        )
    kind = "digits" if key == "mnist" else "fashion"
    spec = DATASETS[kind]
    try:
        ((x_train, y_train), (x_test, y_test)), folder = load_with_folder(kind, data_dir,
                                                                          download)
    except DataNotFoundError:
        source_given = given_source(data_dir)[0] is not None
        if kind != "digits" or not fallback or download or source_given:
            raise
        (x_train, y_train), (x_test, y_test) = load_mnist_sample()
        where = download_folder(spec, None)
        source = (
            f"{_SAMPLE_TITLE}, because full MNIST was not found in the per-user cache "
            f"and no source was given (no data_dir, no XPNN_DATA, download=False). To "
            f"use full MNIST, place the 4 files "
            f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {where}, or give "
            f"their folder as data_dir or in XPNN_DATA, or pass download=True"
        )
        return Dataset("mnist-sample", x_train, y_train, x_test, y_test, source,
                       spec.class_names)
    label = "full MNIST" if kind == "digits" else "Fashion-MNIST"
    return Dataset(key, x_train, y_train, x_test, y_test, f"{label} from {folder}",
                   spec.class_names)
