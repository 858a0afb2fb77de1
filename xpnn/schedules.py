"""Learning-rate schedules: set the learning rate of every parameter group of an optimizer
from the epoch (or batch) number, or from a validation metric.

Call ``schedule.step()`` after the optimizer steps it follows, as with
``torch.optim.lr_scheduler``: once per epoch for schedules whose ``interval`` is
``"epoch"`` (the default), after every optimizer step for those whose ``interval`` is
``"batch"`` (:class:`OneCycleLR`). :class:`ReduceLROnPlateau` has ``needs_metric = True``
and is stepped once per epoch with the validation loss, ``schedule.step(loss)``.

Creating a closed-form schedule records each group's current learning rate as that group's
base lr (``base_lrs``, as PyTorch's per-group ``base_lrs``; ``base_lr`` is the first's) and
sets epoch 0. With ``b`` a group's base lr and ``t`` the epoch (batch for OneCycleLR):

    StepLR             lr_t = b gamma^floor(t / step_size)
    MultiStepLR        lr_t = b gamma^(number of milestones <= t)
    CosineAnnealingLR  lr_t = eta_min + (b - eta_min) (1 + cos(pi t / T_max)) / 2
                       (Loshchilov & Hutter 2017, SGDR, Eq. 5, without restarts)
    LinearWarmup       lr_t = b (f + (1 - f) t / w) for t < w, then the schedule ``after``
                       at t - w (or b): PyTorch's SequentialLR([LinearLR(f, total_iters=w),
                       after], milestones=[w])  (Goyal et al. 2017, Sec. 2.2)
    OneCycleLR         from max_lr/div_factor up to max_lr over pct_start of the steps, then
                       down to max_lr/(div_factor final_div_factor), by half cosines or
                       lines (Smith & Topin 2019, "Super-Convergence")
    ReduceLROnPlateau  lr *= factor (not below min_lr) after more than ``patience`` epochs
                       without improvement of the metric, then ``cooldown`` epochs of rest

so resuming a closed-form schedule only needs the epoch: ``state_dict()`` is a dict of
plain Python values (numbers; a list of numbers per group when the optimizer has several
groups; strings and None where noted).

:meth:`LRSchedule.load_state_dict` treats its input as untrusted: integers must lie in
``[0, 2**53]`` and the learning rate they give must be a finite number, else a
:class:`~xpnn.errors.WeightsError` names the field. A learning rate that overflows later
(``StepLR`` with ``gamma > 1`` over many epochs) is a :class:`~xpnn.errors.ConfigError`,
never a bare ``OverflowError``. How ``fit`` combines a checkpointed schedule state with the
schedule it is given on resume is described in :mod:`xpnn.training.checkpoint` (the passed
schedule's hyperparameters are kept; only its ``position_keys`` are restored).
"""

from __future__ import annotations

import bisect
import copy
import math

from xpnn.errors import ConfigError, WeightsError
from xpnn.validation import integer, is_int, number, positive_int

__all__ = [
    "CosineAnnealingLR",
    "LRSchedule",
    "LinearWarmup",
    "MultiStepLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "StepLR",
]

MAX_COUNTER = 2**53  # the largest integer a schedule state may hold (exact as a float)


def _non_negative(who: str, name: str, value) -> float:
    return number(who, name, value, low=0.0)


def _non_negative_int(who: str, name: str, value) -> int:
    return integer(who, name, value, low=0)


def _positive(who: str, name: str, value) -> float:
    return number(who, name, value, low=0.0, low_inclusive=False)


def _fraction(who: str, name: str, value) -> float:
    return number(who, name, value, low=0.0, high=1.0)


def _choice(*options: str):
    def check(who: str, name: str, value) -> str:
        if value not in options:
            raise ConfigError(f"{who} expected {name} to be one of {list(options)}. "
                              f"Received: {name}={value!r}")
        return value
    return check


def _boolean(who: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{who} expected {name} to be True or False. "
                          f"Received: {name}={value!r}")
    return value


def _milestones(who: str, name: str, value) -> list[int]:
    if not isinstance(value, list | tuple) or not all(is_int(m, 0) for m in value):
        raise ConfigError(f"{who} expected {name} to be a list of integers >= 0. "
                          f"Received: {name}={value!r}")
    return sorted(int(m) for m in value)


