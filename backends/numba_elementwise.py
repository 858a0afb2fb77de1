"""Elementwise kernels for the NumPy backend, compiled with numba: the SGD step
(``sgd_update``) in one pass over memory, the outer product (``outer``), and the plain
softmax cross-entropy with its gradient (``softmax_cross_entropy_mean``), one pass per row.

sgd_update   NumPy runs :func:`xpnn.backends.portable.sgd_update` as 2 to 6 whole-array
             operations, each a pass over memory, most with a temporary (``lr * grad``,
             ``grad + weight_decay * param``, ...). The loop here reads each element of
             ``param``, ``grad`` and ``buf`` once and writes ``param`` and ``buf`` in
             place: a 784x128 float32 ``param -= lr * grad`` took 16 µs (the loop 11)
             against NumPy's 20 with the data in cache, and in the MNIST MLP's step, out
             of cache, the update of its parameters 57-61 µs against 108 at batch 32.
outer        ``out[i, j] = a[i] b[j]`` into a fresh C-contiguous array: about 7 µs instead
             of einsum's 35 for a 128x784 float32 product.

Bit identity (``sgd_update`` and ``outer``; the loss kernel equals its twin to rounding,
see :func:`softmax_cross_entropy_mean`). Both loops compute every element with the
operations of their NumPy twin, in the same order and in the arrays' dtype, so the results
are the same bits:

- The scalars (``lr``, ``momentum``, ``weight_decay``) are cast to the arrays' dtype
  before the loop. NumPy does the same with a Python float (NEP 50: ``0.1 * float32_array``
  is a float32 product); a float64 scalar in the loop would promote each product to float64
  and round differently. A scalar of another type (a NumPy float64, which NumPy treats as
  a float64 operand) runs the portable kernel instead.
- ``fastmath`` stays off, so LLVM neither reassociates nor contracts ``a * b + c`` into
  a fused multiply-add (each product is rounded, as NumPy's is).
- The optional steps are skipped, not multiplied away: ``weight_decay = 0`` adds nothing
  (``0 * inf`` would be NaN), exactly as the ``if weight_decay:`` of the portable code.
- ``np.einsum("i,j->ij")`` adds each product into a zeroed output, so a product of
  ``-0.0`` comes out ``+0.0``; the compiled outer adds the same zero (LLVM does not fold
  ``x + 0.0`` without fastmath).

The compiled paths apply to NumPy float32/float64 arrays of one dtype (and for
``sgd_update`` one shape and one memory order, C- or Fortran-contiguous, walked flat as a
view; arrays that may overlap in memory are excluded, since the loop would read values it
has already written where NumPy's temporaries hold the old ones). Everything else, and
everything when :func:`xpnn.backends.numba_support.enabled` is False, runs the NumPy twin.
One thread: the loops are bound by memory bandwidth. numba is imported only when a kernel
first runs.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from xpnn.backends import numba_support, portable

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# sgd_update runs compiled from this many elements on. A compiled call costs about 5 µs
# before its loop starts (the checks below and numba's dispatch of nine arguments), while
# NumPy updates a small array in about 1 µs: for the 128 biases of the MNIST MLP the
# compiled step took 6.1 µs against 0.8, for its 784x128 weight 16 against 20 µs in cache
# and 30-35 µs less per step when the step's data is out of cache (batch 32-512).
SGD_COMPILED_FROM = 16384


def _sgd_step(p, g, b, lr, momentum, weight_decay, decay, has_momentum, nesterov):
    """One SGD step over flat arrays, in place: the operations of
    :func:`xpnn.backends.portable.sgd_update` element by element (``b`` is not touched
    without momentum). The scalars have the arrays' dtype."""
    for i in range(p.shape[0]):
        d = g[i]
        if decay:
            d = d + weight_decay * p[i]  # grad + weight_decay * param
        if has_momentum:
            v = b[i] * momentum  # buf *= momentum
            v = v + d  # buf += grad
            b[i] = v
            d = d + momentum * v if nesterov else v
        p[i] = p[i] - lr * d  # param -= lr * grad


def _outer(a, b, zero, out):
    """``out[i, j] = a[i] b[j] + zero``: einsum's sum into a zeroed output (``zero`` has
    the dtype of the arrays)."""
    for i in range(a.shape[0]):
        ai = a[i]
        row = out[i]
        for j in range(b.shape[0]):
            row[j] = ai * b[j] + zero


def _softmax_cross_entropy(logits, labels, inv_n, dlogits):
    """Per row ``z`` with label ``t``: ``m = max z`` (NaN if any is NaN, as NumPy's max),
    ``e = exp(z - m)``, ``s = sum e``, ``dlogits = (e / s - [j == t]) inv_n``, and the
    row's ``-(z_t - m - log s)`` added to the float64 total, which is returned. A label
    outside ``[0, C)`` matches no class (no loss term; it is never used as an index)."""
    n, c = logits.shape
    zero, one = inv_n - inv_n, inv_n / inv_n  # in the logits' dtype (inv_n is finite, > 0)
    total = 0.0
    for i in range(n):
        z, d = logits[i], dlogits[i]
        m = z[0]
        for j in range(1, c):
            if z[j] > m or z[j] != z[j]:
                m = z[j]
        s = zero
        for j in range(c):
            e = np.exp(z[j] - m)
            d[j] = e
            s += e
        t = labels[i]
        for j in range(c):
            p = d[j] / s
            if j == t:
                p = p - one
            d[j] = p * inv_n
        if 0 <= t < c:
            total -= z[t] - m - np.log(s)
    return total


