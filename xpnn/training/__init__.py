"""Training: the loop, one step, checkpoints, the console and NaN diagnosis.

- :mod:`~xpnn.training.loop`: :func:`fit`, :func:`evaluate`, :func:`predict`;
- :mod:`~xpnn.training.step`: :func:`train_step`, one batch (forward, loss, backward,
  optimizer step), which ``fit`` and the benchmarks both call;
- :mod:`~xpnn.training.labels`: host labels range-checked once, and the one way a loss is
  called per batch;
- :mod:`~xpnn.training.checkpoint`: the checkpoint format, saving, validation, restoring;
- :mod:`~xpnn.training.console`: progress bar, graceful Ctrl-C, the line per epoch;
- :mod:`~xpnn.training.rollback`: getting back to a consistent state mid-epoch;
- :mod:`~xpnn.training.divergence`: NaN/Inf detection and the opt-in diagnosis;
- :mod:`~xpnn.training.history`, :mod:`~xpnn.training.metrics`: the per-epoch record and
  the running sums behind it.
"""

from xpnn.errors import TrainingStopped
from xpnn.training.history import History
from xpnn.training.loop import evaluate, fit, predict
from xpnn.training.step import train_step

__all__ = ["History", "TrainingStopped", "evaluate", "fit", "predict", "train_step"]
