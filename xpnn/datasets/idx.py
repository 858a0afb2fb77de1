"""The IDX file format of MNIST and Fashion-MNIST, read and written with checks.

An IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/, "file formats") is::

    bytes 0-1   0x00 0x00                      (magic, part 1)
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64     (magic, part 2)
    byte  3     number of dimensions d         (magic, part 3)
    4 * d       each dimension as a big-endian uint32
    payload     prod(dims) * itemsize bytes, big-endian, C order

so ``train-images-idx3-ubyte`` starts with ``00 00 08 03``, then 60000, 28, 28. The files
are usually distributed gzipped; :func:`read_idx` recognises gzip by its magic bytes
``1f 8b``, whatever the file is called.

The reader trusts nothing in the header: the payload length must match the dimensions
exactly, and a header claiming more data than the file can hold is refused before any
memory is allocated for it. Only regular files are opened: a FIFO, device, socket or
directory is refused before anything is read from it (reading a FIFO blocks forever, a
device such as ``/dev/zero`` never ends). A gzip stream is decompressed only up to the
payload its header declares (plus a small bounded look-ahead to report trailing data), so a
"gzip bomb" costs no more than the array it claims to be. :func:`read_idx_header` reads
the header alone, so callers can check shapes before reading any payload.
"""

from __future__ import annotations

import gzip as gzip_module
import math
import os
import zlib
from pathlib import Path

import numpy as np

from xpnn.errors import ConfigError, DataError, MissingFileError
from xpnn.io.files import open_regular, read_payload

__all__ = ["IDX_DTYPES", "read_idx", "read_idx_header", "write_idx"]

#: Element type code of the IDX header -> NumPy dtype (big-endian for multi-byte types).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
# DEFLATE (RFC 1951) cannot compress better than about 1032:1, so a header that claims
# more than that many bytes per compressed byte is refused before reading anything.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20  # decompress in 1 MiB pieces so memory follows the data actually present
# Past the declared payload, at most this many more bytes are decompressed, only to say how
# long the surplus is; beyond it the message says "more than". Bounded work, whatever the
# stream holds.
_EXTRA_COUNT_LIMIT = 1 << 16
_DEFAULT_MAX_BYTES = 1 << 32  # 4 GiB: far above MNIST (47 MB), far below a hostile header


def _numpy_max_ndim() -> int:
    """The most dimensions a NumPy array may have here (64 on NumPy 2, 32 on NumPy 1)."""
    try:
        np.empty((1,) * 64, dtype=np.uint8)
    except ValueError:
        return 32
    return 64


#: The most dimensions an IDX header may declare: NumPy's own limit.
MAX_NDIM = _numpy_max_ndim()


def read_idx(path: str | os.PathLike, *, max_bytes: int | None = _DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-byte-order NumPy array.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip is detected from its first bytes (``1f 8b``), not from its name.
    max_bytes : int or None
        Refuse files whose header declares a payload larger than this (default 4 GiB);
        ``None`` removes the cap (the file size still bounds it).

    Returns
    -------
    numpy.ndarray
        Shape from the header, dtype from the element type code, native byte order,
        writeable.

    Raises
    ------
    MissingFileError
        The file does not exist (a :class:`DataError` and a ``FileNotFoundError``).
    DataError
        Naming the file, when it is not a regular file (a FIFO, device, socket or
        directory: refused before it is opened for reading), the magic number or
        dimensions are wrong (more than :data:`MAX_NDIM`), the payload length does not
        match the header (a gzip stream is never decompressed past the declared payload
        plus a 64 KiB look-ahead), the gzip stream is corrupt, or the file cannot be read.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8), gzip=True)
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    with _opened(path) as raw:
        if _is_gzip(raw):
            return _read_gzip(path, raw, max_bytes)
        return _read_raw(path, raw, max_bytes)


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
    """Read only the header of an IDX file (raw or gzipped): its element type and shape.

    Cheap whatever the file's size: only the first ``4 + 4 * ndim`` (decompressed) bytes
    are read. Use it to check shapes, or that several files fit together, before reading
    any payload with :func:`read_idx`.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip is detected from its first bytes (``1f 8b``).

    Returns
    -------
    dtype : numpy.dtype
        The element type, in native byte order (what :func:`read_idx` returns).
    shape : tuple of int
        The dimensions the header declares.

    Raises
    ------
    DataError
        Naming the file, when it is not a regular file, the magic number or dimensions
        are wrong, a gzip file's header claims more than it can expand to, or the file
        cannot be read.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "images-idx3-ubyte.gz")
    >>> write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8), gzip=True)
    >>> read_idx_header(path)
    (dtype('uint8'), (2, 28, 28))
    """
    path = Path(path)
    with _opened(path) as raw:
        if not _is_gzip(raw):
            dtype, shape, _ = _parse_header(path, raw)
            return _native(dtype), shape
        compressed = os.fstat(raw.fileno()).st_size
        with _gzip_errors(path), gzip_module.GzipFile(fileobj=raw, mode="rb") as stream:
            dtype, shape, header = _parse_header(path, stream)
        _check_cap(path, math.prod(shape) * dtype.itemsize + header,
                   compressed * _MAX_DEFLATE_RATIO,
                   f"the most a {compressed}-byte gzip file can expand to")
        return _native(dtype), shape


