"""Keep freed host memory for the next batch instead of handing it back to the kernel.

Training allocates the same arrays every step: activations, the columns of each
convolution, gradients. With glibc's default settings (Linux), memory freed at the top of
the heap beyond a trim threshold (twice the largest block ever freed, at most 64 MB) goes
back to the kernel, and so does every block allocated with ``mmap``; the next step then
touches fresh pages, each a page fault (about 2 µs per 4 KiB measured on a 2-core VM, and
11,000 of them per MNIST CNN training step: 20 % of its time).

:func:`keep_freed_memory` sets two glibc ``mallopt`` parameters once per process:

* ``M_MMAP_THRESHOLD`` = 32 MB: blocks up to 32 MB come from the heap (glibc's own
  dynamic threshold reaches that only after such a block was freed once);
* ``M_TRIM_THRESHOLD`` = 512 MB: the heap is trimmed only once more than 512 MB at its
  top are free, so a process keeps at most that much freed memory on top of what it
  uses. A training step's temporaries must fit under it to be reused: the MNIST CNN's
  step at batch 64 frees 63-69 MB at its end, just above glibc's largest default (64 MB).

Measured (MNIST CNN, batch 64, 2 cores): 10,400-12,600 page faults per training step
with glibc's defaults, none with these settings; the step took 142-154 ms against
117-127 ms (alternating runs). The same process-wide effect is what
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=536870912`` in the environment
gives; like those variables it applies to every library in the process (PyTorch's CPU
tensors included).

Nothing is changed when:

* ``XPNN_MALLOC_TUNING=0`` is set (the opt-out);
* the environment already sets glibc's malloc parameters (``MALLOC_*_`` variables or
  ``glibc.malloc`` tunables): the user's choice wins;
* the C library is not glibc (macOS, Windows, musl): their allocators differ.

Because the setting is process-wide (it changes every library's allocations, PyTorch's
included), importing xpnn or building a backend or a model never applies it: training
does. :func:`xpnn.training.fit` and the benchmarks call :func:`keep_freed_memory` when they
start; call it yourself to get the same effect in a loop of your own. :func:`status` says
what happened (``python -m xpnn.backends`` and the benchmarks print it).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "describe_plan", "keep_freed_memory", "status"]

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                   "MALLOC_MMAP_MAX_")

_status: str | None = None


def _decide() -> tuple[bool, str]:
    """``(apply, why)``: whether to set the parameters here, and a line saying why."""
    if os.environ.get("XPNN_MALLOC_TUNING", "").strip() == "0":
        return False, "left at the C library's defaults (XPNN_MALLOC_TUNING=0)"
    chosen = [name for name in _USER_VARIABLES if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return False, f"left as the environment sets it ({', '.join(chosen)})"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False, "left at the C library's defaults (not glibc)"
    return True, ""


def keep_freed_memory() -> str:
    """Set glibc's mmap and trim thresholds (see the module docstring) once per process,
    unless the user opted out or chose their own; return :func:`status`."""
    global _status
    if _status is not None:
        return _status
    apply, why = _decide()
    if apply:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
        except (OSError, AttributeError) as error:  # no mallopt symbol: nothing to tune
            ok, why = False, f"left at the C library's defaults (mallopt unavailable: {error})"
        if ok:
            why = (f"glibc keeps freed memory for reuse (mmap threshold "
                   f"{MMAP_THRESHOLD >> 20} MB, trim threshold {TRIM_THRESHOLD >> 20} MB; "
                   f"XPNN_MALLOC_TUNING=0 turns this off)")
        elif not why:
            why = "left at the C library's defaults (mallopt refused the values)"
    _status = why
    return _status


def release_freed_memory() -> bool:
    """Ask glibc to give the freed memory it keeps back to the operating system
    (``malloc_trim(0)``); True when it released some, False when it had none or this is
    not glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return trim(0) == 1


def describe_plan() -> str:
    """One line: what :func:`keep_freed_memory` would do in this process, without doing it
    (the doctor, ``python -m xpnn.backends``, prints it)."""
    if _status is not None:
        return _status
    apply, why = _decide()
    if not apply:
        return why
    return (f"training will ask glibc to keep freed memory for reuse (mmap threshold "
            f"{MMAP_THRESHOLD >> 20} MB, trim threshold {TRIM_THRESHOLD >> 20} MB; "
            f"XPNN_MALLOC_TUNING=0 turns this off)")


def status() -> str:
    """One line: what :func:`keep_freed_memory` did in this process ("not applied yet"
    before training started)."""
    return _status if _status is not None else "not applied yet"
