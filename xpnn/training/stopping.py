"""When :func:`~xpnn.training.fit` stops early, and the weights it can put back:
:class:`EarlyStopping` (target accuracy, patience) and :class:`BestWeights`
(``restore_best=True``, Keras's ``restore_best_weights``)."""

from __future__ import annotations

import math

import numpy as np

from xpnn import backends
from xpnn.module import Module
from xpnn.training.history import History

__all__ = ["BestWeights", "EarlyStopping"]


class BestWeights:
    """A host copy of the model's state at the epoch with the lowest test loss so far."""

    def __init__(self, model: Module):
        self.model, self.loss, self.epoch, self.state = model, math.inf, None, None

    def consider(self, record: dict) -> None:
        loss = record.get("test_loss")
        if loss is not None and loss < self.loss:
            self.loss, self.epoch = loss, record["epoch"]
            self.state = {name: np.array(backends.to_numpy(value), copy=True)
                          for name, value in self.model.state_dict().items()}

    def restore(self, verbose: bool) -> int | None:
        """Load the best state into the model; return its epoch (None: none was seen)."""
        if self.state is None:
            return None
        self.model.load_state_dict(self.state)
        if verbose:
            print(f"restored the weights of epoch {self.epoch} (lowest test loss "
                  f"{self.loss:.4f})")
        return self.epoch




class EarlyStopping:
    """Stop after the first epoch whose test accuracy reaches ``target_accuracy``, or
    when the test loss has not improved for ``patience`` epochs (a resumed run counts the
    epochs of its history)."""

    def __init__(self, target_accuracy: float | None, patience: int | None,
                 history: History):
        self.target_accuracy, self.patience = target_accuracy, patience
        self.best_loss, self.stale = math.inf, 0
        for record in history.epochs:
            self._track(record.get("test_loss"))

    def _track(self, test_loss: float | None) -> None:
        if test_loss is not None and test_loss < self.best_loss:
            self.best_loss, self.stale = test_loss, 0
        else:
            self.stale += 1

    def reason(self, record: dict) -> str:
        """Why to stop after the epoch of ``record`` ("" to go on)."""
        if "test_accuracy" not in record:
            return ""
        if self.target_accuracy is not None and record["test_accuracy"] >= self.target_accuracy:
            return f"reached target accuracy {self.target_accuracy:.4f}"
        if self.patience is not None:
            self._track(record["test_loss"])
            if self.stale >= self.patience:
                return f"no test-loss improvement for {self.patience} epochs"
        return ""

    def unmet(self, history: History) -> str:
        """What to report when ``target_accuracy`` was given and no epoch reached it."""
        accuracies = [a for a in history["test_accuracy"] if a is not None]
        if self.target_accuracy is None or any(a >= self.target_accuracy for a in accuracies):
            return ""
        best = f" (best {max(accuracies):.4f})" if accuracies else ""
        return (f"target accuracy {self.target_accuracy:.4f} not reached in "
                f"{len(history.epochs)} epochs{best}")
