"""Running sums of the training loss and accuracy within an epoch, kept on the device.

For batches ``b`` of ``n_b`` samples with mean loss ``l_b`` and accuracy ``a_b``:

    loss_sum = sum_b n_b l_b      correct = sum_b n_b a_b      count = sum_b n_b
    train_loss = loss_sum / count                 train_accuracy = correct / count

Each batch adds to 0-D device arrays (no host synchronization); :meth:`RunningSums.sync`
reads them back to the host once per log point of ``fit`` (about every half second, or
every ``log_every`` batches) and at the end of the epoch. In data-parallel training each
rank adds its own slice's sums, and ``sync`` adds the numbers over the ranks (one small
host all-reduce), so every rank reports the global batch's loss and accuracy.
:meth:`RunningSums.state` is the plain-number record a mid-epoch checkpoint keeps (its
``partial`` field), so a resumed epoch reports the same totals as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np

from xpnn import backends

__all__ = ["RunningSums", "read_together"]


def read_together(values) -> list[float]:
    """0-D values as Python floats, the device arrays among them read back in one
    transfer: stacked on the device in float64 first (exact for float16/bfloat16/float32
    sums, booleans and integers up to 2**53). Python numbers and host NumPy values (a
    custom loss may return them) are converted on the host."""
    values = list(values)
    out: list[float | None] = [None] * len(values)
    on_device = []
    for index, value in enumerate(values):
        if isinstance(value, int | float | np.generic | np.ndarray):
            out[index] = float(value)
        else:
            on_device.append(index)
    if on_device:
        backend = backends.backend_of(values[on_device[0]])
        xp, wide = backend.xp, backend.dtype("float64")
        stacked = xp.stack([xp.reshape(xp.astype(values[i], wide), ()) for i in on_device])
        for index, value in zip(on_device, backends.to_numpy(stacked), strict=True):
            out[index] = float(value)
    return out


class RunningSums:
    """Loss and correct-prediction sums of the batches seen so far in an epoch.

    Examples
    --------
    >>> import numpy as np
    >>> sums = RunningSums()
    >>> sums.add(np.asarray(0.5), np.asarray(1.0), 2)
    >>> sums.add(np.asarray(1.0), np.asarray(0.0), 2)
    >>> sums.sync()  # returns the summed flags: none here
    ()
    >>> sums.loss, sums.accuracy, sums.batches_seen
    (0.75, 0.5, 2)
    """

    def __init__(self, loss_sum: float = 0.0, correct: float = 0.0, count: int = 0,
                 batches: int = 0):
        self.device_loss = self.device_correct = None
        self.host_loss, self.host_correct = loss_sum, correct
        self.count, self.batches_seen = count, batches
        self.pending = 0  # samples added since the last sync
        self.loss = self.accuracy = math.nan

    @classmethod
    def from_state(cls, state: dict | None) -> RunningSums:
        """Sums restored from :meth:`state` (fresh ones for ``None``)."""
        if not state:
            return cls()
        return cls(state["loss_sum"], state["correct"], state["count"], state["batches"])

    def add(self, batch_loss, batch_accuracy, n: int) -> None:
        """Add one batch of ``n`` samples (device arrays; nothing is read back)."""
        weighted_loss, weighted_correct = batch_loss * n, batch_accuracy * n
        if self.device_loss is None:
            self.device_loss, self.device_correct = weighted_loss, weighted_correct
        else:
            self.device_loss = self.device_loss + weighted_loss
            self.device_correct = self.device_correct + weighted_correct
        self.pending += n
        self.batches_seen += 1

    def sync(self, communicator=None, flags=(), device_flags=()) -> tuple[float, ...]:
        """Read the device sums back to the host and update ``loss`` and ``accuracy``.

        ``device_flags`` (0-D device arrays, e.g. "some parameter is not finite") travel
        in the same transfer as the sums: one host synchronization in all. With a
        ``communicator`` the sums since the last sync, the device flags and the host
        numbers ``flags`` are summed over the ranks (the same totals on every rank).
        Returns the device flags, then the host flags, as floats (summed)."""
        device_flags = list(device_flags)
        sums = [] if self.device_loss is None else [self.device_loss, self.device_correct]
        read = read_together(sums + device_flags)
        loss, correct = (read[0], read[1]) if sums else (0.0, 0.0)
        local = [loss, correct, float(self.pending), *read[len(sums):],
                 *(float(flag) for flag in flags)]
        self.device_loss = self.device_correct = None
        if communicator is not None:
            local = [float(value) for value in communicator.allreduce_host(local)]
        self.host_loss += local[0]
        self.host_correct += local[1]
        self.count += int(local[2])
        self.pending = 0
        if self.count:
            self.loss = self.host_loss / self.count
            self.accuracy = self.host_correct / self.count
        return tuple(local[3:])

    def state(self) -> dict:
        """The host sums as plain numbers (call :meth:`sync` first)."""
        return {"loss_sum": self.host_loss, "correct": self.host_correct,
                "count": self.count, "batches": self.batches_seen}
