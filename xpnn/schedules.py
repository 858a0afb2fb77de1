"""Learning-rate schedules: set ``optimizer.lr`` from the epoch number.

Call ``schedule.step()`` once per epoch, after the epoch's optimizer steps, as with
``torch.optim.lr_scheduler``. Creating a schedule records the optimizer's current
learning rate as ``base_lr`` and sets epoch 0. Each schedule is a closed-form function of
the epoch ``t``:

    StepLR             lr_t = base_lr * gamma ** floor(t / step_size)
    CosineAnnealingLR  lr_t = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2
                       (Loshchilov & Hutter 2017, SGDR, Eq. 5, without restarts)

so resuming only needs the epoch: ``state_dict()`` is a dict of plain Python numbers.

:meth:`LRSchedule.load_state_dict` treats its input as untrusted: integers must lie in
``[0, 2**53]`` and the learning rate they give must be a finite number, else a
:class:`~xpnn.errors.WeightsError` names the field. A learning rate that overflows later
(``StepLR`` with ``gamma > 1`` over many epochs) is a :class:`~xpnn.errors.ConfigError`,
never a bare ``OverflowError``. How ``fit`` combines a checkpointed schedule state with the
schedule it is given on resume is described in :mod:`xpnn.training.checkpoint` (the passed
schedule's hyperparameters are kept; only ``last_epoch`` and ``base_lr`` are restored).
"""

from __future__ import annotations

import copy
import math

from xpnn.errors import ConfigError, WeightsError
from xpnn.validation import integer, number, positive_int

__all__ = ["CosineAnnealingLR", "LRSchedule", "StepLR"]

MAX_COUNTER = 2**53  # the largest integer a schedule state may hold (exact as a float)


def _non_negative(who: str, name: str, value) -> float:
    return number(who, name, value, low=0.0)


def _non_negative_int(who: str, name: str, value) -> int:
    return integer(who, name, value, low=0)


class LRSchedule:
    """Base class: subclasses define ``lr_at(epoch)`` and the checks of their own
    hyperparameters (``_rules``: name -> check)."""

    _rules: dict = {}

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise ConfigError(
                f"{type(self).__name__} expected an optimizer with an lr attribute, e.g. "
                f"xpnn.optim.SGD. Received: {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._apply()

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch and set the optimizer's learning rate; return it."""
        self.last_epoch += 1
        return self._apply()

    def _apply(self) -> float:
        lr = self._finite_lr()
        self.optimizer.lr = lr
        return lr

    def _finite_lr(self) -> float:
        """``lr_at(last_epoch)`` as a float, or a ConfigError when it is not finite."""
        try:
            lr = float(self.lr_at(self.last_epoch))
        except (OverflowError, ZeroDivisionError):
            lr = math.inf
        if not math.isfinite(lr):
            raise ConfigError(
                f"{type(self).__name__} expected hyperparameters that give a finite learning "
                f"rate. Received: {self._config()}, base_lr={self.base_lr} at epoch "
                f"{self.last_epoch}, which overflows"
            )
        return lr

    def get_last_lr(self) -> float:
        """The learning rate set by the last ``step()`` (or at creation)."""
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, float | int]:
        """``{"last_epoch": int, "base_lr": float, ...}``, plain Python numbers."""
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr, **self._config()}

    def load_state_dict(self, state: dict) -> LRSchedule:
        """Restore a :meth:`state_dict` and set the optimizer's learning rate to match."""
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise WeightsError(
                f"Cannot load the schedule state into {type(self).__name__}: missing keys "
                f"{missing}, unexpected keys {unexpected}. Check that it was saved from the "
                f"same schedule type."
            )
        rules = {"last_epoch": _non_negative_int, "base_lr": _non_negative, **self._rules}
        converted = {}
        who = type(self).__name__
        for name, value in state.items():  # check everything before changing anything
            try:
                converted[name] = rules[name](who, name, value)
            except ConfigError as error:
                raise WeightsError(f"Cannot load the schedule state: {error}") from None
            if isinstance(converted[name], int) and converted[name] > MAX_COUNTER:
                raise WeightsError(
                    f"Cannot load the schedule state: {who} expected {name} to be an integer "
                    f"in [0, 2**53]. Received: an integer of {len(str(value))} digits"
                )
        trial = copy.copy(self)
        for name, value in converted.items():
            setattr(trial, name, value)
        try:
            trial._finite_lr()
        except ConfigError as error:
            raise WeightsError(f"Cannot load the schedule state: {error}") from None
        for name, value in converted.items():
            setattr(self, name, value)
        self._apply()
        return self

    def _config(self) -> dict[str, float | int]:
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

    _rules = {"step_size": positive_int, "gamma": _non_negative}

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        who = type(self).__name__
        self.step_size = positive_int(who, "step_size", step_size)
        self.gamma = _non_negative(who, "gamma", gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)

    def _config(self) -> dict[str, float | int]:
        return {"step_size": self.step_size, "gamma": self.gamma}


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

    _rules = {"T_max": positive_int, "eta_min": _non_negative}

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (PyTorch)
        who = type(self).__name__
        self.T_max = positive_int(who, "T_max", T_max)
        self.eta_min = _non_negative(who, "eta_min", eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        cosine = (1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0
        return self.eta_min + (self.base_lr - self.eta_min) * cosine

    def _config(self) -> dict[str, float | int]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}
