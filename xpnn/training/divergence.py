"""Non-finite values in training: cheap detection, and an opt-in diagnosis that names the
batch and the layer.

Detection (always on): at every log point (about every ``log_seconds``, or every
``log_every`` batches) ``fit`` reads the running loss back to
the host together with a device flag saying whether every parameter is finite
(:func:`parameters_finite_flag`): one host sync in all. When a check fails, training stops with a
:class:`~xpnn.errors.TrainingStopped` naming the epoch and the batches since the last check
that passed (:func:`stopped_without_diagnosis`). Nothing here runs per batch.

Diagnosis (``fit(diagnose=True)``): ``fit`` keeps a :class:`~xpnn.training.rollback.Snapshot`
of the model and optimizer from the last check that passed. :func:`diagnose` restores it and
replays the batches since, with every module's input, parameters, output and gradients
checked (by wrapping each module's ``forward`` and the ``backprop`` it returns), names the
batch and the layer (its dotted name in ``state_dict()``) that first produced a NaN or
infinity, and leaves the model and optimizer as the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpnn import backends
from xpnn.datasets.batches import BatchLoader
from xpnn.errors import TrainingStopped, XpnnError
from xpnn.module import Module, Parameter
from xpnn.training.rollback import Snapshot

__all__ = ["all_finite", "diagnose", "parameters_finite", "parameters_finite_flag",
           "stopped_without_diagnosis"]

_HINTS = {
    "input": "Check the data for NaN/Inf (e.g. numpy.isfinite(x).all()).",
    "update": "Lower the learning rate or clip gradients (xpnn.optim.clip_grad_norm).",
}
_GENERAL_HINT = ("Lower the learning rate, check the inputs for NaN/Inf, or clip gradients "
                 "(xpnn.optim.clip_grad_norm).")


def all_finite(array) -> bool:
    """Whether a floating-point array holds only finite values (one host sync).

    Examples
    --------
    >>> import numpy as np
    >>> all_finite(np.array([1.0, np.inf])), all_finite(np.array([1, 2]))
    (False, True)
    """
    xp = backends.backend_of(array).xp
    if not xp.isdtype(array.dtype, ("real floating", "complex floating")):
        return True
    return bool(backends.to_numpy(xp.all(xp.isfinite(array))))


def parameters_finite_flag(model: Module):
    """A 0-D boolean array on the model's device, true when every floating parameter of
    ``model`` is finite (None when it has none); nothing is read back to the host."""
    flags = None
    for parameter in model.parameters():
        value = parameter.value
        xp = backends.backend_of(value).xp
        if not xp.isdtype(value.dtype, "real floating"):
            continue
        ok = xp.all(xp.isfinite(value))
        flags = ok if flags is None else xp.logical_and(flags, ok)
    return flags


def parameters_finite(model: Module) -> bool:
    """One host sync: are all parameters of ``model`` finite?"""
    flags = parameters_finite_flag(model)
    return True if flags is None else bool(backends.to_numpy(flags))


def _kept(checkpoint) -> str:
    return (f" The last good checkpoint is kept at {checkpoint}." if checkpoint
            else " Pass checkpoint= to keep the last good weights on disk.")


def stopped_without_diagnosis(epoch: int, checked: int, index: int, total: int,
                              checkpoint) -> TrainingStopped:
    """The error for a failed check without a snapshot: the value went non-finite in one
    of batches ``checked + 1 .. index + 1`` (1-based) of ``epoch`` (0-based)."""
    where = (f"at batch {index + 1} of {total}" if checked == index else
             f"between batches {checked + 1} and {index + 1} of {total} (checks run at "
             f"fit's log points: about every log_seconds, or every log_every batches)")
    return TrainingStopped(
        f"Training stopped: the loss or the parameters became NaN or infinite in epoch "
        f"{epoch + 1}, {where}. The model and optimizer were left as they are and may "
        f"hold non-finite values. To find the batch and the layer that first produced it, "
        f"run again with fit(..., diagnose=True), which keeps a copy of the model and "
        f"optimizer state in memory and replays the batches since the last good check. "
        f"{_GENERAL_HINT}{_kept(checkpoint)}",
        epoch=epoch + 1, batch=index + 1,
    )


@dataclass
class _Finding:
    batch: int  # 0-based index in the epoch
    layer: str | None
    where: str
    detail: str


def diagnose(model, optimizer, loss, loader: BatchLoader, good: Snapshot, epoch: int,
             index: int, checkpoint) -> TrainingStopped:
    """Replay batches ``good.index .. index`` of ``epoch`` from ``good`` with every value
    checked; return the error naming the first batch and layer found, with the model and
    optimizer rolled back to ``good``."""
    try:
        finding = _replay(model, optimizer, loss, loader, good, epoch, index)
    except XpnnError as error:  # the diagnosis must never hide the original problem
        finding = _Finding(index, None, "unknown", f"the replay failed ({error})")
    finally:
        good.restore(model, optimizer)
    total = len(loader)
    if finding.layer is None and finding.where == "unknown":
        where = (f"between batches {good.index + 1} and {index + 1} of {total} "
                 f"({finding.detail})")
    else:
        where = f"at batch {finding.batch + 1} of {total}: {finding.detail}"
    hint = _HINTS.get(finding.where, _GENERAL_HINT)
    return TrainingStopped(
        f"Training stopped: the loss became NaN or infinite in epoch {epoch + 1}, {where}. "
        f"The model and optimizer were rolled back to their state before batch "
        f"{good.index + 1} (the last check that found them finite). {hint}{_kept(checkpoint)}",
        epoch=epoch + 1, batch=finding.batch + 1, layer=finding.layer, where=finding.where,
    )


def _own_parameters(module: Module) -> list[tuple[str, Parameter]]:
    return [(name, value) for name, value in vars(module).items()
            if isinstance(value, Parameter) and value.value is not None]


def _label(name: str, module: Module) -> str:
    return f"layer {name!r} ({module.describe()})" if name else f"the model ({module.describe()})"


class _Probe:
    """Wraps every module's ``forward`` (and the ``backprop`` it returns) to record the
    first module whose input, parameters, output or gradients are not finite."""

    def __init__(self, model: Module):
        self.found: tuple[str, str, str] | None = None  # (layer, where, detail)
        self.installed = []
        for name, module in model.named_modules():
            previous = module.__dict__.get("forward")
            module.forward = self._wrap(name, module, module.forward)
            self.installed.append((module, previous))

    def remove(self) -> None:
        for module, previous in self.installed:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous

    def _record(self, name: str, where: str, detail: str) -> None:
        if self.found is None:
            self.found = (name, where, detail)

    def _check_parameters(self, name: str, module: Module) -> None:
        for pname, parameter in _own_parameters(module):
            if not all_finite(parameter.value):
                self._record(name, "parameters",
                             f"{_label(name, module)} has non-finite values in its parameter "
                             f"{pname!r} before the batch")

    def _check_gradients(self, name: str, module: Module, dx) -> None:
        for pname, parameter in _own_parameters(module):
            if parameter.grad is not None and not all_finite(parameter.grad):
                self._record(name, "gradient",
                             f"the gradient of {pname!r} of {_label(name, module)} became "
                             f"non-finite in the backward pass (the forward pass and the "
                             f"loss were finite)")
                return
        if hasattr(dx, "shape") and not all_finite(dx):
            self._record(name, "gradient",
                         f"the input gradient of {_label(name, module)} became non-finite in "
                         f"the backward pass (the forward pass and the loss were finite)")

    def _wrap(self, name: str, module: Module, forward):
        probe = self

        def checked_forward(x, *, train: bool = False):
            if probe.found is None:
                probe._check_parameters(name, module)
            y, backprop = forward(x, train=train)
            if probe.found is None and hasattr(y, "shape") and not all_finite(y):
                probe._record(name, "output",
                              f"{_label(name, module)} produced a non-finite output from "
                              f"finite input and parameters")

            def checked_backprop(dy, **options):  # e.g. need_input_grad=False
                dx = backprop(dy, **options)
                if probe.found is None:
                    probe._check_gradients(name, module, dx)
                return dx

            return y, checked_backprop

        return checked_forward


def _replay(model, optimizer, loss, loader: BatchLoader, good: Snapshot, epoch: int,
            last: int) -> _Finding:
    """Re-run batches ``good.index .. last`` from the snapshot with every value checked."""
    good.restore(model, optimizer)
    probe = _Probe(model)
    try:
        for index in range(good.index, last + 1):
            xb, yb = loader.batch(index, epoch)
            if not all_finite(xb):
                return _Finding(index, "", "input",
                                "the batch's input x holds NaN or infinite values")
            logits, backprop = model.forward(xb, train=True)
            if probe.found is not None:
                return _Finding(index, *probe.found)
            batch_loss, dlogits = loss(logits, yb)
            if not all_finite(batch_loss) or not all_finite(dlogits):
                return _Finding(index, None, "loss",
                                "the model's output was finite, but the loss or its "
                                "gradient was not (check the labels or targets and the loss)")
            backprop(dlogits)  # every gradient, the data's included, is checked
            if probe.found is not None:
                return _Finding(index, *probe.found)
            optimizer.step()
            optimizer.zero_grad()
            found = _first_non_finite_parameter(model)
            if found is not None:
                return _Finding(index, *found)
    finally:
        probe.remove()
    return _Finding(last, None, "unknown",
                    "replaying these batches from the last good state did not reproduce it")


def _first_non_finite_parameter(model: Module) -> tuple[str, str, str] | None:
    """``(layer, "update", detail)`` for the first parameter the optimizer step made
    non-finite, or None."""
    for name, module in model.named_modules():
        for pname, parameter in _own_parameters(module):
            if not all_finite(parameter.value):
                return (name, "update",
                        f"the optimizer step made {pname!r} of {_label(name, module)} "
                        f"non-finite although its gradient was finite (learning rate too "
                        f"high?)")
    return None
