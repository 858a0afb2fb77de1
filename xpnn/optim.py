"""Optimizers that update :class:`~xpnn.module.Parameter` values from their ``.grad``,
parameter groups, and gradient clipping (by global norm, by value).

All follow PyTorch's update rules exactly (``torch.optim.SGD``, ``Adam``, ``AdamW``,
``RMSprop``), so a model trained with the same initial values and gradients follows the
same trajectory up to rounding. With ``g`` the gradient, ``p`` the parameter, ``lr`` the
learning rate:

    SGD      g += wd p;  b = mu b + g;  p -= lr (g + mu b if nesterov else b)
    Adam     g += wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
             p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)      (Kingma & Ba 2015, Alg. 1)
    AdamW    p -= lr wd p, then the Adam update without the wd term  (Loshchilov & Hutter 2019)
    RMSprop  g += wd p;  v = a v + (1-a) g^2;  s = sqrt(v) + eps     (Hinton 2012, lecture 6e)
             centered: m = m + (1-a)(g - m);  s = sqrt(v - m^2) + eps (Graves 2013, Eq. 38)
             b = mu b + g/s;  p -= lr b      (without momentum: p -= lr g/s)

Parameter groups
----------------
As in PyTorch, ``params`` is either a list of parameters (one group) or a list of dicts,
each ``{"params": [...]}`` with any of the optimizer's settings overriding the constructor's
for that group (``lr``, ``weight_decay``, ``momentum``, ``nesterov`` for SGD; ``betas``,
``eps`` for Adam; ...)::

    SGD([{"params": model.dense1.parameters(), "weight_decay": 0.0},
         {"params": model.dense2.parameters(), "lr": 0.01}],
        lr=0.1, momentum=0.9, weight_decay=5e-4)

``optimizer.param_groups`` is that list of dicts, with every setting filled in, as
PyTorch's; change a group's settings there (the parameter lists are fixed at construction).
A parameter may be in one group only. :func:`weight_decay_groups` builds the common "no
weight decay on biases and normalization parameters" groups.

``optimizer.lr`` reads the first group's learning rate. Setting it sets every group's,
keeping the ratios the groups were built with: group ``k`` gets ``value * lr_k / lr_0``
(``lr_k`` as passed to the constructor), so with one group, or groups built with the same
lr, every group gets ``value``. Schedules (:mod:`xpnn.schedules`) set each group's lr from
its own base lr, as PyTorch's do. Settings other than the lr (``optimizer.momentum``, ...)
read the first group's.

Parameters and state buffers are updated in place where the backend allows it (augmented
assignment; JAX rebinds instead), which avoids a fresh allocation, and its page faults,
per step. State buffers are created once, with ``zeros_like`` of each parameter (same
dtype and device), so a float32 model stays float32. Parameters whose ``grad`` is ``None``
are skipped. Create the optimizer after moving the model (``model.to(...)``), as in PyTorch.

State dict format (:meth:`Optimizer.state_dict`), flat so it can be saved with safetensors:

    "step"                   int64 (1,)  number of step() calls (a host NumPy array)
    "lr"                     float64 (1,) current learning rate of the first group (a host
                             NumPy array: no float64 array is created on the device)
    "group.{k}.lr"           float64 (1,) current learning rate of group ``k >= 1`` (only
                             with several groups; the other settings are hyperparameters)
    "state.{i}.{name}"       buffer ``name`` of parameter ``i`` (its position in all the
                             groups' parameters, in order), shaped and typed like that
                             parameter: ``momentum_buffer`` (SGD with momentum, RMSprop with
                             momentum); ``exp_avg``, ``exp_avg_sq`` (Adam, AdamW);
                             ``square_avg``, ``grad_avg`` (RMSprop, centered)
    "state.{i}.step"         int64 (1,)  Adam's per-parameter step count (bias correction,
                             a host NumPy array)

A single-group optimizer writes exactly the keys it wrote before groups existed, so older
checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from xpnn import backends
from xpnn.backends import dtype_name
from xpnn.errors import ConfigError, WeightsError
from xpnn.module import Module, Parameter
from xpnn.validation import listing, number

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "clip_grad_norm",
    "clip_grad_value",
    "weight_decay_groups",
]


def _parameter_list(who: str, params, where: str = "params",
                    allow_empty: bool = False) -> list[Parameter]:
    if isinstance(params, Module):
        params = params.parameters()
    if isinstance(params, Parameter):
        params = [params]
    params = list(params)
    unique, seen = [], set()
    for index, parameter in enumerate(params):
        if not isinstance(parameter, Parameter):
            raise ConfigError(
                f"{who} expected a list of xpnn Parameters, e.g. model.parameters(). "
                f"Received: {where}[{index}] of type {type(parameter).__name__}"
            )
        if id(parameter) not in seen:  # a shared weight is updated once per step
            seen.add(id(parameter))
            unique.append(parameter)
    if not unique and not allow_empty:
        raise ConfigError(
            f"{who} expected at least one parameter. Received: an empty parameter list. "
            f"Pass model.parameters() after the model is built."
        )
    return unique


def _split_groups(who: str, params) -> list[tuple[list[Parameter], dict]]:
    """``[(parameters, settings of that group), ...]`` from a list of parameters (one group
    without settings) or a list of ``{"params": ..., setting: value}`` dicts."""
    if isinstance(params, dict):
        params = [params]
    if isinstance(params, Module | Parameter):
        return [(_parameter_list(who, params), {})]
    items = list(params)
    if not any(isinstance(item, dict) for item in items):
        return [(_parameter_list(who, items), {})]
    groups, seen = [], {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "params" not in item:
            raise ConfigError(
                f"{who} expected either a list of Parameters or a list of parameter groups "
                f"(dicts with a 'params' key). Received: params[{index}] of type "
                f"{type(item).__name__}" + (" without a 'params' key"
                                            if isinstance(item, dict) else "")
            )
        group = _parameter_list(who, item["params"], f"param_groups[{index}]['params']",
                                allow_empty=True)
        for parameter in group:
            if id(parameter) in seen:
                raise ConfigError(
                    f"{who} expected every parameter in one group only. Received: a "
                    f"parameter of shape {tuple(parameter.value.shape)} in param_groups"
                    f"[{seen[id(parameter)]}] and param_groups[{index}]"
                )
            seen[id(parameter)] = index
        groups.append((group, {key: value for key, value in item.items() if key != "params"}))
    if not seen:
        raise ConfigError(
            f"{who} expected at least one parameter. Received: {len(groups)} parameter "
            f"groups without parameters. Pass model.parameters() after the model is built."
        )
    return groups


def _namer(index: int | None):
    """How a setting is named in messages: ``momentum`` for the constructor's,
    ``param_groups[1]['momentum']`` for a group's."""
    if index is None:
        return lambda key: key
    return lambda key: f"param_groups[{index}][{key!r}]"


