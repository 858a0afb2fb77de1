"""The training loop: :func:`fit`, :func:`evaluate` and :func:`predict`.

One epoch is a pass over the training set in a seeded shuffled order (the order of epoch
``k`` depends only on ``seed`` and ``k``, so a resumed run sees the same batches as an
uninterrupted one). Per batch: forward in training mode, fused loss and its gradient,
backward, optimizer step. Metrics are accumulated on the device and read back to the host
only every ``log_every`` batches and at the end of an epoch, so a GPU is not stalled by a
host sync per batch.

After every epoch a checkpoint (model, optimizer and schedule state, history, position)
is written atomically; ``resume=`` continues from one exactly where it stopped. ``Ctrl-C``
writes a checkpoint of the position it reached before stopping. A loss that becomes NaN
or infinite stops training with a message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpnn import backends
from xpnn.datasets.batches import BatchLoader
from xpnn.errors import ConfigError, WeightsError, XpnnError
from xpnn.io import load_metadata, save
from xpnn.losses import accuracy, softmax_cross_entropy
from xpnn.module import Module


class TrainingStopped(XpnnError, RuntimeError):
    """Training stopped before its last epoch (non-finite loss)."""


@dataclass
class History:
    """Per-epoch metrics of a :func:`fit` run.

    ``history.epochs`` is a list of dicts with keys ``epoch``, ``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy``, ``lr`` and ``seconds``;
    ``history["test_accuracy"]`` gives one metric as a list (as Keras' ``History.history``).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = ""

    def __getitem__(self, metric: str) -> list:
        return [epoch.get(metric) for epoch in self.epochs]

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}

    def to_json(self) -> str:
        return json.dumps({"epochs": self.epochs, "stopped_because": self.stopped_because})

    @classmethod
    def from_json(cls, text: str) -> History:
        data = json.loads(text)
        return cls(epochs=list(data["epochs"]), stopped_because=data.get("stopped_because", ""))


