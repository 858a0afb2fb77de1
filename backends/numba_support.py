"""The optional CPU fast path: numba-compiled kernels the NumPy backend uses when numba is
installed (``pip install "xpnn[fast]"``).

Every compiled kernel has a NumPy twin that computes the same numbers (the tests compare
them on every shape class the kernel handles); the NumPy backend picks the compiled one
when :func:`enabled` says so. ``XPNN_NUMBA=0`` turns the fast path off (for a comparison,
or when numba misbehaves); ``python -m xpnn.backends`` reports whether it is on and why.

Kernels are compiled on first use and cached on disk next to this file (numba's
``cache=True``; a read-only install falls back to numba's per-user cache folder, and with
no writable place at all to no disk cache), so only a process's first call of each kernel
pays the few seconds of compilation.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os

try:
    import fcntl
except ImportError:  # not POSIX: numba's cache is used without the lock
    fcntl = None

from xpnn.errors import BackendError

INSTALL = 'pip install "xpnn[fast]"  (numba)'
SWITCH = "XPNN_NUMBA"


@functools.cache
def _installed() -> bool:
    """Whether numba is installed (found on the path; not imported: loading numba and
    LLVM takes about 120-150 MB of resident memory, spent only when a kernel first runs)."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _numba():
    """``(module or None, why not)``: numba imported, or why it could not be."""
    if not _installed():
        return None, f"numba is not installed; {INSTALL}"
    try:
        return importlib.import_module("numba"), ""
    except Exception as error:  # an install that fails to import
        return None, (f"numba is installed but failed to import ({type(error).__name__}: "
                      f"{error}); reinstall it, or set {SWITCH}=0")


def enabled() -> bool:
    """Whether the NumPy backend uses the numba kernels now: numba is installed and
    ``XPNN_NUMBA`` is not ``0`` (read at every call, so tests can switch it)."""
    if os.environ.get(SWITCH, "").strip() in ("0", "false", "no", "off"):
        return False
    return _installed()


def describe() -> str:
    """One line for ``python -m xpnn.backends``: on (with numba's version) or why off."""
    if not _installed():
        return f"off: numba is not installed; {INSTALL}"
    version = importlib.metadata.version("numba")
    if not enabled():
        return f"off: {SWITCH}={os.environ.get(SWITCH)!r} (numba {version} installed)"
    return f"on (numba {version}; {SWITCH}=0 turns it off)"


def jit(**options):
    """A decorator: numba's ``njit`` with xpnn's defaults (``cache=True``, ``nogil=True``);
    the caller must only call it when :func:`enabled`. Imports numba (a BackendError naming
    the cause when that fails). Where numba finds no writable place for its cache (a
    read-only install without a writable home or ``NUMBA_CACHE_DIR``) it refuses
    ``cache=True``; the function is then compiled without a disk cache (recompiled in each
    process) instead of failing."""
    numba, why = _numba()
    if numba is None:
        raise BackendError(f"The NumPy backend's compiled kernels need numba: {why}")
    options = {"cache": True, "nogil": True, **options}

    def decorate(function):
        try:
            return serialize_cache_io(numba.njit(**options)(function))
        except RuntimeError as error:  # "cannot cache function ...: no locator available"
            if not options.get("cache") or "cache" not in str(error):
                raise
            return numba.njit(**{**options, "cache": False})(function)

    return decorate


CACHE_LOCK = "xpnn-numba-cache.lock"


def serialize_cache_io(dispatcher):
    """``dispatcher`` with every save to and load from its disk cache made under an
    exclusive lock on :data:`CACHE_LOCK` in the cache folder (POSIX ``flock``; where that
    is missing, or the dispatcher has no disk cache, it is returned unchanged).

    Why: numba saves a newly compiled version by reading the cache's index, taking the
    first unused data-file number, writing the index, then the data. Two processes
    compiling the same kernel at once (MPI ranks on a first run, pytest-xdist workers) can
    both take the same number for different type signatures; the index then points one
    signature at the other's machine code, and every later process that loads it fails
    with "can't unbox array from PyObject into native value" until the cache is deleted
    (seen here with two test workers compiling float32 and float64 versions). Under the
    lock the second save reads the first one's entry and takes the next number. The lock
    is held only for the file I/O of a save or load (once per kernel and signature per
    process, never per call); compilation itself runs unlocked."""
    cache = getattr(dispatcher, "_cache", None)
    folder = getattr(cache, "cache_path", None)
    if fcntl is None or not isinstance(folder, str) or not hasattr(cache, "save_overload"):
        return dispatcher
    lock_path = os.path.join(folder, CACHE_LOCK)
    for name in ("save_overload", "load_overload"):
        setattr(cache, name, _holding_lock(getattr(cache, name), lock_path))
    return dispatcher


def _holding_lock(method, lock_path: str):
    """``method`` called while holding an exclusive ``flock`` on ``lock_path`` (created if
    missing). When the file cannot be opened or locked (a read-only folder, a file system
    without locks), ``method`` runs unlocked, as numba alone would run it."""

    @functools.wraps(method)
    def locked(*args, **kwargs):
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            handle = open(lock_path, "a")  # noqa: SIM115 (closed below)
        except OSError:
            return method(*args, **kwargs)
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:  # e.g. ENOLCK on some network file systems
                return method(*args, **kwargs)
            try:
                return method(*args, **kwargs)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return locked
