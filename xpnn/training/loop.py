"""The training loop: :func:`fit`, :func:`evaluate` and :func:`predict`.

One epoch is a pass over the training set in a seeded shuffled order (the order of epoch
``k`` depends only on ``seed`` and ``k``, so a resumed run sees the same batches as an
uninterrupted one). Every batch is one :func:`~xpnn.training.step.train_step`: forward in
training mode, fused loss and its gradient, backward, optimizer step. Metrics are
accumulated on the device and read back to the host only at *log points*: about every
``log_seconds`` (0.5 s, on the host's clock, which costs no sync), or every ``log_every``
batches when given, and at the end of an epoch; so a GPU is not stalled by a host sync per
batch. Host integer labels are range-checked once, on the host
(:mod:`xpnn.training.labels`).

After every epoch a checkpoint (model, optimizer and schedule state, history, position)
is written atomically (:mod:`xpnn.training.checkpoint`); ``resume=`` continues from one
exactly where it stopped. The first ``Ctrl-C`` lets the current batch finish, then writes a
checkpoint of that position and stops (:mod:`xpnn.training.console`). An interrupt inside
a batch goes back to the start of that batch when the optimizer step had not begun yet
(:class:`~xpnn.training.rollback.BatchGuard`: a copy of the model's buffers per batch);
when it had, the state may be torn and no checkpoint is written, unless ``diagnose=True``
holds a full copy to go back to.

At every log point the running loss and the parameters are checked; a NaN or
infinity stops training with :class:`~xpnn.errors.TrainingStopped` and leaves the last
good checkpoint in place. With ``diagnose=True`` the error also names the batch and the
layer that first produced it (:mod:`xpnn.training.divergence`).

With ``communicator=`` (:mod:`xpnn.distributed`) the same loop runs data-parallel on every
rank: each takes its slice of the global batch (``BatchLoader.epoch_batches(shard=)``),
:func:`~xpnn.training.step.train_step` sums the gradients over the ranks, and every
decision (NaN stop, Ctrl-C, early stopping, target accuracy) is taken on numbers summed
over the ranks at the same batches, so all ranks stop together. Rank 0 alone prints,
shows progress and writes checkpoints; it alone reads a ``resume`` checkpoint, then
broadcasts model, optimizer, schedule, history and position.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xpnn import backends
from xpnn.backends import allocator
from xpnn.datasets.batches import BatchLoader, check_batch_size, shard_bounds
from xpnn.distributed.agreement import on_every_rank, same_on_every_rank
from xpnn.distributed.data_parallel import (
    batchnorm_layers,
    broadcast_state,
    split_random_streams,
)
from xpnn.errors import ConfigError
from xpnn.losses import accuracy, softmax_cross_entropy
from xpnn.module import Module
from xpnn.training.arguments import (
    check_checkpoint_target,
    check_data,
    check_fit_arguments,
    check_test_set,
)
from xpnn.training.checkpoint import Position, restore_checkpoint, save_checkpoint
from xpnn.training.console import GracefulInterrupt, ProgressBar, print_epoch
from xpnn.training.divergence import diagnose as diagnose_divergence
from xpnn.training.divergence import parameters_finite_flag, stopped_without_diagnosis
from xpnn.training.history import History
from xpnn.training.labels import per_batch_loss
from xpnn.training.metrics import RunningSums, read_together
from xpnn.training.rollback import BatchGuard, Snapshot
from xpnn.training.step import train_step
from xpnn.training.stopping import BestWeights, EarlyStopping
from xpnn.validation import integer, number, positive_int

__all__ = ["evaluate", "fit", "predict"]


def evaluate(model: Module, x, y, *, loss=softmax_cross_entropy, batch_size: int = 1000,
             communicator=None):
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in inference mode, as floats.

    With a ``communicator`` each rank evaluates its contiguous share of the samples
    (:func:`~xpnn.datasets.batches.shard_bounds`) and the sums are added over the ranks:
    every rank returns the numbers of the whole set.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> loss, accuracy = evaluate(Dense(2, 3, seed=0), np.ones((5, 2), "float32"),
    ...                           np.array([0, 1, 2, 0, 1]))
    >>> 0.0 <= accuracy <= 1.0
    True
    """
    if len(x) == 0:
        raise ConfigError("evaluate expected at least one sample. Received: 0 samples")
    loss = per_batch_loss(loss, y)
    count = len(x)
    if communicator is not None:
        low, high = shard_bounds(count, communicator.rank, communicator.size)
        x, y = x[low:high], y[low:high]
    loss_sum = correct = None
    if len(x):
        for xb, yb in BatchLoader(x, y, batch_size, shuffle=False, backend=model.backend):
            logits = model(xb)
            batch_loss, _ = loss(logits, yb)
            n = logits.shape[0]
            loss_sum = batch_loss * n if loss_sum is None else loss_sum + batch_loss * n
            batch_correct = accuracy(logits, yb) * n
            correct = batch_correct if correct is None else correct + batch_correct
    sums = [0.0, 0.0] if loss_sum is None else read_together([loss_sum, correct])
    if communicator is not None:
        sums = communicator.allreduce_host(sums)
    return float(sums[0]) / count, float(sums[1]) / count


