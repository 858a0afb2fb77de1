"""Mixed precision: compute in float16 or bfloat16, keep the parameters in float32.

As Keras' ``mixed_float16`` / ``mixed_bfloat16`` policies and PyTorch's automatic mixed
precision with a gradient scaler, written out:

- the parameters stay float32 (the *master* copies the optimizer updates, and what
  checkpoints save); for each training step the model gets half-precision copies of them,
  and the batch is cast to half precision;
- layers that normalize (``keeps_float32``: BatchNorm, LayerNorm) keep float32 parameters
  and statistics and compute in float32 (:meth:`xpnn.module.Module.forward_in_float32`);
- the loss is computed in float32 from the logits cast up;
- dynamic loss scaling (float16's smallest normal number is 6e-5, so small gradients
  would flush to zero): the loss gradient is multiplied by ``scale`` before the backward
  pass and the float32 gradients divided by it after. When a gradient is inf or NaN the
  step is skipped and ``scale`` halves; after ``growth_interval`` good steps in a row it
  doubles (PyTorch's ``GradScaler`` rule). bfloat16 has float32's range, so its policy
  does not scale.

Deciding whether to skip a step reads one flag back to the host per step (as PyTorch's
``GradScaler.step`` does). Only training steps run in half precision; :func:`evaluate`
and inference use the float32 parameters.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

from xpnn import backends
from xpnn.errors import ConfigError
from xpnn.validation import computing_in, number, positive_int

__all__ = ["POLICIES", "LossScaler", "MixedPrecision"]

#: policy name -> the dtype training steps compute in (None: float32 throughout)
POLICIES = {"float32": None, "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


class LossScaler:
    """Dynamic loss scaling, PyTorch's ``GradScaler`` rule.

    Examples
    --------
    >>> scaler = LossScaler(initial_scale=8.0, growth_interval=2)
    >>> scaler.update(finite=False); scaler.scale
    4.0
    >>> scaler.update(True); scaler.update(True); scaler.scale
    8.0
    """

    def __init__(self, initial_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        who = "LossScaler"
        self.scale = number(who, "initial_scale", initial_scale, low=0.0, low_inclusive=False)
        self.growth_factor = number(who, "growth_factor", growth_factor, low=1.0)
        self.backoff_factor = number(who, "backoff_factor", backoff_factor, low=0.0,
                                     high=1.0, low_inclusive=False)
        self.growth_interval = positive_int(who, "growth_interval", growth_interval)
        self.good_steps = 0
        self.skipped = 0

    def update(self, finite: bool) -> None:
        """After a step: back off (and count a skipped step) when its gradients were not
        finite, grow after ``growth_interval`` finite steps in a row."""
        if not finite:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> LossScaler:
        scale = state.get("scale")
        if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"LossScaler expected a positive finite scale. Received: "
                              f"{state!r}")
        self.scale = float(scale)
        self.good_steps = int(state.get("good_steps", 0))
        self.skipped = int(state.get("skipped", 0))
        return self


class MixedPrecision:
    """A mixed-precision policy and its loss scaler, run by :func:`xpnn.train_step`
    (``precision=``) and :func:`xpnn.fit` (``precision="mixed_float16"``).

    Parameters
    ----------
    policy : str
        ``"mixed_float16"`` (loss scaling on), ``"mixed_bfloat16"`` (no scaling needed) or
        ``"float32"`` (everything float32: the step is a plain one).
    scaler : LossScaler, optional
        Default: a fresh :class:`LossScaler` for float16, none for bfloat16.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> from xpnn.losses import softmax_cross_entropy
    >>> from xpnn.optim import SGD
    >>> model = Dense(4, 3, seed=0)
    >>> mixed = MixedPrecision("mixed_float16")
    >>> loss, logits = mixed.step(model, softmax_cross_entropy, SGD(model.parameters(), 0.1),
    ...                           np.ones((2, 4), "float32"), np.array([0, 2]))
    >>> str(logits.dtype), str(model.weight.value.dtype)
    ('float16', 'float32')
    """

    def __init__(self, policy: str = "mixed_float16", scaler: LossScaler | None = None):
        if policy not in POLICIES:
            raise ConfigError(f"MixedPrecision expected a policy in {', '.join(POLICIES)}. "
                              f"Received: {policy!r}")
        self.policy = policy
        self.compute_dtype = POLICIES[policy]
        if scaler is None and policy == "mixed_float16":
            scaler = LossScaler()
        self.scaler = scaler

    def step(self, model, loss, optimizer, x, y, *, communicator=None, share: float = 1.0):
        """One training step under this policy (see the module docstring); returns the
        float32 loss and the half-precision logits, as :func:`~xpnn.train_step` does."""
        from xpnn.distributed.data_parallel import reduce_gradients

        backend = model.backend
        xp = backend.xp
        if self.compute_dtype is None:  # float32: the plain step
            from xpnn.training.step import train_step

            return train_step(model, loss, optimizer, x, y, communicator=communicator,
                              share=share)
        half, full = backend.dtype(self.compute_dtype), backend.dtype("float32")
        parameters = model.parameters()
        scale = 1.0 if self.scaler is None else self.scaler.scale
        x, _ = model.prepare(x)
        if xp.isdtype(x.dtype, "real floating"):
            x = xp.astype(x, half)
        with self._in_half_precision(model):
            logits, backprop = model.forward(x, train=True)
            batch_loss, dlogits = loss(xp.astype(logits, full), y)
            backprop(xp.astype(dlogits * (scale * share), half), need_input_grad=False)
        finite = None
        for parameter in parameters:
            if parameter.grad is None:
                continue
            grad = xp.astype(parameter.grad, full) / scale
            parameter.grad = grad
            ok = xp.all(xp.isfinite(grad))
            finite = ok if finite is None else xp.logical_and(finite, ok)
        if communicator is not None:
            reduce_gradients(parameters, communicator)
        all_finite = True if finite is None else bool(backends.to_numpy(finite))
        if communicator is not None:  # every rank decides alike (its own flag may differ)
            all_finite = communicator.allreduce_host([0.0 if all_finite else 1.0])[0] == 0
        if all_finite:
            optimizer.step()
        optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.update(all_finite)
        return batch_loss, logits

    def predict(self, model, x):
        """``model(x)`` (inference) computed in this policy's half precision, on half copies
        of the parameters (normalization in float32); returns half-precision outputs. For
        measuring what half precision does to a model's outputs (e.g. Darknet53's logits)."""
        if self.compute_dtype is None:
            return model(x)
        x, xp = model.prepare(x)
        with self._in_half_precision(model):
            return model(xp.astype(x, model.backend.dtype(self.compute_dtype)))

    @contextmanager
    def _in_half_precision(self, model):
        """While active, the model's float32 parameters (but those of ``keeps_float32``
        layers) hold half-precision copies, and layers accept half inputs; the float32
        masters are put back on exit, whatever happened."""
        backend = model.backend
        xp, half = backend.xp, backend.dtype(self.compute_dtype)
        full = backend.dtype("float32")
        kept = {id(p) for module in model.modules() if module.keeps_float32
                for p in module.parameters()}
        swapped = [p for p in model.parameters() if id(p) not in kept and p.value.dtype == full]
        masters = [p.value for p in swapped]
        try:
            for parameter in swapped:
                parameter.value = xp.astype(parameter.value, half)
            with computing_in(self.compute_dtype):
                yield
        finally:
            for parameter, master in zip(swapped, masters, strict=True):
                parameter.value = master

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy,
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> MixedPrecision:
        if state.get("policy") != self.policy:
            raise ConfigError(f"MixedPrecision expected the state of a {self.policy!r} run. "
                              f"Received: policy {state.get('policy')!r}")
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        return self

    def __repr__(self) -> str:
        scale = "" if self.scaler is None else f", scale={self.scaler.scale:g}"
        return f"MixedPrecision({self.policy!r}{scale})"
