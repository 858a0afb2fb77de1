"""The interface every NumPy convolution strategy implements.

A strategy is one way of computing the same three things (shapes NCHW, ``stride`` and
``padding`` ``(h, w)`` pairs of ints, padding symmetric zeros):

- ``forward``: ``y = act(scale[o] conv(x, w) + bias[o])`` (inference, the fused epilogue of
  :mod:`.epilogue`);
- ``forward_train``: ``(y, saved)`` with ``y = conv(x, w) + bias`` and whatever the strategy
  wants back in its backward (None: nothing);
- ``backward``: ``(dx, dw)`` from ``dy`` and ``saved`` (``dx`` None unless asked for), with
  ``dW = sum_n dy[n] @ cols[n]^T`` and ``dx`` the adjoint of the forward's im2col applied to
  ``W2^T dy``.

Dilation and groups (``dilation`` a ``(dh, dw)`` pair, ``groups`` an int, as in
:mod:`xpnn.backends.portable`) are for the strategies that say so in :meth:`Strategy.supports`
(the default accepts only the plain ``(1, 1)``, 1); they take ``dilation=`` and
``groups=`` as keyword arguments of the three methods, and the kernels pass those only for a
convolution that is not plain, so the other strategies keep their signatures.

Strategies are small frozen dataclasses: their tuning constants (byte budgets, chunk
sizes) are fields with defaults, so a test builds ``Chunked(chunk_bytes=1024)`` to exercise
many chunks, and :func:`~xpnn.backends.numpy_conv.plan.plan` returns shared default
instances. They hold no arrays between calls.
"""

from __future__ import annotations

from typing import ClassVar


class Strategy:
    """Base class of the NumPy convolution strategies (see the module docstring).

    Subclasses set :attr:`name` and implement :meth:`forward` and :meth:`backward`; the
    default :meth:`forward_train` saves nothing and :meth:`supports` accepts every shape
    of a plain convolution (no dilation, one group).
    """

    name: ClassVar[str] = "strategy"

    def supports(self, x_shape, w_shape, stride, padding, dilation=(1, 1), groups=1) -> bool:
        """Whether this strategy can compute the convolution of these shapes."""
        return tuple(dilation) == (1, 1) and groups == 1

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None):
        """``act(scale[o] conv(x, w) + bias[o])`` as ``(N, O, OH, OW)``."""
        raise NotImplementedError

    def forward_train(self, x, w, bias, stride, padding):
        """``(conv(x, w) + bias, saved)``: ``saved`` goes back to :meth:`backward`."""
        return self.forward(x, w, bias, stride, padding), None

    def backward(self, dy, x, w, stride, padding, saved, need_dx=True):
        """``(dx, dw)``: ``dx (N, C, H, W)`` (None when ``need_dx`` is False) and ``dw (O,
        C, KH, KW)``, both fresh arrays. ``saved`` is what :meth:`forward_train` returned,
        or None (then nothing is reused)."""
        raise NotImplementedError
