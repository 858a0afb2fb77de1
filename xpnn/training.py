"""The training loop: :func:`fit`, :func:`evaluate` and :func:`predict`.

One epoch is a pass over the training set in a seeded shuffled order (the order of epoch
``k`` depends only on ``seed`` and ``k``, so a resumed run sees the same batches as an
uninterrupted one). Per batch: forward in training mode, fused loss and its gradient,
backward, optimizer step. Metrics are accumulated on the device and read back to the host
only every ``log_every`` batches and at the end of an epoch, so a GPU is not stalled by a
host sync per batch.

After every epoch a checkpoint (model, optimizer and schedule state, history, position)
is written atomically; ``resume=`` continues from one exactly where it stopped. The first
``Ctrl-C`` lets the current batch finish, then writes a checkpoint of that position and
stops; a second one (or a KeyboardInterrupt raised inside a batch) stops at once and
checkpoints the last consistent state, up to ``log_every`` batches earlier (a batch cut
in half may already have moved BatchNorm statistics). A checkpoint is validated
completely (every array finite, every record well formed) before anything is restored, and
a failed restore leaves the model, optimizer and schedule as they were.

A non-finite value stops training with :class:`~xpnn.errors.TrainingStopped` and leaves
the last good checkpoint in place. Every ``log_every`` batches the loss and the parameters
are checked, and a copy of the model and optimizer state is kept in memory (one extra copy
of each); when a check fails, :mod:`xpnn.divergence` replays the batches since that copy
and names the batch and the layer that first produced a NaN or infinity.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpnn import backends
from xpnn.datasets.batches import BatchLoader
from xpnn.divergence import Snapshot, non_finite_error, parameters_finite
from xpnn.errors import ConfigError, ShapeError, TrainingStopped, WeightsError, XpnnError
from xpnn.io import load, load_metadata, save
from xpnn.losses import accuracy, softmax_cross_entropy
from xpnn.module import Module

__all__ = ["History", "TrainingStopped", "evaluate", "fit", "predict"]


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
        """Parse :meth:`to_json` output; anything else is a :class:`WeightsError`."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as error:
            raise WeightsError(f"The training history is not valid JSON ({error}).") from None
        epochs = data.get("epochs") if isinstance(data, dict) else None
        stopped = data.get("stopped_because", "") if isinstance(data, dict) else None
        if not isinstance(epochs, list) or not isinstance(stopped, str) or not all(
            isinstance(record, dict) and all(_is_number_or_none(record.get(key))
                                             for key in _NUMERIC_RECORD_KEYS)
            for record in epochs
        ):
            raise WeightsError(
                "The training history is malformed: expected {'epochs': [records with "
                f"numeric {', '.join(_NUMERIC_RECORD_KEYS)}], 'stopped_because': str}}. "
                f"Received: {text[:200]!r}"
            )
        return cls(epochs=list(epochs), stopped_because=stopped)


_NUMERIC_RECORD_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                        "lr", "seconds")