def predict(model: Module, x, *, batch_size: int = 1000):
    """Class predictions (host NumPy int64) of ``model`` for the host batch ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> predict(Dense(2, 3, seed=0), np.ones((4, 2), "float32")).shape
    (4,)
    """
    positive_int("predict", "batch_size", batch_size)
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
        progress: bool | None = None, verbose: bool = True, log_every: int | None = None,
        log_seconds: float = 0.5,
        diagnose: bool = False, restore_best: bool = False, communicator=None,
        precision=None) -> History:
    """Train ``model`` on ``train = (x, y)`` (host arrays) and evaluate on ``test``.

    Parameters
    ----------
    optimizer : xpnn.optim.Optimizer
        Built on ``model.parameters()``.
    loss : callable
        ``loss(logits, labels) -> (loss, dlogits)``; fused softmax cross-entropy by default.
        If it has a ``check_labels`` keyword (every loss in :mod:`xpnn.losses` does, also
        through ``functools.partial``) and the labels are host integer arrays, the labels
        are range-checked once on the host and the loss gets ``check_labels=False``.
    epochs, batch_size, seed
        ``seed`` fixes the shuffled order of every epoch. ``epochs`` counts from the start
        of the run, so resuming a 3-epoch checkpoint with ``epochs=5`` trains 2 more.
    schedule : object with ``step()``, optional
        A learning-rate schedule from :mod:`xpnn.schedules`, stepped as its ``interval``
        says: once per epoch (the default), or after every optimizer step (``"batch"``:
        ``OneCycleLR``, whose ``total_steps`` must cover ``epochs`` × batches per epoch).
        One with ``needs_metric`` (``ReduceLROnPlateau``) is stepped with the epoch's test
        loss (over all ranks), so it needs ``test``.
    test : (x, y), optional
        Host arrays evaluated after every epoch. Checked before the first batch: a pair of
        equal lengths, at least one sample, the training samples' shape, and labels of the
        training labels' kind and shape.
    target_accuracy : float, optional
        Stop after the first epoch whose test accuracy reaches it (e.g. 0.96). When no epoch
        reaches it, ``History.stopped_because`` says so (and a line is printed when
        ``verbose``).
    patience : int, optional
        Stop when the test loss has not improved for this many epochs.
    checkpoint : path, optional
        Written atomically after every epoch (and on Ctrl-C). Checked before the first
        batch: its folder must exist and be writable, and it must not be a folder.
    resume : path, optional
        A checkpoint of the same model (architecture record), optimizer, seed, batch size
        and data to continue from; prints "resumed at epoch E, batch B" when ``verbose``.
        The ``schedule`` passed is the one used: only its position comes from the
        checkpoint (see :mod:`xpnn.training.checkpoint` for the rule on ``T_max``).
    progress : bool, optional
        Show a progress bar on standard output; ``None`` shows it only when standard output
        is a terminal. It moves every batch (redrawn at most every 0.5 s), fits 80 columns,
        and starts at the resumed batch after a resume.
    verbose : bool
        Print one line of metrics per epoch (and the resume and restore lines).
    log_every, log_seconds
        When the running loss is read to the host (the loss the progress bar shows, and
        the NaN/Inf checks): by default at the first batch that ends ``log_seconds`` after
        the last read (so a GPU syncs about twice a second, whatever its speed); every
        ``log_every`` batches when that is given; and at the end of every epoch. With
        several ranks, which must read at the same batches, ``log_every`` defaults to 50.
    diagnose : bool
        Keep one extra copy of the model's parameters and buffers and of the optimizer
        state in memory (for Adam, whose state holds two moments per parameter, three
        times the parameters' size), taken at every passing NaN/Inf check (every log
        point). When a check fails,
        the batches since are replayed from it to name the batch and the layer that first
        produced the NaN or infinity, and the model and optimizer are rolled back to it; a
        KeyboardInterrupt during an optimizer step also goes back to it. Off by default:
        a failed check then names the epoch and the range of batches, and leaves the model
        as it is.
    restore_best : bool
        As Keras' ``restore_best_weights``: at the end of the run, put back the weights of
        the epoch with the lowest test loss among the epochs this call trained (needs
        ``test``). A host copy of the model's state is kept only while this is on; it is
        taken at each new best. ``History.restored_epoch`` names the epoch; checkpoints
        hold the last epoch's state, so that a resume continues the run exactly. Not
        applied when training stops with an exception (Ctrl-C, NaN).
    communicator : xpnn.distributed.Communicator, optional
        Train data-parallel over its ranks (start them with ``mpiexec -n N``; see
        :mod:`xpnn.distributed`). ``batch_size`` is per rank: step k takes global batch k
        of a one-process run with batch ``size × batch_size`` (same ``seed``), rank r its
        r-th slice, and the gradients are combined so the update is that run's (the same
        parameters up to rounding, without BatchNorm or with
        :func:`~xpnn.distributed.sync_batchnorm`). The last global batch of an epoch may
        be smaller, as in one process: it is cut into slices that differ by at most one
        sample, and it must have at least one sample per rank (checked before training).
        Metrics are over all ranks; rank 0 alone prints, shows progress and writes the
        checkpoint (every rank returns after it is written); ``resume`` is read by rank 0
        and broadcast, and works on another
        number of ranks when ``ranks × batch_size`` is the checkpointed global batch.
        Not with ``diagnose=True``. Ctrl-C stops every rank at the next ``log_every``
        boundary.
    precision : str or xpnn.mixed_precision.MixedPrecision, optional
        ``"mixed_float16"`` or ``"mixed_bfloat16"``: training steps compute in half
        precision with float32 master parameters, BatchNorm and losses in float32, and
        (float16) dynamic loss scaling that skips a step whose gradients overflow
        (:mod:`xpnn.mixed_precision`; one host read per step decides the skip).
        Evaluation uses the float32 parameters. Checkpoints save the loss scale; a resume
        needs the same policy. Default (None, ``"float32"``): float32 throughout.

    Returns
    -------
    History
        With ``resume_from`` set after a Ctrl-C (also on the ``KeyboardInterrupt`` raised,
        as ``error.resume_from`` and ``error.history``).

    Raises
    ------
    TrainingStopped
        The loss or the parameters became NaN or infinite; the message names the epoch and
        batches (with ``diagnose=True``: the batch and the layer).
    ConfigError, WeightsError
        Bad arguments, or a ``resume`` checkpoint that is corrupt or does not match.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> x = np.array([[0.0, 1.0], [1.0, 0.0]] * 8, dtype="float32")
    >>> y = np.array([0, 1] * 8)
    >>> model = Dense(2, 2, seed=0)
    >>> history = fit(model, (x, y), (x, y), optimizer=SGD(model.parameters(), lr=0.5),
    ...               epochs=3, batch_size=4, verbose=False, progress=False)
    >>> history.last["epoch"], history.last["test_accuracy"]
    (3, 1.0)
    """
    ranks = _check_communicator(communicator, diagnose)
    distributed = communicator if ranks > 1 else None
    root = communicator is None or communicator.rank == 0

    def preflight():
        """Every check that needs no other rank; with several ranks, a failure on any
        rank is raised on every rank (:func:`~xpnn.distributed.agreement.on_every_rank`)."""
        x, y = check_data("train", train)
        if test is not None:
            check_test_set(test, x, y)
        check_fit_arguments(optimizer, loss, epochs, target_accuracy, patience, log_every)
        seconds = number("fit", "log_seconds", log_seconds, low=0.0)
        if restore_best and test is None:
            raise ConfigError("fit expected a test set with restore_best=True (the best epoch "
                              "is the one with the lowest test loss). Received: test=None")
        per_batch = _check_schedule(schedule, test, diagnose)
        mixed = _mixed_precision(precision, diagnose)
        size = check_batch_size(batch_size)
        _check_last_global_batch(len(x), size, ranks, _unsynced_batchnorm(model))
        if checkpoint is not None and root:
            check_checkpoint_target(checkpoint)
        batch_loss = per_batch_loss(loss, y, None if test is None else test[1])
        return (x, y, seconds, per_batch, size, integer("fit", "seed", seed, low=0), mixed,
                batch_loss)

    if distributed is None:
        checked = preflight()
    else:
        checked = on_every_rank(distributed, preflight)
    (x_train, y_train, log_seconds, per_batch_schedule, batch_size, seed, mixed,
     batch_loss) = checked
    if distributed is not None:
        log_every = 50 if log_every is None else log_every  # the same batches on every rank
        same_on_every_rank(distributed, "fit", {
            "number of training samples": len(x_train), "sample shape": x_train.shape[1:],
            "batch_size": batch_size, "seed": seed, "epochs": epochs, "log_every": log_every,
            "test set size": None if test is None else len(test[0]),
            "resume (given or not)": resume is not None,
            "checkpoint (given or not)": checkpoint is not None,
            "schedule": type(schedule).__name__, "patience": patience,
            "target_accuracy": target_accuracy, "restore_best": bool(restore_best),
            "precision": None if mixed is None else mixed.policy})
    verbose = bool(verbose) and root
    allocator.keep_freed_memory()  # once per process: reuse freed host memory every step
    loader = BatchLoader(x_train, y_train, batch_size * ranks, shuffle=True, seed=seed,
                         backend=model.backend)
    run = _Run(model=model, optimizer=optimizer, loader=loader, schedule=schedule,
               loss=batch_loss,
               checkpoint=checkpoint, seed=seed, batch_size=batch_size,
               epochs=epochs, log_every=log_every, log_seconds=log_seconds,
               diagnose=bool(diagnose), progress=progress if root else False,
               communicator=distributed, root=root, per_batch_schedule=per_batch_schedule,
               precision=mixed)
    _check_schedule_length(schedule, per_batch_schedule, epochs, len(loader))
    start = Position(0)
    if resume is not None:
        def read_checkpoint():
            return restore_checkpoint(resume, model, optimizer, schedule, seed=seed,
                                      batch_size=loader.batch_size,
                                      num_samples=loader.num_samples,
                                      batches_per_epoch=len(loader), epochs=epochs,
                                      ranks=ranks, precision=mixed)

        if distributed is None:
            run.history, start = read_checkpoint()
        else:  # rank 0 reads it; its result, or its error, reaches every rank
            run.history, start = on_every_rank(distributed, read_checkpoint, root=0,
                                               share_result=True)
        run.history.stopped_because = ""  # this call decides why it stops
        if verbose:
            print(f"resumed at epoch {start.epoch + 1}, batch {start.batches_done} "
                  f"(of {len(loader)}) from {resume}")
    if distributed is not None:  # every rank starts from rank 0's state
        broadcast_state(distributed, model, optimizer)
        split_random_streams(model, distributed.rank)  # Dropout: a mask stream per rank
        if schedule is not None:
            schedule.load_state_dict(distributed.broadcast_object(schedule.state_dict()))
        if mixed is not None:  # the loss scale rank 0 resumed with
            mixed.load_state_dict(distributed.broadcast_object(mixed.state_dict()))
    stopping = EarlyStopping(target_accuracy, patience, run.history)
    best = BestWeights(model) if restore_best else None

    # With several ranks a Ctrl-C is deferred for the whole run (also while evaluating or
    # writing a checkpoint) and acted on where the ranks agree: at a log point, or here at
    # the end of an epoch.
    interrupt = None if distributed is None else GracefulInterrupt(
        lambda: False, when=f"on every rank within {log_every} batches", quiet=not root)
    with interrupt if interrupt is not None else contextlib.nullcontext():
        for epoch in range(start.epoch, epochs):
            started = time.perf_counter()
            resumed = epoch == start.epoch
            sums = RunningSums.from_state(start.partial if resumed else None)
            _train_epoch(run, epoch, start.batches_done if resumed else 0, sums, started,
                         interrupt)
            sums.sync()
            record = {"epoch": epoch + 1, "train_loss": sums.loss,
                      "train_accuracy": sums.accuracy, "lr": optimizer.lr,
                      "seconds": time.perf_counter() - started}
            if test is not None:
                record["test_loss"], record["test_accuracy"] = evaluate(
                    model, *test, loss=run.loss, communicator=distributed)
            run.history.epochs.append(record)
            if verbose:
                print_epoch(record, epochs)
            if schedule is not None and not per_batch_schedule:
                if getattr(schedule, "needs_metric", False):
                    schedule.step(record["test_loss"])  # the same number on every rank
                else:
                    schedule.step()
            if checkpoint is not None:
                run.save(Position(epoch + 1))
            if best is not None:
                best.consider(record)
            reason = stopping.reason(record)
            if reason:
                run.history.stopped_because = reason
                break
            if interrupt is not None and epoch + 1 < epochs \
                    and distributed.allreduce_host([interrupt.requested])[0]:
                _stop_after_epoch(run, epoch)
    if not run.history.stopped_because and test is not None:
        run.history.stopped_because = stopping.unmet(run.history)
        if verbose and run.history.stopped_because:
            print(run.history.stopped_because)
    if best is not None:
        run.history.restored_epoch = best.restore(verbose)
    if distributed is not None:
        distributed.barrier()  # no rank returns before rank 0's files are written
    return run.history


