"""One training step, the unit that :func:`~xpnn.training.fit` repeats per batch.

    logits, backprop = model.forward(x, train=True)     training mode (batch statistics)
    loss, dlogits    = loss(logits, y)                  fused loss and dL/dlogits
    backprop(dlogits, need_input_grad=False)            gradients into every Parameter.grad
    optimizer.step(); optimizer.zero_grad()

Nobody needs the gradient of the data, so the first layer is told not to compute it
(``need_input_grad=False``, as PyTorch computes no gradient for a tensor that does not
require one). Nothing is read back to the host: the loss and the logits are returned as
arrays on the model's device, so a GPU is never made to wait by the step itself.

Data-parallel (``communicator=``): the loss gradient is scaled by this rank's ``share`` of
the global batch (``n_r / n``) and the parameter gradients are summed over the ranks
before the optimizer step (:mod:`xpnn.distributed.data_parallel` gives the equation).
"""

from __future__ import annotations

from xpnn.distributed.data_parallel import reduce_gradients

__all__ = ["train_step"]


def train_step(model, loss, optimizer, x, y, *, communicator=None, share: float = 1.0,
               precision=None):
    """Run one optimization step of ``model`` on the batch ``(x, y)``.

    Parameters
    ----------
    model : xpnn.Module
        Called in training mode; its ``backprop`` must accept ``need_input_grad``.
    loss : callable
        ``loss(logits, y) -> (loss, dlogits)``, called exactly like that. To skip a
        loss's per-batch label check (a host synchronization), bind it first, e.g.
        ``functools.partial(softmax_cross_entropy, check_labels=False)``.
    optimizer : xpnn.optim.Optimizer
        Built on ``model.parameters()``; stepped once, then its gradients are cleared.
    x, y : arrays
        One batch: inputs and targets (host NumPy arrays are moved to the model's backend).
    communicator : xpnn.distributed.Communicator, optional
        Data-parallel: ``(x, y)`` is this rank's slice of a global batch; the gradients
        are summed over the ranks before the update, so every rank makes the same step.
    share : float
        This rank's fraction of the global batch, ``len(x) / global batch`` (``1 / size``
        when the global batch divides evenly); the loss gradient is scaled by it.
    precision : xpnn.mixed_precision.MixedPrecision, optional
        Run the step in half precision with float32 master parameters and loss scaling
        (:mod:`xpnn.mixed_precision`); the same object for every step (it holds the scale).

    Returns
    -------
    batch_loss : 0-D array
        The loss of the batch, on the model's device (``float(batch_loss)`` syncs).
    logits : array
        The model's output for ``x`` before the update, on the model's device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> from xpnn.losses import softmax_cross_entropy
    >>> from xpnn.optim import SGD
    >>> model = Dense(2, 3, seed=0)
    >>> optimizer = SGD(model.parameters(), lr=0.1)
    >>> x, y = np.ones((4, 2), dtype="float32"), np.array([0, 1, 2, 1])
    >>> batch_loss, logits = train_step(model, softmax_cross_entropy, optimizer, x, y)
    >>> logits.shape, batch_loss.shape
    ((4, 3), ())
    """
    if precision is not None:
        return precision.step(model, loss, optimizer, x, y, communicator=communicator,
                              share=share)
    logits, backprop = model.forward(x, train=True)
    batch_loss, dlogits = loss(logits, y)
    if communicator is None:
        backprop(dlogits, need_input_grad=False)
    else:
        backprop(dlogits * share, need_input_grad=False)
        reduce_gradients(model.parameters(), communicator)
    optimizer.step()
    optimizer.zero_grad()
    return batch_loss, logits
