"""Backend selection and everything backend-specific (``xpnn.backends``).

See :mod:`xpnn.backends.selector` for choosing a backend, :mod:`xpnn.backends.random`
for host-side random numbers, :mod:`xpnn.backends.conv` and :mod:`xpnn.backends.linalg` for
kernels the standard lacks or runs slowly, and :mod:`xpnn.backends.allocator` for the host
memory setting applied when the first backend is built.
"""

from xpnn.backends.random import host_rng, seed
from xpnn.backends.selector import (
    NAMES,
    Backend,
    adopt,
    available,
    backend_for,
    current,
    dtype_name,
    make_backend,
    probe,
    to_numpy,
    use,
)

__all__ = [
    "NAMES",
    "Backend",
    "adopt",
    "available",
    "backend_for",
    "current",
    "dtype_name",
    "host_rng",
    "make_backend",
    "probe",
    "seed",
    "to_numpy",
    "use",
]