def _stop_after_epoch(run, epoch: int) -> None:
    """Every rank saw (or was told of) a Ctrl-C during epoch ``epoch``, after which its
    checkpoint, if any, was written: raise KeyboardInterrupt as a stop inside it does."""
    run.history.stopped_because = "interrupted"
    run.history.resume_from = str(run.checkpoint) if run.checkpoint is not None else ""
    if run.root and run.checkpoint is not None:
        print(f"\nInterrupted: checkpoint saved to {run.checkpoint} after epoch {epoch + 1}; "
              f"continue with fit(..., resume={str(run.checkpoint)!r})", file=sys.stderr)
    error = KeyboardInterrupt()
    error.history = run.history
    error.resume_from = run.history.resume_from or None
    raise error


def _unsynced_batchnorm(model) -> bool:
    """Whether ``model`` has a BatchNorm that normalizes with its own rank's statistics."""
    return any(layer.communicator is None for layer in batchnorm_layers(model))


def _check_communicator(communicator, diagnose) -> int:
    """The number of ranks (1 without a communicator), after checking the communicator."""
    if communicator is None:
        return 1
    needed = ("rank", "size", "allreduce", "allreduce_host", "barrier", "broadcast",
              "broadcast_object")
    missing = [name for name in needed if not hasattr(communicator, name)]
    if missing:
        raise ConfigError(
            f"fit expected communicator= to be an xpnn.distributed communicator (from "
            f"xpnn.distributed.init()). Received: a {type(communicator).__name__} without "
            f"{', '.join(missing)}"
        )
    if diagnose and communicator.size > 1:
        raise ConfigError(
            "fit cannot diagnose=True in data-parallel training (the replay runs one "
            "process's batches). Received: diagnose=True with "
            f"{communicator.size} ranks. Reproduce the run in one process with the global "
            f"batch size to diagnose it."
        )
    return int(communicator.size)


