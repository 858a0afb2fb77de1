"""Which strategy computes a NumPy convolution: a pure function of the shapes.

=============  ================================================================
strategy       chosen for
=============  ================================================================
``grouped``    a dilation or more than one group (only it computes those)
``stacked``    several images (N > 1) with small outputs, OH OW < :data:`STACK_BELOW`
``pointwise``  1x1, stride 1, no padding (otherwise)
``chunked``    everything else
=============  ================================================================

The choice depends on shapes, stride, padding and the item size only (never on array
contents), so the forward of a training step and its backward (``plan(..., train=True)``
both times) agree on the strategy, and what the forward saved is what the backward expects.
``itemsize`` and ``train`` are part of the question because a strategy's worth can depend
on the bytes it moves and on whether a backward follows; with today's strategies the
answer depends on neither (byte budgets act inside the strategies, on the arrays they get).

The threshold, and the measurement behind it (2 cores, OpenBLAS; benchmarks/results/
NOTES.md, 2026-11-24): below 1024 output pixels per image (Darknet53's 8x8 and 16x16
stages, the MNIST CNN) a product per image has too few columns for BLAS to run well;
stacking the 32x32 layers too (2048) or only 8x8 (256) measured +1-5 % / no change on
Darknet53 batch 8 in paired runs. The byte budgets within each strategy (chunk, stack and
keep sizes) are fields of its class, documented there.

A fourth strategy, "wide rows" (Darknet53's first three 3x3 layers in L2-sized bands of
output rows over the stride phases of the input), was dropped on 2026-12-01: in paired
whole-model runs it was faster in 18 of 32 pairs at batch 1 and 10 of 20 at batch 8
(median ratios 0.98 and 1.02), not even those three layers consistently faster (NOTES.md).
"""

from __future__ import annotations

from .chunked import Chunked
from .grouped import Grouped
from .pointwise import Pointwise
from .stacked import Stacked
from .strategy import Strategy
from .windows import is_pointwise, output_hw

STACK_BELOW = 1024  # output pixels per image

# The instances plan returns (frozen: shared safely).
CHUNKED = Chunked()
GROUPED = Grouped()
POINTWISE = Pointwise()
STACKED = Stacked()


def plan(x_shape, w_shape, stride, padding, itemsize: int, train: bool = False, *,
         dilation=(1, 1), groups: int = 1) -> Strategy:
    """The strategy for convolving ``x (N, C, H, W)`` with ``w (O, C / groups, KH, KW)``.

    Parameters
    ----------
    x_shape, w_shape : tuple of int
    stride, padding : (int, int)
    itemsize : int
        Bytes per element of ``x`` (4 for float32); no threshold uses it today.
    train : bool
        Whether a backward follows (:func:`~xpnn.backends.numpy_conv.conv2d_train`); the
        choice is the same either way today.
    dilation : (int, int)
        The spacing of the kernel taps.
    groups : int
        The number of channel groups.

    Returns
    -------
    Strategy
        One of the shared default instances :data:`GROUPED`, :data:`STACKED`,
        :data:`POINTWISE`, :data:`CHUNKED`.
    """
    if tuple(dilation) != (1, 1) or groups != 1:
        return GROUPED
    oh, ow = output_hw(x_shape, w_shape, stride, padding)
    if x_shape[0] > 1 and oh * ow < STACK_BELOW:
        return STACKED
    if is_pointwise(w_shape, stride, padding):
        return POINTWISE
    return CHUNKED
