"""Optimizers that update :class:`~xpnn.module.Parameter` values from their ``.grad``,
and global gradient-norm clipping.

All follow PyTorch's update rules exactly (``torch.optim.SGD``, ``Adam``, ``AdamW``), so a
model trained with the same initial values and gradients follows the same trajectory up
to rounding. With ``g`` the gradient, ``p`` the parameter, ``lr`` the learning rate:

    SGD     g += wd p;  b = mu b + g;  p -= lr (g + mu b if nesterov else b)
    Adam    g += wd p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
            p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)       (Kingma & Ba 2015, Alg. 1)
    AdamW   p -= lr wd p, then the Adam update without the wd term   (Loshchilov & Hutter 2019)

Parameters and state buffers are updated in place where the backend allows it (augmented
assignment; JAX rebinds instead), which avoids a fresh allocation, and its page faults,
per step. State buffers are created once, with ``zeros_like`` of each parameter (same
dtype and device), so a float32 model stays float32. Parameters whose ``grad`` is ``None``
are skipped. Create the optimizer after moving the model (``model.to(...)``), as in PyTorch.

State dict format (:meth:`Optimizer.state_dict`), flat so it can be saved with safetensors:

    "step"                   int64 (1,)  number of step() calls (a host NumPy array)
    "lr"                     float64 (1,) current learning rate (a host NumPy array: no
                             float64 array is created on the device)
    "state.{i}.{name}"       buffer ``name`` of parameter ``i`` (position in ``params``),
                             shaped and typed like that parameter: ``momentum_buffer``
                             (SGD with momentum); ``exp_avg``, ``exp_avg_sq`` (Adam, AdamW)
    "state.{i}.step"         int64 (1,)  Adam's per-parameter step count (bias correction,
                             a host NumPy array)
"""

from __future__ import annotations

import math
from typing import Any

from xpnn import backends
from xpnn.backends import dtype_name
from xpnn.errors import ConfigError, WeightsError
from xpnn.module import Module, Parameter
from xpnn.validation import listing, number

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm"]


def _parameter_list(who: str, params) -> list[Parameter]:
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
                f"Received: params[{index}] of type {type(parameter).__name__}"
            )
        if id(parameter) not in seen:  # a shared weight is updated once per step
            seen.add(id(parameter))
            unique.append(parameter)
    if not unique:
        raise ConfigError(
            f"{who} expected at least one parameter. Received: an empty parameter list. "
            f"Pass model.parameters() after the model is built."
        )
    return unique


class Optimizer:
    """Base class: holds the parameters, the learning rate ``lr`` (settable, e.g. by a
    schedule) and per-parameter state buffers.

    Subclasses list their buffer names in ``buffer_names`` and implement ``_update(i, p, g)``
    for one parameter whose gradient is ``g``.
    """

    buffer_names: tuple[str, ...] = ()
    per_parameter_step: bool = False

    def __init__(self, params, lr: float):
        who = type(self).__name__
        self.params = _parameter_list(who, params)
        self.lr = lr
        backend = backends.backend_of(self.params[0].value)
        self._xp, self._device = backend.xp, backend.device
        self.step_count = 0
        self._steps = [0] * len(self.params)
        self.state: list[dict[str, Any]] = [
            {name: self._xp.zeros_like(p.value) for name in self.buffer_names}
            for p in self.params
        ]

    # -- the learning rate ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = number(type(self).__name__, "lr", value, low=0.0)

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
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of the optimizer state in the flat format described in the
        module docstring. The buffers are arrays of the parameters' backend; the counters
        and the learning rate are host NumPy arrays (``int64``, ``float64``), so no float64
        array is ever created on the device (some devices have none, e.g. Apple's MPS)."""
        xp = self._xp
        state = {
            "step": backends.to_numpy([int(self.step_count)]),
            "lr": backends.to_numpy([float(self.lr)]),
        }
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
        expected_scalars = ["step", "lr"]
        if self.per_parameter_step:
            expected_scalars += [f"state.{i}.step" for i in range(len(self.params))]
        buffers = {
            f"state.{i}.{name}": (i, name)
            for i in range(len(self.params)) for name in self.buffer_names
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
            raise WeightsError(
                f"Cannot load the optimizer state into {who} with {len(self.params)} "
                f"parameters: " + "; ".join(problems) + ". Check that the state was saved "
                "from the same optimizer type and model."
            )
        # Convert and check the scalars before changing anything.
        try:
            step_count = _integer(state["step"])
            lr = float(backends.to_numpy(state["lr"]).reshape(()))
            steps = ([_integer(state[f"state.{i}.step"]) for i in range(len(self.params))]
                     if self.per_parameter_step else None)
        except (TypeError, ValueError, OverflowError):  # e.g. a NaN step count
            step_count, lr, steps = -1, math.nan, None
        if not (math.isfinite(lr) and lr >= 0.0) or step_count < 0 or min(steps or [0]) < 0:
            raise WeightsError(
                f"Cannot load the optimizer state into {who}: expected a finite lr >= 0 and "
                f"step counts >= 0. Received: lr={lr}, step={step_count}, "
                f"per-parameter steps={steps}"
            )
        xp, device = self._xp, self._device
        loaded = {
            key: xp.asarray(backends.to_numpy(state[key]), copy=True, device=device)
            for key in buffers
        }
        for key, (index, name) in buffers.items():
            self.state[index][name] = loaded[key]
        self.step_count, self.lr = step_count, lr
        if steps is not None:
            self._steps = steps
        return self

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.params)} parameters, lr={self.lr}" + (
            f", {settings})" if settings else ")")

    def hyperparameters(self) -> dict[str, Any]:
        """The settings other than the learning rate (which schedules change), as plain
        Python values: a resumed run checks that they are the same."""
        return {}


