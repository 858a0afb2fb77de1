"""Getting back to a consistent state when a batch is cut short.

A training step changes the model in two places: the forward pass moves buffers (BatchNorm's
running statistics) and the optimizer step updates the parameters and its own state. A
checkpoint must hold a state in which either both happened for a batch or neither did.

:class:`BatchGuard` (always on, cheap) keeps, per batch, a copy of the model's *buffers*
only (BatchNorm: two numbers per channel, nothing for a model without BatchNorm) and the
optimizer's step count. After an interrupt it knows which of three cases holds:

* between batches: the state is consistent as it is;
* inside a batch, before the optimizer step began (forward, loss, backward: most of a
  batch): the buffers are put back and the gradients dropped, which is exactly the state
  before the batch;
* inside a batch, after the optimizer step began: some parameters may be updated and others
  not. This cannot be undone without a full copy, so :meth:`BatchGuard.recover` says so.
  ``fit`` defers a Ctrl-C that arrives here to the end of the batch, so only a
  ``KeyboardInterrupt`` raised by other code (or while another SIGINT handler is installed)
  can land here.

:class:`Snapshot` (opt-in, ``fit(diagnose=True)``, and briefly while a checkpoint is
restored) is a full copy of the model's parameters and buffers and of the optimizer state:
it costs as much memory again as they take, and a copy at every log point of ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpnn.module import Module

__all__ = ["BatchGuard", "Snapshot"]


@dataclass
class Snapshot:
    """Copies of the model and optimizer state (and the epoch's running sums) before batch
    ``index`` of an epoch.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> model = Dense(2, 2, seed=0)
    >>> optimizer = SGD(model.parameters(), lr=0.1)
    >>> before = Snapshot.take(model, optimizer, index=0)
    >>> model.weight.value[...] = 0.0
    >>> before.restore(model, optimizer)
    >>> bool((model.weight.value != 0.0).any())
    True
    """

    index: int
    model_state: dict
    optimizer_state: dict
    sums_state: dict | None = None

    @classmethod
    def take(cls, model: Module, optimizer, index: int, sums=None) -> Snapshot:
        xp = model.backend.xp
        state = {name: xp.asarray(value, copy=True) for name, value in model.state_dict().items()}
        return cls(index, state, optimizer.state_dict(), None if sums is None else sums.state())

    def restore(self, model: Module, optimizer) -> None:
        """Put the copies back and drop any gradients."""
        model.load_state_dict(self.model_state)
        optimizer.load_state_dict(self.optimizer_state)
        optimizer.zero_grad()
        model.zero_grad()


class BatchGuard:
    """Tracks whether a batch is under way and whether its optimizer step has begun.

    ``fit`` calls :meth:`begin` before each training step and :meth:`end` once the batch
    and its bookkeeping are complete. An optimizer without a ``step_count`` attribute
    (anything but :mod:`xpnn.optim`) counts as having begun its step as soon as the batch
    starts, the safe answer.
    """

    def __init__(self, model: Module, optimizer):
        self.model, self.optimizer = model, optimizer
        self.buffers = [buffer for _, buffer in model.named_buffers()]
        self.saved: list = []
        self.steps_before: int | None = None
        self.in_batch = False

    def begin(self) -> None:
        """Copy the buffers and note the optimizer's step count (in this order, so an
        interrupt while copying still finds the batch not begun)."""
        xp = self.model.backend.xp
        self.saved = [(buffer, xp.asarray(buffer.value, copy=True))
                      for buffer in self.buffers if buffer.value is not None]
        self.steps_before = getattr(self.optimizer, "step_count", None)
        self.in_batch = True

    def end(self) -> None:
        self.in_batch = False

    def committing(self) -> bool:
        """Whether the current batch's optimizer step has begun (its parameters may be
        partly updated until the batch ends)."""
        return self.in_batch and (
            self.steps_before is None or self.optimizer.step_count != self.steps_before
        )

    def recover(self) -> bool:
        """After an interrupt: return True when the model and optimizer now hold a
        consistent state (that before the current batch, if one was under way), False when
        the batch's optimizer step had begun and the state may be torn."""
        if not self.in_batch:
            return True
        if self.committing():
            return False
        for buffer, value in self.saved:
            buffer.value = value
        self.model.zero_grad()
        self.optimizer.zero_grad()
        self.in_batch = False
        return True
