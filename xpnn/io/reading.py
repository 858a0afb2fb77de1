"""Reading safetensors files: arrays, metadata and sizes, trusting nothing in the file.

The header length is checked against the file size before anything is allocated, and every
failure becomes a :class:`~xpnn.errors.WeightsError` naming the file (a missing file is a
:class:`~xpnn.errors.MissingFileError`, a folder, FIFO, device or unreadable file a
:class:`~xpnn.errors.DataError`; only regular files are opened, without blocking).

Files are read with ordinary reads, never memory-mapped: the header is parsed and checked
here (dtypes, shapes, offsets that tile the payload exactly, as safetensors checks them),
then the payload is read in one buffer of the size ``fstat`` gave, and the size is checked
again afterwards. A file that another process truncates or rewrites meanwhile is therefore
a WeightsError ("changed while it was read"), never a SIGBUS that kills the process.

NaN and infinite values are loaded as they are (a valid file may hold them, e.g. ``-inf``
masks); ``check_finite=True`` refuses them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from xpnn import backends
from xpnn.errors import ConfigError, DataError, WeightsError
from xpnn.io.files import fspath, open_regular, read_exactly
from xpnn.module import Module

__all__ = ["MAX_HEADER_BYTES", "check_serialized", "load", "load_metadata", "read_arrays",
           "stored_values"]

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
    that adapts a foreign file before loading it into a model; see :func:`load`).

    The file is read with ordinary reads, never memory-mapped: a file truncated or
    rewritten by another process while it is read is reported as a WeightsError instead
    of killing this process with SIGBUS."""
    path = fspath("xpnn.io.read_arrays", path)
    with _open(path) as handle:
        layout = _read_layout(path, handle)
        payload = read_exactly(handle, layout.data_start, layout.size - layout.data_start)
        if payload is None or os.fstat(handle.fileno()).st_size != layout.size:
            raise _changed(path)
    host = {}
    for entry in sorted(layout.entries):
        name, code, shape, begin, end = entry
        dtype = _NUMPY_DTYPES.get(code)
        if dtype is None:
            raise WeightsError(
                f"Cannot read {path!r}: the array {name!r} has the dtype {code}, which NumPy "
                f"cannot hold. Expected one of {', '.join(_NUMPY_DTYPES)}. Convert the file "
                f"(e.g. bfloat16 to float32) and save it again."
            )
        count = math.prod(shape)
        if count == 0:
            value = np.empty(shape, dtype=dtype)
        else:
            value = np.frombuffer(payload, dtype=dtype, count=count, offset=begin).reshape(shape)
            if not value.flags.aligned:
                value = value.copy()
        host[name] = value.astype(value.dtype.newbyteorder("="), copy=False)
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
    """The metadata header of a safetensors file (an empty dict when it has none).

    Only the header is read (ordinary reads, no memory map); it is checked as
    :func:`read_arrays` checks it, against the file's size."""
    path = fspath("xpnn.io.load_metadata", path)
    with _open(path) as handle:
        return dict(_read_layout(path, handle).metadata)


def stored_values(path: str | os.PathLike) -> int:
    """How many array elements the file stores, read from its header only."""
    path = fspath("xpnn.io.stored_values", path)
    with _open(path) as handle:
        return sum(math.prod(entry[2]) for entry in _read_layout(path, handle).entries)


