"""Opening data files safely: only regular files, never blocking on a FIFO or a device
(reading one can wait forever or never end)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from xpnn.errors import DataError

__all__ = ["open_regular_file", "refuse_non_regular"]


def _file_kind(mode: int) -> str:
    """``"a directory"``, ``"a FIFO (named pipe)"``, ... for a non-regular ``st_mode``."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    for test, kind in kinds:
        if test(mode):
            return kind
    return "not a regular file"


def refuse_non_regular(path: Path, mode: int, what: str) -> None:
    """Raise a :class:`DataError` naming ``path``'s kind unless ``mode`` (an ``st_mode``)
    is that of a regular file; ``what`` names the caller in the message."""
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{what} expected a regular file. Received: {path}, which is "
            f"{_file_kind(mode)}. FIFOs, devices, sockets and directories are refused "
            f"(reading them can block forever or never end); give the path of a file."
        )


def open_regular_file(path: str | os.PathLike, what: str = "Reading"):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The path is checked with :func:`os.stat` before it is opened (``open()`` on a FIFO
    blocks until a writer appears), then opened non-blocking and checked again on the open
    descriptor with :func:`os.fstat`, so that a file swapped for a FIFO in between is still
    refused.

    Parameters
    ----------
    path : str or path-like
        The file (symbolic links are followed).
    what : str
        What is reading, for the message (e.g. ``"read_idx"``).

    Returns
    -------
    io.BufferedReader
        The open file; close it (use ``with``).

    Raises
    ------
    DataError
        ``path`` is a directory, FIFO, device or socket.
    FileNotFoundError, PermissionError, OSError
        As :func:`open` raises them.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> open_regular_file(folder, "example")
    Traceback (most recent call last):
    ...
    xpnn.errors.DataError: example expected a regular file. Received: ...
    """
    path = Path(path)
    refuse_non_regular(path, os.stat(path).st_mode, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    try:
        refuse_non_regular(path, os.fstat(descriptor).st_mode, what)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
