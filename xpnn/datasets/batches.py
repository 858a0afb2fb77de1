"""From host arrays to training batches: scale, flatten, one-hot, then batch.

Preprocessing runs once on the host with NumPy (the data is prepared before training).
Batching gathers each mini-batch on the host and moves it to the backend in use, so a
model on any backend receives arrays it can compute with.

Shuffling is reproducible and resumable: the order of epoch ``k`` of a loader seeded with
``seed`` is ``numpy.random.default_rng([seed, k]).permutation(n)``. It depends only on
``(seed, k, n)``, never on how many epochs ran before, so a run resumed at epoch ``k``
sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from xpnn.backends import Backend, current, host_rng, make_backend
from xpnn.errors import ConfigError, DataError, DTypeError, ShapeError

__all__ = ["BatchLoader", "batches", "check_batch_size", "epoch_order", "flatten", "normalize",
           "one_hot", "shard_bounds"]


# -- preprocessing ------------------------------------------------------------------------


def normalize(images, mean=None, std=None, dtype="float32") -> np.ndarray:
    """Scale raw pixels to [0, 1], then optionally standardise.

    .. math:: x = \\frac{p / 255 - \\mu}{\\sigma}

    with ``mu = mean`` (default 0) and ``sigma = std`` (default 1), given in the [0, 1]
    scale (for MNIST, mean 0.1307 and std 0.3081 are the usual values).

    Parameters
    ----------
    images : array_like of integers
        Raw pixel values 0-255, any shape (e.g. uint8 ``(N, 28, 28)``).
    mean, std : float or array_like, optional
        Broadcast against ``images``; ``std`` must be positive.
    dtype : str
        Floating dtype of the result (``"float32"`` or ``"float64"``).

    Returns
    -------
    numpy.ndarray
        A new host array of ``dtype`` and the shape of ``images``.

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.array([0, 51, 255], dtype=np.uint8), dtype="float64").tolist()
    [0.0, 0.2, 1.0]
    """
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.integer):
        raise DTypeError(
            f"normalize expects raw integer pixels 0-255. Received: dtype={images.dtype}. "
            f"If the images are already scaled, skip normalize."
        )
    if np.dtype(dtype).kind != "f":
        raise DTypeError(f"normalize needs a floating dtype. Received: dtype={dtype!r}.")
    x = images.astype(dtype)
    x /= 255.0
    if mean is not None:
        x -= np.asarray(mean, dtype=dtype)
    if std is not None:
        std = np.asarray(std, dtype=dtype)
        if np.any(std <= 0):
            raise ConfigError(f"normalize needs std > 0. Received: std={std.tolist()}.")
        x /= std
    return x


def flatten(images) -> np.ndarray:
    """Reshape ``(N, d1, d2, ...)`` to ``(N, d1 * d2 * ...)`` (a view when possible).

    Examples
    --------
    >>> import numpy as np
    >>> flatten(np.zeros((5, 28, 28), dtype=np.uint8)).shape
    (5, 784)
    """
    images = np.asarray(images)
    if images.ndim < 1:
        raise ShapeError(
            f"flatten expects an array with a batch axis. Received: shape={images.shape}."
        )
    return images.reshape(images.shape[0], -1)


def one_hot(labels, num_classes: int = 10, dtype="float32") -> np.ndarray:
    """One row per label with 1 in the label's column and 0 elsewhere.

    Examples
    --------
    >>> import numpy as np
    >>> one_hot(np.array([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(
            f"one_hot expects a 1-D array of integer labels. Received: shape={labels.shape}, "
            f"dtype={labels.dtype}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"one_hot expects labels in 0..{num_classes - 1}. Received: labels from "
            f"{labels.min()} to {labels.max()}. Pass the right num_classes."
        )
    out = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


# -- batching -----------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: ``default_rng([seed, epoch]).permutation(n)``.

    Examples
    --------
    >>> (epoch_order(5, seed=0, epoch=3) == epoch_order(5, seed=0, epoch=3)).all()
    np.True_
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def shard_bounds(count: int, rank: int, size: int) -> tuple[int, int]:
    """The part ``[start, stop)`` of ``count`` items that rank ``rank`` of ``size`` takes:
    contiguous, in rank order, sizes differing by at most one (the first ``count % size``
    ranks take one more). ``count = size * b`` gives rank ``r`` items ``r b .. (r + 1) b``.

    Examples
    --------
    >>> [shard_bounds(10, rank, 4) for rank in range(4)]
    [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    base, extra = divmod(int(count), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _resolve_backend(backend) -> Backend:
    if backend is None:
        return current()
    if isinstance(backend, Backend):
        return backend
    return make_backend(backend)


def check_batch_size(batch_size) -> int:
    """``batch_size`` as an int, or a ConfigError when it is not a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer. Received: {batch_size!r}.")
    return int(batch_size)


def _check(x, y, batch_size) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"batches expects x and y with the same number of samples on axis 0. "
            f"Received: x.shape={x.shape}, y.shape={y.shape}."
        )
    check_batch_size(batch_size)
    return x, y


def _batches(x, y, batch_size, order, drop_last, backend):
    """Yield batches of ``x[order]``, ``y[order]`` moved to ``backend``."""
    n = x.shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield _take(x, y, order, start, start + batch_size, backend)


def _take(x, y, order, start, stop, backend):
    """Samples ``start:stop`` of ``x[order]``, ``y[order]`` (the data order when ``order``
    is None), moved to ``backend``; integer labels become int64."""
    y_dtype = "int64" if np.issubdtype(y.dtype, np.integer) else None
    if order is None:
        xb, yb = x[start:stop], y[start:stop]
    else:
        index = order[start:stop]
        xb, yb = x[index], y[index]
    # the slices are fresh copies (fancy indexing) or views of the caller's data
    fresh = order is not None
    return backend.asarray(xb, copy=not fresh), backend.asarray(yb, y_dtype, copy=not fresh)


def batches(x, y, batch_size: int, *, shuffle: bool = True, seed: int | None = None,
            epoch: int = 0, drop_last: bool = False, backend=None):
    """Yield ``(xb, yb)`` mini-batches on the current backend, once over the data.

    Parameters
    ----------
    x, y : numpy.ndarray
        Host arrays with the samples on axis 0 (e.g. images and labels).
    batch_size : int
        Samples per batch; the last batch is smaller unless ``drop_last``.
    shuffle : bool
        Visit samples in the order :func:`epoch_order` ``(n, seed, epoch)``; with
        ``seed=None`` in a fresh random order.
    seed, epoch : int
        Which shuffled order (see the module docstring).
    drop_last : bool
        Skip the last, incomplete batch.
    backend : Backend or str, optional
        Where batches go; default :func:`xpnn.backends.current` at iteration time.

    Yields
    ------
    xb, yb
        ``xb`` keeps the dtype of ``x``; integer labels become int64 (what torch needs for
        indexing), other ``y`` (e.g. one-hot) keep their dtype.

    Examples
    --------
    >>> import numpy as np
    >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> [yb.tolist() for _, yb in batches(x, y, 2, shuffle=False, backend="numpy")]
    [[0, 1], [2, 3], [4]]
    """
    x, y = _check(x, y, batch_size)
    order = None
    if shuffle:
        order = (np.random.default_rng().permutation(x.shape[0]) if seed is None
                 else epoch_order(x.shape[0], seed, epoch))
    target = _resolve_backend(backend)
    yield from _batches(x, y, batch_size, order, drop_last, target)


class BatchLoader:
    """Re-iterable mini-batches with a reproducible order per epoch.

    Each ``for xb, yb in loader`` runs one epoch, in the order
    ``default_rng([seed, epoch]).permutation(n)``, then advances ``loader.epoch`` by one.
    :meth:`set_epoch` chooses the epoch the next iteration uses, so a run resumed at epoch
    ``k`` (``loader.set_epoch(k)``) sees the same batches as the uninterrupted run.

    Parameters
    ----------
    x, y : numpy.ndarray
        Host arrays with the samples on axis 0.
    batch_size : int
        Samples per batch.
    shuffle : bool
        Shuffle each epoch; otherwise keep the data order.
    seed : int, optional
        Seed of the orders; default: drawn once from :func:`xpnn.backends.host_rng` when
        ``shuffle`` (so ``xpnn.seed(...)`` makes it reproducible too).
    drop_last : bool
        Skip the last, incomplete batch.
    backend : Backend or str, optional
        Where batches go; default the current backend at iteration time.

    Examples
    --------
    >>> import numpy as np
    >>> loader = BatchLoader(np.zeros((10, 784), np.float32), np.arange(10), 4, seed=0)
    >>> len(loader)
    3
    >>> loader.set_epoch(2)
    >>> [len(yb) for _, yb in loader]
    [4, 4, 2]
    >>> loader.epoch
    3
    """

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, backend=None):
        self.x, self.y = _check(x, y, batch_size)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        if seed is None:  # drawn only when needed, so shuffle=False leaves the rng alone
            seed = int(host_rng().integers(2**63 - 1)) if shuffle else 0
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.backend = backend
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run epoch ``epoch`` (0-based)."""
        if int(epoch) < 0:
            raise ConfigError(f"epoch must be >= 0. Received: {epoch!r}.")
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Sample indices in the order of ``epoch`` (default: the next one)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.x.shape[0]
        return epoch_order(n, self.seed, epoch) if self.shuffle else np.arange(n)

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def batch(self, index: int, epoch: int):
        """Batch ``index`` (0-based) of epoch ``epoch``, exactly as iterating that epoch
        yields it (used to replay batches, e.g. to diagnose a NaN loss)."""
        if not 0 <= int(index) < len(self):
            raise ConfigError(
                f"BatchLoader.batch expected an index in [0, {len(self)}). Received: {index!r}."
            )
        order = self.order(epoch) if self.shuffle else None
        start = int(index) * self.batch_size
        return _take(self.x, self.y, order, start, start + self.batch_size,
                     _resolve_backend(self.backend))

    def epoch_batches(self, epoch: int, start: int = 0,
                      shard: tuple[int, int] | None = None) -> Iterator:
        """Yield the batches of ``epoch`` from batch ``start`` on (0-based), exactly as
        iterating that epoch would, without advancing :attr:`epoch` (to resume mid-epoch).

        With ``shard=(rank, size)`` each batch is cut into ``size`` contiguous parts
        (:func:`shard_bounds`) and only part ``rank`` is yielded: the ranks of a
        data-parallel run together visit exactly the batches of one process.
        """
        order = self.order(epoch) if self.shuffle else None
        stop = len(self) * self.batch_size if self.drop_last else self.num_samples
        backend = _resolve_backend(self.backend)
        for first in range(int(start) * self.batch_size, stop, self.batch_size):
            low, high = first, min(first + self.batch_size, stop)
            if shard is not None:
                begin, end = shard_bounds(high - low, *shard)
                low, high = first + begin, first + end
            yield _take(self.x, self.y, order, low, high, backend)

    def __iter__(self) -> Iterator:
        order = self.order() if self.shuffle else None
        self.epoch += 1
        return _batches(self.x, self.y, self.batch_size, order, self.drop_last,
                        _resolve_backend(self.backend))

    def __repr__(self) -> str:
        return (f"BatchLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, epoch={self.epoch})")