def _per_group(who: str, name: str, value, groups: int, check=_non_negative) -> list[float]:
    """One number (one group) or a list of ``groups`` numbers, as a list."""
    if groups == 1 and not isinstance(value, list | tuple):
        return [check(who, name, value)]
    if not isinstance(value, list | tuple) or len(value) != groups:
        raise ConfigError(
            f"{who} expected {name} to be a list of {groups} numbers, one per parameter "
            f"group. Received: {name}={value!r}"
        )
    return [check(who, f"{name}[{k}]", v) for k, v in enumerate(value)]


def _one_or_list(values: list[float]):
    """How a per-group value appears in a state dict: a number for one group."""
    return values[0] if len(values) == 1 else list(values)


def _current_lrs(who: str, optimizer) -> list[float]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is not None:
        return [float(group["lr"]) for group in groups]
    if not hasattr(optimizer, "lr"):
        raise ConfigError(
            f"{who} expected an optimizer with an lr attribute (or param_groups), e.g. "
            f"xpnn.optim.SGD. Received: {type(optimizer).__name__}"
        )
    return [float(optimizer.lr)]


def _set_lrs(optimizer, lrs: list[float]) -> None:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        optimizer.lr = lrs[0]
        return
    for group, lr in zip(groups, lrs, strict=True):
        group["lr"] = lr


