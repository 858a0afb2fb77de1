"""Training checkpoints: one safetensors file with everything needed to continue a run.

Tensors (every value finite, checked on load):

    model.{name}       every parameter and buffer of ``model.state_dict()``
    optimizer.{name}   the optimizer's flat state dict (see :mod:`xpnn.optim`)

Metadata (strings; JSON where structured):

    kind                "xpnn-checkpoint"
    architecture        {"type": class name, "config": model.config()}
    position            {"epoch": completed epochs, "batches_done": batches of the next
                         epoch already trained, "seed", "batch_size" (the global batch:
                         ranks x the batch per rank), "num_samples",
                         "epochs": the run's ``epochs`` argument (absent before 0.2),
                         "ranks": the data-parallel ranks (absent: 1),
                         "partial": that epoch's running sums (RunningSums.state()) or null}
    history             History.to_json()
    schedule            the schedule's state_dict() or null
    optimizer_type      e.g. "SGD"
    optimizer_parameters  the model's names of the optimizer's parameters, group by group
                        (state buffers are saved by position; a resume must match them)
    random_state        the host generators' states: the global one and each layer's own
                        (Dropout), so a resumed run draws the same masks
    precision           the mixed-precision policy and loss-scaler state, or null
    optimizer_settings  the optimizer's hyperparameters() (all settings but the lr; with
                        several parameter groups, each group's and its parameter count)

:func:`save_checkpoint` writes atomically (:func:`xpnn.io.save`), so a crash leaves the old
file or the new one. :func:`restore_checkpoint` validates the whole file (every record well
formed, every array finite, the run's seed, batch size, data size and optimizer matching)
before changing anything, then restores model, optimizer and schedule together: a failed
restore leaves all three as they were (a full copy of the model and optimizer state is held
while it runs).

Every counter (epoch, batches, seed, batch size, sample counts, step counts) must be an
integer in ``[0, MAX_COUNTER]`` (2**53, the largest range a float holds exactly): a forged
``10**400`` or ``2**63 - 1`` is a :class:`~xpnn.errors.WeightsError` naming the field, never
an ``OverflowError`` later. The architecture record (:func:`xpnn.io.records.architecture_record`)
of the checkpointed model must equal the resumed model's: a model of another class or
configuration is refused even when its parameter shapes happen to match.

The schedule on resume
----------------------
The schedule passed to ``fit`` is the one used: from the checkpoint it takes only its
position, the fields named by its ``position_keys`` (``last_epoch`` and ``base_lr``, per
group; ``ReduceLROnPlateau``'s ``best`` and counters; ``OneCycleLR``'s step); its own
hyperparameters (``T_max``, ``eta_min``, ``step_size``, ``gamma``, ...) are kept, so
``CosineAnnealingLR(optimizer, T_max=new_epochs)`` continues on the new cosine from the
checkpointed epoch. One case is refused with a :class:`~xpnn.errors.ConfigError`:
resuming with another ``epochs`` than the checkpointed run while the schedule still has
``T_max`` equal to the old ``epochs`` (the period was derived from them, so the added
epochs would train at ``eta_min``); the message says to build the schedule with ``T_max``
equal to the new ``epochs``.
"""

from __future__ import annotations

import copy
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnn import backends
from xpnn.errors import ConfigError, WeightsError, XpnnError
from xpnn.io import load, load_metadata, save
from xpnn.io.records import architecture_record
from xpnn.training.history import History
from xpnn.training.rollback import Snapshot
from xpnn.validation import is_int, is_number_or_none

__all__ = ["MAX_COUNTER", "Position", "restore_checkpoint", "save_checkpoint"]

KIND = "xpnn-checkpoint"
MAX_COUNTER = 2**53  # every counter in a checkpoint is an integer in [0, MAX_COUNTER]
_SCHEDULE_POSITION_KEYS = ("last_epoch", "base_lr")  # what a resumed schedule takes over


@dataclass
class Position:
    """Where a run stands: ``epoch`` epochs completed and ``batches_done`` batches of the
    next one trained, with that epoch's running sums (``partial``, or None)."""

    epoch: int
    batches_done: int = 0
    partial: dict | None = None


