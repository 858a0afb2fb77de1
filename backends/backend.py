"""The :class:`Backend` object: one array library on one device, and its kernel table.

A backend is built from a *library module* (``numpy_backend``, ``torch_backend``, ...),
which answers the few questions that differ between array libraries through one small
interface (see ``docs/architecture.md``):

=====================  ==========================================================
``NAME``               the backend's name (``"numpy"``)
``INSTALL``            what to install when it is missing
``MUTABLE``            whether arrays may be updated in place (False for JAX)
``KERNELS``            ``{kernel name: function}``: the kernels it overrides
``probe()``            ``(can_run, version, reason)``
``namespace()``        the Array API namespace layers compute with
``device(spec, xp)``   the library's device object for ``spec`` (None: the default)
``array_type(xp)``     the array class
``is_array(x)``        whether ``x`` is an array of this library (without importing it)
``device_of(x)``       the device an array of this library lives on
``from_numpy(h, dev)`` a host NumPy array moved to ``dev`` (the caller's copy is free)
``to_numpy(x)``        an array of this library copied to a host NumPy array
=====================  ==========================================================

Optional: ``astype_hint(dtype, name)`` (error messages), ``device_collectives(mpi_comm,
device)`` (collectives on the device for :mod:`xpnn.distributed`, e.g. NCCL),
``local_rank_device(local_rank)`` (the device of each rank on a machine, e.g. one GPU each)
``free_memory(device)`` (give back memory the library keeps for reuse) and
``synchronize(device)`` (wait for the device's queued work).

Kernels are what the standard lacks or runs slowly (convolution, pooling, the outer
product). :mod:`xpnn.backends.portable` holds a standard-only default for each; a library
module overrides one by giving a function of the same signature under the same name.
``backend.ops.conv2d(x, w, ...)`` calls whichever applies, with the backend as the first
argument (thinc's ``model.ops``, without inheritance).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from types import MethodType, ModuleType
from typing import Any

import numpy as np

from xpnn.errors import BackendError


def dtype_name(dtype) -> str:
    """``"float32"`` for ``"float32"``, ``np.float32``, ``torch.float32``, ``xp.float32``."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None) or str(dtype)
    return name.rsplit(".", 1)[-1]


def probe_import(module_name: str, install: str):
    """``(module, (can_run, version, reason))`` for a library that runs wherever it imports
    (``module`` is None when it does not); the usual ``probe()`` of a library module."""
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an ImportError, or a broken install raising anything
        return None, (False, "", f"not installed ({error}); install it with: {install}")
    return module, (True, str(getattr(module, "__version__", "?")), "")


class Ops:
    """The kernels of one backend, as bound methods: ``ops.conv2d(x, w, ...)``.

    Every name of :data:`xpnn.backends.portable.KERNELS` is an attribute; its value is the
    library's override when it has one, else the portable default. ``ops.portable`` holds
    the portable defaults bound to the same backend (tests compare the two), and
    ``ops.overridden`` the names the library overrides.
    """

    def __init__(self, backend: Backend, overrides: dict[str, Any]):
        from xpnn.backends import portable

        unknown = sorted(set(overrides) - set(portable.KERNELS))
        if unknown:
            raise BackendError(
                f"The {backend.name} backend overrides unknown kernels: {', '.join(unknown)}. "
                f"Expected names of xpnn.backends.portable.KERNELS: "
                f"{', '.join(sorted(portable.KERNELS))}."
            )
        self.overridden = frozenset(overrides)
        self.portable = _Bound(backend, portable.KERNELS)
        for name, default in portable.KERNELS.items():
            setattr(self, name, MethodType(overrides.get(name, default), backend))

    def __repr__(self) -> str:
        return f"Ops(overridden={sorted(self.overridden)})"


class _Bound:
    def __init__(self, backend, kernels):
        for name, function in kernels.items():
            setattr(self, name, MethodType(function, backend))