def evaluate(model: Module, x, y, *, loss=softmax_cross_entropy, batch_size: int = 1000):
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in inference mode, as floats."""
    loss_sum = correct = None
    for xb, yb in BatchLoader(x, y, batch_size, shuffle=False):
        logits = model(xb)
        batch_loss, _ = loss(logits, yb)
        n = logits.shape[0]
        loss_sum = batch_loss * n if loss_sum is None else loss_sum + batch_loss * n
        batch_correct = accuracy(logits, yb) * n
        correct = batch_correct if correct is None else correct + batch_correct
    count = len(x)
    return _to_float(loss_sum) / count, _to_float(correct) / count


def predict(model: Module, x, *, batch_size: int = 1000):
    """Class predictions (host NumPy int64) of ``model`` for the host batch ``x``."""
    out = []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        xp = model.backend.xp
        out.append(backends.to_numpy(xp.argmax(logits, axis=-1)))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def fit(model: Module, train, test=None, *, optimizer, loss=softmax_cross_entropy,
        epochs: int = 5, batch_size: int = 128, seed: int = 0, schedule=None,
        target_accuracy: float | None = None, patience: int | None = None,
        checkpoint: str | Path | None = None, resume: str | Path | None = None,
        progress: bool | None = None, verbose: bool = True, log_every: int = 50) -> History:
    """Train ``model`` on ``train = (x, y)`` (host arrays) and evaluate on ``test``.

    Parameters
    ----------
    optimizer : xpnn.optim.Optimizer
        Built on ``model.parameters()``.
    loss : callable
        ``loss(logits, labels) -> (loss, dlogits)``; fused softmax cross-entropy by default.
    epochs, batch_size, seed
        ``seed`` fixes the shuffled order of every epoch.
    schedule : object with ``step()``, optional
        A learning-rate schedule from :mod:`xpnn.schedules`, stepped once per epoch.
    target_accuracy : float, optional
        Stop after the first epoch whose test accuracy reaches it (e.g. 0.96).
    patience : int, optional
        Stop when the test loss has not improved for this many epochs.
    checkpoint : path, optional
        Written atomically after every epoch (and on Ctrl-C).
    resume : path, optional
        A checkpoint of the same model to continue from.
    progress : bool, optional
        Show a progress bar; ``None`` shows it only on a terminal.
    verbose : bool
        Print one line of metrics per epoch.
    log_every : int
        Batches between reads of the running loss to the host (progress bar updates and the
        non-finite loss check).

    Returns
    -------
    History
    """
    x_train, y_train = train
    if len(x_train) != len(y_train):
        raise ConfigError(
            f"fit expected as many labels as samples. Received: {len(x_train)} samples, "
            f"{len(y_train)} labels"
        )
    if len(x_train) == 0:
        raise ConfigError("fit expected a non-empty training set. Received: 0 samples")
    loader = BatchLoader(x_train, y_train, batch_size, shuffle=True, seed=seed)
    history, start_epoch, skip_batches, partial = History(), 0, 0, None
    if resume is not None:
        history, start_epoch, skip_batches, partial = _restore(
            resume, model, optimizer, schedule, seed=seed, batch_size=batch_size)
    best_loss, stale = math.inf, 0
    for record in history.epochs:
        if record.get("test_loss") is not None and record["test_loss"] < best_loss:
            best_loss, stale = record["test_loss"], 0
        else:
            stale += 1

    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        started = time.perf_counter()
        sums = _Sums.from_state(partial)
        partial = None
        bar = _progress_bar(len(loader), epoch, epochs, progress)
        try:
            for index, (xb, yb) in enumerate(loader):
                if index < skip_batches:
                    continue
                logits, backprop = model.forward(xb, train=True)
                batch_loss, dlogits = loss(logits, yb)
                backprop(dlogits)
                optimizer.step()
                optimizer.zero_grad()
                sums.add(batch_loss, accuracy(logits, yb), logits.shape[0])
                if (index + 1) % log_every == 0 or index + 1 == len(loader):
                    sums.sync()
                    if not math.isfinite(sums.loss):
                        raise _non_finite(epoch, index, log_every, checkpoint)
                    _update_bar(bar, index + 1 - sums.bar_position, sums, started)
                    sums.bar_position = index + 1
        except KeyboardInterrupt:
            _close(bar)
            if checkpoint is not None:
                sums.sync()
                _save_checkpoint(checkpoint, model, optimizer, schedule, history, epoch,
                                 batches_done=sums.batches_seen, sums=sums,
                                 seed=seed, batch_size=batch_size)
                print(f"\nInterrupted: checkpoint saved to {checkpoint}; continue with resume=",
                      file=sys.stderr)
            history.stopped_because = "interrupted"
            raise
        _close(bar)
        skip_batches = 0
        sums.sync()
        record = {"epoch": epoch + 1, "train_loss": sums.loss, "train_accuracy": sums.accuracy,
                  "lr": optimizer.lr, "seconds": time.perf_counter() - started}
        if test is not None:
            record["test_loss"], record["test_accuracy"] = evaluate(model, *test, loss=loss)
        history.epochs.append(record)
        if verbose:
            _print_epoch(record, epochs)
        if schedule is not None:
            schedule.step()
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, schedule, history, epoch + 1,
                             batches_done=0, sums=None, seed=seed, batch_size=batch_size)
        if test is not None and target_accuracy is not None \
                and record["test_accuracy"] >= target_accuracy:
            history.stopped_because = f"reached target accuracy {target_accuracy:.4f}"
            break
        if test is not None and patience is not None:
            if record["test_loss"] < best_loss:
                best_loss, stale = record["test_loss"], 0
            else:
                stale += 1
                if stale >= patience:
                    history.stopped_because = f"no test-loss improvement for {patience} epochs"
                    break
    return history


# -- metrics ---------------------------------------------------------------------------------


class _Sums:
    """Running sums of loss and correct predictions, kept on the device between syncs."""

    def __init__(self, loss=0.0, correct=0.0, count=0, batches=0):
        self.device_loss = self.device_correct = None
        self.host_loss, self.host_correct = loss, correct
        self.count, self.batches_seen, self.bar_position = count, batches, 0
        self.loss = self.accuracy = math.nan

    @classmethod
    def from_state(cls, state: dict | None) -> _Sums:
        if not state:
            return cls()
        return cls(state["loss_sum"], state["correct"], state["count"], state["batches"])

    def add(self, batch_loss, batch_accuracy, n: int) -> None:
        weighted_loss, weighted_correct = batch_loss * n, batch_accuracy * n
        if self.device_loss is None:
            self.device_loss, self.device_correct = weighted_loss, weighted_correct
        else:
            self.device_loss = self.device_loss + weighted_loss
            self.device_correct = self.device_correct + weighted_correct
        self.count += n
        self.batches_seen += 1

    def sync(self) -> None:
        """Read the device sums back to the host (one sync)."""
        if self.device_loss is not None:
            self.host_loss += _to_float(self.device_loss)
            self.host_correct += _to_float(self.device_correct)
            self.device_loss = self.device_correct = None
        if self.count:
            self.loss = self.host_loss / self.count
            self.accuracy = self.host_correct / self.count

    def state(self) -> dict:
        return {"loss_sum": self.host_loss, "correct": self.host_correct,
                "count": self.count, "batches": self.batches_seen}


def _to_float(array) -> float:
    return float(backends.to_numpy(array))


def _non_finite(epoch: int, index: int, log_every: int, checkpoint) -> TrainingStopped:
    first = max(0, index + 1 - log_every)
    kept = (f" The last good checkpoint is kept at {checkpoint}." if checkpoint
            else " Pass checkpoint= to keep the last good weights.")
    return TrainingStopped(
        f"Training stopped: the loss became NaN or infinite in epoch {epoch + 1}, between "
        f"batches {first + 1} and {index + 1}. Lower the learning rate, check the inputs for "
        f"NaN/Inf, or clip gradients (xpnn.optim.clip_grad_norm).{kept}"
    )


# -- progress -------------------------------------------------------------------------------


def _progress_bar(total: int, epoch: int, epochs: int, progress: bool | None):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                disable=None if progress is None else not progress, dynamic_ncols=True)


def _update_bar(bar, steps: int, sums: _Sums, started: float) -> None:
    if bar is None:
        return
    rate = sums.count / max(time.perf_counter() - started, 1e-9)
    bar.set_postfix(loss=f"{sums.loss:.4f}", acc=f"{sums.accuracy:.4f}", samples_s=f"{rate:,.0f}",
                    refresh=False)
    bar.update(steps)


def _close(bar) -> None:
    if bar is not None:
        bar.close()


def _print_epoch(record: dict, epochs: int) -> None:
    line = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f" | test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    print(line + f" | {record['seconds']:.1f} s")


# -- checkpoints ----------------------------------------------------------------------------


def _save_checkpoint(path, model, optimizer, schedule, history: History, epoch: int, *,
                     batches_done: int, sums: _Sums | None, seed: int, batch_size: int) -> None:
    tensors = {f"model.{name}": value for name, value in model.state_dict().items()}
    for name, value in optimizer.state_dict().items():
        tensors[f"optimizer.{name}"] = value if hasattr(value, "shape") else np.asarray(value)
    position = {"epoch": epoch, "batches_done": batches_done, "seed": seed,
                "batch_size": batch_size, "partial": sums.state() if sums else None}
    metadata = {
        "kind": "xpnn-checkpoint",
        "architecture": json.dumps({"type": type(model).__name__, "config": model.config()}),
        "position": json.dumps(position),
        "history": history.to_json(),
        "schedule": json.dumps(schedule.state_dict() if schedule is not None else None),
        "optimizer_type": type(optimizer).__name__,
    }
    save(tensors, path, metadata=metadata)


def _restore(path, model, optimizer, schedule, *, seed: int, batch_size: int):
    from xpnn.io import load

    metadata = load_metadata(path)
    if metadata.get("kind") != "xpnn-checkpoint":
        raise WeightsError(
            f"{path} is not an xpnn training checkpoint (no 'kind: xpnn-checkpoint' in its "
            f"metadata). Pass a file written by fit(checkpoint=...)."
        )
    position = json.loads(metadata["position"])
    if (position["seed"], position["batch_size"]) != (seed, batch_size):
        raise ConfigError(
            f"resume expected the seed and batch size of the checkpointed run "
            f"(seed={position['seed']}, batch_size={position['batch_size']}) so the batch order "
            f"continues exactly. Received: seed={seed}, batch_size={batch_size}"
        )
    if metadata.get("optimizer_type") != type(optimizer).__name__:
        raise ConfigError(
            f"resume expected a {metadata.get('optimizer_type')} optimizer, as in the "
            f"checkpoint. Received: {type(optimizer).__name__}"
        )
    tensors = load(path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = {k[len("optimizer."):]: v for k, v in tensors.items()
                       if k.startswith("optimizer.")}
    model.load_state_dict(model_state)  # validates everything before changing anything
    optimizer.load_state_dict(optimizer_state)
    saved_schedule = json.loads(metadata.get("schedule", "null"))
    if schedule is not None and saved_schedule is not None:
        schedule.load_state_dict(saved_schedule)
    history = History.from_json(metadata["history"])
    return history, position["epoch"], position["batches_done"], position["partial"]
