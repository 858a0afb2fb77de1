"""Which array library xpnn computes with, and on which device.

The backend is chosen by ``XPNN_BACKEND`` (read on first use, not at import), by
:func:`use`, or by ``with use(...)``. Everything that differs between array libraries —
how to find the namespace, how to move arrays between host and device, whether arrays can
be updated in place — is answered here, so layers never import an array library.

Backends: ``numpy`` (default), ``torch``, ``cupy``, ``array_api_strict``, ``jax``.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpnn.backends import allocator
from xpnn.errors import BackendError

NAMES = ("numpy", "torch", "cupy", "array_api_strict", "jax")

_INSTALL_HINTS = {
    "numpy": "pip install numpy",
    "torch": "pip install 'xpnn[torch]'  (CPU wheels: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu)",
    "cupy": "pip install 'xpnn[cupy]'  (needs an NVIDIA GPU with a CUDA 12 driver)",
    "array_api_strict": "pip install array-api-strict",
    "jax": "pip install jax",
}


@dataclass(eq=False)
class Backend:
    """One array library on one device.

    Attributes
    ----------
    name : str
        One of ``numpy``, ``torch``, ``cupy``, ``array_api_strict``, ``jax``.
    xp : module
        The Array API namespace layers compute with (array-api-compat's wrapper for
        NumPy, CuPy and torch; the library itself for array-api-strict and JAX).
    device : object
        The device every array of this backend is created on.
    """

    name: str
    xp: Any
    device: Any
    array_type: type
    mutable: bool = True  # False for JAX: arrays are never updated in place
    _host_device: Any = field(default=None, repr=False)

    # -- host <-> backend ---------------------------------------------------------------
    def asarray(self, host_array, dtype=None, *, copy: bool = True):
        """A new array on this backend holding a copy of ``host_array`` (a NumPy array,
        anything NumPy can read, or an array of any supported backend). With
        ``copy=False`` a host array that already fits the NumPy backend is used as is (for
        arrays the caller just created and will not touch again, such as a fresh batch)."""
        host = np.array(to_numpy(host_array), dtype=None if dtype is None else dtype_name(dtype),
                        copy=True if copy else None, order="C")
        if self.name == "numpy":
            return host
        if self.name == "cupy":
            import cupy

            with self.device:
                return cupy.asarray(host)
        if self.name == "torch":
            import torch

            return torch.from_numpy(host).to(self.device)
        return self.xp.asarray(host, device=self.device)

    def to_numpy(self, array):
        """Copy an array of this backend (or a host NumPy array) to a host NumPy array."""
        return to_numpy(array)

    def dtype(self, dtype):
        """The namespace's dtype object for ``dtype`` (a name such as ``"float32"``)."""
        return getattr(self.xp, dtype_name(dtype))

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, device={self.device!r})"


def dtype_name(dtype) -> str:
    """``"float32"`` for ``"float32"``, ``np.float32``, ``torch.float32``, ``xp.float32``."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None) or str(dtype)
    return name.rsplit(".", 1)[-1]


def to_numpy(array):
    """Copy any supported array to a host NumPy array (the one way xpnn crosses to host)."""
    if isinstance(array, np.ndarray):
        return array
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        return array.get()
    if module == "torch":
        return array.detach().cpu().numpy()
    if module == "array_api_strict":
        import array_api_strict

        cpu = array_api_strict.Device("CPU_DEVICE")
        if array.device != cpu:
            array = array_api_strict.asarray(array, device=cpu, copy=True)
        return np.asarray(array._array)
    if module in ("jax", "jaxlib"):
        return np.asarray(array)
    return np.asarray(array)


# -- probing what can run here ---------------------------------------------------------------


@functools.cache
def probe(name: str) -> tuple[bool, str, str]:
    """``(can_run, version, reason)`` for one backend name. Cached: CuPy's probe is slow."""
    if name not in NAMES:
        raise _unknown(name)
    try:
        module = importlib.import_module(name)
    except Exception as error:  # an ImportError, or a broken install raising anything
        return False, "", f"not installed ({error}); install it with: {_INSTALL_HINTS[name]}"
    version = str(getattr(module, "__version__", "?"))
    if name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
            module.zeros(1)  # the first allocation is where a missing driver fails
        except Exception as error:
            return False, version, f"no usable CUDA device ({type(error).__name__}: {error})"
        if count < 1:
            return False, version, "no CUDA device is visible (cupy.is_available() is False)"
    return True, version, ""


def available() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in NAMES if probe(name)[0]]


def _unknown(name) -> BackendError:
    return BackendError(
        f"Unknown backend {name!r}. Expected one of: {', '.join(NAMES)}. "
        f"Set XPNN_BACKEND or call xpnn.backends.use() with one of them."
    )