class Optimizer:
    """Base class: holds the parameter groups (``param_groups``, each with its learning
    rate and settings), the learning rate ``lr`` (settable, e.g. by a schedule) and
    per-parameter state buffers.

    Subclasses pass their settings to ``__init__`` as keywords, list them in ``settings``
    (in the order :meth:`hyperparameters` reports them), check one group's in
    ``_check_settings(settings, name)``, name each parameter's buffers in
    ``_buffer_names(group)`` and implement ``_update(i, p, g)`` for one parameter ``i``
    whose gradient is ``g`` (its group is ``self.group_of(i)``).
    """

    buffer_names: tuple[str, ...] = ()
    per_parameter_step: bool = False
    settings: tuple[str, ...] = ()

    def __init__(self, params, lr: float, **defaults):
        who = type(self).__name__
        self.defaults = self._checked({"lr": lr, **defaults}, None)
        self.param_groups: list[dict[str, Any]] = []
        for index, (group_params, overrides) in enumerate(_split_groups(who, params)):
            unknown = [key for key in overrides if key not in self.defaults]
            if unknown:
                raise ConfigError(
                    f"{who} expected parameter groups with the keys 'params', "
                    f"{listing(self.defaults)}. Received: param_groups[{index}] with "
                    f"{listing(unknown)}"
                )
            settings = (self._checked({**self.defaults, **overrides}, index) if overrides
                        else dict(self.defaults))
            self.param_groups.append({"params": group_params, **settings})
        self.params = [p for group in self.param_groups for p in group["params"]]
        self._group_index = [index for index, group in enumerate(self.param_groups)
                             for _ in group["params"]]
        first = self.param_groups[0]["lr"]
        self._lr_ratios = [1.0 if group["lr"] == first else
                           (group["lr"] / first if first > 0 else None)
                           for group in self.param_groups]
        backend = backends.backend_of(self.params[0].value)
        self._backend, self._xp, self._device = backend, backend.xp, backend.device
        self.step_count = 0
        self._steps = [0] * len(self.params)
        self.state: list[dict[str, Any]] = [
            {name: self._xp.zeros_like(p.value)
             for name in self._buffer_names(self.group_of(index))}
            for index, p in enumerate(self.params)
        ]

    def _checked(self, settings: dict, index: int | None) -> dict:
        """``settings`` (the lr and the subclass's settings) checked and normalized;
        ``index`` is the group's (None: the constructor's arguments)."""
        name = _namer(index)
        lr = number(type(self).__name__, name("lr"), settings["lr"], low=0.0)
        return {"lr": lr, **self._check_settings(settings, name)}

    def _check_settings(self, settings: dict, name) -> dict:
        return {}

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return self.buffer_names

    def group_of(self, index: int) -> dict[str, Any]:
        """The parameter group of parameter ``index`` (its position in ``params``)."""
        return self.param_groups[self._group_index[index]]

    def __getattr__(self, name: str):
        # optimizer.momentum, optimizer.betas, ...: the first group's setting
        groups = self.__dict__.get("param_groups")
        if groups and name in groups[0] and name != "params":
            return groups[0][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the learning rate ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The first group's learning rate; setting it sets every group's, keeping the
        ratios the groups were built with (see the module docstring)."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        who = type(self).__name__
        value = number(who, "lr", value, low=0.0)
        if None in self._lr_ratios and value != 0.0:
            raise ConfigError(
                f"{who} expected param_groups[0] to have been built with an lr > 0 to set "
                f"optimizer.lr (every group keeps its ratio to the first group's lr). "
                f"Received: lr={value} for groups built with the lrs "
                f"{[g['lr'] for g in self.param_groups]}. Set each group's lr with "
                f"optimizer.param_groups[k]['lr'] = ... instead."
            )
        for group, ratio in zip(self.param_groups, self._lr_ratios, strict=True):
            group["lr"] = value * (ratio or 0.0)

    # -- stepping ----------------------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient."""
        self.step_count += 1
        for index, parameter in enumerate(self.params):
            grad = parameter.grad
            if grad is None:
                continue
            self._steps[index] += 1
            self._update(index, parameter, grad)

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Forget the gradients (``grad = None``), as ``model.zero_grad()`` does."""
        for parameter in self.params:
            parameter.grad = None

    # -- saving and resuming ----------------------------------------------------------------
    def _lr_keys(self) -> list[str]:
        """The state-dict keys of the groups' learning rates, in group order."""
        return ["lr"] + [f"group.{k}.lr" for k in range(1, len(self.param_groups))]

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of the optimizer state in the flat format described in the
        module docstring. The buffers are arrays of the parameters' backend; the counters
        and the learning rates are host NumPy arrays (``int64``, ``float64``), so no float64
        array is ever created on the device (some devices have none, e.g. Apple's MPS)."""
        xp = self._xp
        state = {"step": backends.to_numpy([int(self.step_count)])}
        for key, group in zip(self._lr_keys(), self.param_groups, strict=True):
            state[key] = backends.to_numpy([float(group["lr"])])
        for index, buffers in enumerate(self.state):
            for name, buffer in buffers.items():
                state[f"state.{index}.{name}"] = xp.asarray(buffer, copy=True)
            if self.per_parameter_step:
                state[f"state.{index}.step"] = backends.to_numpy([int(self._steps[index])])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> Optimizer:
        """Restore a state saved by :meth:`state_dict` (arrays of any backend, or host
        NumPy arrays read from a file). Every key, shape and dtype is checked first and all
        mismatches are reported in one :class:`WeightsError`; on error nothing changes."""
        who = type(self).__name__
        lr_keys = self._lr_keys()
        expected_scalars = ["step", *lr_keys]
        if self.per_parameter_step:
            expected_scalars += [f"state.{i}.step" for i in range(len(self.params))]
        buffers = {
            f"state.{i}.{name}": (i, name)
            for i in range(len(self.params)) for name in self._buffer_names(self.group_of(i))
        }
        problems = []
        missing = [key for key in [*expected_scalars, *buffers] if key not in state]
        unexpected = [key for key in state if key not in buffers and key not in expected_scalars]
        if missing:
            problems.append(f"missing keys ({len(missing)}): {listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
        for key in expected_scalars:
            if key in state and _size(state[key]) != 1:
                problems.append(f"{key!r} must hold one number, got shape {_shape(state[key])}")
        for key, (index, _) in buffers.items():
            if key not in state:
                continue
            want, given = self.params[index].value, state[key]
            if _shape(given) != tuple(want.shape):
                problems.append(f"shape mismatch for {key!r}: expected {tuple(want.shape)}, "
                                f"got {_shape(given)}")
            elif dtype_name(given.dtype) != dtype_name(want.dtype):
                problems.append(f"dtype mismatch for {key!r}: expected "
                                f"{dtype_name(want.dtype)}, got {dtype_name(given.dtype)}")
        if problems:
            groups = (f" in {len(self.param_groups)} groups" if len(self.param_groups) > 1
                      else "")
            raise WeightsError(
                f"Cannot load the optimizer state into {who} with {len(self.params)} "
                f"parameters{groups}: " + "; ".join(problems) + ". Check that the state was "
                "saved from the same optimizer type, parameter groups and model."
            )
        # Convert and check the scalars before changing anything.
        try:
            step_count = _integer(state["step"])
            lrs = [float(backends.to_numpy(state[key]).reshape(())) for key in lr_keys]
            steps = ([_integer(state[f"state.{i}.step"]) for i in range(len(self.params))]
                     if self.per_parameter_step else None)
        except (TypeError, ValueError, OverflowError):  # e.g. a NaN step count
            step_count, lrs, steps = -1, [math.nan], None
        if not all(math.isfinite(lr) and lr >= 0.0 for lr in lrs) or step_count < 0 \
                or min(steps or [0]) < 0:
            shown = lrs[0] if len(lrs) == 1 else lrs
            raise WeightsError(
                f"Cannot load the optimizer state into {who}: expected a finite lr >= 0 and "
                f"step counts >= 0. Received: lr={shown}, step={step_count}, "
                f"per-parameter steps={steps}"
            )
        xp, device = self._xp, self._device
        loaded = {
            key: xp.asarray(backends.to_numpy(state[key]), copy=True, device=device)
            for key in buffers
        }
        for key, (index, name) in buffers.items():
            self.state[index][name] = loaded[key]
        self.step_count = step_count
        for group, lr in zip(self.param_groups, lrs, strict=True):
            group["lr"] = lr
        if steps is not None:
            self._steps = steps
        return self

    def __repr__(self) -> str:
        name = type(self).__name__
        if len(self.param_groups) == 1:
            settings = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
            return f"{name}({len(self.params)} parameters, lr={self.lr}" + (
                f", {settings})" if settings else ")")
        groups = "; ".join(
            ", ".join(f"{k}={v}" for k, v in {"lr": group["lr"], **self._settings_of(group)}
                      .items()) for group in self.param_groups)
        return f"{name}({len(self.params)} parameters in {len(self.param_groups)} groups: " \
               f"{groups})"

    def _settings_of(self, group: dict) -> dict[str, Any]:
        return {key: group[key] for key in self.settings}

    def hyperparameters(self) -> dict[str, Any]:
        """The settings other than the learning rate (which schedules change), as plain
        Python values: a resumed run checks that they are the same. With several groups:
        ``{"param_groups": [{"params": number of parameters, setting: value, ...}, ...]}``."""
        if len(self.param_groups) == 1:
            return self._settings_of(self.param_groups[0])
        return {"param_groups": [{"params": len(group["params"]), **self._settings_of(group)}
                                 for group in self.param_groups]}


def _size(value) -> int:
    return math.prod(_shape(value))


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def _integer(value) -> int:
    if isinstance(value, int | float):
        return int(value)
    return int(backends.to_numpy(value).reshape(()))


def _rate(who: str, name: str, value) -> float:
    """A decay rate in ``[0, 1)`` (momentum, betas)."""
    return number(who, name, value, low=0.0, high=1.0, high_inclusive=False)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight
    decay, exactly as ``torch.optim.SGD`` (without dampening).

    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + g`` and the step
    direction is ``b``, or ``g + momentum * b`` with ``nesterov=True`` (Sutskever et al.
    2013); ``p -= lr * direction``. Every setting may differ per parameter group.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> model = Dense(3, 2, seed=0)
    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> opt.step()  # parameters without a gradient are left alone
    >>> groups = SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}],
    ...              lr=0.1, momentum=0.9, weight_decay=5e-4)
    >>> [group["lr"] for group in groups.param_groups]
    [0.1, 0.01]
    """

    settings = ("momentum", "nesterov", "weight_decay")

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay)

    def _check_settings(self, settings: dict, name) -> dict:
        who = type(self).__name__
        momentum = _rate(who, name("momentum"), settings["momentum"])
        weight_decay = number(who, name("weight_decay"), settings["weight_decay"], low=0.0)
        if settings["nesterov"] and momentum == 0.0:
            raise ConfigError(
                f"{who} expected {name('momentum')} > 0 with {name('nesterov')}=True "
                f"(Nesterov momentum needs momentum). Received: "
                f"{name('momentum')}={settings['momentum']!r}, {name('nesterov')}=True"
            )
        return {"momentum": momentum, "nesterov": bool(settings["nesterov"]),
                "weight_decay": weight_decay}

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] else ()

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        # The backend's sgd_update kernel (xpnn.backends.portable holds the math; the NumPy
        # backend runs it compiled in one pass when numba is installed).
        group = self.group_of(index)
        momentum = group["momentum"]
        buffers = self.state[index]
        value, buf = self._backend.ops.sgd_update(
            parameter.value, grad, buffers["momentum_buffer"] if momentum else None,
            group["lr"], momentum, group["nesterov"], group["weight_decay"])
        parameter.value = value  # no-ops unless the backend rebinds (JAX)
        if momentum:
            buffers["momentum_buffer"] = buf


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), exactly as ``torch.optim.Adam``: weight decay
    is an L2 term added to the gradient, and both moments are bias-corrected with the
    parameter's own step count ``t``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. ``lr``, ``betas``,
    ``eps`` and ``weight_decay`` may differ per parameter group.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> opt = Adam(Dense(3, 2, seed=0).parameters(), lr=1e-3)
    >>> opt
    Adam(2 parameters, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    per_parameter_step = True
    decoupled = False
    settings = ("betas", "eps", "weight_decay")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check_settings(self, settings: dict, name) -> dict:
        who, betas = type(self).__name__, settings["betas"]
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ConfigError(
                f"{who} expected {name('betas')} to be a pair (beta1, beta2). "
                f"Received: {name('betas')}={betas!r}"
            )
        return {"betas": (_rate(who, name("betas") + "[0]", betas[0]),
                          _rate(who, name("betas") + "[1]", betas[1])),
                "eps": number(who, name("eps"), settings["eps"], low=0.0),
                "weight_decay": number(who, name("weight_decay"), settings["weight_decay"],
                                       low=0.0)}

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        group = self.group_of(index)
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        if weight_decay:
            if self.decoupled:
                parameter.value *= 1.0 - lr * weight_decay
            else:
                grad = grad + weight_decay * parameter.value
        buffers = self.state[index]
        exp_avg, exp_avg_sq = buffers["exp_avg"], buffers["exp_avg_sq"]
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * grad
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * (grad * grad)
        buffers["exp_avg"], buffers["exp_avg_sq"] = exp_avg, exp_avg_sq  # JAX rebinds

        step = self._steps[index]
        step_size = lr / (1.0 - beta1**step)
        denom = self._xp.sqrt(exp_avg_sq)
        denom *= 1.0 / math.sqrt(1.0 - beta2**step)
        denom += group["eps"]
        update = exp_avg / denom
        update *= step_size
        parameter.value -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), exactly as
    ``torch.optim.AdamW``: ``p -= lr * weight_decay * p`` before the Adam update, whose
    gradient carries no decay term. Default ``weight_decay=1e-2``.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> AdamW(Dense(3, 2, seed=0).parameters()).weight_decay
    0.01
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton 2012, Coursera lecture 6e), exactly as ``torch.optim.RMSprop``:
    divide the gradient by a running root mean square of recent gradients.

    ``g = grad + weight_decay * p``; ``v = alpha v + (1 - alpha) g^2``; the scale is
    ``s = sqrt(v) + eps``, or with ``centered=True`` ``s = sqrt(v - m^2) + eps`` where
    ``m = m + (1 - alpha) (g - m)`` is the running mean gradient (Graves 2013); with
    momentum ``b = momentum b + g / s`` and ``p -= lr b``, else ``p -= lr g / s``. Every
    setting may differ per parameter group.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn import Parameter
    >>> p = Parameter(np.zeros(2)); p.grad = np.array([1.0, -4.0])
    >>> opt = RMSprop([p], lr=0.01)
    >>> opt.step(); p.value.round(6).tolist()  # -lr g / sqrt(0.01 g^2) = -0.1 sign(g)
    [-0.1, 0.1]
    """

    settings = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _check_settings(self, settings: dict, name) -> dict:
        who = type(self).__name__
        if not isinstance(settings["centered"], bool):
            raise ConfigError(f"{who} expected {name('centered')} to be True or False. "
                              f"Received: {name('centered')}={settings['centered']!r}")
        return {"alpha": number(who, name("alpha"), settings["alpha"], low=0.0, high=1.0),
                "eps": number(who, name("eps"), settings["eps"], low=0.0),
                "weight_decay": number(who, name("weight_decay"), settings["weight_decay"],
                                       low=0.0),
                "momentum": _rate(who, name("momentum"), settings["momentum"]),
                "centered": settings["centered"]}

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return ("square_avg",) + (("momentum_buffer",) if group["momentum"] else ()) + (
            ("grad_avg",) if group["centered"] else ())

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        group = self.group_of(index)
        alpha, momentum, weight_decay = group["alpha"], group["momentum"], group["weight_decay"]
        if weight_decay:
            grad = grad + weight_decay * parameter.value
        buffers = self.state[index]
        square_avg = buffers["square_avg"]
        square_avg *= alpha
        square_avg += (1.0 - alpha) * (grad * grad)
        buffers["square_avg"] = square_avg  # a no-op unless the backend rebinds (JAX)
        if group["centered"]:
            grad_avg = buffers["grad_avg"]
            grad_avg += (1.0 - alpha) * (grad - grad_avg)  # torch's lerp
            buffers["grad_avg"] = grad_avg
            scale = self._xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            scale = self._xp.sqrt(square_avg)
        scale += group["eps"]
        if momentum:
            buf = buffers["momentum_buffer"]
            buf *= momentum
            buf += grad / scale
            buffers["momentum_buffer"] = buf
            parameter.value -= group["lr"] * buf
        else:
            parameter.value -= group["lr"] * (grad / scale)


