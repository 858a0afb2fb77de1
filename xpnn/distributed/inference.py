"""Batch inference split over the ranks, gathered on rank 0 in input order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from xpnn import backends
from xpnn.datasets.batches import shard_bounds
from xpnn.errors import ConfigError
from xpnn.validation import positive_int

__all__ = ["sharded_outputs"]


def sharded_outputs(function: Callable, inputs: Sequence, communicator, *, batch_size: int = 64,
                    load: Callable | None = None, root: int = 0) -> np.ndarray | None:
    """Run ``function`` over ``inputs`` split across the ranks; ``root`` gets every output.

    Rank r takes the r-th contiguous part of ``inputs`` (sizes differ by at most one,
    :func:`~xpnn.datasets.batches.shard_bounds`) and calls ``function`` on batches of at
    most ``batch_size`` of them; the outputs are copied to the host and gathered on
    ``root``, which returns them stacked on axis 0 in the order of ``inputs``. The other
    ranks return None.

    Parameters
    ----------
    function : callable
        ``function(batch) -> array`` with one output row per input, e.g. a model
        (``model(x)`` is inference mode) or ``lambda x: softmax(model(x))``.
    inputs : array or sequence
        A host array with the samples on axis 0, or any sequence (e.g. image paths) that
        ``load`` turns into batches.
    load : callable, optional
        ``load(items) -> batch`` for a slice of ``inputs`` (read and preprocess files);
        without it the slice itself is the batch.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.distributed import SingleProcess
    >>> sharded_outputs(lambda x: 2 * x, np.arange(5.0), SingleProcess(), batch_size=2)
    array([0., 2., 4., 6., 8.])
    """
    positive_int("sharded_outputs", "batch_size", batch_size)
    count = len(inputs)
    if count == 0:
        raise ConfigError("sharded_outputs expected at least one input. Received: 0 inputs")
    low, high = shard_bounds(count, communicator.rank, communicator.size)
    pieces = []
    for start in range(low, high, batch_size):
        items = inputs[start:min(start + batch_size, high)]
        batch = items if load is None else load(items)
        pieces.append(np.asarray(backends.to_numpy(function(batch))))
    mine = np.concatenate(pieces) if pieces else None
    gathered = communicator.gather_object(mine, root=root)
    if communicator.rank != root:
        return None
    return np.concatenate([piece for piece in gathered if piece is not None])