def _mixed_precision(precision, diagnose):
    """The :class:`~xpnn.mixed_precision.MixedPrecision` of ``precision`` (None for float32)."""
    from xpnn.mixed_precision import MixedPrecision

    if precision is None or precision == "float32":
        return None
    mixed = precision if isinstance(precision, MixedPrecision) else MixedPrecision(precision)
    if diagnose:
        raise ConfigError("fit cannot diagnose=True in mixed precision (the replay runs "
                          f"float32 steps). Received: precision={mixed.policy!r}")
    return mixed


def _check_schedule(schedule, test, diagnose) -> bool:
    """Whether ``schedule`` is stepped per batch, after checking it can run in this fit."""
    if schedule is None:
        return False
    per_batch = getattr(schedule, "interval", "epoch") == "batch"
    if getattr(schedule, "needs_metric", False) and test is None:
        raise ConfigError(
            f"fit expected a test set with {type(schedule).__name__} (it is stepped with the "
            f"test loss of each epoch). Received: test=None"
        )
    if getattr(schedule, "needs_metric", False) and getattr(schedule, "mode", "min") != "min":
        raise ConfigError(
            f"fit expected {type(schedule).__name__}(mode='min'): fit steps it with the test "
            f"loss, which should fall. Received: mode={schedule.mode!r}"
        )
    if per_batch and diagnose:
        raise ConfigError(
            f"fit cannot diagnose=True with a schedule stepped per batch "
            f"({type(schedule).__name__}): the replay would not step it. Received: "
            f"diagnose=True. Diagnose with a per-epoch schedule, or none."
        )
    return per_batch