def _namespace(name: str):
    if name in ("numpy", "torch", "cupy"):
        return importlib.import_module(f"array_api_compat.{name}")
    if name == "jax":
        return importlib.import_module("jax.numpy")
    return importlib.import_module(name)


def _default_device(name: str, xp):
    if name == "numpy":
        return "cpu"
    if name == "torch":
        import torch

        return torch.device("cpu")
    if name == "cupy":
        import cupy

        return cupy.cuda.Device(int(os.environ.get("XPNN_DEVICE", "0")))
    if name == "array_api_strict":
        return xp.Device("CPU_DEVICE")
    import jax

    return jax.devices()[0]


def _array_type(name: str, xp) -> type:
    if name == "numpy":
        return np.ndarray
    if name == "torch":
        import torch

        return torch.Tensor
    if name == "cupy":
        import cupy

        return cupy.ndarray
    if name == "array_api_strict":
        return type(xp.asarray(0.0))
    import jax

    return jax.Array


def make_backend(name: str, device=None) -> Backend:
    """Build a :class:`Backend`, or raise a :class:`BackendError` saying what to install."""
    name = str(name).strip().lower().replace("-", "_")
    if name not in NAMES:
        raise _unknown(name)
    ok, _, reason = probe(name)
    if not ok:
        raise BackendError(f"XPNN_BACKEND={name}, but it cannot run here: {reason}")
    allocator.keep_freed_memory()  # once per process; see xpnn.backends.allocator
    xp = _namespace(name)
    if device is None:
        device = _default_device(name, xp)
    elif name == "array_api_strict" and isinstance(device, str):
        device = xp.Device(device)
    elif name == "torch":
        import torch

        # Tensors report an indexed device ("cuda:0"), and torch.device("cuda") does not
        # compare equal to it: ask torch which device a tensor created there lands on.
        device = torch.empty(0, device=torch.device(device)).device
    elif name == "cupy" and isinstance(device, int):
        import cupy

        device = cupy.cuda.Device(device)
    return Backend(name=name, xp=xp, device=device, array_type=_array_type(name, xp),
                   mutable=(name != "jax"))


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


def backend_for(array) -> Backend:
    """The backend ``array`` lives on: the current one when it belongs there (the usual
    case, no cost), else a backend of the array's library and device (host NumPy arrays
    and Python numbers count as the current backend's, to be moved there)."""
    backend = current()
    if isinstance(array, backend.array_type):
        if backend.name in ("numpy", "jax") or array.device == backend.device:
            return backend
    if isinstance(array, np.ndarray | np.generic | list | tuple | int | float):
        return backend
    name = _LIBRARY_BACKENDS.get(type(array).__module__.split(".")[0])
    return backend if name is None else _backend_on(name, getattr(array, "device", None))


def _backend_on(name: str, device) -> Backend:
    key = (name, repr(device))
    if key not in _BACKENDS_BY_DEVICE:
        _BACKENDS_BY_DEVICE[key] = make_backend(name, device)
    return _BACKENDS_BY_DEVICE[key]


_BACKENDS_BY_DEVICE: dict[tuple[str, str], Backend] = {}
_LIBRARY_BACKENDS = {"numpy": "numpy", "torch": "torch", "cupy": "cupy",
                     "array_api_strict": "array_api_strict", "jax": "jax", "jaxlib": "jax"}


def adopt(x, backend: Backend, who: str = "the model"):
    """Make ``x`` an array of ``backend``: host NumPy batches are moved there (as Keras does
    at the model boundary); arrays of another library or device raise a clear error."""
    if type(x) is backend.array_type or isinstance(x, backend.array_type):
        if backend.name in ("numpy", "jax") or x.device == backend.device:
            return x
        raise BackendError(
            f"{who} lives on device {backend.device!r} ({backend.name}), but the input is on "
            f"device {x.device!r}. Move the input with xpnn.backends.current().asarray(...) "
            f"or move the model with model.to(...)."
        )
    if isinstance(x, np.ndarray | np.generic):
        return backend.asarray(x)
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    if isinstance(x, list | tuple | int | float):
        raise BackendError(
            f"{who} expected an array. Received: a Python {type(x).__name__}. "
            f"Convert it first, e.g. numpy.asarray(x, dtype='float32')."
        )
    raise BackendError(
        f"{who} runs on the {backend.name} backend (device {backend.device!r}), but the input "
        f"is a {kind}. Convert it with xpnn.backends.to_numpy(x) and pass the NumPy array, "
        f"or move the model with model.to({_guess_backend(kind)!r})."
    )


def _guess_backend(kind: str) -> str:
    for name in NAMES:
        if kind.startswith(name):
            return name
    return "numpy"
