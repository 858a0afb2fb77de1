"""Non-finite values in training: cheap detection, and a diagnosis that names the layer.

:func:`xpnn.training.fit` checks the loss and the parameters every ``log_every`` batches
(one host sync) and keeps a :class:`Snapshot` of the model and optimizer state from the
last check that passed. When a check fails, :func:`non_finite_error` replays the batches
since that snapshot with every module's input, parameters, output and gradients checked
(by wrapping each module's ``forward`` and the ``backprop`` it returns), names the batch
and the layer (its dotted name in ``state_dict()``) that first produced a NaN or infinity,
and leaves the model and optimizer as the snapshot. Nothing here runs per batch in normal
training.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpnn import backends
from xpnn.datasets.batches import BatchLoader
from xpnn.errors import TrainingStopped, XpnnError
from xpnn.module import Module, Parameter


def all_finite(array) -> bool:
    """Whether a floating-point array holds only finite values (one host sync)."""
    xp = _namespace(array)
    if not xp.isdtype(array.dtype, ("real floating", "complex floating")):
        return True
    return bool(backends.to_numpy(xp.all(xp.isfinite(array))))


def _namespace(array):
    import array_api_compat

    return array_api_compat.array_namespace(array)


def parameters_finite(model: Module) -> bool:
    """One host sync: are all parameters of ``model`` finite?"""
    flags = None
    for parameter in model.parameters():
        value = parameter.value
        xp = _namespace(value)
        if not xp.isdtype(value.dtype, "real floating"):
            continue
        ok = xp.all(xp.isfinite(value))
        flags = ok if flags is None else xp.logical_and(flags, ok)
    return True if flags is None else bool(backends.to_numpy(flags))


@dataclass
class Snapshot:
    """Copies of the model and optimizer state (and the epoch's running sums) before batch
    ``index`` of an epoch."""

    index: int
    model_state: dict
    optimizer_state: dict
    sums_state: dict | None = None

    @classmethod
    def take(cls, model: Module, optimizer, index: int, sums=None) -> Snapshot:
        xp = model.backend.xp
        state = {name: xp.asarray(value, copy=True) for name, value in model.state_dict().items()}
        return cls(index, state, optimizer.state_dict(), None if sums is None else sums.state())

    def restore(self, model: Module, optimizer) -> None:
        model.load_state_dict(self.model_state)
        optimizer.load_state_dict(self.optimizer_state)
        optimizer.zero_grad()
        model.zero_grad()


@dataclass
class _Finding:
    batch: int  # 0-based index in the epoch
    layer: str | None
    where: str
    detail: str


def non_finite_error(model, optimizer, loss, loader, good: Snapshot, epoch: int, index: int,
                checkpoint) -> TrainingStopped:
    try:
        finding = _replay(model, optimizer, loss, loader, good, epoch, index)
    except XpnnError as error:  # the diagnosis must never hide the original problem
        finding = _Finding(index, None, "unknown", f"the replay failed ({error})")
    finally:
        good.restore(model, optimizer)
    kept = (f" The last good checkpoint is kept at {checkpoint}." if checkpoint
            else " Pass checkpoint= to keep the last good weights on disk.")
    total = len(loader)
    if finding.layer is None and finding.where == "unknown":
        where = (f"between batches {good.index + 1} and {index + 1} of {total} "
                 f"({finding.detail})")
    else:
        where = f"at batch {finding.batch + 1} of {total}: {finding.detail}"
    hint = {
        "input": "Check the data for NaN/Inf (e.g. numpy.isfinite(x).all()).",
        "update": "Lower the learning rate or clip gradients (xpnn.optim.clip_grad_norm).",
    }.get(finding.where, "Lower the learning rate, check the inputs for NaN/Inf, or clip "
                         "gradients (xpnn.optim.clip_grad_norm).")
    return TrainingStopped(
        f"Training stopped: the loss became NaN or infinite in epoch {epoch + 1}, {where}. "
        f"The model and optimizer were rolled back to their state before batch "
        f"{good.index + 1} (the last check that found them finite). {hint}{kept}",
        epoch=epoch + 1, batch=finding.batch + 1, layer=finding.layer, where=finding.where,
    )


def _named_modules(model: Module, prefix: str = ""):
    yield prefix, model
    for name, child in model.named_children():
        yield from _named_modules(child, f"{prefix}{name}" if not prefix else f"{prefix}.{name}")


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
        for name, module in _named_modules(model):
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

    def _wrap(self, name: str, module: Module, forward):
        probe = self

        def checked_forward(x, *, train: bool = False):
            if probe.found is None:
                for pname, parameter in _own_parameters(module):
                    if not all_finite(parameter.value):
                        probe._record(name, "parameters",
                                      f"{_label(name, module)} has non-finite values in its "
                                      f"parameter {pname!r} before the batch")
            y, backprop = forward(x, train=train)
            if probe.found is None and hasattr(y, "shape") and not all_finite(y):
                probe._record(name, "output",
                              f"{_label(name, module)} produced a non-finite output from "
                              f"finite input and parameters")

            def checked_backprop(dy, **options):  # e.g. need_input_grad=False
                dx = backprop(dy, **options)
                if probe.found is None:
                    for pname, parameter in _own_parameters(module):
                        if parameter.grad is not None and not all_finite(parameter.grad):
                            probe._record(name, "gradient",
                                          f"the gradient of {pname!r} of {_label(name, module)} "
                                          f"became non-finite in the backward pass (the "
                                          f"forward pass and the loss were finite)")
                            break
                if probe.found is None and hasattr(dx, "shape") and not all_finite(dx):
                    probe._record(name, "gradient",
                                  f"the input gradient of {_label(name, module)} became "
                                  f"non-finite in the backward pass (the forward pass and "
                                  f"the loss were finite)")
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
            backprop(dlogits)
            if probe.found is not None:
                return _Finding(index, *probe.found)
            optimizer.step()
            optimizer.zero_grad()
            for name, module in _named_modules(model):
                for pname, parameter in _own_parameters(module):
                    if not all_finite(parameter.value):
                        return _Finding(index, name, "update",
                                        f"the optimizer step made {pname!r} of "
                                        f"{_label(name, module)} non-finite although its "
                                        f"gradient was finite (learning rate too high?)")
    finally:
        probe.remove()
    return _Finding(last, None, "unknown",
                    "replaying these batches from the last good state did not reproduce it")
