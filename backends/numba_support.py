"""The optional CPU fast path: numba-compiled kernels the NumPy backend uses when numba is
installed (``pip install "xpnn[fast]"``).

Every compiled kernel has a NumPy twin that computes the same numbers (the tests compare
them on every shape class the kernel handles); the NumPy backend picks the compiled one
when :func:`enabled` says so. ``XPNN_NUMBA=0`` turns the fast path off (for a comparison,
or when numba misbehaves); ``python -m xpnn.backends`` reports whether it is on and why.

Kernels are compiled on first use and cached on disk next to this file (numba's
``cache=True``; a read-only install falls back to numba's per-user cache folder), so only a
process's first call of each kernel pays the few seconds of compilation.
"""

from __future__ import annotations

import functools
import importlib
import os

INSTALL = 'pip install "xpnn[fast]"  (numba)'
SWITCH = "XPNN_NUMBA"


@functools.cache
def _numba():
    """``(module or None, why not)``: numba when it imports, else the reason."""
    try:
        return importlib.import_module("numba"), ""
    except Exception as error:  # not installed, or an install that fails to import
        return None, f"numba is not installed ({type(error).__name__}: {error}); {INSTALL}"


def enabled() -> bool:
    """Whether the NumPy backend uses the numba kernels now: numba imports and
    ``XPNN_NUMBA`` is not ``0`` (read at every call, so tests can switch it)."""
    if os.environ.get(SWITCH, "").strip() in ("0", "false", "no", "off"):
        return False
    return _numba()[0] is not None


def describe() -> str:
    """One line for ``python -m xpnn.backends``: on (with numba's version) or why off."""
    numba, why = _numba()
    if numba is None:
        return f"off: {why}"
    if not enabled():
        return f"off: {SWITCH}={os.environ.get(SWITCH)!r} (numba {numba.__version__} installed)"
    return f"on (numba {numba.__version__}; {SWITCH}=0 turns it off)"


def jit(**options):
    """numba's ``njit`` with xpnn's defaults (``cache=True``, ``nogil=True``); the caller
    must only call it when :func:`enabled`."""
    numba = _numba()[0]
    options = {"cache": True, "nogil": True, **options}
    return numba.njit(**options)
