"""Training checkpoints: one safetensors file with everything needed to continue a run.

Tensors (every value finite, checked on load):

    model.{name}       every parameter and buffer of ``model.state_dict()``
    optimizer.{name}   the optimizer's flat state dict (see :mod:`xpnn.optim`)

Metadata (strings; JSON where structured):

    kind                "xpnn-checkpoint"
    architecture        {"type": class name, "config": model.config()}
    position            {"epoch": completed epochs, "batches_done": batches of the next
                         epoch already trained, "seed", "batch_size", "num_samples",
                         "partial": that epoch's running sums (RunningSums.state()) or null}
    history             History.to_json()
    schedule            the schedule's state_dict() or null
    optimizer_type      e.g. "SGD"
    optimizer_settings  the optimizer's hyperparameters() (all settings but the lr)

:func:`save_checkpoint` writes atomically (:func:`xpnn.io.save`), so a crash leaves the old
file or the new one. :func:`restore_checkpoint` validates the whole file (every record well
formed, every array finite, the run's seed, batch size, data size and optimizer matching)
before changing anything, then restores model, optimizer and schedule together: a failed
restore leaves all three as they were (a full copy of the model and optimizer state is held
while it runs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnn import backends
from xpnn.errors import ConfigError, WeightsError, XpnnError
from xpnn.io import load, load_metadata, save
from xpnn.training.history import History
from xpnn.training.rollback import Snapshot
from xpnn.validation import is_int, is_number_or_none

__all__ = ["Position", "restore_checkpoint", "save_checkpoint"]

KIND = "xpnn-checkpoint"


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs completed and ``batches_done`` batches of the
    next one trained, with that epoch's running sums (``partial``, or None)."""

    epoch: int
    batches_done: int = 0
    partial: dict | None = None


def save_checkpoint(path: str | Path, model, optimizer, schedule, history: History,
                    position: Position, *, seed: int, batch_size: int,
                    num_samples: int) -> None:
    """Write model, optimizer and schedule state, ``history`` and ``position`` to ``path``
    atomically."""
    tensors = {f"model.{name}": value for name, value in model.state_dict().items()}
    for name, value in optimizer.state_dict().items():
        tensors[f"optimizer.{name}"] = value if hasattr(value, "shape") else np.asarray(value)
    record = {"epoch": position.epoch, "batches_done": position.batches_done, "seed": seed,
              "batch_size": batch_size, "num_samples": num_samples,
              "partial": position.partial}
    metadata = {
        "kind": KIND,
        "architecture": json.dumps({"type": type(model).__name__, "config": model.config()}),
        "position": json.dumps(record),
        "history": history.to_json(),
        "schedule": json.dumps(schedule.state_dict() if schedule is not None else None),
        "optimizer_type": type(optimizer).__name__,
        "optimizer_settings": json.dumps(_settings(optimizer)),
    }
    save(tensors, path, metadata=metadata)


def restore_checkpoint(path: str | Path, model, optimizer, schedule, *, seed: int,
                       batch_size: int, num_samples: int,
                       batches_per_epoch: int) -> tuple[History, Position]:
    """Validate the whole checkpoint at ``path``, then restore model, optimizer and
    schedule together (all or nothing); return the run's history and position.

    Raises
    ------
    WeightsError
        The file is not a checkpoint, is corrupt, or holds non-finite values.
    ConfigError
        It belongs to a run with another seed, batch size, data size or optimizer.
    """
    metadata = load_metadata(path)
    if metadata.get("kind") != KIND:
        raise WeightsError(
            f"{path} is not an xpnn training checkpoint (no 'kind: {KIND}' in its "
            f"metadata). Pass a file written by fit(checkpoint=...)."
        )
    position = _read_position(path, metadata)
    _check_same_run(path, metadata, position, optimizer, seed=seed, batch_size=batch_size,
                    num_samples=num_samples)
    try:
        history = History.from_json(metadata.get("history", ""))
    except WeightsError as error:
        raise _corrupt(path, str(error)) from None
    if len(history.epochs) != position["epoch"]:
        raise _corrupt(path, f"its history has {len(history.epochs)} epochs but its position "
                             f"says {position['epoch']} were completed")
    if position["batches_done"] > batches_per_epoch:
        raise _corrupt(path, f"it stopped after batch {position['batches_done']} of an epoch "
                             f"that has only {batches_per_epoch} batches")
    saved_schedule = _read_schedule(path, metadata)
    model_state, optimizer_state = _read_tensors(path)
    _restore_all_or_nothing(path, model, optimizer, schedule, model_state, optimizer_state,
                            saved_schedule)
    return history, Position(position["epoch"], position["batches_done"],
                             position.get("partial"))


