"""Reading safetensors files: arrays, metadata and sizes, trusting nothing in the file.

The header length is checked against the file size before anything is allocated, and every
failure becomes a :class:`~xpnn.errors.WeightsError` naming the file (a missing file is a
:class:`~xpnn.errors.MissingFileError`, a folder or an unreadable file a
:class:`~xpnn.errors.DataError`). NaN and infinite values are loaded as they are (a valid
file may hold them, e.g. ``-inf`` masks); ``check_finite=True`` refuses them.
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import safetensors

from xpnn import backends
from xpnn.errors import ConfigError, DataError, MissingFileError, WeightsError
from xpnn.io.files import fspath
from xpnn.module import Module

__all__ = ["MAX_HEADER_BYTES", "load", "load_metadata", "read_arrays", "stored_values"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header


def load(path: str | os.PathLike, into: Module | None = None, *, strict: bool = True,
         check_finite: bool = False):
    """Read a safetensors file.

    Parameters
    ----------
    path : str or os.PathLike
    into : Module, optional
        Load the arrays into this model (names, shapes and dtypes are checked, all
        mismatches are reported at once, and the model is unchanged on error) and return
        it. Without ``into``, return ``{name: array}`` on the current backend and device.
    strict : bool
        With ``into``: refuse missing and unexpected names (shapes are always checked).
    check_finite : bool
        Refuse a file whose floating-point arrays hold NaN or infinite values (default
        False: such values are loaded as they are).

    Raises
    ------
    MissingFileError
        The file does not exist (a DataError and a FileNotFoundError).
    DataError
        The path is a folder or cannot be read.
    WeightsError
        The file is not a valid safetensors file, does not match ``into``, or holds
        non-finite values with ``check_finite=True``.
    """
    path = fspath("xpnn.io.load", path)
    if into is not None and not isinstance(into, Module):
        raise ConfigError(
            f"xpnn.io.load expected into= to be an xpnn Module. Received: {type(into).__name__}"
        )
    host = read_arrays(path, check_finite=check_finite)
    if into is not None:
        return into.load_state_dict(host, strict=strict)
    backend = backends.current()  # where new arrays go
    out = {}
    for name, value in host.items():
        try:
            out[name] = backend.asarray(value)
        except Exception as error:
            raise WeightsError(
                f"{path!r}: the array {name!r} ({value.dtype}) cannot be placed on the "
                f"{backend.name} backend ({type(error).__name__}: {error}). Convert the file "
                f"or load it with the numpy backend."
            ) from error
    return out


def read_arrays(path: str | os.PathLike, *, check_finite: bool = False) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file as host NumPy arrays, ``{name: array}`` (for code
    that adapts a foreign file before loading it into a model; see :func:`load`)."""
    path = fspath("xpnn.io.read_arrays", path)
    host = {}
    with _open(path) as handle:
        try:
            for name in handle.keys():
                host[name] = handle.get_tensor(name)
        except BaseException as error:
            if not _is_failure(error):
                raise
            raise _corrupt(path, error) from error
    if check_finite:
        _check_finite(path, host)
    return host


def _check_finite(path: str, host: dict[str, np.ndarray]) -> None:
    bad = []
    for name, value in host.items():
        if value.dtype.kind in "fc":
            count = int(value.size - np.count_nonzero(np.isfinite(value)))
            if count:
                bad.append(f"{name!r} ({count} of {value.size})")
    if bad:
        raise WeightsError(
            f"{path!r} holds NaN or infinite values in {len(bad)} arrays: "
            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. Expected finite "
            f"weights. The file was written by a run that diverged, or is corrupt; use an "
            f"earlier checkpoint, or load with check_finite=False to inspect it."
        )


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata header of a safetensors file (an empty dict when it has none)."""
    path = fspath("xpnn.io.load_metadata", path)
    with _open(path) as handle:
        try:
            return dict(handle.metadata() or {})
        except BaseException as error:
            if not _is_failure(error):
                raise
            raise _corrupt(path, error) from error


def stored_values(path: str | os.PathLike) -> int:
    """How many array elements the file stores, read from its header only."""
    path = fspath("xpnn.io.stored_values", path)
    with _open(path) as handle:
        try:
            return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
        except BaseException as error:
            if not _is_failure(error):
                raise
            raise _corrupt(path, error) from error


def _is_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failure to read the file (to be reported as a WeightsError),
    rather than an interruption. pyo3 turns a Rust panic inside safetensors into a
    ``PanicException``, which derives from BaseException, so Exception is not enough."""
    return not isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit)


def _open(path: str):
    """``safe_open`` after cheap checks, translating every failure into an xpnn error."""
    _check_header_size(path)
    try:
        return safetensors.safe_open(path, framework="np")
    except BaseException as error:
        if not _is_failure(error):
            raise
        raise _corrupt(path, error) from error


def _check_header_size(path: str) -> None:
    """Read the 8-byte little-endian header length and refuse impossible values before
    safetensors allocates anything for the header."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
    except FileNotFoundError:
        raise MissingFileError(
            f"No weights file at {path!r}. Check the path (working directory: "
            f"{os.getcwd()!r}).", path
        ) from None
    except IsADirectoryError:
        raise DataError(
            f"Expected a weights file, but {path!r} is a folder. Pass the path of a "
            f".safetensors file inside it."
        ) from None
    except OSError as error:
        raise DataError(f"Cannot read the weights file {path!r}: {error}") from error
    if len(prefix) < 8:
        raise WeightsError(
            f"{path!r} is not a safetensors file: it has {size} bytes, fewer than the 8-byte "
            f"header length. The file is empty or truncated; save or download it again."
        )
    (header_bytes,) = struct.unpack("<Q", prefix)
    if header_bytes > size - 8 or header_bytes > MAX_HEADER_BYTES:
        raise WeightsError(
            f"{path!r} is not a valid safetensors file: its header claims {header_bytes:,} "
            f"bytes, but the file has {size:,} bytes (and headers are at most "
            f"{MAX_HEADER_BYTES:,}). The file is truncated or not safetensors; save or "
            f"download it again."
        )


def _corrupt(path: str, error: BaseException) -> WeightsError:
    return WeightsError(
        f"Cannot read {path!r} as safetensors: {type(error).__name__}: {error}. The file is "
        f"corrupt, truncated or not safetensors (or holds a dtype NumPy cannot read, such as "
        f"bfloat16); save or download it again."
    )