def signature_mismatch(override, default) -> str:
    """Why ``override`` cannot stand in for the portable ``default`` ("" when it can): it
    must take the same parameters in the same order with the same defaults, and may add
    keyword-only parameters with defaults (such as the NumPy convolution's ``strategy``)."""
    given = list(inspect.signature(override).parameters.values())
    wanted = list(inspect.signature(default).parameters.values())
    if len(given) < len(wanted):
        return f"takes {len(given)} parameters, the portable kernel {len(wanted)}"
    for have, want in zip(given, wanted, strict=False):
        if (have.name, have.kind, have.default) != (want.name, want.kind, want.default):
            return f"parameter {have} differs from the portable kernel's {want}"
    for extra in given[len(wanted):]:
        if extra.kind is not inspect.Parameter.KEYWORD_ONLY or extra.default is extra.empty:
            return f"extra parameter {extra} must be keyword-only with a default"
    return ""


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
    array_type : type
        The library's array class.
    mutable : bool
        Whether arrays may be updated in place (False for JAX).
    ops : Ops
        The kernel table (:mod:`xpnn.backends.portable` defaults and the library's
        overrides).
    """

    name: str
    xp: Any
    device: Any
    array_type: type
    mutable: bool
    library: ModuleType = field(repr=False)
    ops: Ops = field(init=False, repr=False)

    def __post_init__(self):
        self.ops = Ops(self, self.library.KERNELS)

    # -- host <-> backend ---------------------------------------------------------------
    def asarray(self, host_array, dtype=None, *, copy: bool = True):
        """A new array on this backend holding a copy of ``host_array`` (a NumPy array,
        anything NumPy can read, or an array of any supported backend). With
        ``copy=False`` a host array that already has the right dtype and layout is not
        copied on the host (for arrays the caller just created and will not touch again,
        such as a fresh batch; NumPy then uses it as is)."""
        from xpnn.backends.selector import to_numpy

        host = np.array(to_numpy(host_array), dtype=None if dtype is None else dtype_name(dtype),
                        copy=True if copy else None, order="C")
        return self.library.from_numpy(host, self.device)

    def to_numpy(self, array):
        """Copy an array of this backend (or a host NumPy array) to a host NumPy array."""
        if isinstance(array, np.ndarray):
            return array
        return self.library.to_numpy(array)

    def owns(self, array) -> bool:
        """Whether ``array`` is an array of this library on this backend's device."""
        if not isinstance(array, self.array_type):
            return False
        return self.library.device_of(array) == self.device

    def dtype(self, dtype):
        """The namespace's dtype object for ``dtype`` (a name such as ``"float32"``)."""
        return getattr(self.xp, dtype_name(dtype))

    def astype_hint(self, dtype, name: str = "x") -> str:
        """How to convert an array ``name`` of this backend to ``dtype``, spelled for this
        library (``x.astype('float32')``, ``x.to(torch.float32)``); the library module's
        optional ``astype_hint(dtype_name, name)``, else the standard's
        ``xp.astype(x, xp.float32)``."""
        wanted = dtype_name(dtype)
        hint = getattr(self.library, "astype_hint", None)
        if hint is not None:
            return hint(wanted, name)
        return f"xp.astype({name}, xp.{wanted})"

    def for_local_rank(self, local_rank: int) -> Backend:
        """The backend this process should use as rank ``local_rank`` among the ranks on
        its machine: the library module's optional ``local_rank_device(local_rank)``
        (CuPy: one GPU per rank, ``local_rank % device count``, unless ``XPNN_DEVICE`` is
        set), else this backend unchanged."""
        choose = getattr(self.library, "local_rank_device", None)
        spec = None if choose is None else choose(int(local_rank))
        if spec is None:
            return self
        from xpnn.backends.selector import make_backend

        return make_backend(self.name, spec)

    def synchronize(self) -> None:
        """Wait until every operation queued on this backend's device has finished (the
        library module's optional ``synchronize(device)``; host libraries need none).
        Benchmarks call it around timings, so a GPU's asynchronous queue is measured."""
        wait = getattr(self.library, "synchronize", None)
        if wait is not None:
            wait(self.device)

    def free_memory(self) -> str:
        """Give back the memory this backend's library keeps for reuse (the library
        module's optional ``free_memory(device)``: CuPy's memory pools, PyTorch's CUDA
        cache; glibc's freed heap on the host) and say what was done, in one line."""
        release = getattr(self.library, "free_memory", None)
        if release is None:
            return f"{self.name}: nothing to release (the library manages its own memory)"
        return f"{self.name}: {release(self.device)}"

    def collectives(self, mpi_comm):
        """Collectives that reduce this backend's arrays on their device between the ranks
        of ``mpi_comm`` (an mpi4py communicator): the library module's optional
        ``device_collectives(mpi_comm, device)`` (NCCL for CuPy), or None when it has
        none; :mod:`xpnn.distributed` then stages arrays through host buffers."""
        make = getattr(self.library, "device_collectives", None)
        return None if make is None else make(mpi_comm, self.device)

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, device={self.device!r})"
