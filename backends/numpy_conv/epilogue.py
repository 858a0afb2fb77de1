"""The fused epilogue of the NumPy convolution: ``y = act(scale[o] y + bias[o])`` in place.

``act(v) = max(v, slope v)`` with ``0 <= slope <= 1`` is the LeakyReLU (the ReLU for
``slope = 0``; for slopes in [0, 1] the maximum equals ``v if v > 0 else slope v``). Folding
an inference BatchNorm into the output instead of into a copy of the weights,
``BN(conv(x, w)) = scale * conv(x, w) + shift`` with ``scale = gamma / sqrt(var + eps)``
and ``shift = beta - scale * mean`` (Ioffe & Szegedy 2015, Algorithm 2, step 11), leaves this
per-channel affine map and the activation to apply to ``y``.

It runs over blocks of channels of one image at a time, small enough for the L2 cache
(:data:`BLOCK_BYTES`), so the scale, the bias, the product with the slope and the maximum
each read cached data, and its one temporary is reused (a fresh full-size temporary costs a
page fault per 4 KiB).
"""

from __future__ import annotations

import numpy as np

# Bytes of output handled at a time: the block and its temporary stay well inside the L2
# cache (2 MiB per core on the benchmark machine).
BLOCK_BYTES = 256 << 10


def epilogue_(y, scale, bias, slope, block_bytes: int = BLOCK_BYTES) -> None:
    """In place on ``y (N, O, L)``: ``y = act(scale y + bias)``, one block of channels of
    one image at a time.

    Parameters
    ----------
    y : ndarray (N, O, L)
        The convolution's output, pixels flattened.
    scale, bias : array (O,) or None
    slope : float in [0, 1] or None
        None: no activation.
    block_bytes : int
        Bytes of output per block (at least one channel row per block).
    """
    n, o, length = y.shape
    rows = max(1, min(o, block_bytes // max(1, length * y.itemsize)))
    scratch = np.empty((rows, length), dtype=y.dtype) if slope else None
    columns = [None if v is None else np.asarray(v, dtype=y.dtype).reshape(o, 1)
               for v in (scale, bias)]
    for image in range(n):
        for first in range(0, o, rows):
            block = y[image, first:first + rows]
            if columns[0] is not None:
                block *= columns[0][first:first + rows]
            if columns[1] is not None:
                block += columns[1][first:first + rows]
            if slope == 0.0:
                np.maximum(block, 0.0, out=block)
            elif slope is not None:
                product = scratch[: block.shape[0]]
                np.multiply(block, slope, out=product)
                np.maximum(block, product, out=block)


def finish_(y, scale, bias, slope) -> None:
    """In place on ``y (N, O, L)``: the blocked :func:`epilogue_` when there is a scale or
    an activation, else just the bias (one broadcast addition), else nothing."""
    if scale is not None or slope is not None:
        epilogue_(y, scale, bias, slope)
    elif bias is not None:
        y += bias.reshape(1, y.shape[1], 1)
