"""File helpers shared by xpnn's readers and writers: path arguments (``str``, bytes or
``os.PathLike``; a NUL character is a ConfigError), opening regular files only
(:func:`open_regular`: a FIFO or device is a DataError, never a read that blocks), and
binary payloads read with ordinary reads and their size checked before anything is
allocated.

A binary format with a header and a fixed-size payload (darknet's ``.weights``, raw IDX
files) is read by :func:`read_payload`: the payload must fill the file exactly, so a header
(or a layer list) that claims more data than the file holds is refused at the cost of one
``fstat``, not of the allocation it asks for.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import numpy as np

from xpnn.errors import ConfigError, DataError, MissingFileError

__all__ = ["check_conversion_target", "fspath", "open_regular", "read_exactly", "read_payload",
           "refuse_non_regular"]


def fspath(who: str, path) -> str:
    """``path`` as a ``str`` (``os.fspath``), or a ConfigError naming the function ``who``.

    Examples
    --------
    >>> from pathlib import Path
    >>> fspath("xpnn.io.load", Path("m.safetensors"))
    'm.safetensors'
    """
    try:
        text = os.fspath(path)
        if isinstance(text, bytes):
            text = os.fsdecode(text)  # bytes paths are decoded as the OS would
    except (TypeError, UnicodeDecodeError):
        raise ConfigError(
            f"{who} expected a file path (str or os.PathLike). "
            f"Received: {type(path).__name__} {path!r}"
        ) from None
    if "\0" in text:
        raise ConfigError(
            f"{who} expected a file path without NUL characters. "
            f"Received: {text!r}"
        )
    return text


def check_conversion_target(who: str, source: str, target: str, *, force: bool,
                            example: str, force_hint: str = "--force") -> None:
    """Before a conversion command writes ``target`` from ``source``: refuse the source
    itself (by device and inode, so links count) and, unless ``force``, any existing file.
    A folder as the target is left to the writer, which says it is one. ``example`` is the
    other target the message suggests; ``force_hint`` how to pass ``force``."""
    try:
        target_stat = os.stat(target)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        raise DataError(f"{who} cannot check the target {target!r}: {error}") from error
    try:
        source_stat = os.stat(source)
    except (OSError, ValueError):
        source_stat = None  # the reader reports it
    if source_stat is not None and (source_stat.st_dev, source_stat.st_ino) == (
            target_stat.st_dev, target_stat.st_ino):
        raise ConfigError(
            f"{who} expected a target other than the source. Received: source={source!r}, "
            f"target={target!r}, the same file. Choose another target, e.g. {example}."
        )
    if stat.S_ISDIR(target_stat.st_mode):
        return  # the writer explains
    if not force:
        raise ConfigError(
            f"{who} expected a target that does not exist. Received: target={target!r}, an "
            f"existing file. Remove it, choose another name, or pass {force_hint} to "
            f"replace it."
        )


def open_regular(path: str, what: str):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO or a device then returns at
    once instead of waiting for a writer) and checked with ``fstat`` on the open
    descriptor, so a path swapped for a FIFO between a check and the open cannot block.

    Parameters
    ----------
    path : str
    what : str
        The kind of file, for messages (``"weights file"``).

    Returns
    -------
    binary file
        Unbuffered (``FileIO``), in blocking mode again.

    Raises
    ------
    MissingFileError
        Nothing at ``path``.
    DataError
        A folder, FIFO, socket or device, or a file that cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MissingFileError(
            f"No {what} at {path!r}. Check the path (working directory: {os.getcwd()!r}).",
            path,
        ) from None
    except IsADirectoryError:
        refuse_non_regular(path, stat.S_IFDIR, what)
    except (OSError, ValueError) as error:
        try:  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            mode = stat.S_IFREG
        refuse_non_regular(path, mode, what)
        raise DataError(f"Cannot read the {what} {os.fspath(path)!r}: {error}") from error
    try:
        refuse_non_regular(path, os.fstat(fd).st_mode, what)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def refuse_non_regular(path, mode: int, what: str) -> None:
    """Raise a :class:`DataError` unless ``mode`` (an ``st_mode``) is that of a regular
    file; the message names ``path``, its kind and ``what`` was expected there."""
    if stat.S_ISREG(mode):
        return
    shown = repr(os.fspath(path))
    if stat.S_ISDIR(mode):
        raise DataError(
            f"Expected a {what}, but {shown} is a folder: xpnn expected a regular file, and "
            f"this is a directory. Pass the path of a file inside it."
        )
    raise DataError(
        f"xpnn expected a regular file as the {what}. Received: {shown}, which is "
        f"{_kind(mode)}. FIFOs, devices and sockets are refused (reading one can block "
        f"forever or never end): copy the data to a regular file first."
    )


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_exactly(handle, offset: int, count: int) -> bytearray | None:
    """``count`` bytes of ``handle`` from ``offset`` with ordinary reads into one buffer
    (never a memory map, so a file truncated meanwhile cannot kill the process with
    SIGBUS), or ``None`` when the file ended before (it was truncated while being read)."""
    handle.seek(offset)
    out = bytearray(count)
    view, done = memoryview(out), 0
    while done < count:
        received = handle.readinto(view[done:done + (1 << 26)])
        if not received:
            return None
        done += received
    return out


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
    view, received = memoryview(out).cast("B"), 0
    while received < expected:
        got = handle.readinto(view[received:])
        if not got:
            break
        received += got
    if received != expected or os.fstat(handle.fileno()).st_size - offset != expected:
        raise mismatch("truncated", received, expected)  # the file changed while read
    return out.astype(dtype.newbyteorder("="), copy=False)