def weight_decay_groups(params, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weight decay ``weight_decay`` on the parameters with two or
    more dimensions (weights of Dense and Conv2D), none on the others (biases,
    normalization scales and shifts), the usual recipe. Empty groups are left out.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> groups = weight_decay_groups(Dense(3, 2, seed=0), weight_decay=5e-4)
    >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
    [(1, 0.0005), (1, 0.0)]
    >>> SGD(groups, lr=0.1, momentum=0.9).hyperparameters()["param_groups"][1]
    {'params': 1, 'momentum': 0.9, 'nesterov': False, 'weight_decay': 0.0}
    """
    who = "weight_decay_groups"
    params = _parameter_list(who, params)
    weight_decay = number(who, "weight_decay", weight_decay, low=0.0)
    decayed = [p for p in params if p.value.ndim >= 2]
    others = [p for p in params if p.value.ndim < 2]
    return [group for group in ({"params": decayed, "weight_decay": weight_decay},
                                {"params": others, "weight_decay": 0.0}) if group["params"]]


def clip_grad_norm(params, max_norm: float, eps: float = 1e-6):
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``,
    as ``torch.nn.utils.clip_grad_norm_``.

    ``norm = sqrt(sum over parameters of sum(grad^2))``; every gradient is multiplied by
    ``min(1, max_norm / (norm + eps))``. The factor stays on the device, so there is no
    host synchronization (gradients below the limit are multiplied by exactly 1).

    Returns
    -------
    norm : 0-D array
        The norm before clipping, in the gradients' dtype, on their device.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn import Parameter
    >>> p = Parameter(np.zeros(2)); p.grad = np.array([3.0, 4.0])
    >>> float(clip_grad_norm([p], 1.0)), p.grad.round(4).tolist()
    (5.0, [0.6, 0.8])
    """
    params = _parameter_list("clip_grad_norm", params)
    max_norm = number("clip_grad_norm", "max_norm", max_norm, low=0.0)
    grads = [p.grad for p in params if p.grad is not None]
    backend = backends.backend_of(params[0].value)
    xp = backend.xp
    if not grads:
        return xp.zeros((), dtype=params[0].value.dtype, device=backend.device)
    squares = None
    for grad in grads:
        square = xp.sum(grad * grad)
        squares = square if squares is None else squares + square
    norm = xp.asarray(xp.sqrt(squares))  # a 0-D array (NumPy would give a scalar)
    scale = xp.clip(max_norm / (norm + eps), max=1.0)
    for parameter in params:
        if parameter.grad is not None:
            grad = parameter.grad
            grad *= scale if scale.dtype == grad.dtype else xp.astype(scale, grad.dtype)
            parameter.grad = grad  # a no-op unless the backend rebinds (JAX)
    return norm


def clip_grad_value(params, clip_value: float) -> None:
    """Clamp every gradient to ``[-clip_value, clip_value]`` elementwise, as
    ``torch.nn.utils.clip_grad_value_``. Parameters without a gradient are skipped; the
    gradients keep their dtype and device, and there is no host synchronization.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn import Parameter
    >>> p = Parameter(np.zeros(3)); p.grad = np.array([-3.0, 0.5, 4.0])
    >>> clip_grad_value([p], 1.0); p.grad.tolist()
    [-1.0, 0.5, 1.0]
    """
    params = _parameter_list("clip_grad_value", params)
    clip_value = number("clip_grad_value", "clip_value", clip_value, low=0.0)
    xp = backends.backend_of(params[0].value).xp
    for parameter in params:
        if parameter.grad is not None:
            parameter.grad = xp.clip(parameter.grad, min=-clip_value, max=clip_value)