#: safetensors dtype codes NumPy reads, as little-endian NumPy dtypes.
_NUMPY_DTYPES = {"BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
                 "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "U32": np.dtype("<u4"),
                 "I32": np.dtype("<i4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
                 "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
                 "C64": np.dtype("<c8")}
#: Bits per element of every safetensors dtype code (those NumPy lacks included).
_BITS = {**{code: dtype.itemsize * 8 for code, dtype in _NUMPY_DTYPES.items()},
         "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6,
         "F4": 4}


@dataclass(frozen=True)
class _Layout:
    """A checked safetensors header: ``entries`` are ``(name, dtype code, shape, begin,
    end)`` with offsets into the payload, which runs from ``data_start`` to ``size``."""

    metadata: dict[str, str]
    entries: list[tuple[str, str, tuple[int, ...], int, int]]
    data_start: int
    size: int


def _open(path: str):
    """The file opened for reading, refused unless it is a regular file (a FIFO would
    block forever), every failure an xpnn error."""
    return open_regular(path, "weights file")


def check_serialized(data: bytes) -> None:
    """Check the bytes of a whole safetensors file as :func:`read_arrays` checks a file
    (what :func:`xpnn.io.save` verifies before it writes anything).

    Raises
    ------
    WeightsError
        The bytes are not a safetensors file the reader would accept.
    """
    _parse_layout("<serialized>", len(data),
                  lambda offset, count: data[offset:offset + count]
                  if offset + count <= len(data) else None)


def _read_layout(path: str, handle) -> _Layout:
    """Read and check the header of an open file with ordinary reads (see
    :func:`_parse_layout`)."""
    def read(offset: int, count: int):
        try:
            return read_exactly(handle, offset, count)
        except OSError as error:
            raise DataError(f"Cannot read the weights file {path!r}: {error}") from error

    try:
        size = os.fstat(handle.fileno()).st_size
    except OSError as error:
        raise DataError(f"Cannot read the weights file {path!r}: {error}") from error
    return _parse_layout(path, size, read)


def _parse_layout(path: str, size: int, read) -> _Layout:
    """Check a header: its length against the file size (before allocating it), its
    JSON, every entry's dtype, shape and offsets, and that the arrays fill the rest of the
    file exactly. ``read(offset, count)`` returns bytes, or None past the end."""
    prefix = read(0, 8) if size >= 8 else None
    if prefix is None:
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
    raw = read(8, header_bytes)
    if raw is None:
        raise _changed(path)
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _corrupt(path, f"the header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
            isinstance(value, str) for value in metadata.values()):
        raise _corrupt(path, "its __metadata__ is not an object of strings")
    entries = [_entry(path, name, info) for name, info in header.items()]
    position = 0
    for name, _, _, begin, end in sorted(entries, key=lambda entry: (entry[3], entry[4])):
        if begin != position:
            raise _corrupt(path, f"the data of {name!r} starts at byte {begin:,} of the "
                                 f"payload, expected {position:,} (arrays must not overlap "
                                 f"or leave gaps)")
        position = end
    data_start = 8 + header_bytes
    if data_start + position != size:
        raise _corrupt(path, f"its arrays need {position:,} bytes after the header, but "
                             f"the file has {size - data_start:,}")
    return _Layout(metadata, entries, data_start, size)


def _entry(path: str, name: str, info) -> tuple[str, str, tuple[int, ...], int, int]:
    """One header entry as ``(name, dtype code, shape, begin, end)``, checked."""
    def natural(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _corrupt(path, f"the entry {name!r} is not an object with dtype, shape and "
                             f"data_offsets: {_short(info)}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _BITS:
        raise _corrupt(path, f"the entry {name!r} has an unknown dtype {_short(code)}")
    if not isinstance(shape, list) or not all(natural(value) for value in shape):
        raise _corrupt(path, f"the entry {name!r} has an invalid shape {_short(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(natural(value) for value in offsets) or offsets[0] > offsets[1]):
        raise _corrupt(path, f"the entry {name!r} has invalid data_offsets {_short(offsets)}")
    bits = math.prod(shape) * _BITS[code]
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise _corrupt(path, f"the entry {name!r} ({code}, shape {shape}) needs "
                             f"{bits / 8:,g} bytes, but its data_offsets span "
                             f"{offsets[1] - offsets[0]:,}")
    return name, code, tuple(shape), offsets[0], offsets[1]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _changed(path: str) -> WeightsError:
    return WeightsError(
        f"{path!r} changed while it was read: expected its size to stay the same. Another "
        f"process is writing or truncating it; load it again once that process is done."
    )


def _corrupt(path: str, problem) -> WeightsError:
    return WeightsError(
        f"Cannot read {path!r} as safetensors: {problem}. Expected a valid safetensors "
        f"file. The file is corrupt, truncated or not safetensors; save or download it again."
    )