# -- validation ---------------------------------------------------------------------------


def _corrupt(path, problem: str) -> WeightsError:
    return WeightsError(
        f"{path} is not a usable xpnn training checkpoint: {problem}. The file is corrupt or "
        f"was not written by fit(checkpoint=...); use another checkpoint or start afresh."
    )


def _settings(optimizer) -> dict:
    """The optimizer's hyperparameters other than the learning rate, JSON-comparable."""
    settings = getattr(optimizer, "hyperparameters", dict)()
    return json.loads(json.dumps(settings))


def _json_field(path, metadata: dict, key: str):
    if key not in metadata:
        raise _corrupt(path, f"its metadata has no {key!r} record")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as error:
        raise _corrupt(path, f"its {key!r} record is not JSON ({error})") from None


def _finite_number(value) -> bool:
    return value is not None and is_number_or_none(value) and math.isfinite(value)


def _read_position(path, metadata: dict) -> dict:
    position = _json_field(path, metadata, "position")
    ok = isinstance(position, dict) and all(
        is_int(position.get(key), 0) for key in ("epoch", "batches_done", "seed")
    ) and is_int(position.get("batch_size"), 1)
    partial = position.get("partial") if ok else None
    if ok and partial is not None:
        ok = isinstance(partial, dict) and is_int(partial.get("count"), 0) \
            and is_int(partial.get("batches"), 0) \
            and all(_finite_number(partial.get(key)) for key in ("loss_sum", "correct"))
    if ok and "num_samples" in position:
        ok = is_int(position["num_samples"], 0)
    if not ok:
        raise _corrupt(
            path, f"its position record is malformed (expected non-negative integers epoch, "
                  f"batches_done, seed, batch_size and a partial-epoch record). Received: "
                  f"{metadata['position'][:200]!r}")
    return position


def _check_same_run(path, metadata: dict, position: dict, optimizer, *, seed: int,
                    batch_size: int, num_samples: int) -> None:
    if (position["seed"], position["batch_size"]) != (seed, batch_size):
        raise ConfigError(
            f"resume expected the seed and batch size of the checkpointed run "
            f"(seed={position['seed']}, batch_size={position['batch_size']}) so the batch order "
            f"continues exactly. Received: seed={seed}, batch_size={batch_size}"
        )
    if position.get("num_samples", num_samples) != num_samples:
        raise ConfigError(
            f"resume expected the training set of the checkpointed run "
            f"({position['num_samples']} samples) so the batch order continues exactly. "
            f"Received: {num_samples} samples"
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


def _read_schedule(path, metadata: dict):
    state = _json_field(path, metadata, "schedule") if "schedule" in metadata else None
    if state is not None and not (
        isinstance(state, dict) and all(
            isinstance(key, str) and _finite_number(value) for key, value in state.items())
    ):
        raise _corrupt(path, f"its schedule record is not a dict of finite numbers. Received: "
                             f"{metadata['schedule'][:200]!r}")
    return state


def _read_tensors(path) -> tuple[dict, dict]:
    """``(model state, optimizer state)``, every array checked finite; the optimizer's step
    counts and learning rate must each be one non-negative real number."""
    tensors = load(path, check_finite=True)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = {k[len("optimizer."):]: v for k, v in tensors.items()
                       if k.startswith("optimizer.")}
    for key, value in optimizer_state.items():
        if key in ("step", "lr") or key.endswith(".step"):
            host = backends.to_numpy(value)
            if host.dtype.kind not in "iuf" or host.size != 1 or float(host.reshape(())) < 0:
                raise _corrupt(
                    path, f"its optimizer record {key!r} is not one non-negative real number "
                          f"(dtype {host.dtype}, shape {host.shape})")
    return model_state, optimizer_state


# -- restoring ----------------------------------------------------------------------------


def _restore_all_or_nothing(path, model, optimizer, schedule, model_state: dict,
                            optimizer_state: dict, saved_schedule) -> None:
    before = Snapshot.take(model, optimizer, 0)
    schedule_before = schedule.state_dict() if schedule is not None else None
    try:
        model.load_state_dict(model_state)  # validates everything before changing anything
        optimizer.load_state_dict(optimizer_state)
        if schedule is not None and saved_schedule is not None:
            schedule.load_state_dict(saved_schedule)
    except Exception as error:
        before.restore(model, optimizer)
        if schedule is not None:
            try:
                schedule.load_state_dict(schedule_before)
            except Exception:  # pragma: no cover - restoring its own state cannot fail
                pass
        if isinstance(error, XpnnError) and not isinstance(error, ConfigError):
            raise
        raise _corrupt(path, f"{type(error).__name__}: {error}") from error