def _check_schedule_length(schedule, per_batch: bool, epochs: int, batches: int) -> None:
    """A per-batch schedule with a fixed length must last the whole run."""
    total = getattr(schedule, "total_steps", None)
    if per_batch and total is not None and total < epochs * batches:
        raise ConfigError(
            f"fit expected {type(schedule).__name__}'s total_steps to cover the run, "
            f"{epochs} epochs x {batches} batches = {epochs * batches} steps. Received: "
            f"total_steps={total}. Build it with total_steps={epochs * batches} (or "
            f"epochs={epochs}, steps_per_epoch={batches})."
        )


def _check_last_global_batch(num_samples: int, batch_size: int, ranks: int,
                             batchnorm: bool) -> None:
    """Every rank needs a sample of the last, incomplete global batch; two, when a
    BatchNorm estimates a variance from its own rank's samples."""
    needed = 2 if batchnorm else 1
    last = num_samples % (batch_size * ranks)
    if ranks > 1 and 0 < last < needed * ranks:
        why = (" (a BatchNorm that is not synchronized needs two per rank to estimate a "
               "variance; xpnn.distributed.sync_batchnorm lifts this)" if batchnorm else "")
        raise ConfigError(
            f"fit expected the last global batch of each epoch to hold at least {needed} "
            f"sample(s) per rank{why}. Received: {num_samples} samples in global batches of "
            f"{ranks} ranks x {batch_size} leave {last} sample(s) for {ranks} ranks. Choose "
            f"another batch size, or drop {last} sample(s) from the training set."
        )