def _is_number_or_none(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def evaluate(model: Module, x, y, *, loss=softmax_cross_entropy, batch_size: int = 1000):
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in inference mode, as floats."""
    if len(x) == 0:
        raise ConfigError("evaluate expected at least one sample. Received: 0 samples")
    loss = _label_range_checked_once(loss, y)
    loss_sum = correct = None
    for xb, yb in BatchLoader(x, y, batch_size, shuffle=False, backend=model.backend):
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
    _positive_int("predict", "batch_size", batch_size)
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
        ``seed`` fixes the shuffled order of every epoch. ``epochs`` counts from the start
        of the run, so resuming a 3-epoch checkpoint with ``epochs=5`` trains 2 more.
    schedule : object with ``step()``, optional
        A learning-rate schedule from :mod:`xpnn.schedules`, stepped once per epoch.
    target_accuracy : float, optional
        Stop after the first epoch whose test accuracy reaches it (e.g. 0.96).
    patience : int, optional
        Stop when the test loss has not improved for this many epochs.
    checkpoint : path, optional
        Written atomically after every epoch (and on Ctrl-C).
    resume : path, optional
        A checkpoint of the same model, optimizer, seed, batch size and data to continue
        from.
    progress : bool, optional
        Show a progress bar; ``None`` shows it only on a terminal.
    verbose : bool
        Print one line of metrics per epoch.
    log_every : int
        Batches between reads of the running loss to the host (progress bar updates and the
        non-finite checks, see the module docstring).

    Returns
    -------
    History

    Raises
    ------
    TrainingStopped
        The loss or the parameters became NaN or infinite; the message names the epoch,
        batch and layer.
    ConfigError, WeightsError
        Bad arguments, or a ``resume`` checkpoint that is corrupt or does not match.
    """
    x_train, y_train = _pair("fit", "train", train)
    if test is not None:
        _pair("fit", "test", test)
    if len(x_train) != len(y_train):
        raise ConfigError(
            f"fit expected as many labels as samples. Received: {len(x_train)} samples, "
            f"{len(y_train)} labels"
        )
    if len(x_train) == 0:
        raise ConfigError("fit expected a non-empty training set. Received: 0 samples")
    _check_fit_arguments(optimizer, loss, epochs, target_accuracy, patience, log_every)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"fit expected seed to be an integer >= 0. Received: seed={seed!r}")
    loss = _label_range_checked_once(loss, y_train, None if test is None else test[1])
    loader = BatchLoader(x_train, y_train, batch_size, shuffle=True, seed=seed,
                         backend=model.backend)
    history, start_epoch, skip_batches, partial = History(), 0, 0, None
    if resume is not None:
        history, start_epoch, skip_batches, partial = _restore(
            resume, model, optimizer, schedule, seed=seed, batch_size=batch_size,
            loader=loader)
    skip_input_grad = bool(getattr(model, "input_grad_optional", False))
    best_loss, stale = math.inf, 0
    for record in history.epochs:
        if record.get("test_loss") is not None and record["test_loss"] < best_loss:
            best_loss, stale = record["test_loss"], 0
        else:
            stale += 1

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        sums = _Sums.from_state(partial)
        partial = None
        bar = _progress_bar(len(loader), epoch, epochs, progress)
        good = Snapshot.take(model, optimizer, skip_batches, sums)
        at_boundary = False
        try:
            with _GracefulInterrupt() as interrupt:
                batches = loader.epoch_batches(epoch, start=skip_batches)
                for index, (xb, yb) in enumerate(batches, start=skip_batches):
                    logits, backprop = model.forward(xb, train=True)
                    batch_loss, dlogits = loss(logits, yb)
                    if skip_input_grad:  # nobody needs the gradient of the data
                        backprop(dlogits, need_input_grad=False)
                    else:
                        backprop(dlogits)
                    optimizer.step()
                    optimizer.zero_grad()
                    sums.add(batch_loss, accuracy(logits, yb), logits.shape[0])
                    if (index + 1) % log_every == 0 or index + 1 == len(loader):
                        sums.sync()
                        if not math.isfinite(sums.loss) or not parameters_finite(model):
                            _close(bar)
                            raise non_finite_error(model, optimizer, loss, loader, good, epoch,
                                              index, checkpoint)
                        good = Snapshot.take(model, optimizer, index + 1, sums)
                        _update_bar(bar, index + 1 - sums.bar_position, sums, started)
                        sums.bar_position = index + 1
                    if interrupt.requested:
                        at_boundary = True
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            _close(bar)
            if not at_boundary:
                # Stopped inside a batch (a second Ctrl-C, or raised by user code): the
                # forward pass may have moved BatchNorm statistics without the matching
                # optimizer step. Go back to the last consistent state.
                good.restore(model, optimizer)
                sums = _Sums.from_state(good.sums_state)
            if checkpoint is not None:
                sums.sync()
                _save_checkpoint(checkpoint, model, optimizer, schedule, history, epoch,
                                 batches_done=sums.batches_seen, sums=sums,
                                 seed=seed, batch_size=batch_size, loader=loader)
                print(f"\nInterrupted: checkpoint saved to {checkpoint} after batch "
                      f"{sums.batches_seen} of epoch {epoch + 1}; continue with resume=",
                      file=sys.stderr)
            history.stopped_because = "interrupted"
            raise
        _close(bar)
        del good
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
                             batches_done=0, sums=None, seed=seed, batch_size=batch_size,
                             loader=loader)
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


# -- argument checks -----------------------------------------------------------------------


def _label_range_checked_once(loss, *label_sets):
    """For the default loss with host integer labels: check the label range once, on the
    host, instead of on the device in every batch (a GPU synchronization per batch)."""
    if loss is not softmax_cross_entropy:
        return loss
    labels = [y for y in label_sets if y is not None]
    if not all(isinstance(y, np.ndarray) and y.ndim == 1 and y.size
               and np.issubdtype(y.dtype, np.integer) for y in labels):
        return loss
    low, high = min(int(y.min()) for y in labels), max(int(y.max()) for y in labels)
    checked_classes = []

    def softmax_cross_entropy_checked_once(logits, y):
        if not checked_classes:
            classes = int(logits.shape[-1])
            if low < 0 or high >= classes:
                raise ShapeError(
                    f"softmax_cross_entropy expected class indices in [0, {classes}) for "
                    f"{classes} classes. Received: labels with min={low}, max={high}. Check "
                    f"that the number of output units matches the number of classes."
                )
            checked_classes.append(classes)
        return softmax_cross_entropy(logits, y, check_labels=False)

    return softmax_cross_entropy_checked_once


