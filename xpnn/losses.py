"""Losses, each returning ``(loss, dloss/dinput)`` in one pass.

Every loss is averaged over the batch (``reduction="mean"`` in PyTorch terms) and returns

* ``loss``: a 0-D array on the input's device, in the input's dtype. It is *not* converted
  to a Python float, because that would wait for the GPU; call ``float(loss)`` once per
  logging step.
* the gradient of ``loss`` with respect to the first argument, the ``dy`` to hand to the
  model's ``backprop``.

With ``z`` the logits, ``p = softmax(z)``, ``y`` the targets and ``N`` the batch size:

    softmax_cross_entropy             L = -1/N sum_n sum_c y_nc log p_nc
                                      dL/dz = (p sum_c y_c - y) / N   (= (p - y)/N for labels)
      with class weights w and        L = -1/W sum_n m_n w_{y_n} log p_{n,y_n},
      ignored labels (m_n = 0)        W = sum_n m_n w_{y_n}   (torch's weighted mean)
    mean_squared_error                L = 1/S sum (z - y)^2            dL/dz = 2 (z - y) / S
    binary_cross_entropy_with_logits  L = 1/S sum max(z,0) - z y + log(1 + e^-|z|)
                                      dL/dz = (sigmoid(z) - y) / S

where ``S`` is the number of elements. Softmax and cross-entropy are fused, so the
gradient never goes through a softmax Jacobian. Host NumPy labels are moved to the
backend and device of the model's output (as at the model boundary).

Bad input: an empty batch is a :class:`~xpnn.errors.ShapeError` (a mean over nothing is
undefined; PyTorch returns NaN), and so are class indices outside ``[0, C)``; integer
logits are a :class:`~xpnn.errors.DTypeError`. NaN or infinite logits are not checked (that
would cost a host sync per call): they give a NaN loss, which :func:`xpnn.training.fit`
detects (and with ``diagnose=True`` traces to a batch and a layer).

Calling convention: every loss is ``loss(prediction, target, *, check_labels=True)``. The
range check of class indices is the one host synchronization of a loss call;
:func:`xpnn.training.fit` checks host integer labels once, on the host, and then passes
``check_labels=False`` to any loss whose signature has that keyword. Losses whose targets
are not class indices accept the keyword and ignore it. ``check_labels=False`` promises
class indices in ``[0, C)``: :func:`softmax_cross_entropy` then assumes that no label
equals an ``ignore_index`` outside that range (such as the default -100) and keeps its
unweighted fast path; data with ignored labels is checked (``check_labels=True``).
"""

from __future__ import annotations

import math

from xpnn import backends
from xpnn.backends import dtype_name, portable
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.validation import is_int

__all__ = [
    "accuracy",
    "binary_cross_entropy_with_logits",
    "mean_squared_error",
    "softmax_cross_entropy",
]


# -- shared checks -------------------------------------------------------------------------


def _adopt(who: str, *arrays):
    """The arrays as arrays of the first one's backend (host NumPy labels are moved
    there, as at the model boundary), and that backend."""
    backend = backends.backend_of(arrays[0])
    return [backends.adopt(a, backend, who=who) for a in arrays], backend


_DTYPE_KINDS: dict = {}


def _isdtype(xp, dtype, kind: str) -> bool:
    """``xp.isdtype``, remembered per (namespace, dtype, kind): the call costs several
    microseconds, a noticeable share of a loss on a batch of 32."""
    key = (xp.__name__, dtype, kind)
    found = _DTYPE_KINDS.get(key)
    if found is None:
        found = _DTYPE_KINDS[key] = bool(xp.isdtype(dtype, kind))
    return found


def _floating(who: str, name: str, x, xp, backend) -> None:
    """A DTypeError unless ``x`` is floating-point; the advice is the conversion spelled
    for ``backend`` (``x.astype('float32')``, ``x.to(torch.float32)``, ...)."""
    if not _isdtype(xp, x.dtype, "real floating"):
        raise DTypeError(
            f"{who} expected floating-point {name}. Received: {name}.dtype="
            f"{dtype_name(x.dtype)}. Convert with {backend.astype_hint('float32', name)}."
        )


def _zero_d(x, xp):
    """``x`` as a 0-D array: NumPy reductions return NumPy scalars, which are not arrays."""
    return xp.asarray(x)


def _as_dtype(x, dtype, xp):
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _logits_shape(who: str, logits) -> tuple[int, int]:
    """``(batch, classes)`` of 2-D logits with at least one of each."""
    if logits.ndim != 2:
        raise ShapeError(
            f"{who} expected 2-D logits of shape (batch, classes). "
            f"Received: logits.shape={tuple(logits.shape)}"
        )
    n, c = logits.shape
    if n == 0 or c == 0:
        raise ShapeError(
            f"{who} expected at least one sample and one class (the mean over an empty "
            f"batch is undefined). Received: logits.shape={tuple(logits.shape)}"
        )
    return n, c