@dataclass
class _Run:
    """What stays fixed during one :func:`fit` call."""

    model: Module
    optimizer: Any
    loader: BatchLoader
    schedule: Any
    loss: Any  # the per-batch callable (labels.per_batch_loss)
    checkpoint: str | Path | None
    seed: int
    batch_size: int
    epochs: int
    log_every: int | None  # None: log points by time (log_seconds)
    log_seconds: float
    diagnose: bool
    progress: bool | None
    communicator: Any = None  # with more than one rank; None in one process
    root: bool = True  # rank 0 (or the only process): the one that prints and writes
    per_batch_schedule: bool = False  # the schedule steps after every optimizer step
    precision: Any = None  # a MixedPrecision, or None (float32)
    history: History = field(default_factory=History)

    def save(self, position: Position) -> None:
        """Write the checkpoint (rank 0 writes; with several ranks every rank calls this,
        and an error writing it is raised on every rank)."""
        if self.checkpoint is None:
            return

        def write():
            save_checkpoint(self.checkpoint, self.model, self.optimizer, self.schedule,
                            self.history, position, seed=self.seed,
                            batch_size=self.loader.batch_size,
                            num_samples=self.loader.num_samples, epochs=self.epochs,
                            ranks=self.ranks, precision=self.precision)

        if self.communicator is None:
            write()
        else:
            on_every_rank(self.communicator, write, root=0)

    @property
    def ranks(self) -> int:
        return 1 if self.communicator is None else int(self.communicator.size)