def save_checkpoint(path: str | Path, model, optimizer, schedule, history: History,
                    position: Position, *, seed: int, batch_size: int,
                    num_samples: int, epochs: int | None = None, ranks: int = 1,
                    precision=None) -> None:
    """Write model, optimizer and schedule state, ``history`` and ``position`` to ``path``
    atomically (``epochs``: the run's ``epochs`` argument, recorded for resume checks;
    ``batch_size``: the global batch, ``ranks`` × the batch per rank)."""
    tensors = {f"model.{name}": value for name, value in model.state_dict().items()}
    for name, value in optimizer.state_dict().items():
        tensors[f"optimizer.{name}"] = value if hasattr(value, "shape") else np.asarray(value)
    record = {"epoch": position.epoch, "batches_done": position.batches_done, "seed": seed,
              "batch_size": batch_size, "num_samples": num_samples,
              "partial": position.partial}
    if epochs is not None:
        record["epochs"] = epochs
    if ranks != 1:
        record["ranks"] = ranks
    metadata = {
        "kind": KIND,
        "architecture": json.dumps(architecture_record(model)),
        "position": json.dumps(record),
        "history": history.to_json(),
        "schedule": json.dumps(schedule.state_dict() if schedule is not None else None),
        "optimizer_type": type(optimizer).__name__,
        "optimizer_settings": json.dumps(_settings(optimizer)),
        "optimizer_parameters": json.dumps(_optimizer_parameters(model, optimizer)),
        "random_state": json.dumps(_random_state(model)),
        "precision": json.dumps(None if precision is None else precision.state_dict()),
    }
    save(tensors, path, metadata=metadata)


def restore_checkpoint(path: str | Path, model, optimizer, schedule, *, seed: int,
                       batch_size: int, num_samples: int, batches_per_epoch: int,
                       epochs: int | None = None, ranks: int = 1,
                       precision=None) -> tuple[History, Position]:
    """Validate the whole checkpoint at ``path``, then restore model, optimizer and
    schedule together (all or nothing); return the run's history and position.

    Parameters
    ----------
    epochs : int, optional
        The resumed run's ``epochs``; compared with the checkpointed run's when the
        schedule has a ``T_max`` (see "The schedule on resume" above).
    batch_size, ranks : int
        The resumed run's global batch (``ranks`` × the batch per rank) and its number of
        ranks. The global batch must equal the checkpointed run's; the number of ranks
        may differ (the batches are the same, cut into other slices).

    Raises
    ------
    WeightsError
        The file is not a checkpoint, is corrupt, holds non-finite values or counters
        outside ``[0, MAX_COUNTER]``, or was written for another architecture.
    ConfigError
        It belongs to a run with another seed, batch size, data size or optimizer, or the
        schedule's period was derived from the old ``epochs``.
    """
    metadata = load_metadata(path)
    if metadata.get("kind") != KIND:
        raise WeightsError(
            f"{path} is not an xpnn training checkpoint (no 'kind: {KIND}' in its "
            f"metadata). Pass a file written by fit(checkpoint=...)."
        )
    position = _read_position(path, metadata)
    _check_architecture(path, metadata, model)
    _check_same_run(path, metadata, position, optimizer, seed=seed, batch_size=batch_size,
                    num_samples=num_samples, ranks=ranks, model=model)
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
    saved_schedule = _schedule_to_load(path, saved_schedule, schedule, position, epochs)
    random_state = _read_random_state(path, metadata)
    saved_precision = _read_precision(path, metadata, precision)
    model_state, optimizer_state = _read_tensors(path)
    _restore_all_or_nothing(path, model, optimizer, schedule, model_state, optimizer_state,
                            saved_schedule)
    _apply_random_state(random_state, model)
    if precision is not None and saved_precision is not None:
        precision.load_state_dict(saved_precision)
    return history, Position(position["epoch"], position["batches_done"],
                             position.get("partial"))


# -- validation ---------------------------------------------------------------------------


def _corrupt(path, problem: str) -> WeightsError:
    return WeightsError(
        f"{path} is not a usable xpnn training checkpoint: {problem}. The file is corrupt or "
        f"was not written by fit(checkpoint=...); use another checkpoint or start afresh."
    )