def _class_targets(who: str, logits, labels, xp, backend, check_labels: bool,
                   ignore_index: int):
    """``(rows, labels, maybe_ignored)``: for probability rows, the rows as an ``(N, C)``
    array in the logits' dtype and None; for class indices, None and the labels as int64
    (:func:`xpnn.backends.portable.one_hot` makes the rows where they are needed); and
    whether some label may equal ``ignore_index`` (see :func:`softmax_cross_entropy`)."""
    n, c = _logits_shape(who, logits)
    _floating(who, "logits", logits, xp, backend)
    if labels.ndim == 2 and tuple(labels.shape) == (n, c):
        if _isdtype(xp, labels.dtype, "bool"):
            labels = xp.astype(labels, logits.dtype)
        return _as_dtype(labels, logits.dtype, xp), None, False
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(
            f"{who} expected labels of shape ({n},) (class indices) or ({n}, {c}) (one-hot or "
            f"probabilities) for logits of shape ({n}, {c}). "
            f"Received: labels.shape={tuple(labels.shape)}"
        )
    if not _isdtype(xp, labels.dtype, "integral"):
        raise DTypeError(
            f"{who} expected integer class indices for 1-D labels. "
            f"Received: labels.dtype={dtype_name(labels.dtype)}. "
            f"Convert with {backend.astype_hint('int64', 'labels')}."
        )
    labels = _as_dtype(labels, xp.int64, xp)
    if check_labels:
        maybe_ignored = _check_range(who, labels, c, xp, backend, ignore_index)
    else:  # the caller promises labels in [0, C): only a class in range can be ignored
        maybe_ignored = 0 <= ignore_index < c
    return None, labels, maybe_ignored


def _check_range(who: str, labels, classes: int, xp, backend, ignore_index: int) -> bool:
    """Raise when a class index other than ``ignore_index`` is outside ``[0, classes)``;
    return whether some label equals ``ignore_index``.

    This is the one host synchronization of a loss call (the smallest and largest label
    copied to the host together; a second one only when those are not both classes, or
    ``ignore_index`` is a class); pass ``check_labels=False`` to skip it once the data is
    known to be clean.
    """
    low, high = backend.ops.value_range(labels)
    if 0 <= low and high < classes and not 0 <= ignore_index < classes:
        return False  # every label is a class, and ignore_index is none of them
    ignored = labels == ignore_index
    bad = ((labels < 0) | (labels >= classes)) & ~ignored
    flags = backends.to_numpy(xp.stack([xp.any(bad), xp.any(ignored)]))
    if bool(flags[0]):
        kept = labels[~ignored]
        low = int(backends.to_numpy(xp.min(kept)))
        high = int(backends.to_numpy(xp.max(kept)))
        raise ShapeError(
            f"{who} expected class indices in [0, {classes}) for {classes} classes (or "
            f"ignore_index={ignore_index}). Received: labels with min={low}, max={high}. "
            f"Check that the number of output units matches the number of classes."
        )
    return bool(flags[1])


def _class_weights(who: str, weight, logits, xp, backend):
    """``weight`` as a ``(C,)`` array in the logits' dtype, on their device."""
    if isinstance(weight, list | tuple):
        weight = xp.asarray(weight, dtype=logits.dtype, device=backend.device)
    weight = backends.adopt(weight, backend, who=who)  # a host NumPy array is moved
    c = logits.shape[1]
    if tuple(weight.shape) != (c,):
        raise ShapeError(
            f"{who} expected weight of shape ({c},), one per class, for logits of shape "
            f"{tuple(logits.shape)}. Received: weight.shape={tuple(weight.shape)}"
        )
    if not (_isdtype(xp, weight.dtype, "real floating")
            or _isdtype(xp, weight.dtype, "integral")):
        raise DTypeError(f"{who} expected real class weights. Received: weight.dtype="
                         f"{dtype_name(weight.dtype)}")
    return _as_dtype(weight, logits.dtype, xp)