def _size(value) -> int:
    return math.prod(_shape(value))


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def _integer(value) -> int:
    if isinstance(value, int | float):
        return int(value)
    return int(backends.to_numpy(value).reshape(()))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight
    decay, exactly as ``torch.optim.SGD`` (without dampening).

    ``g = grad + weight_decay * p``; with momentum ``b = momentum * b + g`` and the step
    direction is ``b``, or ``g + momentum * b`` with ``nesterov=True`` (Sutskever et al.
    2013); ``p -= lr * direction``.

    Examples
    --------
    >>> from xpnn.layers import Dense
    >>> model = Dense(3, 2, seed=0)
    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> opt.step()  # parameters without a gradient are left alone
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        who = type(self).__name__
        self.momentum = number(who, "momentum", momentum, low=0.0, high=1.0,
                               high_inclusive=False)
        self.weight_decay = number(who, "weight_decay", weight_decay, low=0.0)
        if nesterov and self.momentum == 0.0:
            raise ConfigError(
                f"{who} expected momentum > 0 with nesterov=True (Nesterov momentum needs "
                f"momentum). Received: momentum={momentum!r}, nesterov=True"
            )
        self.nesterov = bool(nesterov)
        self.buffer_names = ("momentum_buffer",) if self.momentum else ()
        super().__init__(params, lr)

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        if self.weight_decay:
            grad = grad + self.weight_decay * parameter.value
        if self.momentum:
            buffers = self.state[index]
            buf = buffers["momentum_buffer"]
            buf *= self.momentum
            buf += grad
            buffers["momentum_buffer"] = buf  # a no-op unless the backend rebinds (JAX)
            grad = grad + self.momentum * buf if self.nesterov else buf
        parameter.value -= self.lr * grad

    def hyperparameters(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), exactly as ``torch.optim.Adam``: weight decay
    is an L2 term added to the gradient, and both moments are bias-corrected with the
    parameter's own step count ``t``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

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

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        who = type(self).__name__
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ConfigError(
                f"{who} expected betas to be a pair (beta1, beta2). Received: betas={betas!r}"
            )
        self.betas = (number(who, "betas[0]", betas[0], low=0.0, high=1.0, high_inclusive=False),
                      number(who, "betas[1]", betas[1], low=0.0, high=1.0, high_inclusive=False))
        self.eps = number(who, "eps", eps, low=0.0)
        self.weight_decay = number(who, "weight_decay", weight_decay, low=0.0)
        super().__init__(params, lr)

    def _update(self, index: int, parameter: Parameter, grad) -> None:
        beta1, beta2 = self.betas
        lr, weight_decay = self.lr, self.weight_decay
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
        denom += self.eps
        update = exp_avg / denom
        update *= step_size
        parameter.value -= update

    def hyperparameters(self) -> dict[str, Any]:
        return {"betas": tuple(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


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
