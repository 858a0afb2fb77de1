"""File helpers shared by xpnn's readers and writers: path arguments, and binary payloads
read with their size checked before anything is allocated.

A binary format with a header and a fixed-size payload (darknet's ``.weights``, raw IDX
files) is read by :func:`read_payload`: the payload must fill the file exactly, so a header
(or a layer list) that claims more data than the file holds is refused at the cost of one
``fstat``, not of the allocation it asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from xpnn.errors import ConfigError

__all__ = ["fspath", "read_payload"]


def fspath(who: str, path) -> str:
    """``path`` as a ``str`` (``os.fspath``), or a ConfigError naming the function ``who``.

    Examples
    --------
    >>> from pathlib import Path
    >>> fspath("xpnn.io.load", Path("m.safetensors"))
    'm.safetensors'
    """
    try:
        return os.fspath(path)
    except TypeError:
        raise ConfigError(
            f"{who} expected a file path (str or os.PathLike). "
            f"Received: {type(path).__name__} {path!r}"
        ) from None


def read_payload(handle, dtype, count: int, *, offset: int,
                 mismatch: Callable[[str, int, int], Exception],
                 longer: str = "longer than expected") -> np.ndarray:
    """Read the ``count`` items of ``dtype`` that fill an open binary file from byte
    ``offset`` to its end, as a 1-D host array in native byte order.

    Parameters
    ----------
    handle : binary file
        Opened with ``open(path, "rb")`` (it needs ``fileno``, ``seek`` and ``readinto``).
    dtype : numpy dtype or str
        The stored element type, with its byte order (``"<f4"``, ``">i2"``).
    count : int
        How many elements the header (or the caller's layout) says follow it.
    offset : int
        The header's size in bytes.
    mismatch : callable
        ``mismatch(problem, actual, expected)`` returns the error to raise when the file
        does not hold exactly ``count`` elements after the header (checked before reading,
        and again after, in case the file shrank meanwhile). ``problem`` is
        ``"truncated"`` or ``longer``; ``actual`` and ``expected`` count payload bytes.
    longer : str
        The ``problem`` of a file with more bytes than expected.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "values.bin")
    >>> with open(path, "wb") as out:
    ...     _ = out.write(b"HEAD" + np.arange(3, dtype="<f4").tobytes())
    >>> with open(path, "rb") as handle:
    ...     read_payload(handle, "<f4", 3, offset=4, mismatch=ValueError).tolist()
    [0.0, 1.0, 2.0]
    """
    dtype = np.dtype(dtype)
    expected = count * dtype.itemsize
    actual = os.fstat(handle.fileno()).st_size - offset
    if actual != expected:
        raise mismatch("truncated" if actual < expected else longer, actual, expected)
    handle.seek(offset)
    out = np.empty(count, dtype=dtype)
    received = handle.readinto(memoryview(out).cast("B"))
    if received != expected:  # the file shrank while we read it
        raise mismatch("truncated", received, expected)
    return out.astype(dtype.newbyteorder("="), copy=False)
