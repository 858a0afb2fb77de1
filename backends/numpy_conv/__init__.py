"""The NumPy convolution: im2col strategies into reused buffers, with a fused epilogue.

The NumPy backend registers :func:`conv2d`, :func:`conv2d_train` and
:func:`conv2d_backward` as its kernels. Each computes the cross-correlation

    y[n, o, a, b] = sum_{c, i, j} w[o, c, i, j] x_pad[n, c, sh a + i, sw b + j]

(what deep-learning libraries call convolution) as matrix products over im2col columns
(Chellapilla et al. 2006), and its vector-Jacobian products. How is a :class:`Strategy`:

================  =================================================  ==================
module            strategy                                           chosen for
================  =================================================  ==================
:mod:`.chunked`   per-chunk im2col into reused buffers               the general case
:mod:`.stacked`   several images per product; kept columns and a     N > 1, small
                  stride-phase input gradient for training           outputs
:mod:`.pointwise` 1x1 stride 1: products with the pixels themselves  1x1 convolutions
:mod:`.grouped`   per-chunk im2col with dilation offsets, products   dilation or
                  batched over the groups                            groups > 1
================  =================================================  ==================

:func:`~.plan.plan` picks one from the shapes alone; every kernel takes ``strategy=`` (an
instance, or a name of :data:`STRATEGIES`) to force one instead, which is how the tests run
every strategy on every shape and how benchmarks wrap one. Shared pieces: :mod:`.windows`
(im2col / col2im buffers; when numba is on, the compiled kernels of :mod:`.compiled`, with
the NumPy code kept as their twins) and :mod:`.epilogue` (scale, bias, activation in place).

Examples
--------
>>> import numpy as np
>>> from xpnn.backends import numpy_conv
>>> x, w = np.ones((2, 3, 8, 8), "float32"), np.ones((4, 3, 3, 3), "float32")
>>> numpy_conv.plan(x.shape, w.shape, (1, 1), (1, 1), x.itemsize).name
'stacked'
>>> y = numpy_conv.conv2d(None, x, w, None, (1, 1), (1, 1), strategy="chunked")
>>> y.shape, float(y[0, 0, 4, 4])
((2, 4, 8, 8), 27.0)
"""

from __future__ import annotations

from xpnn.errors import BackendError

from . import compiled
from .chunked import Chunked
from .grouped import Grouped
from .plan import plan
from .pointwise import Pointwise
from .stacked import Stacked
from .strategy import Strategy

__all__ = [
    "STRATEGIES",
    "Chunked",
    "Grouped",
    "Pointwise",
    "Stacked",
    "Strategy",
    "conv2d",
    "conv2d_backward",
    "conv2d_train",
    "geometry",
    "plan",
    "resolve",
]

# Every strategy by name (its class: ``STRATEGIES[name]()`` builds the default instance).
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Chunked, Stacked, Pointwise, Grouped)
}


def geometry(w_shape, dilation, groups) -> dict:
    """The keyword arguments a strategy gets for ``dilation`` and ``groups``: none for a
    plain convolution (every strategy computes those), both otherwise (only strategies
    whose ``supports`` accepts them run it). A dilation along an axis of kernel size 1
    moves nothing and counts as 1 (so a grouped-free 1x1 convolution stays plain)."""
    dilation = tuple(1 if k == 1 else int(d) for k, d in zip(w_shape[2:], dilation,
                                                              strict=True))
    if dilation == (1, 1) and groups == 1:
        return {}
    return {"dilation": dilation, "groups": groups}


def resolve(strategy, x_shape, w_shape, stride, padding, itemsize, train, *,
            dilation=(1, 1), groups=1) -> Strategy:
    """The strategy to run: ``plan(...)`` for None, the registered one for a name, else
    ``strategy`` itself; a strategy that does not support these shapes is an error.
    ``dilation`` and ``groups`` as :func:`geometry` gives them (omitted: plain)."""
    if strategy is None:
        return plan(x_shape, w_shape, stride, padding, itemsize, train, dilation=dilation,
                    groups=groups)
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise BackendError(
                f"Unknown NumPy convolution strategy {strategy!r}. "
                f"Expected one of: {', '.join(sorted(STRATEGIES))}."
            )
        strategy = STRATEGIES[strategy]()
    if not strategy.supports(x_shape, w_shape, stride, padding, dilation, groups):
        raise BackendError(
            f"The {strategy.name!r} convolution strategy does not support x.shape="
            f"{tuple(x_shape)}, w.shape={tuple(w_shape)}, stride={tuple(stride)}, "
            f"padding={tuple(padding)}, dilation={tuple(dilation)}, groups={groups}. "
            f"Use strategy=None to let plan() choose."
        )
    return strategy


def conv2d(backend, x, w, bias, stride, padding, *, scale=None, negative_slope=None,
           dilation=(1, 1), groups=1, strategy=None):
    """Inference: ``act(scale[o] conv(x, w) + bias[o])``.

    Parameters
    ----------
    backend : Backend or None
        Unused (NumPy arrays only).
    x : ndarray (N, C, H, W)
    w : ndarray (O, C / groups, KH, KW)
    bias, scale : ndarray (O,) or None
    stride, padding : (int, int)
    negative_slope : float in [0, 1] or None
        Apply ``max(y, negative_slope y)`` (LeakyReLU; 0 gives ReLU); None: no activation.
    dilation : (int, int)
        The spacing of the kernel taps (1: adjacent).
    groups : int
        Independent convolutions over as many blocks of channels (1: one).
    strategy : Strategy, str or None
        None: :func:`plan` chooses.

    Returns
    -------
    ndarray (N, O, OH, OW)
    """
    if negative_slope is not None and not 0.0 <= negative_slope <= 1.0:
        raise BackendError(
            f"conv2d fuses a LeakyReLU only for slopes in [0, 1]. "
            f"Received: negative_slope={negative_slope!r}"
        )
    options = geometry(w.shape, dilation, groups)
    run = resolve(strategy, x.shape, w.shape, stride, padding, x.itemsize, False, **options)
    with compiled.inference():  # no numba loaded for inference alone (memory)
        return run.forward(x, w, bias, stride, padding, scale, negative_slope, **options)


def conv2d_train(backend, x, w, bias, stride, padding, *, dilation=(1, 1), groups=1,
                 strategy=None):
    """Training forward: ``(y, saved)`` with ``y = conv(x, w) + bias`` and ``saved``
    whatever the strategy reuses in :func:`conv2d_backward` (the stacked strategy's
    im2col columns), or None."""
    options = geometry(w.shape, dilation, groups)
    run = resolve(strategy, x.shape, w.shape, stride, padding, x.itemsize, True, **options)
    return run.forward_train(x, w, bias, stride, padding, **options)


def conv2d_backward(backend, dy, x, w, stride, padding, saved, *, need_dx=True,
                    dilation=(1, 1), groups=1, strategy=None):
    """``(dx, dw)`` for ``dy = dL/dy``: ``dx (N, C, H, W)`` (None when ``need_dx`` is
    False) and ``dw (O, C / groups, KH, KW)``. ``saved``: what :func:`conv2d_train` returned for the
    same arrays, or None; pass the same ``strategy`` as there (None: both plan the same)."""
    options = geometry(w.shape, dilation, groups)
    run = resolve(strategy, x.shape, w.shape, stride, padding, x.itemsize, True, **options)
    return run.backward(dy, x, w, stride, padding, saved, need_dx, **options)
