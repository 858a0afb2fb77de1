"""The portable kernels: every operation the standard lacks, in nothing but Array API
standard functions. Each is the default of its name in every backend's kernel table
(:class:`xpnn.backends.backend.Ops`); a backend module overrides one by giving a function
with the same signature (``numpy_backend``, ``torch_backend``), and the tests check that
every override computes what the default computes. array-api-strict, CuPy and JAX run
these as they are.

Every kernel takes the :class:`~xpnn.backends.Backend` its arrays live on first: ``xp``,
``device`` and whether arrays may be updated in place come from there, never from the
arrays' types.

==============================  =============================================================
``conv2d``                      inference: ``act(scale * conv(x, w) + bias)``, ``act`` a (leaky)
                                ReLU with a slope in [0, 1] or nothing
``conv2d_train``                training forward: ``(y, saved)`` with ``y = conv(x, w) + bias`` and
                                whatever the implementation wants back in the backward (or None)
``conv2d_backward``             ``(dx, dw)`` from ``dy`` and the forward's ``saved``; ``dx`` is None
                                when ``need_dx`` is False
``max_pool2d``                  window maxima, ``-inf`` padding
``max_pool2d_backward``         ``dx``: each ``dy`` entry to its window's first maximum
``outer``                       ``a[i] b[j]``, the batch-1 weight gradient of a dense layer
``value_range``                 ``(min, max)`` of an integer array as Python ints, one host
                                read: the losses' label check
``batchnorm_train``             training BatchNorm with the batch's statistics, optionally followed
                                by a (leaky) ReLU: ``(y, mean, var, saved)``
``batchnorm_backward``          ``(dx, dgamma, dbeta)`` from ``dy`` and that forward's ``saved``
``sgd_update``                  one SGD step of one parameter (momentum, Nesterov, weight decay):
                                ``(param, buf)``, updated in place where arrays allow it
``softmax_cross_entropy_mean``  the batch-mean softmax cross-entropy against class indices
                                and its gradient: ``(loss, dlogits)``
==============================  =============================================================

im2col (Chellapilla et al. 2006, "High performance convolutional neural networks for
document processing") turns a convolution into one matrix product. For an input
``x (N, C, H, W)`` padded to ``xp (N, C, H + 2 ph, W + 2 pw)`` and a kernel offset
``(i, j)``, the strided slice

    xp[:, :, i : i + sh (OH - 1) + 1 : sh, j : j + sw (OW - 1) + 1 : sw]      (N, C, OH, OW)

holds, at output position ``(a, b)``, the input pixel that kernel tap ``(i, j)`` sees.
Stacking the ``KH KW`` slices gives ``cols (N, C KH KW, OH OW)``, and with
``W2 = w.reshape(O, C KH KW)``

    y[n] = W2 @ cols[n]                                                     (O, OH OW)

which reshapes to NCHW without a transpose. The backward pass is the transpose of each step:

    dW2 = sum_n dy[n] @ cols[n]^T,     dcols[n] = W2^T @ dy[n],

and col2im adds each offset's slice of ``dcols`` back where the slice came from. Within
one offset the strided positions never overlap, so the additions need no scatter; on
backends whose arrays cannot be updated in place (JAX) each contribution is instead
spread to full size with zeros (:func:`_place`) and the contributions are summed.

Dilation ``(dh, dw)`` spaces the taps: tap ``(i, j)`` reads the slice starting at ``(dh i,
dw j)`` instead of ``(i, j)``, and ``OH = (H + 2 ph - dh (KH - 1) - 1) // sh + 1``. With
``groups`` G the weight is ``(O, C / G, KH, KW)`` and output channels ``g O / G ... (g + 1)
O / G - 1`` see only input channels ``g C / G ... (g + 1) C / G - 1``: the rows of ``cols``
split into G consecutive blocks, one per group, and the products above become one product
batched over the group axis (``(G, O / G, K) @ (N, G, K, L)``, ``K = C KH KW / G``).

Shapes are NCHW; ``stride``, ``padding``, ``dilation`` and ``kernel_size`` are ``(height,
width)`` pairs of ints; padding is symmetric. Stops of every slice are computed exactly
(array-api-strict rejects out-of-range stops), and every index spells out all four axes.

Examples
--------
>>> import numpy as np
>>> from xpnn import backends
>>> numpy = backends.make_backend("numpy")
>>> x, w = np.ones((1, 2, 4, 4), "float32"), np.ones((3, 2, 3, 3), "float32")
>>> numpy.ops.portable.conv2d(x, w, None, (1, 1), (1, 1)).shape
(1, 3, 4, 4)
>>> float(numpy.ops.conv2d(x, w, None, (1, 1), (0, 0))[0, 0, 0, 0])
18.0
"""