# -- losses --------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, *, weight=None, ignore_index: int = -100,
                          label_smoothing: float = 0.0, check_labels: bool = True):
    """Cross-entropy of ``softmax(logits)`` against class labels, averaged over the batch.

    ``L = -1/N sum_n sum_c y_nc log softmax(z)_nc``, with ``log softmax`` computed as
    ``z - max(z) - log sum exp(z - max(z))`` so that large logits never overflow. With
    label smoothing ``eps`` the targets become ``(1 - eps) y + eps / C`` (Szegedy et al.
    2016, "Rethinking the Inception Architecture", Sec. 7), as in PyTorch.

    Class weights and ignored labels follow ``torch.nn.functional.cross_entropy``: with
    class indices, sample ``n`` counts with weight ``w[y_n]`` (0 when ``y_n ==
    ignore_index``) and the mean divides by the sum of those weights,
    ``L = -1/W sum_n sum_c T_nc log p_nc`` with ``T_nc = m_n w_c ((1 - eps) y_nc + eps/C)``,
    ``m_n = [y_n != ignore_index]`` and ``W = sum_n m_n w[y_n]`` (``W`` is the number of
    kept samples without weights; a batch whose labels are all ignored gives NaN, as in
    PyTorch). With probability rows, ``T = w * y`` and the mean divides by ``N``;
    ``ignore_index`` applies to class indices only.

    Parameters
    ----------
    logits : array (N, C)
        Unnormalized scores, float32 or float64.
    labels : array (N,) of integers, or (N, C) of floats
        Class indices in ``[0, C)`` (or ``ignore_index``), or one-hot / probability rows.
    weight : array (C,), optional
        A weight per class (host NumPy or the logits' backend); None (default): all 1.
    ignore_index : int
        Labels equal to it add nothing to the loss or the gradient (default -100).
    label_smoothing : float
        In ``[0, 1]``; 0 (default) for none.
    check_labels : bool
        Check that class indices are in range (True, default); labels equal to
        ``ignore_index`` pass. The check copies two booleans to the host, a GPU
        synchronization; set False in tight GPU loops, which promises labels in
        ``[0, C)``: an ``ignore_index`` outside that range (such as -100) is then assumed
        absent, and the loss takes the faster unweighted path when ``weight`` is None.

    Returns
    -------
    loss : 0-D array
        In the logits' dtype, on their device.
    dlogits : array (N, C)
        ``(softmax(z) * sum_c T_c - T) / W``, i.e. ``(softmax(z) - y) / N`` for labels
        without weights or ignored labels.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dlogits = softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(float(loss), 6)  # log(4)
    1.386294
    >>> loss, dlogits = softmax_cross_entropy(np.array([[2.0, 0.0], [0.0, 0.0]]),
    ...                                       np.array([1, -100]))
    >>> round(float(loss), 6), dlogits[1].tolist()  # the second sample is ignored
    (2.126928, [0.0, 0.0])
    """
    who = "softmax_cross_entropy"
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, int | float) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(
            f"{who} expected label_smoothing in [0, 1]. "
            f"Received: label_smoothing={label_smoothing!r}"
        )
    if not is_int(ignore_index):
        raise ConfigError(f"{who} expected ignore_index to be an integer. "
                          f"Received: ignore_index={ignore_index!r}")
    (logits, labels), backend = _adopt(who, logits, labels)
    xp = backend.xp
    y, indices, maybe_ignored = _class_targets(who, logits, labels, xp, backend,
                                               check_labels, int(ignore_index))
    n, c = logits.shape
    if weight is not None:
        weight = _class_weights(who, weight, logits, xp, backend)
    plain = weight is None and not maybe_ignored
    if indices is not None:
        if plain and not label_smoothing:  # the common case: the backend's kernel
            return backend.ops.softmax_cross_entropy_mean(logits, indices)
        y = portable.one_hot(backend, indices, c, logits.dtype)
    if indices is not None and not plain:
        if 0 <= ignore_index < c:  # the one-hot rows of an ignored class are not zero
            y = y * xp.astype(xp.reshape(indices != ignore_index, (n, 1)), y.dtype)
        y_weighted = y if weight is None else y * weight
        total = xp.sum(y_weighted)  # W: the kept samples' weights
    if label_smoothing:
        kept = 1.0 if indices is None or plain else xp.sum(y, axis=1, keepdims=True)
        y = y * (1.0 - label_smoothing) + kept * (label_smoothing / c)
    if weight is not None:
        y = y * weight

    shifted, probs = portable.log_softmax(xp, logits)
    if indices is None or plain:  # the mean over the batch
        loss = _zero_d(-xp.sum(y * shifted) / n, xp)
        if not (indices is not None and weight is None):  # rows that may not sum to one
            probs *= xp.sum(y, axis=1, keepdims=True)
        dlogits = probs - y
        dlogits *= 1.0 / n
        return loss, dlogits
    loss = _zero_d(-xp.sum(y * shifted) / total, xp)  # NaN when every label is ignored
    probs *= xp.sum(y, axis=1, keepdims=True)
    dlogits = probs - y
    # every row of an all-ignored batch is 0: a zero gradient, as PyTorch's (not 0 / 0)
    dlogits /= xp.where(total > 0, total, xp.ones_like(total))
    return loss, dlogits