def _optimizer_parameters(model, optimizer) -> list[list[str]]:
    """The model's names of the optimizer's parameters, group by group: state buffers are
    saved by position, so a resume must hand them to the same parameters."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    groups = getattr(optimizer, "param_groups", None) or [{"params": optimizer.params}]
    return [[names.get(id(parameter), "?") for parameter in group["params"]]
            for group in groups]


def _random_state(model) -> dict:
    """The host generators training draws from (the global one and each layer's own, e.g.
    Dropout's), so a resumed run draws what the uninterrupted one would have."""
    layers = {name: module.generator.bit_generator.state
              for name, module in model.named_modules()
              if getattr(module, "generator", None) is not None}
    return {"global": backends.host_rng().bit_generator.state, "layers": layers}


def _read_precision(path, metadata: dict, precision) -> dict | None:
    """The saved mixed-precision state, checked against the resumed run's policy."""
    saved = _json_field(path, metadata, "precision") if "precision" in metadata else None
    saved_policy = saved.get("policy") if isinstance(saved, dict) else "float32"
    policy = "float32" if precision is None else precision.policy
    if saved_policy != policy:
        raise ConfigError(
            f"resume expected the precision of the checkpointed run, {saved_policy!r}, so "
            f"that it continues exactly. Received: precision={policy!r}"
        )
    if saved is not None and precision is not None:
        try:  # a malformed record is refused before anything is restored
            type(precision)(precision.policy).load_state_dict(saved)
        except (ConfigError, TypeError, ValueError, AttributeError) as error:
            raise _corrupt(path, f"its precision record is malformed ({error})") from None
    return saved


def _read_random_state(path, metadata: dict) -> dict | None:
    """What :func:`_random_state` saved (None in older checkpoints), each generator state
    tried on a fresh generator first, so a malformed record changes nothing."""
    if "random_state" not in metadata:
        return None
    state = _json_field(path, metadata, "random_state")
    try:
        for saved in [state["global"], *state["layers"].values()]:
            np.random.default_rng().bit_generator.state = saved
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _corrupt(path, f"its random_state record is malformed ({error})") from None
    return state


def _apply_random_state(state: dict | None, model) -> None:
    if state is None:
        return
    generators = {name: module.generator for name, module in model.named_modules()
                  if getattr(module, "generator", None) is not None}
    for name, saved in state["layers"].items():
        if name in generators:
            generators[name].bit_generator.state = saved
    backends.host_rng().bit_generator.state = state["global"]


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
    try:
        return value is not None and is_number_or_none(value) and math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def _counter_problem(field: str, value) -> str:
    """"" when ``value`` is an integer in ``[0, MAX_COUNTER]``, else what is wrong."""
    if is_int(value, 0) and value <= MAX_COUNTER:
        return ""
    shown = repr(value) if len(repr(value)) <= 40 else f"an integer of {len(str(value))} digits"
    return (f"its counter {field!r} expected an integer in [0, 2**53]. "
            f"Received: {shown}")


def _check_counters(path, position) -> None:
    """Every counter present in the position record is in range (WeightsError naming it)."""
    if not isinstance(position, dict):
        return
    fields = [(key, position[key]) for key in
              ("epoch", "batches_done", "seed", "batch_size", "num_samples", "epochs", "ranks")
              if key in position]
    partial = position.get("partial")
    if isinstance(partial, dict):
        fields += [(f"partial.{key}", partial[key]) for key in ("count", "batches")
                   if key in partial]
    for field, value in fields:
        problem = _counter_problem(field, value)
        if problem:
            raise WeightsError(f"{path} is not a usable xpnn training checkpoint: {problem}. "
                               f"The file is corrupt or was forged; use another checkpoint "
                               f"or start afresh.")


def _read_position(path, metadata: dict) -> dict:
    position = _json_field(path, metadata, "position")
    _check_counters(path, position)
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
    if ok and "epochs" in position:
        ok = is_int(position["epochs"], 0)
    if ok and "ranks" in position:
        ok = is_int(position["ranks"], 1)
    if not ok:
        raise _corrupt(
            path, f"its position record is malformed (expected non-negative integers epoch, "
                  f"batches_done, seed, batch_size and a partial-epoch record). Received: "
                  f"{metadata['position'][:200]!r}")
    return position


def _check_architecture(path, metadata: dict, model) -> None:
    """The checkpoint's architecture record equals the model's (WeightsError naming both
    and the first field where they differ)."""
    if "architecture" not in metadata:
        return  # checkpoints always have one; the shape checks of load_state_dict still run
    saved = _json_field(path, metadata, "architecture")
    expected = json.loads(json.dumps(architecture_record(model)))
    if saved != expected:
        where, ours, theirs = _first_difference(expected, saved)
        saved_type = saved.get("type") if isinstance(saved, dict) else type(saved).__name__
        raise WeightsError(
            f"resume expected a checkpoint of the model being trained (a {expected['type']}). "
            f"Received: {path}, a checkpoint of another architecture (a {saved_type}): "
            f"{where or 'the record'} is {_short(theirs)} in the checkpoint and "
            f"{_short(ours)} in the model (architecture mismatch). Build the model the "
            f"checkpoint was written for, or start afresh without resume."
        )


def _first_difference(a, b, where: str = "") -> tuple[str, object, object]:
    """``(dotted path, a's value, b's value)`` at the first place ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                return _first_difference(a.get(key, _MISSING), b.get(key, _MISSING),
                                         f"{where}.{key}" if where else str(key))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}[{index}]")
    return where, a, b


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _short(value, limit: int = 120) -> str:
    text = repr(value) if isinstance(value, _Missing) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_same_run(path, metadata: dict, position: dict, optimizer, *, seed: int,
                    batch_size: int, num_samples: int, ranks: int = 1, model=None) -> None:
    saved_ranks = position.get("ranks", 1)
    if position["seed"] == seed and position["batch_size"] != batch_size \
            and max(saved_ranks, ranks) > 1:
        saved = position["batch_size"]
        per_rank = f" = {ranks} ranks x {saved // ranks}" if saved % ranks == 0 else ""
        raise ConfigError(
            f"resume expected the global batch of the checkpointed run, {saved} "
            f"({saved_ranks} ranks x {saved // saved_ranks} samples per rank), so the batch "
            f"order continues exactly. Received: a global batch of {batch_size} ({ranks} "
            f"ranks x {batch_size // ranks}). Pass a batch size per rank that makes the global "
            f"batch {saved}{per_rank}" + ("" if per_rank else
                                            f" (not possible with {ranks} ranks)")
        )
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
    if "optimizer_parameters" in metadata and model is not None:
        saved = _json_field(path, metadata, "optimizer_parameters")
        mine = _optimizer_parameters(model, optimizer)
        if saved != mine:
            raise ConfigError(
                f"resume expected the optimizer's parameters in the groups and order of the "
                f"checkpointed run (its state is saved by position): {saved}. Received: "
                f"{mine}. Build the optimizer's parameter groups as in that run."
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
    for key, value in (state.items() if isinstance(state, dict) else ()):
        for item in (value if isinstance(value, list) else [value]):
            if is_int(item):
                problem = _counter_problem(f"schedule.{key}", item)
                if problem:
                    raise _corrupt(path, problem)
    if state is not None and not (
        isinstance(state, dict) and all(
            isinstance(key, str) and _schedule_value(value) for key, value in state.items())
    ):
        raise _corrupt(path, f"its schedule record is not a dict of finite numbers (or lists "
                             f"of them, strings, booleans, null). Received: "
                             f"{metadata['schedule'][:200]!r}")
    return state


def _schedule_value(value) -> bool:
    """A value a schedule state may hold: a finite number, a list of them (one per
    parameter group, milestones), a string or boolean setting, or None."""
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, list):
        return all(_finite_number(item) for item in value)
    return _finite_number(value)


def _schedule_to_load(path, saved: dict | None, schedule, position: dict,
                      epochs: int | None):
    """The state to load into ``schedule``: the checkpoint's position (the schedule's
    ``position_keys``, by default ``last_epoch`` and ``base_lr``) with the passed
    schedule's own hyperparameters; a ConfigError when the schedule's ``T_max`` is still
    the old run's ``epochs`` but ``epochs`` changed."""
    if saved is None or schedule is None:
        return saved
    own = schedule.state_dict()
    if set(own) != set(saved):
        return saved  # another schedule type: load_state_dict names the keys
    try:  # check every saved field, without touching the optimizer
        if hasattr(schedule, "check_state_dict"):
            schedule.check_state_dict(saved)
        else:
            trial = copy.copy(schedule)
            trial.optimizer = types.SimpleNamespace(lr=0.0)
            trial.load_state_dict(saved)
    except WeightsError as error:  # it names the field
        raise _corrupt(path, str(error)) from None
    old_epochs, t_max = position.get("epochs"), own.get("T_max")
    if (epochs is not None and old_epochs is not None and epochs != old_epochs
            and t_max is not None and t_max == old_epochs and saved.get("T_max") == t_max):
        raise ConfigError(
            f"resume expected a {type(schedule).__name__} built for the new run: the "
            f"checkpointed run had epochs={old_epochs} and T_max={t_max}, so with "
            f"epochs={epochs} the added epochs would train at the final learning rate. "
            f"Received: T_max={t_max}. Build the schedule with T_max={epochs} (it continues "
            f"from epoch {saved.get('last_epoch')} on the new cosine), or resume with "
            f"epochs={old_epochs}."
        )
    position_keys = getattr(schedule, "position_keys", _SCHEDULE_POSITION_KEYS)
    return {key: (saved[key] if key in position_keys else own[key]) for key in own}


def _read_tensors(path) -> tuple[dict, dict]:
    """``(model state, optimizer state)``, every array checked finite; the optimizer's step
    counts and learning rates (``lr``, ``group.{k}.lr``) must each be one non-negative real
    number."""
    tensors = load(path, check_finite=True)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = {k[len("optimizer."):]: v for k, v in tensors.items()
                       if k.startswith("optimizer.")}
    for key, value in optimizer_state.items():
        if key in ("step", "lr") or key.endswith((".step", ".lr")):
            host = backends.to_numpy(value)
            if host.dtype.kind not in "iuf" or host.size != 1 or float(host.reshape(())) < 0:
                raise _corrupt(
                    path, f"its optimizer record {key!r} is not one non-negative real number "
                          f"(dtype {host.dtype}, shape {host.shape})")
            if not key.endswith("lr") and float(host.reshape(())) > MAX_COUNTER:
                raise _corrupt(path, _counter_problem(f"optimizer.{key}",
                                                      host.reshape(()).item()))
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