from __future__ import annotations

import math

# -- small helpers ----------------------------------------------------------------------------


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode):
    ``(size + 2 padding - dilation (kernel - 1) - 1) // stride + 1`` (0 or less: the input
    is too small)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad2d(backend, x, padding: tuple[int, int], value: float = 0.0):
    """Pad the two last axes of ``x (N, C, H, W)`` by ``padding = (ph, pw)`` on both sides
    with ``value``, by concatenating constant blocks created on the backend's device."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp, dev = backend.xp, backend.device
    n, c, h, w = x.shape
    if pw:
        side = xp.full((n, c, h, pw), value, dtype=x.dtype, device=dev)
        x = xp.concat([side, x, side], axis=3)
    if ph:
        side = xp.full((n, c, ph, w + 2 * pw), value, dtype=x.dtype, device=dev)
        x = xp.concat([side, x, side], axis=2)
    return x


def _window(x_pad, i: int, j: int, stride, out_hw):
    """The strided slice of ``x_pad`` that kernel offset ``(i, j)`` sees: (N, C, OH, OW)."""
    (sh, sw), (oh, ow) = stride, out_hw
    return x_pad[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]


def _dilate(backend, values, axis: int, stride: int):
    """Insert ``stride - 1`` zeros between consecutive entries of ``values`` along ``axis``
    (2 or 3): the length goes from ``L`` to ``stride (L - 1) + 1``."""
    if stride == 1:
        return values
    xp = backend.xp
    shape = tuple(values.shape)
    zeros = xp.zeros(shape, dtype=values.dtype, device=backend.device)
    interleaved = xp.stack([values] + [zeros] * (stride - 1), axis=axis + 1)
    length = shape[axis]
    merged = shape[:axis] + (length * stride,) + shape[axis + 1 :]
    spread = xp.reshape(interleaved, merged)
    if axis == 2:
        return spread[:, :, : stride * (length - 1) + 1, :]
    return spread[:, :, :, : stride * (length - 1) + 1]


def _place(backend, values, i: int, j: int, stride, padded_hw):
    """``values (N, C, OH, OW)`` placed at rows ``i, i + sh, ...`` and columns
    ``j, j + sw, ...`` of a zero array of spatial size ``padded_hw``: the functional
    version of ``out[:, :, i::sh, j::sw] += values``."""
    xp = backend.xp
    (sh, sw), (hp, wp) = stride, padded_hw
    spread = _dilate(backend, _dilate(backend, values, 2, sh), 3, sw)
    n, c, rows, columns = spread.shape
    dev, dtype = backend.device, values.dtype
    parts = []
    if i:
        parts.append(xp.zeros((n, c, i, columns), dtype=dtype, device=dev))
    parts.append(spread)
    if hp - i - rows:
        parts.append(xp.zeros((n, c, hp - i - rows, columns), dtype=dtype, device=dev))
    spread = xp.concat(parts, axis=2) if len(parts) > 1 else spread
    parts = []
    if j:
        parts.append(xp.zeros((n, c, hp, j), dtype=dtype, device=dev))
    parts.append(spread)
    if wp - j - columns:
        parts.append(xp.zeros((n, c, hp, wp - j - columns), dtype=dtype, device=dev))
    return xp.concat(parts, axis=3) if len(parts) > 1 else spread
def _crop(x_pad, padding, hw):
    """Remove the padding again: ``x_pad[:, :, ph : ph + H, pw : pw + W]``."""
    (ph, pw), (h, w) = padding, hw
    if ph == 0 and pw == 0 and tuple(x_pad.shape[2:]) == (h, w):
        return x_pad
    return x_pad[:, :, ph : ph + h, pw : pw + w]


# -- im2col / col2im --------------------------------------------------------------------------


def im2col(backend, x, kernel_size, stride, padding, dilation=(1, 1)):
    """Windows of ``x (N, C, H, W)`` as ``cols (N, C * KH * KW, OH * OW)``, rows ordered
    ``(c, i, j)`` like ``w.reshape(O, C * KH * KW)``; tap ``(i, j)`` reads the pixel
    ``(dh i, dw j)`` away from its window's corner (``dilation = (dh, dw)``)."""
    xp = backend.xp
    (kh, kw), (dh, dw), (n, c, h, w) = kernel_size, dilation, x.shape
    out_hw = (output_size(h, kh, stride[0], padding[0], dh),
              output_size(w, kw, stride[1], padding[1], dw))
    x_pad = pad2d(backend, x, padding)
    windows = [_window(x_pad, dh * i, dw * j, stride, out_hw)
               for i in range(kh) for j in range(kw)]
    cols = xp.stack(windows, axis=2)  # (N, C, KH * KW, OH, OW)
    return xp.reshape(cols, (n, c * kh * kw, out_hw[0] * out_hw[1]))


