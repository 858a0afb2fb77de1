"""Which array library xpnn computes with, and on which device.

The backend is chosen by ``XPNN_BACKEND`` (read on first use, not at import), by
:func:`use`, or by ``with use(...)``. Each backend is one *library module* registered in
:data:`LIBRARIES` (name -> module path, imported only when that backend is asked for); what
differs between array libraries is answered there, behind the interface described in
:mod:`xpnn.backends.backend`, so nothing here names a library.

:func:`backend_of` is the one answer to "which backend is this array on?".
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import os

import numpy as np

from xpnn.backends.backend import Backend
from xpnn.errors import BackendError

# name -> the module implementing it. Adding a backend: one module and one line here.
LIBRARIES = {
    "numpy": "xpnn.backends.numpy_backend",
    "torch": "xpnn.backends.torch_backend",
    "cupy": "xpnn.backends.cupy_backend",
    "array_api_strict": "xpnn.backends.array_api_strict_backend",
    "jax": "xpnn.backends.jax_backend",
}
NAMES = tuple(LIBRARIES)


def library(name: str):
    """The library module of backend ``name`` (e.g. ``xpnn.backends.torch_backend``)."""
    if name not in LIBRARIES:
        raise _unknown(name)
    return importlib.import_module(LIBRARIES[name])


def _unknown(name) -> BackendError:
    return BackendError(
        f"Unknown backend {name!r}. Expected one of: {', '.join(NAMES)}. "
        f"Set XPNN_BACKEND or call xpnn.backends.use() with one of them."
    )


@functools.cache
def probe(name: str) -> tuple[bool, str, str]:
    """``(can_run, version, reason)`` for one backend name. Cached: CuPy's probe is slow."""
    return library(name).probe()


def available() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in NAMES if probe(name)[0]]


def make_backend(name: str, device=None) -> Backend:
    """Build a :class:`Backend`, or raise a :class:`BackendError` saying what to install."""
    name = str(name).strip().lower().replace("-", "_")
    module = library(name)
    ok, _, reason = probe(name)
    if not ok:
        raise BackendError(f"XPNN_BACKEND={name}, but it cannot run here: {reason}")
    xp = module.namespace()
    try:
        device = module.device(device, xp)
    except BackendError:
        raise
    except Exception as error:  # the library's own complaint about the device
        raise BackendError(
            f"The {name} backend cannot use device {device!r}: {type(error).__name__}: {error}"
        ) from None
    return Backend(name=name, xp=xp, device=device, array_type=module.array_type(xp),
                   mutable=module.MUTABLE, library=module)


# -- the current backend ------------------------------------------------------------------

_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "xpnn_backend", default=None
)


def current() -> Backend:
    """The backend in use: the last :func:`use`, else ``XPNN_BACKEND``, else NumPy."""
    backend = _current.get()
    if backend is None:
        backend = make_backend(os.environ.get("XPNN_BACKEND", "numpy") or "numpy")
        _current.set(backend)
    return backend


class use:
    """Select the backend for arrays and parameters created from now on.

    Works as a plain call and as a context manager that restores the previous backend.

    Examples
    --------
    >>> from xpnn import backends
    >>> backends.use("numpy").name
    'numpy'
    >>> with backends.use("array_api_strict", device="device1") as b:
    ...     b.name
    'array_api_strict'
    """

    def __init__(self, name: str | Backend, device=None):
        self.backend = name if isinstance(name, Backend) else make_backend(name, device)
        self._token = _current.set(self.backend)

    @property
    def name(self) -> str:
        return self.backend.name

    def __enter__(self) -> Backend:
        return self.backend

    def __exit__(self, *exc_info) -> None:
        _current.reset(self._token)


# -- which backend an array is on -------------------------------------------------------------

_HOST_VALUES = (np.ndarray, np.generic, list, tuple, int, float)


def backend_of(array) -> Backend:
    """The backend ``array`` lives on: the current one when it belongs there (the usual
    case, no cost), else a backend of the array's library and device. Host NumPy arrays,
    NumPy scalars and Python numbers count as the current backend's (they are moved there
    at the model boundary)."""
    backend = current()
    if backend.owns(array) or isinstance(array, _HOST_VALUES):
        return backend
    for name in NAMES:
        if name == backend.name or name == "numpy":
            continue
        module = _library_if_loaded(name)
        if module is not None and module.is_array(array):
            return _backend_on(name, module.device_of(array))
    if backend.library.is_array(array):  # the current library, another device
        return _backend_on(backend.name, backend.library.device_of(array))
    raise BackendError(
        f"xpnn cannot compute with a {type(array).__module__}.{type(array).__qualname__}. "
        f"Expected an array of one of: {', '.join(NAMES)}."
    )


def _library_if_loaded(name: str):
    """The library module of ``name`` if its array library is imported (an array of a
    library nobody imported cannot exist), else None."""
    if name not in _LOADED_LIBRARIES:
        import sys

        if name not in sys.modules:
            return None
        _LOADED_LIBRARIES[name] = library(name)
    return _LOADED_LIBRARIES[name]


_LOADED_LIBRARIES: dict = {}
_BACKENDS_BY_DEVICE: dict[tuple[str, str], Backend] = {}


def _backend_on(name: str, device) -> Backend:
    key = (name, repr(device))
    if key not in _BACKENDS_BY_DEVICE:
        _BACKENDS_BY_DEVICE[key] = make_backend(name, device)
    return _BACKENDS_BY_DEVICE[key]


def to_numpy(array):
    """Copy any supported array to a host NumPy array (the one way xpnn crosses to host)."""
    if isinstance(array, np.ndarray):
        return array
    for name in NAMES:
        module = _library_if_loaded(name) if name != "numpy" else None
        if module is not None and module.is_array(array):
            return module.to_numpy(array)
    return np.asarray(array)


def free_memory(backend=None) -> str:
    """Give back the memory ``backend`` (default: the current one) keeps for reuse, and
    say what was done in one line: CuPy's memory pools (freed GPU memory that
    ``nvidia-smi`` counts as used and PyTorch in the same process cannot get), PyTorch's
    CUDA cache, glibc's freed host heap.

    Examples
    --------
    >>> free_memory("numpy").startswith("numpy: ")
    True
    """
    if backend is None:
        backend = current()
    elif not isinstance(backend, Backend):
        backend = make_backend(backend)
    return backend.free_memory()


def adopt(x, backend: Backend, who: str = "the model"):
    """Make ``x`` an array of ``backend``: host NumPy batches are moved there (as Keras does
    at the model boundary); arrays of another library or device raise a clear error."""
    if backend.owns(x):
        return x
    if isinstance(x, np.ndarray | np.generic):
        return backend.asarray(x)
    if isinstance(x, list | tuple | int | float):
        raise BackendError(
            f"{who} expected an array. Received: a Python {type(x).__name__}. "
            f"Convert it first, e.g. numpy.asarray(x, dtype='float32')."
        )
    if isinstance(x, backend.array_type):
        raise BackendError(
            f"{who} lives on device {backend.device!r} ({backend.name}), but the input is on "
            f"device {backend.library.device_of(x)!r}. Move the input with "
            f"xpnn.backends.current().asarray(...) or move the model with model.to(...)."
        )
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    try:
        other = backend_of(x).name
    except BackendError:
        other = "numpy"
    raise BackendError(
        f"{who} runs on the {backend.name} backend (device {backend.device!r}), but the input "
        f"is a {kind}. Convert it with xpnn.backends.to_numpy(x) and pass the NumPy array, "
        f"or move the model with model.to({other!r})."
    )