def _pair(who: str, name: str, value):
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigError(
            f"{who} expected {name} as a pair (x, y) of host arrays. "
            f"Received: {type(value).__name__}"
            + (f" of length {len(value)}" if isinstance(value, tuple | list) else "")
        )
    return value


def _positive_int(who: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{who} expected {name} to be a positive integer. "
                          f"Received: {name}={value!r}")
    return int(value)


def _check_fit_arguments(optimizer, loss, epochs, target_accuracy, patience, log_every):
    for method in ("step", "zero_grad", "state_dict", "load_state_dict"):
        if not callable(getattr(optimizer, method, None)):
            raise ConfigError(
                f"fit expected an optimizer from xpnn.optim (with {method}()). "
                f"Received: optimizer={optimizer!r}"
            )
    if not callable(loss):
        raise ConfigError(f"fit expected loss to be callable. Received: loss={loss!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ConfigError(f"fit expected epochs to be an integer >= 0. Received: epochs={epochs!r}")
    _positive_int("fit", "log_every", log_every)
    if patience is not None:
        _positive_int("fit", "patience", patience)
    if target_accuracy is not None and not (
        isinstance(target_accuracy, int | float) and 0.0 <= target_accuracy <= 1.0
    ):
        raise ConfigError(
            f"fit expected target_accuracy in [0, 1]. Received: "
            f"target_accuracy={target_accuracy!r}"
        )


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


# -- Ctrl-C -----------------------------------------------------------------------------------


class _GracefulInterrupt:
    """The first Ctrl-C asks training to stop after the current batch (so the checkpoint
    holds a consistent state); a second one stops at once. Only in the main thread and
    only when SIGINT has Python's default handler; otherwise Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> _GracefulInterrupt:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this batch (press Ctrl-C again to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
                     batches_done: int, sums: _Sums | None, seed: int, batch_size: int,
                     loader: BatchLoader) -> None:
    tensors = {f"model.{name}": value for name, value in model.state_dict().items()}
    for name, value in optimizer.state_dict().items():
        tensors[f"optimizer.{name}"] = value if hasattr(value, "shape") else np.asarray(value)
    position = {"epoch": epoch, "batches_done": batches_done, "seed": seed,
                "batch_size": batch_size, "num_samples": loader.num_samples,
                "partial": sums.state() if sums else None}
    metadata = {
        "kind": "xpnn-checkpoint",
        "architecture": json.dumps({"type": type(model).__name__, "config": model.config()}),
        "position": json.dumps(position),
        "history": history.to_json(),
        "schedule": json.dumps(schedule.state_dict() if schedule is not None else None),
        "optimizer_type": type(optimizer).__name__,
        "optimizer_settings": json.dumps(_settings(optimizer)),
    }
    save(tensors, path, metadata=metadata)


def _settings(optimizer) -> dict:
    """The optimizer's hyperparameters other than the learning rate, JSON-comparable."""
    settings = getattr(optimizer, "hyperparameters", dict)()
    return json.loads(json.dumps(settings))


def _corrupt_checkpoint(path, problem: str) -> WeightsError:
    return WeightsError(
        f"{path} is not a usable xpnn training checkpoint: {problem}. The file is corrupt or "
        f"was not written by fit(checkpoint=...); use another checkpoint or start afresh."
    )


def _json_field(path, metadata: dict, key: str):
    if key not in metadata:
        raise _corrupt_checkpoint(path, f"its metadata has no {key!r} record")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as error:
        raise _corrupt_checkpoint(path, f"its {key!r} record is not JSON ({error})") from None


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _read_position(path, metadata: dict) -> dict:
    position = _json_field(path, metadata, "position")
    ok = isinstance(position, dict) and all(
        _is_int(position.get(key)) for key in ("epoch", "batches_done", "seed")
    ) and _is_int(position.get("batch_size"), 1)
    partial = position.get("partial") if ok else None
    if ok and partial is not None:
        ok = isinstance(partial, dict) and _is_int(partial.get("count")) \
            and _is_int(partial.get("batches")) and all(
                _is_number_or_none(partial.get(key)) and partial.get(key) is not None
                and math.isfinite(partial[key]) for key in ("loss_sum", "correct"))
    if ok and "num_samples" in position:
        ok = _is_int(position["num_samples"])
    if not ok:
        raise _corrupt_checkpoint(
            path, f"its position record is malformed (expected non-negative integers epoch, "
                  f"batches_done, seed, batch_size and a partial-epoch record). Received: "
                  f"{metadata['position'][:200]!r}")
    return position


def _read_schedule(path, metadata: dict):
    state = _json_field(path, metadata, "schedule") if "schedule" in metadata else None
    if state is not None and not (
        isinstance(state, dict) and all(
            isinstance(key, str) and isinstance(value, int | float)
            and not isinstance(value, bool) and math.isfinite(value)
            for key, value in state.items())
    ):
        raise _corrupt_checkpoint(
            path, f"its schedule record is not a dict of finite numbers. Received: "
                  f"{metadata['schedule'][:200]!r}")
    return state


def _restore(path, model, optimizer, schedule, *, seed: int, batch_size: int,
             loader: BatchLoader):
    """Validate the whole checkpoint, then restore model, optimizer and schedule together
    (all or nothing); return ``(history, epoch, batches_done, partial)``."""
    metadata = load_metadata(path)
    if metadata.get("kind") != "xpnn-checkpoint":
        raise WeightsError(
            f"{path} is not an xpnn training checkpoint (no 'kind: xpnn-checkpoint' in its "
            f"metadata). Pass a file written by fit(checkpoint=...)."
        )
    position = _read_position(path, metadata)
    if (position["seed"], position["batch_size"]) != (seed, batch_size):
        raise ConfigError(
            f"resume expected the seed and batch size of the checkpointed run "
            f"(seed={position['seed']}, batch_size={position['batch_size']}) so the batch order "
            f"continues exactly. Received: seed={seed}, batch_size={batch_size}"
        )
    if position.get("num_samples", loader.num_samples) != loader.num_samples:
        raise ConfigError(
            f"resume expected the training set of the checkpointed run "
            f"({position['num_samples']} samples) so the batch order continues exactly. "
            f"Received: {loader.num_samples} samples"
        )
    if metadata.get("optimizer_type") != type(optimizer).__name__:
        raise ConfigError(
            f"resume expected a {metadata.get('optimizer_type')} optimizer, as in the "
            f"checkpoint. Received: {type(optimizer).__name__}"
        )
    if "optimizer_settings" in metadata:  # checkpoints of xpnn 0.1.0 before this check lack it
        saved = _json_field(path, metadata, "optimizer_settings")
        if saved != _settings(optimizer):
            raise ConfigError(
                f"resume expected the optimizer settings of the checkpointed run, so that it "
                f"continues exactly: {saved}. Received: {_settings(optimizer)}"
            )
    try:
        history = History.from_json(metadata.get("history", ""))
    except WeightsError as error:
        raise _corrupt_checkpoint(path, str(error)) from None
    if len(history.epochs) != position["epoch"]:
        raise _corrupt_checkpoint(
            path, f"its history has {len(history.epochs)} epochs but its position says "
                  f"{position['epoch']} were completed")
    if position["batches_done"] > len(loader):
        raise _corrupt_checkpoint(
            path, f"it stopped after batch {position['batches_done']} of an epoch that has "
                  f"only {len(loader)} batches")
    saved_schedule = _read_schedule(path, metadata)

    tensors = load(path, check_finite=True)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = {k[len("optimizer."):]: v for k, v in tensors.items()
                       if k.startswith("optimizer.")}
    for key, value in optimizer_state.items():
        if key in ("step", "lr") or key.endswith(".step"):
            host = backends.to_numpy(value)
            if host.dtype.kind not in "iuf" or host.size != 1 or float(host.reshape(())) < 0:
                raise _corrupt_checkpoint(
                    path, f"its optimizer record {key!r} is not one non-negative real number "
                          f"(dtype {host.dtype}, shape {host.shape})")

    before = (Snapshot.take(model, optimizer, 0),
              schedule.state_dict() if schedule is not None else None)
    try:
        model.load_state_dict(model_state)  # validates everything before changing anything
        optimizer.load_state_dict(optimizer_state)
        if schedule is not None and saved_schedule is not None:
            schedule.load_state_dict(saved_schedule)
    except Exception as error:
        before[0].restore(model, optimizer)
        if schedule is not None:
            try:
                schedule.load_state_dict(before[1])
            except Exception:  # pragma: no cover - restoring its own state cannot fail
                pass
        if isinstance(error, XpnnError) and not isinstance(error, ConfigError):
            raise
        raise _corrupt_checkpoint(path, f"{type(error).__name__}: {error}") from error
    return history, position["epoch"], position["batches_done"], position.get("partial")
