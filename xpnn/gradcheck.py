"""Check hand-written backward passes against central finite differences.

For a module ``f`` and a fixed random projection ``r`` of its output, the scalar
``L(x, θ) = sum(f(x; θ) * r)`` has gradient ``backprop(r)`` with respect to ``x`` and the
accumulated ``.grad`` with respect to each parameter θ. Each is compared element by element
with the central difference ``(L(v + h) - L(v - h)) / 2h``, whose error is O(h²); in
float64 with h = 1e-6 the two agree to about 1e-8 relative when the backward is right.

Perturbations are made on host copies and moved to the backend, so the check works on
every backend, including those without in-place updates.
"""

from __future__ import annotations

import numpy as np

from xpnn import backends
from xpnn.module import Module


def _relative_error(numeric: np.ndarray, analytic: np.ndarray) -> float:
    """max_i |n_i - a_i| / max(|n_i|, |a_i|, floor), with a floor that keeps entries whose
    true gradient is ~0 from dividing noise by noise."""
    if numeric.size == 0:
        return 0.0
    floor = 1e-8 + 1e-3 * float(np.max(np.abs(numeric)))
    scale = np.maximum(np.maximum(np.abs(numeric), np.abs(analytic)), floor)
    return float(np.max(np.abs(numeric - analytic) / scale))


def _positions(shape, max_checks: int, rng) -> list[tuple[int, ...]]:
    size = int(np.prod(shape)) if shape else 1
    flat = np.arange(size) if size <= max_checks else rng.choice(size, max_checks, replace=False)
    return [tuple(int(i) for i in np.unravel_index(index, shape)) for index in flat]


def gradcheck(module: Module, x, *, train: bool = True, eps: float = 1e-6,
              max_checks: int = 40, seed: int = 0) -> dict[str, float]:
    """Worst relative error of ``module``'s backward, per tensor.

    Returns ``{"input": err, "<parameter name>": err, ...}``. Use float64 parameters and
    input; up to ``max_checks`` randomly chosen elements of each tensor are perturbed.

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense
    >>> errors = gradcheck(Dense(3, 2, dtype="float64", seed=0), np.ones((4, 3)))
    >>> max(errors.values()) < 1e-6
    True
    """
    backend = module.backend
    rng = np.random.default_rng(seed)
    x_host = np.array(backends.to_numpy(x), dtype=np.float64)

    y, backprop = module.forward(backend.asarray(x_host), train=train)
    projection = rng.standard_normal(tuple(y.shape))
    module.zero_grad()
    dx = backends.to_numpy(backprop(backend.asarray(projection, dtype=y.dtype)))
    named = list(module.named_parameters())
    analytic = {name: (backends.to_numpy(p.grad) if p.grad is not None else np.zeros(p.shape))
                for name, p in named}

    def loss() -> float:
        out, _ = module.forward(backend.asarray(current_x), train=train)
        return float(np.sum(backends.to_numpy(out).astype(np.float64) * projection))

    errors = {}
    current_x = x_host.copy()
    positions = _positions(x_host.shape, max_checks, np.random.default_rng(seed))
    numeric = np.zeros(len(positions))
    for k, position in enumerate(positions):
        original = current_x[position]
        current_x[position] = original + eps
        upper = loss()
        current_x[position] = original - eps
        lower = loss()
        current_x[position] = original
        numeric[k] = (upper - lower) / (2 * eps)
    errors["input"] = _relative_error(numeric, np.array([dx[p] for p in positions]))

    for name, parameter in named:
        saved = parameter.value
        host = np.array(backends.to_numpy(saved), dtype=np.float64)
        positions = _positions(host.shape, max_checks, np.random.default_rng(seed + 1))
        numeric = np.zeros(len(positions))
        for k, position in enumerate(positions):
            original = host[position]
            host[position] = original + eps
            parameter.value = backend.asarray(host, dtype=saved.dtype)
            upper = loss()
            host[position] = original - eps
            parameter.value = backend.asarray(host, dtype=saved.dtype)
            lower = loss()
            host[position] = original
            numeric[k] = (upper - lower) / (2 * eps)
        parameter.value = saved
        errors[name] = _relative_error(numeric, np.array([analytic[name][p] for p in positions]))
    module.zero_grad()
    return errors


def gradcheck_loss(loss_fn, logits, *args, eps: float = 1e-6, max_checks: int = 40,
                   seed: int = 0, **kwargs) -> float:
    """Worst relative error of a loss's gradient with respect to its first argument.

    ``loss_fn(logits, *args, **kwargs)`` must return ``(loss, dlogits)`` with ``loss`` a
    0-D array.
    """
    backend = backends.backend_of(logits)
    host = np.array(backends.to_numpy(logits), dtype=np.float64)
    _, analytic = loss_fn(backend.asarray(host), *args, **kwargs)
    analytic = backends.to_numpy(analytic)
    positions = _positions(host.shape, max_checks, np.random.default_rng(seed))
    numeric = np.zeros(len(positions))
    for k, position in enumerate(positions):
        original = host[position]
        host[position] = original + eps
        upper = float(backends.to_numpy(loss_fn(backend.asarray(host), *args, **kwargs)[0]))
        host[position] = original - eps
        lower = float(backends.to_numpy(loss_fn(backend.asarray(host), *args, **kwargs)[0]))
        host[position] = original
        numeric[k] = (upper - lower) / (2 * eps)
    return _relative_error(numeric, np.array([analytic[p] for p in positions]))