class _opened:
    """``with _opened(path) as raw``: a regular file open for reading, with every
    operating-system error turned into a :class:`DataError` naming ``path``."""

    def __init__(self, path: Path):
        self.path = path
        self.raw = None

    def __enter__(self):
        try:
            self.raw = open_regular(self.path, "IDX file")
        except MissingFileError:
            raise MissingFileError(
                f"IDX file not found: {self.path}. Expected an existing file (raw or .gz).",
                filename=str(self.path),
            ) from None
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        return self.raw

    def __exit__(self, kind, error, traceback):
        if self.raw is not None:
            self.raw.close()
        if error is None or isinstance(error, DataError) or not isinstance(error, OSError):
            return False
        path = self.path
        if isinstance(error, FileNotFoundError):
            raise MissingFileError(
                f"IDX file not found: {path}. Expected an existing file (raw or .gz).",
                filename=str(path),
            ) from None
        if isinstance(error, IsADirectoryError):
            raise DataError(f"Expected an IDX file, but {path} is a directory.") from None
        if isinstance(error, PermissionError):
            raise DataError(
                f"Cannot read IDX file {path}: {error}. Check its permissions."
            ) from None
        raise DataError(f"Cannot read IDX file {path}: {error}.") from error


def _is_gzip(raw) -> bool:
    is_gzip = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    return is_gzip


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype


def write_idx(path: str | os.PathLike, array, *, gzip: bool = False) -> None:
    """Write ``array`` as an IDX file, optionally gzipped (reproducibly: gzip mtime is 0).

    Parameters
    ----------
    path : str or path-like
        Destination file (overwritten).
    array : array_like
        Any array whose dtype is one of uint8, int8, int16, int32, float32, float64, with
        at least one dimension, each below 2**32.
    gzip : bool
        Compress the file with gzip.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x-idx2-float")
    >>> write_idx(path, np.eye(2, dtype=np.float32))
    >>> read_idx(path).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    array = np.asarray(array)
    codes = {dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype: code
             for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    if native not in codes:
        names = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
        raise ConfigError(
            f"write_idx cannot store dtype {array.dtype}. Expected one of: {names}. "
            f"Convert first, e.g. array.astype('float32')."
        )
    if not 1 <= array.ndim <= 255 or any(n >= 2**32 for n in array.shape):
        raise ConfigError(
            f"write_idx needs 1 to 255 dimensions, each below 2**32. "
            f"Received: shape={array.shape}."
        )
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if gzip:
        with open(path, "wb") as raw, gzip_module.GzipFile(
            fileobj=raw, mode="wb", mtime=0, filename=""
        ) as out:
            out.write(header)
            out.write(payload)
    else:
        with open(path, "wb") as out:
            out.write(header)
            out.write(payload)


# -- reading ------------------------------------------------------------------------------


def _parse_header(path: Path, stream) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and check the magic number and dimensions; return dtype, shape, header size."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(
            f"IDX file {path} is too short: expected at least a 4-byte header, "
            f"found {len(magic)} bytes. The file is empty or truncated; download it again."
        )
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES or magic[3] == 0:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(
            f"{path} is not an IDX file: bad magic number {magic.hex(' ')}. Expected "
            f"00 00 <type> <ndim> with type in {{{known}}} and ndim >= 1. Check that this "
            f"is an MNIST-style *-idx?-ubyte file (gzipped or not) and not, e.g., an HTML "
            f"error page saved by a failed download."
        )
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    if ndim > MAX_NDIM:
        raise DataError(
            f"IDX file {path} expected at most {MAX_NDIM} dimensions (the most a NumPy "
            f"array can have). Received: a header declaring {ndim} dimensions. The header "
            f"is corrupt, or the file is not an IDX file."
        )
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated inside its header: {ndim} dimensions need "
            f"{4 * ndim} bytes after the magic number, found {len(dims)}."
        )
    shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
    # NumPy refuses shapes whose non-zero sizes multiply beyond its index range, even when
    # another size is 0; such a header is corrupt whatever the payload.
    if math.prod(n for n in shape if n) * dtype.itemsize >= 2**62:
        raise DataError(
            f"IDX file {path} has an impossible shape {shape} in its header (more elements "
            f"than any array can hold). The header is corrupt; download the file again."
        )
    return dtype, shape, 4 + 4 * ndim


def _describe(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    return f"shape {shape} of {dtype.newbyteorder('=')}"


def _check_cap(path: Path, expected: int, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and expected > max_bytes:
        raise DataError(
            f"IDX file {path}: the header declares a {expected}-byte payload, above the "
            f"limit of {max_bytes} bytes ({what}). The header is probably corrupt; if the "
            f"file really is that large, pass max_bytes=None."
        )


def _read_raw(path: Path, raw, max_bytes: int | None) -> np.ndarray:
    dtype, shape, header = _parse_header(path, raw)
    _check_cap(path, math.prod(shape) * dtype.itemsize, max_bytes, "max_bytes")

    def mismatch(problem: str, actual: int, expected: int) -> DataError:
        return DataError(
            f"IDX file {path} is {problem}: the header declares {_describe(dtype, shape)}, "
            f"i.e. {expected} payload bytes, but the file holds {actual} bytes after its "
            f"{header}-byte header. Delete the file and download it again."
        )

    values = read_payload(raw, dtype, math.prod(shape), offset=header, mismatch=mismatch,
                          longer="longer than its header says")
    return values.reshape(shape)


class _gzip_errors:
    """``with _gzip_errors(path)``: zlib and gzip errors become a :class:`DataError`."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, DataError):
            return False
        if isinstance(error, (gzip_module.BadGzipFile, EOFError, zlib.error, OSError)):
            raise DataError(
                f"{self.path} is a corrupt or truncated gzip file "
                f"({type(error).__name__}: {error}). Delete it and download it again."
            ) from None
        return False


def _read_gzip(path: Path, raw, max_bytes: int | None) -> np.ndarray:
    compressed = os.fstat(raw.fileno()).st_size
    with _gzip_errors(path), gzip_module.GzipFile(fileobj=raw, mode="rb") as stream:
        dtype, shape, header = _parse_header(path, stream)
        expected = math.prod(shape) * dtype.itemsize
        _check_cap(path, expected, max_bytes, "max_bytes")
        _check_cap(path, expected + header, compressed * _MAX_DEFLATE_RATIO,
                   f"the most a {compressed}-byte gzip file can expand to")
        # Decompress in chunks, never past the declared payload plus one byte: memory
        # grows only with data actually present, a bomb stops at its declared size, and
        # the last (empty) read at the end of the stream makes gzip check its CRC.
        payload = bytearray()
        while len(payload) <= expected:
            chunk = stream.read(min(_CHUNK, expected + 1 - len(payload)))
            if not chunk:
                break
            payload += chunk
        received, counted_all = len(payload), True
        if received > expected:
            del payload  # an error follows: only measure a bounded look-ahead
            surplus = stream.read(_EXTRA_COUNT_LIMIT)
            received += len(surplus)
            counted_all = len(surplus) < _EXTRA_COUNT_LIMIT or not stream.read(1)
    if received != expected:
        actual = f"{received}" if counted_all else f"more than {received}"
        problem = "truncated" if received < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} (gzip) is {problem}: the header declares "
            f"{_describe(dtype, shape)}, i.e. {expected} payload bytes, but the "
            f"decompressed file holds {actual} bytes after its {header}-byte header. "
            f"Delete the file and download it again."
        )
    data = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return data if dtype.itemsize == 1 else data.astype(_native(dtype), copy=True)