def mean_squared_error(pred, target, *, check_labels: bool = True):
    """Mean of ``(pred - target)^2`` over all elements; the gradient is
    ``2 (pred - target) / size``.

    ``check_labels`` is accepted so that every loss here is called the same way
    (:func:`xpnn.training.fit` passes ``check_labels=False``); regression targets are not
    class indices, so there is nothing to check and it changes nothing.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dpred = mean_squared_error(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    >>> float(loss), dpred.tolist()
    (5.0, [1.0, 3.0])
    """
    who = "mean_squared_error"
    (pred, target), backend = _adopt(who, pred, target)
    xp = backend.xp
    _floating(who, "pred", pred, xp, backend)
    _same_shape(who, "pred", pred, "target", target)
    size = math.prod(pred.shape)
    diff = pred - _as_dtype(target, pred.dtype, xp)
    loss = _zero_d(xp.sum(diff * diff) / size, xp)
    diff *= 2.0 / size
    return loss, diff


def binary_cross_entropy_with_logits(logits, targets, *, check_labels: bool = True):
    """Binary cross-entropy of ``sigmoid(logits)`` against targets in ``[0, 1]``, averaged
    over all elements.

    Computed without ever forming ``sigmoid`` or ``log`` of it:
    ``max(z, 0) - z y + log(1 + exp(-|z|))``, which is finite for any ``z``. The gradient
    is ``(sigmoid(z) - y) / size``. ``check_labels`` is accepted so that every loss here is
    called the same way; the targets are probabilities, not class indices, and are not
    checked (a check would cost a host synchronization per call), so it changes nothing.

    Examples
    --------
    >>> import numpy as np
    >>> loss, dz = binary_cross_entropy_with_logits(np.zeros(2), np.array([0.0, 1.0]))
    >>> round(float(loss), 6), dz.tolist()  # log(2)
    (0.693147, [0.25, -0.25])
    """
    who = "binary_cross_entropy_with_logits"
    (logits, targets), backend = _adopt(who, logits, targets)
    xp = backend.xp
    _floating(who, "logits", logits, xp, backend)
    _same_shape(who, "logits", logits, "targets", targets)
    size = math.prod(logits.shape)
    y = _as_dtype(targets, logits.dtype, xp)
    elementwise = xp.maximum(logits, 0.0) - logits * y  # no where: it branches per element
    tail = xp.exp(-xp.abs(logits))  # in (0, 1]: never overflows
    elementwise += xp.log1p(tail)
    loss = _zero_d(xp.sum(elementwise) / size, xp)
    # sigmoid(z) from the same tail t = e^-|z|: 1 / (1 + t) for z >= 0, t / (1 + t) below,
    # accurate in relative terms for any z (0.5 + 0.5 tanh(z / 2) lost every digit of a
    # small probability below z ~ -17 in float32).
    inv = 1.0 / (1.0 + tail)
    dlogits = xp.where(logits >= 0, inv, tail * inv)
    dlogits -= y
    dlogits *= 1.0 / size
    return loss, dlogits


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the labelled class, as a 0-D array in
    the logits' dtype (no host synchronization). ``labels`` are class indices ``(N,)`` or
    one-hot rows ``(N, C)``.

    Examples
    --------
    >>> import numpy as np
    >>> float(accuracy(np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([1, 1])))
    0.5
    """
    who = "accuracy"
    (logits, labels), backend = _adopt(who, logits, labels)
    xp = backend.xp
    n, c = _logits_shape(who, logits)
    if labels.ndim == 2 and tuple(labels.shape) == (n, c):
        labels = xp.argmax(labels, axis=1)
    elif labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(
            f"{who} expected labels of shape ({n},) or ({n}, {c}). "
            f"Received: labels.shape={tuple(labels.shape)}"
        )
    predicted = xp.argmax(logits, axis=1)
    correct = predicted == _as_dtype(labels, predicted.dtype, xp)
    dtype = logits.dtype if _isdtype(xp, logits.dtype, "real floating") else xp.float32
    return _zero_d(xp.mean(xp.astype(correct, dtype)), xp)


def _same_shape(who: str, name, x, other_name, other) -> None:
    if tuple(x.shape) != tuple(other.shape):
        raise ShapeError(
            f"{who} expected {other_name} of the same shape as {name}. "
            f"Received: {name}.shape={tuple(x.shape)}, {other_name}.shape={tuple(other.shape)}"
        )
    if math.prod(x.shape) == 0:
        raise ShapeError(
            f"{who} expected at least one element (the mean over an empty batch is "
            f"undefined). Received: {name}.shape={tuple(x.shape)}"
        )