def _train_epoch(run: _Run, epoch: int, start: int, sums: RunningSums, started: float,
                 deferred: GracefulInterrupt | None = None) -> None:
    """Train batches ``start ..`` of ``epoch``, adding to ``sums``. On a KeyboardInterrupt,
    checkpoint the last consistent state and re-raise; on a failed NaN/Inf check, raise
    :class:`~xpnn.errors.TrainingStopped`."""
    model, optimizer, loader = run.model, run.optimizer, run.loader
    communicator = run.communicator
    bar = ProgressBar(len(loader), epoch, run.epochs, run.progress, start)
    guard = BatchGuard(model, optimizer)
    good = Snapshot.take(model, optimizer, start, sums) if run.diagnose else None
    checked, diverged_at = start, None  # checked: batches done at the last passing check
    last_read = time.perf_counter()  # when the sums were last read (log points by time)
    # With several ranks a Ctrl-C is acted on only where all ranks agree (a log point).
    may_stop_now = (lambda: False) if communicator else (lambda: not guard.committing())
    when = "after this batch" if communicator is None else \
        f"on every rank within {run.log_every} batches"
    shard = None if communicator is None else (communicator.rank, communicator.size)
    try:
        # with several ranks fit holds one interrupt handler for the whole run (deferred)
        with contextlib.nullcontext(deferred) if deferred is not None else GracefulInterrupt(
                may_stop_now=may_stop_now, when=when, quiet=not run.root) as interrupt:
            batches = loader.epoch_batches(epoch, start=start, shard=shard)
            for index, (xb, yb) in enumerate(batches, start=start):
                guard.begin()
                if communicator is None:
                    batch_loss, logits = train_step(model, run.loss, optimizer, xb, yb,
                                                    precision=run.precision)
                else:
                    first = index * loader.batch_size  # this global batch's size:
                    in_batch = min(loader.batch_size, loader.num_samples - first)
                    batch_loss, logits = train_step(model, run.loss, optimizer, xb, yb,
                                                    communicator=communicator,
                                                    share=xb.shape[0] / in_batch,
                                                    precision=run.precision)
                if run.per_batch_schedule:
                    run.schedule.step()
                sums.add(batch_loss, accuracy(logits, yb), logits.shape[0])
                stop_everywhere = False
                if index + 1 == len(loader) or (
                        (index + 1) % run.log_every == 0 if run.log_every else
                        time.perf_counter() - last_read >= run.log_seconds):
                    # One read to the host: the sums and the "a parameter is not finite"
                    # flag together; with several ranks also summed over them (with the
                    # Ctrl-C flag), so every rank decides alike.
                    finite = parameters_finite_flag(model)
                    bad = [] if finite is None else [model.backend.xp.logical_not(finite)]
                    host_flags = () if communicator is None else (interrupt.requested,)
                    flags = sums.sync(communicator, host_flags, bad)
                    last_read = time.perf_counter()  # after the read: a wait counts once
                    not_finite = flags[:len(bad)]
                    diverged = not math.isfinite(sums.loss) or any(f > 0 for f in not_finite)
                    stop_everywhere = communicator is not None and flags[-1] > 0
                    if diverged:
                        diverged_at = index
                        break
                    checked = index + 1
                    if good is not None:
                        good = Snapshot.take(model, optimizer, checked, sums)
                    bar.update(checked, sums, started)
                bar.advance(index + 1)  # a host counter: no device synchronization
                guard.end()
                if stop_everywhere or (interrupt.requested and communicator is None):
                    raise KeyboardInterrupt  # the first Ctrl-C: stop at this batch boundary
    except KeyboardInterrupt as error:
        bar.close()
        _checkpoint_after_interrupt(run, epoch, guard, good, sums)
        error.history = run.history
        error.resume_from = run.history.resume_from or None
        raise
    bar.close()
    if diverged_at is not None:
        if good is not None:
            raise diagnose_divergence(model, optimizer, run.loss, loader, good, epoch,
                                      diverged_at, run.checkpoint)
        raise stopped_without_diagnosis(epoch, checked, diverged_at, len(loader),
                                        run.checkpoint)