@functools.cache
def _kernels() -> SimpleNamespace:
    """The compiled kernels (compiled on first call, and cached on disk)."""
    jit = numba_support.jit
    return SimpleNamespace(sgd_step=jit()(_sgd_step), outer=jit()(_outer),
                           softmax_cross_entropy=jit()(_softmax_cross_entropy))


def _python_number(value) -> bool:
    """Whether NumPy applies ``value`` in the arrays' dtype (a Python int or float, not a
    NumPy scalar: ``np.float64`` is a float subclass but a float64 operand)."""
    return type(value) in (float, int)


def _flat_views(param, grad, buf):
    """``param``, ``grad`` (and ``buf``) as 1-D views walking their memory in one order,
    or None when the compiled step does not apply to them (see the module docstring)."""
    arrays = (param, grad) if buf is None else (param, grad, buf)
    if not all(isinstance(array, np.ndarray) for array in arrays):
        return None
    dtype, shape = param.dtype, param.shape
    if dtype not in _FLOATS or any(a.dtype != dtype or a.shape != shape for a in arrays):
        return None
    if not (param.flags.writeable and (buf is None or buf.flags.writeable)):
        return None  # the portable kernel raises NumPy's error
    if all(array.flags.c_contiguous for array in arrays):
        order = "C"
    elif all(array.flags.f_contiguous for array in arrays):
        order = "F"  # e.g. transposed weights with transposed gradients
    else:
        return None
    for k, first in enumerate(arrays):
        for second in arrays[k + 1:]:
            if np.may_share_memory(first, second):
                return None
    # A contiguous array reshapes to 1-D in its own order without a copy.
    return tuple(array.reshape(-1, order=order) for array in arrays)


def sgd_update(backend, param, grad, buf, lr, momentum, nesterov, weight_decay):
    """:func:`xpnn.backends.portable.sgd_update`, compiled (see the module docstring):
    ``param`` and ``buf`` updated in place in one pass and returned."""
    views = None
    if param.size >= SGD_COMPILED_FROM and numba_support.enabled() and all(
            _python_number(value) for value in (lr, momentum, weight_decay)):
        views = _flat_views(param, grad, buf if momentum else None)
    if views is None:
        return portable.sgd_update(backend, param, grad, buf, lr, momentum, nesterov,
                                   weight_decay)
    p, g = views[0], views[1]
    b = views[2] if momentum else p  # without momentum the loop never reads b
    scalar = param.dtype.type  # NumPy's cast of a Python float to the arrays' dtype
    _kernels().sgd_step(p, g, b, scalar(lr), scalar(momentum), scalar(weight_decay),
                        bool(weight_decay), bool(momentum), bool(nesterov))
    return param, buf


def outer_applies(a, b) -> bool:
    """Whether :func:`outer` runs compiled for ``a`` and ``b``: numba is on, and both are
    1-D NumPy float32/float64 arrays of one dtype."""
    return (numba_support.enabled() and isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray) and a.ndim == 1 and b.ndim == 1
            and a.dtype == b.dtype and a.dtype in _FLOATS)


def outer(a, b):
    """``a[i] b[j]`` as a fresh C-contiguous ``(M, N)`` array, bit for bit
    ``np.einsum("i,j->ij", a, b)``; only where :func:`outer_applies`."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
    _kernels().outer(a, b, a.dtype.type(0), out)
    return out


def softmax_cross_entropy_mean(backend, logits, labels):
    """:func:`xpnn.backends.portable.softmax_cross_entropy_mean`, compiled: one pass per
    row, no ``(N, C)`` temporaries but ``dlogits``. The loss is summed in float64 (the
    portable kernel sums in the logits' dtype) and ``exp``/``log`` are LLVM's, so the
    results equal the portable ones to rounding, not bit for bit. Runs for C-contiguous
    float32/float64 logits and int64 labels when numba is on; else the portable kernel."""
    if not (numba_support.enabled() and isinstance(logits, np.ndarray)
            and isinstance(labels, np.ndarray) and logits.dtype in _FLOATS
            and labels.dtype == np.int64 and logits.flags.c_contiguous):
        return portable.softmax_cross_entropy_mean(backend, logits, labels)
    n = logits.shape[0]
    dtype = logits.dtype.type
    dlogits = np.empty_like(logits)
    # 1 / n as NumPy applies the Python float 1.0 / n to the array: rounded to its dtype
    total = _kernels().softmax_cross_entropy(logits, labels, dtype(1.0 / n), dlogits)
    return np.asarray(dtype(total / n)), dlogits
