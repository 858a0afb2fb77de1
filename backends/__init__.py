"""Backend selection and everything backend-specific (``xpnn.backends``).

- :mod:`xpnn.backends.selector`: choosing a backend (:func:`use`, :func:`current`,
  ``XPNN_BACKEND``), the registry of library modules, and :func:`backend_of`, the one
  answer to "which backend is this array on?";
- :mod:`xpnn.backends.backend`: the :class:`Backend` object and its kernel table ``ops``;
- one library module per array library (``numpy_backend``, ``torch_backend``,
  ``cupy_backend``, ``array_api_strict_backend``, ``jax_backend``);
- :mod:`xpnn.backends.portable`: the standard-only default of every kernel, and
  :mod:`xpnn.backends.numpy_conv`: the NumPy convolution strategies;
- :mod:`xpnn.backends.numba_support` (whether the optional numba fast path is on),
  :mod:`xpnn.backends.numba_batchnorm` and :mod:`xpnn.backends.numba_elementwise` (the SGD
  step, the outer product, the softmax cross-entropy): the NumPy backend's compiled kernels;
  :mod:`xpnn.backends.cupy_kernels` (with :mod:`xpnn.backends.cupy_sources`): CuPy's;
- :mod:`xpnn.backends.random`: host-side random numbers;
- :mod:`xpnn.backends.allocator`: the opt-in host memory setting training applies.
"""

from xpnn.backends.backend import Backend, dtype_name
from xpnn.backends.random import host_rng, seed
from xpnn.backends.selector import (
    LIBRARIES,
    NAMES,
    adopt,
    available,
    backend_of,
    current,
    free_memory,
    make_backend,
    probe,
    to_numpy,
    use,
)

__all__ = [
    "LIBRARIES",
    "NAMES",
    "Backend",
    "adopt",
    "available",
    "backend_of",
    "current",
    "dtype_name",
    "free_memory",
    "host_rng",
    "make_backend",
    "probe",
    "seed",
    "to_numpy",
    "use",
]