def _checkpoint_after_interrupt(run: _Run, epoch: int, guard: BatchGuard,
                                good: Snapshot | None, sums: RunningSums) -> None:
    """Go back to the last consistent state (the start of the interrupted batch, or the
    diagnosis snapshot) and checkpoint it; write nothing when there is none."""
    if not guard.recover():
        if good is None:
            kept = f" (the last one, {run.checkpoint}, is kept)" if run.checkpoint else ""
            previous = run.checkpoint is not None and Path(run.checkpoint).is_file()
            again = (f" Continue from it with fit(..., resume={str(run.checkpoint)!r})."
                     if previous else "")
            print(f"\nInterrupted inside the optimizer step of a batch of epoch {epoch + 1}: "
                  f"the model and optimizer may be part-way through an update, so no "
                  f"checkpoint was written{kept if previous else ''}. fit(..., diagnose=True) "
                  f"keeps a copy of the state to go back to.{again}", file=sys.stderr)
            run.history.stopped_because = "interrupted"
            run.history.resume_from = str(run.checkpoint) if previous else ""
            return
        good.restore(run.model, run.optimizer)
        sums = RunningSums.from_state(good.sums_state)
    sums.sync(run.communicator)  # on every rank: a collective with several
    if run.checkpoint is not None:
        run.save(Position(epoch, sums.batches_seen, sums.state()))
        if run.root:
            print(f"\nInterrupted: checkpoint saved to {run.checkpoint} after batch "
                  f"{sums.batches_seen} of epoch {epoch + 1}; continue with "
                  f"fit(..., resume={str(run.checkpoint)!r})", file=sys.stderr)
        run.history.resume_from = str(run.checkpoint)
    if run.communicator is not None:
        run.communicator.barrier()  # the checkpoint is written when any rank sees the error
    run.history.stopped_because = "interrupted"
