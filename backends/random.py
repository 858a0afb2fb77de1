"""Random numbers on the host.

The Array API standard has no random number generator, and CuPy's streams differ from
NumPy's. xpnn therefore draws every random value (initial weights, shuffling orders) on
the host from a seeded NumPy generator and then moves it to the backend: one seed gives
the same model on every backend.
"""

from __future__ import annotations

import numpy as np

_global = np.random.default_rng()


def seed(value: int) -> None:
    """Seed the generator used by layers built without an explicit ``seed``."""
    global _global
    _global = np.random.default_rng(value)


def host_rng(seed: int | None = None) -> np.random.Generator:
    """A NumPy generator: a fresh one seeded with ``seed``, or the global one."""
    if seed is None:
        return _global
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)
