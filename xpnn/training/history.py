"""The per-epoch record of a :func:`~xpnn.training.fit` run.

``History.epochs`` is a list of dicts, one per completed epoch, with the keys

    epoch           1-based epoch number
    train_loss      mean loss over the epoch's training batches (weighted by batch size)
    train_accuracy  fraction of training samples classified correctly during the epoch
    test_loss       mean loss on the test set after the epoch (absent without test data)
    test_accuracy   accuracy on the test set after the epoch (absent without test data)
    lr              the optimizer's learning rate during the epoch
    seconds         wall-clock time of the epoch, evaluation included

and ``stopped_because`` says why ``fit`` stopped before its last epoch, or that a
``target_accuracy`` was never reached ("" otherwise). Two more attributes describe the
call that returned it and are not saved in checkpoints:

    resume_from     the checkpoint to pass as ``fit(..., resume=...)`` to continue after an
                    interrupted run ("" when there is none)
    restored_epoch  with ``fit(..., restore_best=True)``: the 1-based epoch whose weights
                    the model holds at the end (the best test loss); None otherwise

The history travels inside checkpoints as JSON (:meth:`History.to_json`), so
:meth:`History.from_json` treats its input as untrusted and checks every record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from xpnn.errors import WeightsError
from xpnn.validation import is_number_or_none

__all__ = ["History"]

NUMERIC_RECORD_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                       "lr", "seconds")


@dataclass
class History:
    """Per-epoch metrics of a :func:`~xpnn.training.fit` run.

    ``history.epochs`` is a list of dicts with keys ``epoch``, ``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``lr`` and ``seconds``;
    ``history["test_accuracy"]`` gives one metric as a list (as Keras' ``History.history``).

    Examples
    --------
    >>> history = History([{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}])
    >>> history["train_loss"], history.last["epoch"]
    ([0.5, 0.25], 2)
    >>> History.from_json(history.to_json()) == history
    True
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = ""
    resume_from: str = ""
    restored_epoch: int | None = None

    def __getitem__(self, metric: str) -> list:
        return [epoch.get(metric) for epoch in self.epochs]

    @property
    def last(self) -> dict[str, Any]:
        """The record of the last completed epoch (``{}`` before the first)."""
        return self.epochs[-1] if self.epochs else {}

    def to_json(self) -> str:
        return json.dumps({"epochs": self.epochs, "stopped_because": self.stopped_because})

    @classmethod
    def from_json(cls, text: str) -> History:
        """Parse :meth:`to_json` output; anything else is a :class:`WeightsError`."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as error:
            raise WeightsError(f"The training history is not valid JSON ({error}).") from None
        epochs = data.get("epochs") if isinstance(data, dict) else None
        stopped = data.get("stopped_because", "") if isinstance(data, dict) else None
        if not isinstance(epochs, list) or not isinstance(stopped, str) or not all(
            _well_formed(record) for record in epochs
        ):
            raise WeightsError(
                "The training history is malformed: expected {'epochs': [records with "
                f"numeric {', '.join(NUMERIC_RECORD_KEYS)}], 'stopped_because': str}}. "
                f"Received: {text[:200]!r}"
            )
        return cls(epochs=list(epochs), stopped_because=stopped)


def _well_formed(record) -> bool:
    return isinstance(record, dict) and all(
        is_number_or_none(record.get(key)) for key in NUMERIC_RECORD_KEYS
    )