class LRSchedule:
    """Base class: subclasses define ``_lr(epoch, base_lr)`` (one group's learning rate)
    and the checks of their own hyperparameters (``_rules``: name -> check).

    Attributes read by training loops: ``interval`` (``"epoch"`` or ``"batch"``: when to
    call ``step()``) and ``needs_metric`` (``step(metric)`` takes the validation loss).
    ``position_keys`` are the state-dict fields a resumed run takes from a checkpoint.
    """

    interval = "epoch"
    needs_metric = False
    composable = False  # usable as LinearWarmup's ``after``
    position_keys: tuple[str, ...] = ("last_epoch", "base_lr")
    _rules: dict = {}

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lrs = self._initial_base_lrs(optimizer)
        self.last_epoch = 0
        self._apply()

    def _initial_base_lrs(self, optimizer) -> list[float]:
        return _current_lrs(type(self).__name__, optimizer)

    @property
    def base_lr(self) -> float:
        """The first group's base learning rate."""
        return self.base_lrs[0]

    def _lr(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError

    def _lrs(self, epoch: int) -> list[float]:
        return [self._lr(epoch, base_lr) for base_lr in self.base_lrs]

    def lr_at(self, epoch: int) -> float:
        """The first group's learning rate at ``epoch``."""
        return self._lrs(epoch)[0]

    def step(self) -> float:
        """Advance one epoch (one batch when ``interval == "batch"``) and set every
        group's learning rate; return the first group's."""
        self.last_epoch += 1
        try:
            return self._apply()
        except ConfigError:
            self.last_epoch -= 1
            raise

    def _apply(self) -> float:
        lrs = self._finite_lrs()
        _set_lrs(self.optimizer, lrs)
        return lrs[0]

    def _finite_lrs(self) -> list[float]:
        """``_lrs(last_epoch)`` as floats, or a ConfigError when one is not finite."""
        try:
            lrs = [float(lr) for lr in self._lrs(self.last_epoch)]
        except (OverflowError, ZeroDivisionError):
            lrs = [math.inf]
        if not all(math.isfinite(lr) for lr in lrs):
            raise ConfigError(
                f"{type(self).__name__} expected hyperparameters that give a finite learning "
                f"rate. Received: {self._config()}, base_lr={_one_or_list(self.base_lrs)} "
                f"at epoch {self.last_epoch}, which overflows"
            )
        return lrs

    def get_last_lr(self) -> float:
        """The first group's learning rate set by the last ``step()`` (or at creation)."""
        return self.get_last_lrs()[0]

    def get_last_lrs(self) -> list[float]:
        """Every group's learning rate set by the last ``step()`` (PyTorch's
        ``get_last_lr()``)."""
        return self._lrs(self.last_epoch)

    # -- saving and resuming ------------------------------------------------------------
    def _position(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lr": _one_or_list(self.base_lrs)}

    def state_dict(self) -> dict:
        """``{"last_epoch": int, "base_lr": float (a list with several groups), ...}``
        and the hyperparameters, plain Python values."""
        return {**self._position(), **self._config()}

    def _convert(self, name: str, value):
        who = type(self).__name__
        if name == "base_lr":
            return _per_group(who, name, value, len(self.base_lrs))
        if name == "last_epoch":
            return _non_negative_int(who, name, value)
        return self._rules[name](who, name, value)

    def check_state_dict(self, state: dict) -> dict:
        """``state`` checked and converted (a :class:`WeightsError` naming the field when
        it is not a state of this schedule); changes nothing."""
        who = type(self).__name__
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise WeightsError(
                f"Cannot load the schedule state into {who}: missing keys "
                f"{missing}, unexpected keys {unexpected}. Check that it was saved from the "
                f"same schedule type."
            )
        converted = {}
        for name, value in state.items():  # check everything before changing anything
            try:
                converted[name] = self._convert(name, value)
            except ConfigError as error:
                raise WeightsError(f"Cannot load the schedule state: {error}") from None
            numbers = converted[name] if isinstance(converted[name], list) else [converted[name]]
            if any(is_int(n) and n > MAX_COUNTER for n in numbers):
                raise WeightsError(
                    f"Cannot load the schedule state: {who} expected {name} to be an integer "
                    f"in [0, 2**53]. Received: an integer of {len(str(value))} digits"
                )
        trial = copy.copy(self)
        trial._assign(converted)
        try:
            trial._finite_lrs()
        except ConfigError as error:
            raise WeightsError(f"Cannot load the schedule state: {error}") from None
        return converted

    def _assign(self, converted: dict) -> None:
        for name, value in converted.items():
            setattr(self, "base_lrs" if name == "base_lr" else name, value)

    def load_state_dict(self, state: dict) -> LRSchedule:
        """Restore a :meth:`state_dict` and set the optimizer's learning rates to match."""
        self._assign(self.check_state_dict(state))
        self._apply()
        return self

    def _config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v}" for k, v in self._config().items())
        return f"{type(self).__name__}({config}, last_epoch={self.last_epoch})"


class StepLR(LRSchedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    >>> schedule = StepLR(opt, step_size=2, gamma=0.5)
    >>> [schedule.step() for _ in range(4)]
    [1.0, 0.5, 0.5, 0.25]
    """

    composable = True
    _rules = {"step_size": positive_int, "gamma": _non_negative}

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        who = type(self).__name__
        self.step_size = positive_int(who, "step_size", step_size)
        self.gamma = _non_negative(who, "gamma", gamma)
        super().__init__(optimizer)

    def _lr(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)

    def _config(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(LRSchedule):
    """Multiply the learning rate by ``gamma`` at each epoch of ``milestones``, as
    ``torch.optim.lr_scheduler.MultiStepLR`` (a milestone listed twice counts twice).

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    >>> schedule = MultiStepLR(opt, milestones=[2, 3], gamma=0.5)
    >>> [schedule.step() for _ in range(4)]
    [1.0, 0.5, 0.25, 0.25]
    """

    composable = True
    _rules = {"milestones": _milestones, "gamma": _non_negative}

    def __init__(self, optimizer, milestones, gamma: float = 0.1):
        who = type(self).__name__
        self.milestones = _milestones(who, "milestones", milestones)
        self.gamma = _non_negative(who, "gamma", gamma)
        super().__init__(optimizer)

    def _lr(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def _config(self) -> dict:
        return {"milestones": list(self.milestones), "gamma": self.gamma}


class CosineAnnealingLR(LRSchedule):
    """Anneal the learning rate from ``base_lr`` to ``eta_min`` along half a cosine over
    ``T_max`` epochs (it rises again after ``T_max``, as in PyTorch).

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    >>> schedule = CosineAnnealingLR(opt, T_max=2)
    >>> [round(schedule.step(), 6) for _ in range(2)]
    [0.5, 0.0]
    """

    composable = True
    _rules = {"T_max": positive_int, "eta_min": _non_negative}

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (PyTorch)
        who = type(self).__name__
        self.T_max = positive_int(who, "T_max", T_max)
        self.eta_min = _non_negative(who, "eta_min", eta_min)
        super().__init__(optimizer)

    def _lr(self, epoch: int, base_lr: float) -> float:
        cosine = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return self.eta_min + (base_lr - self.eta_min) * cosine

    def _config(self) -> dict:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(LRSchedule):
    """Raise the learning rate linearly from ``start_factor * base_lr`` to ``base_lr``
    over ``warmup_epochs`` epochs, then follow the schedule ``after`` (shifted by
    ``warmup_epochs``), or stay at ``base_lr`` without one.

    Equal to PyTorch's ``SequentialLR(optimizer, [LinearLR(optimizer, start_factor,
    total_iters=warmup_epochs), after], milestones=[warmup_epochs])``. ``after`` is a
    :class:`StepLR`, :class:`MultiStepLR` or :class:`CosineAnnealingLR` built on the same
    optimizer just before (its base lrs are the warm-up's); build a cosine with
    ``T_max = epochs - warmup_epochs`` to end at ``eta_min``. ``start_factor`` may be 0
    (PyTorch's LinearLR needs it > 0).

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    >>> schedule = LinearWarmup(opt, 2, start_factor=0.5,
    ...                         after=CosineAnnealingLR(opt, T_max=2))
    >>> [opt.lr] + [round(schedule.step(), 6) for _ in range(4)]
    [0.5, 0.75, 1.0, 0.5, 0.0]
    """

    _base_rules = {"warmup_epochs": positive_int, "start_factor": _fraction}

    def __init__(self, optimizer, warmup_epochs: int, start_factor: float = 1.0 / 3.0,
                 after: LRSchedule | None = None):
        who = type(self).__name__
        self.warmup_epochs = positive_int(who, "warmup_epochs", warmup_epochs)
        self.start_factor = _fraction(who, "start_factor", start_factor)
        if after is not None and not (isinstance(after, LRSchedule) and after.composable):
            raise ConfigError(
                f"{who} expected after to be a StepLR, MultiStepLR or CosineAnnealingLR (a "
                f"closed-form epoch schedule). Received: after={after!r}"
            )
        if after is not None and after.optimizer is not optimizer:
            raise ConfigError(
                f"{who} expected after to be built on the same optimizer. Received: a "
                f"{type(after).__name__} of another optimizer"
            )
        self.after = after
        super().__init__(optimizer)

    def _initial_base_lrs(self, optimizer) -> list[float]:
        if self.after is not None:
            return list(self.after.base_lrs)
        return super()._initial_base_lrs(optimizer)

    @property
    def _rules(self) -> dict:
        inner = {} if self.after is None else self.after._rules
        return {**self._base_rules, **{f"after.{k}": v for k, v in inner.items()}}

    def _lr(self, epoch: int, base_lr: float) -> float:
        if epoch < self.warmup_epochs:
            return base_lr * (self.start_factor
                              + (1.0 - self.start_factor) * epoch / self.warmup_epochs)
        if self.after is None:
            return base_lr
        return self.after._lr(epoch - self.warmup_epochs, base_lr)

    def _apply(self) -> float:
        if self.after is not None:  # keep the inner schedule's own view consistent
            self.after.last_epoch = max(0, self.last_epoch - self.warmup_epochs)
            self.after.base_lrs = self.base_lrs
        return super()._apply()

    def _assign(self, converted: dict) -> None:
        for name, value in converted.items():
            if name.startswith("after."):
                setattr(self.after, name[len("after."):], value)
            else:
                setattr(self, "base_lrs" if name == "base_lr" else name, value)

    def __copy__(self) -> LinearWarmup:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        if self.after is not None:
            clone.after = copy.copy(self.after)
        return clone

    def _config(self) -> dict:
        inner = {} if self.after is None else self.after._config()
        return {"warmup_epochs": self.warmup_epochs, "start_factor": self.start_factor,
                **{f"after.{k}": v for k, v in inner.items()}}

    def __repr__(self) -> str:
        return (f"LinearWarmup(warmup_epochs={self.warmup_epochs}, start_factor="
                f"{self.start_factor}, after={self.after!r}, last_epoch={self.last_epoch})")


class OneCycleLR(LRSchedule):
    """The 1cycle policy (Smith & Topin 2019), exactly as
    ``torch.optim.lr_scheduler.OneCycleLR`` with ``cycle_momentum=False``; stepped after
    every batch (``interval = "batch"``).

    Each group starts at ``max_lr / div_factor``, rises to ``max_lr`` over the first
    ``pct_start`` of ``total_steps`` and falls to ``max_lr / (div_factor *
    final_div_factor)`` by the last step, along half cosines (``anneal_strategy="cos"``)
    or lines (``"linear"``). With ``three_phase=True`` it first falls back to the start
    value symmetrically, then to the minimum. The optimizer's own lr is ignored, as in
    PyTorch; ``max_lr`` is one number or a list with one per group. ``total_steps`` is
    given, or ``epochs * steps_per_epoch``. Stepping past ``total_steps`` is a
    :class:`~xpnn.errors.ConfigError`. The momentum is not cycled.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=0.1)
    >>> schedule = OneCycleLR(opt, max_lr=1.0, total_steps=4, pct_start=0.5,
    ...                       anneal_strategy="linear", div_factor=10, final_div_factor=10)
    >>> [opt.lr] + [round(schedule.step(), 6) for _ in range(3)]
    [0.1, 1.0, 0.505, 0.01]
    """

    interval = "batch"
    position_keys = ("last_epoch",)
    _rules = {"total_steps": positive_int, "pct_start": _fraction,
              "anneal_strategy": _choice("cos", "linear"), "div_factor": _positive,
              "final_div_factor": _positive, "three_phase": _boolean}

    def __init__(self, optimizer, max_lr, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False):
        who = type(self).__name__
        groups = len(_current_lrs(who, optimizer))
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ConfigError(
                    f"{who} expected total_steps, or epochs and steps_per_epoch. Received: "
                    f"total_steps=None, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r}"
                )
            total_steps = (positive_int(who, "epochs", epochs)
                           * positive_int(who, "steps_per_epoch", steps_per_epoch))
        self.total_steps = positive_int(who, "total_steps", total_steps)
        if isinstance(max_lr, list | tuple):
            self.max_lrs = _per_group(who, "max_lr", max_lr, groups, _positive)
        else:  # one value for every group, as in PyTorch
            self.max_lrs = [_positive(who, "max_lr", max_lr)] * groups
        self.pct_start = _fraction(who, "pct_start", pct_start)
        self.anneal_strategy = self._rules["anneal_strategy"](who, "anneal_strategy",
                                                              anneal_strategy)
        self.div_factor = _positive(who, "div_factor", div_factor)
        self.final_div_factor = _positive(who, "final_div_factor", final_div_factor)
        self.three_phase = _boolean(who, "three_phase", three_phase)
        super().__init__(optimizer)

    def _initial_base_lrs(self, optimizer) -> list[float]:
        return [max_lr / self.div_factor for max_lr in self.max_lrs]

    def _lrs(self, epoch: int) -> list[float]:
        if epoch > self.total_steps:
            raise ConfigError(
                f"{type(self).__name__} expected at most total_steps={self.total_steps} "
                f"steps. Received: step {epoch}. Build it with the run's number of batches "
                f"(epochs * steps_per_epoch)."
            )
        return [self._one(epoch, max_lr) for max_lr in self.max_lrs]

    def _one(self, step: int, max_lr: float) -> float:
        initial = max_lr / self.div_factor
        low = initial / self.final_div_factor
        rise = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            phases = [(rise, initial, max_lr),
                      (float(2 * self.pct_start * self.total_steps) - 2, max_lr, initial),
                      (self.total_steps - 1, initial, low)]
        else:
            phases = [(rise, initial, max_lr), (self.total_steps - 1, max_lr, low)]
        start_step = 0.0
        for index, (end_step, start, end) in enumerate(phases):
            if step <= end_step or index == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.anneal_strategy == "cos":
                    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (end - start) * pct + start
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover

    def _position(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def _convert(self, name: str, value):
        if name == "max_lr":
            return _per_group(type(self).__name__, name, value, len(self.max_lrs), _positive)
        return super()._convert(name, value)

    def _assign(self, converted: dict) -> None:
        for name, value in converted.items():
            setattr(self, "max_lrs" if name == "max_lr" else name, value)
        self.base_lrs = [max_lr / self.div_factor for max_lr in self.max_lrs]

    def _config(self) -> dict:
        return {"max_lr": _one_or_list(self.max_lrs), "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase}


def _best(who: str, name: str, value):
    if value is None:
        return None
    return number(who, name, value)


class ReduceLROnPlateau(LRSchedule):
    """Multiply every group's learning rate by ``factor`` when a metric has stopped
    improving, exactly as ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    Call ``step(metric)`` once per epoch with the validation loss (``needs_metric =
    True``). The metric improves when it is below ``best * (1 - threshold)`` (mode
    ``"min"``, ``threshold_mode="rel"``), below ``best - threshold`` (``"abs"``), or above
    ``best * (1 + threshold)`` / ``best + threshold`` in mode ``"max"``. After more than
    ``patience`` epochs without improvement each group's lr becomes ``max(lr * factor,
    min_lr)`` (unchanged when that changes it by ``eps`` or less), and the next
    ``cooldown`` epochs count no bad epochs. The learning rates live in the optimizer (and
    its state dict); this schedule's state is its counters and ``best`` (None before the
    first finite metric).

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> from xpnn.optim import SGD
    >>> opt = SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    >>> schedule = ReduceLROnPlateau(opt, factor=0.5, patience=1)
    >>> [schedule.step(loss) for loss in [3.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    """

    needs_metric = True
    position_keys = ("last_epoch", "best", "num_bad_epochs", "cooldown_counter")
    _rules = {"best": _best, "num_bad_epochs": _non_negative_int,
              "cooldown_counter": _non_negative_int, "mode": _choice("min", "max"),
              "factor": lambda who, name, value: number(who, name, value, low=0.0, high=1.0,
                                                        high_inclusive=False),
              "patience": _non_negative_int, "threshold": _non_negative,
              "threshold_mode": _choice("rel", "abs"), "cooldown": _non_negative_int,
              "min_lr": _non_negative, "eps": _non_negative}

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, eps: float = 1e-8):
        who = type(self).__name__
        arguments = {"mode": mode, "factor": factor, "patience": patience,
                     "threshold": threshold, "threshold_mode": threshold_mode,
                     "cooldown": cooldown, "min_lr": min_lr, "eps": eps}
        for name, value in arguments.items():
            setattr(self, name, self._rules[name](who, name, value))
        _current_lrs(who, optimizer)  # an optimizer with learning rates
        self.optimizer = optimizer
        self.base_lrs = []
        self.last_epoch = 0
        self.best = self._worst()
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _improves(self, metric: float) -> bool:
        best, threshold = self.best, self.threshold
        if self.mode == "min":
            return metric < (best * (1.0 - threshold) if self.threshold_mode == "rel"
                             else best - threshold)
        return metric > (best * (threshold + 1.0) if self.threshold_mode == "rel"
                         else best + threshold)

    def step(self, metric) -> float:
        """Record one epoch's ``metric`` (a number or a 0-D array) and reduce the learning
        rates after a plateau; return the first group's."""
        try:
            current = float(metric)
        except (TypeError, ValueError):
            raise ConfigError(f"{type(self).__name__}.step expected the epoch's metric as a "
                              f"number, e.g. the validation loss. Received: {metric!r}") from None
        self.last_epoch += 1
        if self._improves(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown are ignored
        if self.num_bad_epochs > self.patience:
            lrs = _current_lrs(type(self).__name__, self.optimizer)
            new = [lr if lr - max(lr * self.factor, self.min_lr) <= self.eps
                   else max(lr * self.factor, self.min_lr) for lr in lrs]
            _set_lrs(self.optimizer, new)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.get_last_lr()

    def get_last_lrs(self) -> list[float]:
        return _current_lrs(type(self).__name__, self.optimizer)

    def lr_at(self, epoch: int) -> float:
        raise ConfigError("ReduceLROnPlateau expected no lr_at call: its learning rate "
                          "depends on the metrics, not on the epoch. Use get_last_lr().")

    def _finite_lrs(self) -> list[float]:
        return self.get_last_lrs()

    def _apply(self) -> float:  # the learning rates are the optimizer's (and its state's)
        return self.get_last_lr()

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def _assign(self, converted: dict) -> None:
        for name, value in converted.items():
            setattr(self, name, value)
        if "best" in converted and converted["best"] is None:
            self.best = self._worst()

    def _position(self) -> dict:
        best = self.best if math.isfinite(self.best) else None
        return {"last_epoch": self.last_epoch, "best": best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter}

    def _config(self) -> dict:
        return {name: getattr(self, name) for name in
                ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown",
                 "min_lr", "eps")}
