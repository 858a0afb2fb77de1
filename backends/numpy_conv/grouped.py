"""Grouped: dilated and grouped convolutions (and plain ones), im2col per chunk of images
with one product batched over the groups.

With dilation ``(dh, dw)`` kernel tap ``(i, j)`` reads the padded input at ``(sh a + dh i,
sw b + dw j)``: the same im2col as :mod:`.chunked` with each tap's strided slice starting at
``(dh i, dw j)`` (:class:`.windows.Windows` with ``dilation``). With ``groups`` G the weight
is ``(O, C / G, KH, KW)`` and output channel ``o`` sees only the ``C / G`` input channels of
its group ``g = o // (O / G)``. The columns ``cols (m, C KH KW, L)`` of a chunk of ``m``
images have their rows ordered ``(c, i, j)``, so group ``g``'s rows are the ``g``-th of G
consecutive blocks, and with ``W3 = w.reshape(G, O / G, K)`` (``K = C KH KW / G``)

    y[k, g]     = W3[g] @ cols[k, g]                     (one matmul over (k, g))
    dW3[g]      = sum_k dy[k, g] @ cols[k, g]^T
    dcols[k, g] = W3[g]^T @ dy[k, g]                     then col2im (with the dilation)

with ``dy`` as ``(m, G, O / G, L)``. A depthwise convolution (G = C) is the case ``K = KH
KW``: many small products, which NumPy's stacked ``matmul`` runs in one call.

:func:`~.plan.plan` picks this strategy for every convolution with a dilation or more than
one group; plain ones keep the faster strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .chunked import CHUNK_BYTES, chunk_size
from .epilogue import finish_
from .strategy import Strategy
from .windows import Windows, output_hw


@dataclass(frozen=True)
class Grouped(Strategy):
    """Dilated and grouped im2col per chunk of images, products batched over the groups.

    Parameters
    ----------
    chunk_bytes : int
        Bytes of columns per chunk of images (at least one image per chunk).
    """

    name: ClassVar[str] = "grouped"
    chunk_bytes: int = CHUNK_BYTES

    def supports(self, x_shape, w_shape, stride, padding, dilation=(1, 1), groups=1) -> bool:
        return True

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None, *,
                dilation=(1, 1), groups=1):
        n, c, h, width = x.shape
        o, _, kh, kw = w.shape
        out_hw = output_hw(x.shape, w.shape, stride, padding, dilation)
        length, rows = out_hw[0] * out_hw[1], c * kh * kw // groups
        w3 = np.ascontiguousarray(w).reshape(groups, o // groups, rows)
        y = np.empty((n, o, length), dtype=np.result_type(x, w))
        chunk = chunk_size(n, c * kh * kw * length, x.dtype.itemsize, self.chunk_bytes)
        windows = Windows(chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw,
                          dilation)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            cols = windows.im2col(x[start:stop]).reshape(stop - start, groups, rows, length)
            out = y[start:stop].reshape(stop - start, groups, o // groups, length)
            np.matmul(w3, cols, out=out)  # (G, O/G, K) @ (m, G, K, L)
        finish_(y, scale, bias, negative_slope)
        return y.reshape(n, o, *out_hw)

    def forward_train(self, x, w, bias, stride, padding, *, dilation=(1, 1), groups=1):
        return self.forward(x, w, bias, stride, padding, dilation=dilation,
                            groups=groups), None

    def backward(self, dy, x, w, stride, padding, saved=None, need_dx=True, *,
                 dilation=(1, 1), groups=1):
        n, c, h, width = x.shape
        o, _, kh, kw = w.shape
        out_hw = tuple(dy.shape[2:])
        length, rows = out_hw[0] * out_hw[1], c * kh * kw // groups
        dy4 = np.ascontiguousarray(dy).reshape(n, groups, o // groups, length)
        w3 = np.ascontiguousarray(w).reshape(groups, o // groups, rows)
        chunk = chunk_size(n, c * kh * kw * length, x.dtype.itemsize, self.chunk_bytes)
        windows = Windows(chunk, c, h, width, x.dtype, (kh, kw), stride, padding, out_hw,
                          dilation)
        dw3 = np.zeros(w3.shape, dtype=w3.dtype)
        dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            cols = windows.im2col(x[start:stop]).reshape(m, groups, rows, length)
            # the chunk's sum over images of dy[k, g] @ cols[k, g]^T
            dw3 += np.matmul(dy4[start:stop], cols.transpose(0, 1, 3, 2)).sum(axis=0)
            if need_dx:
                dcols = np.matmul(w3.transpose(0, 2, 1), dy4[start:stop])  # (m, G, K, L)
                windows.col2im(dcols.reshape(m, groups * rows, length), dx[start:stop])
        return dx, dw3.reshape(w.shape)