def col2im(backend, cols, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """The adjoint of :func:`im2col`: add every column entry back to the input pixel it
    was read from. ``cols (N, C * KH * KW, OH * OW)`` -> ``(N, C, H, W)``. In place on
    backends whose arrays are mutable, else by summing zero-padded spreads (JAX)."""
    xp = backend.xp
    (kh, kw), (n, c, h, w) = kernel_size, x_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out_hw = (output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw))
    padded_hw = (h + 2 * ph, w + 2 * pw)
    cols = xp.reshape(cols, (n, c, kh * kw, out_hw[0], out_hw[1]))
    if backend.mutable:
        x_pad = xp.zeros((n, c, *padded_hw), dtype=cols.dtype, device=backend.device)
        for i in range(kh):
            for j in range(kw):
                rows = slice(dh * i, dh * i + sh * (out_hw[0] - 1) + 1, sh)
                columns = slice(dw * j, dw * j + sw * (out_hw[1] - 1) + 1, sw)
                x_pad[:, :, rows, columns] += cols[:, :, i * kw + j, :, :]
    else:
        x_pad = None
        for i in range(kh):
            for j in range(kw):
                part = _place(backend, cols[:, :, i * kw + j, :, :], dh * i, dw * j, stride,
                              padded_hw)
                x_pad = part if x_pad is None else x_pad + part
    return _crop(x_pad, padding, (h, w))


# -- convolution ------------------------------------------------------------------------------


def _is_pointwise(w, stride, padding) -> bool:
    return tuple(w.shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _products(xp, w, cols, groups: int):
    """``y[n] = W2 @ cols[n]`` as ``(N, O, L)`` for ``w (O, C / G, KH, KW)`` and ``cols
    (N, C KH KW, L)``: one product, or with ``groups`` G > 1 one product per group, batched
    over the group axis (group ``g``'s rows of ``cols`` are its ``C / G`` channels)."""
    o, rows = w.shape[0], math.prod(w.shape[1:])
    if groups == 1:
        return xp.matmul(xp.reshape(w, (o, rows)), cols)  # (O, K) @ (N, K, L)
    n, _, length = cols.shape
    w3 = xp.reshape(w, (groups, o // groups, rows))
    cols4 = xp.reshape(cols, (n, groups, rows, length))
    return xp.reshape(xp.matmul(w3, cols4), (n, o, length))  # (G, O/G, K) @ (N, G, K, L)


def _transposed_products(xp, w, dy2, groups: int):
    """``dcols[n] = W2^T @ dy2[n]`` as ``(N, C KH KW, L)`` for ``dy2 (N, O, L)``: the
    adjoint of :func:`_products` with respect to the columns, group by group."""
    o, rows = w.shape[0], math.prod(w.shape[1:])
    if groups == 1:
        return xp.matmul(xp.matrix_transpose(xp.reshape(w, (o, rows))), dy2)
    n, _, length = dy2.shape
    w3 = xp.reshape(w, (groups, o // groups, rows))
    dy4 = xp.reshape(dy2, (n, groups, o // groups, length))
    # (G, K, O/G) @ (N, G, O/G, L) -> (N, G, K, L): the groups' rows in channel order
    return xp.reshape(xp.matmul(xp.matrix_transpose(w3), dy4), (n, groups * rows, length))


def _columns(backend, x, w, stride, padding, dilation):
    """``cols (N, C KH KW, OH OW)``: the pixels themselves for a 1x1 stride-1 unpadded
    convolution (dilation moves nothing then), else :func:`im2col`."""
    n, c, h, width = x.shape
    if _is_pointwise(w, stride, padding):
        return backend.xp.reshape(x, (n, c, h * width))
    return im2col(backend, x, tuple(w.shape[2:]), stride, padding, dilation)


def conv2d(backend, x, w, bias, stride, padding, *, scale=None, negative_slope=None,
           dilation=(1, 1), groups=1):
    """``y = act(scale * conv2d(x, w) + bias)`` through im2col and one (batched) matmul,
    with ``act`` the (leaky) ReLU :func:`leaky_relu` when ``negative_slope`` (in [0, 1]) is
    given; ``scale`` (per output channel) and ``bias`` may be None.

    ``x (N, C, H, W)``, ``w (O, C / groups, KH, KW)``, ``bias (O,)`` -> ``y (N, O, OH,
    OW)``. ``dilation (dh, dw)`` spaces the kernel taps; ``groups`` splits the channels into
    that many independent convolutions (output channel ``o`` sees input group ``o // (O /
    groups)``). A 1x1 stride-1 unpadded convolution is a plain matmul over channels.
    """
    xp = backend.xp
    n, _, h, width = x.shape
    o, _, kh, kw = w.shape
    oh = output_size(h, kh, stride[0], padding[0], dilation[0])
    ow = output_size(width, kw, stride[1], padding[1], dilation[1])
    y = _products(xp, w, _columns(backend, x, w, stride, padding, dilation), groups)
    if scale is not None:
        y = y * xp.reshape(scale, (1, o, 1))
    if bias is not None:
        y = y + xp.reshape(bias, (1, o, 1))
    if negative_slope is not None:
        y = leaky_relu(y, negative_slope, xp)
    return xp.reshape(y, (n, o, oh, ow))


def conv2d_train(backend, x, w, bias, stride, padding, *, dilation=(1, 1), groups=1):
    """Training forward: ``(conv2d(x, w) + bias, None)``; the backward recomputes the
    columns it needs."""
    return conv2d(backend, x, w, bias, stride, padding, dilation=dilation, groups=groups), None


def conv2d_backward(backend, dy, x, w, stride, padding, saved, *, need_dx=True,
                    dilation=(1, 1), groups=1):
    """Gradients ``(dx, dw)`` of ``y = conv2d(x, w)`` for ``dy = dL/dy`` (without the
    bias, whose gradient is ``dy.sum(axis=(0, 2, 3))``); ``dx`` is None when ``need_dx``
    is False (the first layer of a network). ``saved`` is unused here. With ``groups`` G
    each group's products are those of a plain convolution, batched over the group axis:
    ``dW2[g] = sum_n dy2[n, g] @ cols[n, g]^T`` and ``dcols[n, g] = W2[g]^T @ dy2[n, g]``."""
    xp = backend.xp
    n = x.shape[0]
    o, _, kh, kw = w.shape
    rows, length = math.prod(w.shape[1:]), math.prod(dy.shape[2:])
    dy2 = xp.reshape(dy, (n, o, length))
    cols = _columns(backend, x, w, stride, padding, dilation)
    if groups == 1:
        dw = xp.tensordot(dy2, cols, axes=([0, 2], [0, 2]))
    else:
        dy4 = xp.reshape(dy2, (n, groups, o // groups, length))
        cols4 = xp.reshape(cols, (n, groups, rows, length))
        dw = xp.sum(xp.matmul(dy4, xp.matrix_transpose(cols4)), axis=0)  # (G, O/G, K)
    dw = xp.reshape(dw, tuple(w.shape))
    if not need_dx:
        return None, dw
    dcols = _transposed_products(xp, w, dy2, groups)
    if _is_pointwise(w, stride, padding):
        return xp.reshape(dcols, tuple(x.shape)), dw
    return col2im(backend, dcols, tuple(x.shape), (kh, kw), stride, padding, dilation), dw


# -- max pooling ------------------------------------------------------------------------------


def max_pool2d(backend, x, kernel_size, stride, padding):
    """Maximum over each ``KH x KW`` window (padding counts as -inf, as in PyTorch; floor
    mode): a running ``maximum`` over the ``KH KW`` strided slices."""
    xp = backend.xp
    (kh, kw), (_, _, h, w) = kernel_size, x.shape
    out_hw = (output_size(h, kh, stride[0], padding[0]), output_size(w, kw, stride[1], padding[1]))
    x_pad = pad2d(backend, x, padding, -math.inf)
    y = None
    for i in range(kh):
        for j in range(kw):
            window = _window(x_pad, i, j, stride, out_hw)
            y = window if y is None else xp.maximum(y, window)
    return y


def max_pool2d_backward(backend, dy, x, y, kernel_size, stride, padding):
    """Route each ``dy`` entry to the element PyTorch's CPU kernel picks, everything else
    gets zero. ``y`` is the forward's output.

    PyTorch scans a window row-major from its first real (unpadded) element and moves on
    when ``value > max or isnan(value)``, so it picks the first maximum, the *last* NaN of
    a window holding NaN, and the first real element of a window holding only ``-inf``.
    Walking the offsets in order, ``hit = (window == y) & ~taken`` marks the windows whose
    first maximum is at this offset; ``taken`` remembers the windows already served. The
    padding is NaN here (never equal to ``y``), so an all ``-inf`` window is served by
    its first real element, not by the padding. Windows whose maximum is NaN are served by
    a second walk, in reverse, over ``isnan(x)``.
    """
    xp = backend.xp
    (kh, kw), (n, c, h, w) = kernel_size, x.shape
    out_hw = tuple(y.shape[2:])
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    x_pad = pad2d(backend, x, padding, math.nan)
    taken = xp.zeros(tuple(y.shape), dtype=xp.bool, device=backend.device)
    hits = []
    for i, j in offsets:
        hit = xp.logical_and(_window(x_pad, i, j, stride, out_hw) == y, xp.logical_not(taken))
        taken = xp.logical_or(taken, hit)
        hits.append(hit)
    # Always walked, never behind an `if any(...)`: that test would read a value back to
    # the host (a device synchronization) in every backward pass.
    nan_pad = pad2d(backend, xp.isnan(x), padding, False)
    served = xp.logical_not(xp.isnan(y))
    for k in range(len(offsets) - 1, -1, -1):
        i, j = offsets[k]
        hit = xp.logical_and(_window(nan_pad, i, j, stride, out_hw), xp.logical_not(served))
        served = xp.logical_or(served, hit)
        hits[k] = xp.logical_or(hits[k], hit)
    routed = [xp.where(hit, dy, 0.0) for hit in hits]
    cols = xp.stack(routed, axis=2)  # (N, C, KH * KW, OH, OW)
    cols = xp.reshape(cols, (n, c * kh * kw, out_hw[0] * out_hw[1]))
    return col2im(backend, cols, (n, c, h, w), kernel_size, stride, padding)


# -- (leaky) ReLU -----------------------------------------------------------------------------


def slope_factor(sign_source, slope: float, dtype, xp):
    """``1`` where ``sign_source > 0``, else ``slope``, as an array of ``dtype``.

    For a slope in [0, 1] this is ``maximum(mask, slope)`` of the 0/1 mask, which is
    exact and runs as fast as a multiply; NumPy's ``where`` branches on every element and
    with the random signs of activations runs about 4x slower (measured on 800k float32
    values, 2 cores: ``where`` 3.6 ms, ``mask`` + ``maximum`` + multiply 0.9 ms). Other
    slopes (rare: a configuration, not a default) use ``where``.
    """
    positive = sign_source > 0
    if 0.0 <= slope <= 1.0:
        return xp.maximum(xp.astype(positive, dtype), slope)
    device = sign_source.device
    return xp.where(positive, xp.asarray(1.0, dtype=dtype, device=device),
                    xp.asarray(slope, dtype=dtype, device=device))


def where_positive(values, sign_source, slope: float, xp):
    """``values`` where ``sign_source > 0``, else ``slope * values``, exactly.

    Bit for bit ``xp.where(sign_source > 0, values, slope * values)``, for every value
    including ``±inf`` and NaN (an infinite value is multiplied by 1 or by the slope,
    never by 0 unless the slope is 0, so ``inf`` is not turned into NaN), computed as
    ``values * slope_factor(...)`` (see :func:`slope_factor` for the speed).
    """
    factor = slope_factor(sign_source, slope, values.dtype, xp)
    factor *= values
    return factor


def relu_backward(dy, y, xp):
    """ReLU's backward from its output ``y``: ``0`` where ``y <= 0``, ``dy`` elsewhere
    (PyTorch's ``threshold_backward``: a NaN input, whose ``y`` is NaN, passes ``dy``).

    Exactly ``xp.where(y <= 0, 0, dy)``, computed as the multiply ``dy * (not y <= 0)``
    and a ``where`` that only repairs the positions where that gave NaN below zero (an
    infinite or NaN ``dy``: ``0 * inf``). The repair's mask is almost always all False,
    which NumPy's ``where`` handles quickly; a ``where`` on the random signs of the mask
    itself is slow. Measured on 800k float32 values, 2 cores: the plain multiply (not
    exact for an infinite ``dy``) 0.6-0.8 ms, this form 1.8 ms, ``where`` alone 3.7 ms.
    """
    below = y <= 0
    kept = xp.astype(xp.logical_not(below), dy.dtype)
    kept *= dy
    zero = xp.asarray(0.0, dtype=dy.dtype, device=dy.device)
    return xp.where(xp.logical_and(xp.isnan(kept), below), zero, kept)


def leaky_relu(x, slope: float, xp):
    """``x`` where ``x > 0``, else ``slope x``, for a slope in [0, 1]: the ReLU layer's
    ``maximum(x, 0)`` for slope 0 (``-inf`` gives 0), the LeakyReLU layer's
    ``maximum(x, slope x)`` otherwise (``-inf`` stays ``-inf``). NaN stays NaN."""
    return xp.maximum(x, 0.0) if slope == 0.0 else xp.maximum(x, x * slope)


def leaky_relu_backward(dy, y, slope: float, xp):
    """The backward of :func:`leaky_relu` from its output ``y``: :func:`relu_backward`
    for slope 0, else ``dy`` where ``y > 0`` and ``slope dy`` elsewhere."""
    return relu_backward(dy, y, xp) if slope == 0.0 else where_positive(dy, y, slope, xp)


# -- batch normalization ----------------------------------------------------------------------


def batchnorm_train(backend, x, gamma, beta, eps, *, negative_slope=None, allreduce=None,
                    count=None):
    """Training BatchNorm (Ioffe & Szegedy 2015, Algorithm 1) with the batch's statistics
    per channel, optionally followed by a (leaky) ReLU:

        μ = mean(x),   σ² = mean((x - μ)²),   y = act(γ (x - μ) / sqrt(σ² + eps) + β)

    over the ``m`` values of each channel of ``x (N, C, H, W)`` or ``x (N, C)``.

    Parameters
    ----------
    x : array (N, C, H, W) or (N, C)
    gamma, beta : array (C,) or None
        Scale and shift (None: 1 and 0).
    eps : float
    negative_slope : float in [0, 1] or None
        The activation: :func:`leaky_relu` with this slope (0: ReLU), or none.
    allreduce : callable or None
        ``allreduce(list of arrays) -> list of arrays`` summing over data-parallel ranks
        (SyncBatchNorm, :mod:`xpnn.distributed`); then ``count`` is the global ``m``.
    count : int or None
        ``m`` (None: this batch's).

    Returns
    -------
    ``(y, mean, var, saved)``: the output, μ and the biased σ² as ``(C,)`` arrays (for the
    running statistics), and what :func:`batchnorm_backward` needs.
    """
    xp = backend.xp
    n, c = x.shape[:2]
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    channel = (1, c) + (1,) * (x.ndim - 2)  # broadcast (C,) over x
    if count is None:
        count = math.prod(x.shape[a] for a in axes)
    if allreduce is None:
        mean = xp.mean(x, axis=axes, keepdims=True)
    else:
        (total,) = allreduce([xp.sum(x, axis=axes)])
        mean = xp.reshape(total / count, channel)
    centred = x - mean
    # Per-channel sums of products: vecdot sums the products of each image row (W values)
    # in one pass, without the full-size temporary of sum(a * b); the N H row sums are
    # then added by sum (pairwise on NumPy, cascaded on torch). One dot over a whole H W
    # plane goes through torch's batched matmul and was about 3.5x less accurate in
    # float32 than PyTorch's own batch_norm (64x64x64x64 batch: dγ relative error 1.5e-6
    # against 4e-7 now, and 2x slower on torch's CPU); on NumPy both forms are as accurate.
    if x.ndim == 4:
        rows, row_axes = centred, (0, 2)  # vecdot over W, then sum N and H
    else:
        rows, row_axes = xp.reshape(centred, (n, c, 1)), (0,)
    squares = xp.sum(xp.vecdot(rows, rows, axis=-1), axis=row_axes)
    if allreduce is not None:
        (squares,) = allreduce([squares])
    var = squares / count
    inv_std = 1.0 / xp.sqrt(var + eps)  # (C,)
    gain = inv_std if gamma is None else gamma * inv_std  # γ / sqrt(σ² + eps)
    y = centred * xp.reshape(gain, channel)
    if beta is not None:  # in place where arrays allow it (JAX rebinds y)
        y += xp.reshape(beta, channel)
    if negative_slope is not None:
        y = leaky_relu(y, negative_slope, xp)
    saved = (rows, row_axes, axes, channel, inv_std, gain, count, gamma is not None,
             negative_slope, y if negative_slope is not None else None)
    return y, xp.reshape(mean, (c,)), var, saved


def batchnorm_backward(backend, dy, saved, *, need_dx=True, allreduce=None):
    """Gradients ``(dx, dγ, dβ)`` of :func:`batchnorm_train` for ``dy = dL/dy``, with
    ``dz`` the gradient before the activation (``dy`` without one) and sums over the
    ``m`` values of each channel:

        dβ = Σ dz,    dγ = inv_std Σ dz (x - μ),    inv_std = 1 / sqrt(σ² + eps)
        dx = g dz - g Σdz / m - (x - μ) g inv_std² Σ dz (x - μ) / m,    g = γ inv_std

    (Ioffe & Szegedy 2015, §3, with x̂ Σ dz x̂ = (x - μ) inv_std² Σ dz (x - μ)).
    ``dx`` is None unless ``need_dx``; ``dγ`` is None without ``gamma``. With
    ``allreduce`` (SyncBatchNorm) ``dx`` uses the sums of every rank, while ``dγ`` and
    ``dβ`` stay this rank's (the gradient all-reduce adds them up).
    """
    xp = backend.xp
    (rows, row_axes, axes, channel, inv_std, gain, count, has_gamma, slope, y) = saved
    dz = dy if slope is None else leaky_relu_backward(dy, y, slope, xp)
    n, c = dz.shape[:2]
    sum_dz = xp.sum(dz, axis=axes)
    dz_rows = dz if dz.ndim == 4 else xp.reshape(dz, (n, c, 1))
    sum_dz_centred = xp.sum(xp.vecdot(dz_rows, rows, axis=-1), axis=row_axes)
    dgamma = sum_dz_centred * inv_std if has_gamma else None
    if not need_dx:
        return None, dgamma, sum_dz
    dbeta = sum_dz
    if allreduce is not None:  # copies: the all-reduce works in place, and dβ is sum_dz
        sum_dz, sum_dz_centred = allreduce(
            [xp.asarray(sum_dz, copy=True), xp.asarray(sum_dz_centred, copy=True)])
    centred = rows if dz.ndim == 4 else xp.reshape(rows, (n, c))
    dx = dz * xp.reshape(gain, channel)
    correction = centred * xp.reshape(gain * inv_std * inv_std * sum_dz_centred / count,
                                      channel)
    correction += xp.reshape(gain * sum_dz / count, channel)
    dx -= correction
    return dx, dgamma, dbeta


# -- linear algebra ---------------------------------------------------------------------------


def outer(backend, a, b):
    """``a[i] * b[j]`` as an ``(M, N)`` array for 1-D ``a (M,)`` and ``b (N,)``: a
    broadcast multiply (a matrix product with an inner dimension of 1 runs slowly on
    most BLAS libraries)."""
    return a[:, None] * b[None, :]


def value_range(backend, array) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer ``array`` as Python ints, read to the host
    together (one synchronization on a device): the label check of the losses."""
    xp = backend.xp
    extremes = backend.to_numpy(xp.stack([xp.min(array), xp.max(array)]))
    return int(extremes[0]), int(extremes[1])


# -- optimizer updates ------------------------------------------------------------------------


def sgd_update(backend, param, grad, buf, lr, momentum, nesterov, weight_decay):
    """One step of :class:`xpnn.optim.SGD` (``torch.optim.SGD`` without dampening) for one
    parameter, in this order::

        g = grad + weight_decay param           (only when weight_decay != 0)
        buf *= momentum;  buf += g              (only when momentum != 0)
        d = g + momentum buf if nesterov else buf    (g without momentum)
        param -= lr d

    The scalars are Python numbers, so each product is computed in the arrays' dtype
    (NEP 50: ``0.1 * float32_array`` is float32). Returns ``(param, buf)``: the same arrays
    updated in place where the backend's arrays are mutable, new arrays on JAX (``-=``
    rebinds there), so the caller assigns both back. ``buf`` is None without momentum
    (and is returned as given).
    """
    if weight_decay:
        grad = grad + weight_decay * param
    if momentum:
        buf *= momentum
        buf += grad
        grad = grad + momentum * buf if nesterov else buf
    param -= lr * grad
    return param, buf


# -- losses -----------------------------------------------------------------------------------


def softmax_cross_entropy_mean(backend, logits, labels):
    """``(loss, dlogits)``: the softmax cross-entropy of ``logits (N, C)`` against class
    indices ``labels (N,)`` (int64), averaged over the batch, and its gradient,

        loss = -1/N sum_n log softmax(z_n)[y_n],      dlogits = (softmax(z) - onehot(y)) / N,

    with ``log softmax(z) = z - max(z) - log sum exp(z - max(z))`` (no overflow). A label
    outside ``[0, C)`` matches no class: its row adds nothing to the loss and its gradient
    is ``softmax(z_n) / N`` (the caller checks labels unless told not to). The plain case
    of :func:`xpnn.losses.softmax_cross_entropy`: no class weights, ignored labels or label
    smoothing. ``loss`` is a 0-D array in the logits' dtype."""
    xp = backend.xp
    n = logits.shape[0]
    targets = one_hot(backend, labels, logits.shape[1], logits.dtype)
    log_probs, probs = log_softmax(xp, logits)
    loss = xp.asarray(-xp.sum(targets * log_probs) / n)
    dlogits = probs - targets
    dlogits *= 1.0 / n
    return loss, dlogits


def one_hot(backend, labels, classes: int, dtype):
    """``(N, classes)`` rows in ``dtype`` for class indices ``labels (N,)``: 1 at each
    label's class, 0 elsewhere (a label outside ``[0, classes)`` gives a row of zeros)."""
    xp = backend.xp
    columns = xp.arange(classes, dtype=xp.int64, device=backend.device)
    return xp.astype(columns == xp.reshape(labels, (labels.shape[0], 1)), dtype)


def log_softmax(xp, logits):
    """``(log softmax(z), softmax(z))`` along the last axis of ``logits (N, C)``, as
    ``z - max(z) - log sum exp(z - max(z))`` so that large logits never overflow; both
    are fresh arrays the caller may modify."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    probs = xp.exp(shifted)
    norm = xp.sum(probs, axis=1, keepdims=True)
    shifted -= xp.log(norm)  # now log softmax
    probs /= norm
    return shifted, probs


KERNELS = {
    "conv2d": conv2d,
    "conv2d_train": conv2d_train,
    "conv2d_backward": conv2d_backward,
    "max_pool2d": max_pool2d,
    "max_pool2d_backward": max_pool2d_backward,
    "outer": outer,
    "value_range": value_range,
    "batchnorm_train": batchnorm_train,
    "batchnorm_backward": batchnorm_backward,
    "sgd_update": sgd_update,
    "softmax_cross_entropy_mean": softmax_cross_entropy_mean,
}
