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
memory is allocated for it.
"""

from __future__ import annotations

import gzip as gzip_module
import math
import os
import zlib
from pathlib import Path

import numpy as np

from xpnn.errors import ConfigError, DataError, MissingFileError
from xpnn.io.files import read_payload

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

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
_EXTRA_COUNT_LIMIT = 64 * _CHUNK  # how far past the end we count surplus bytes
_DEFAULT_MAX_BYTES = 1 << 32  # 4 GiB: far above MNIST (47 MB), far below a hostile header


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
    DataError
        Naming the file, when the magic number, dimensions or payload length are wrong,
        the gzip stream is corrupt, or the file cannot be read.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8), gzip=True)
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if is_gzip:
                return _read_gzip(path, raw, max_bytes)
            return _read_raw(path, raw, max_bytes)
    except FileNotFoundError:
        raise MissingFileError(
            f"IDX file not found: {path}. Expected an existing file (raw or .gz)."
        ) from None
    except IsADirectoryError:
        raise DataError(f"Expected an IDX file, but {path} is a directory.") from None
    except PermissionError as error:
        raise DataError(f"Cannot read IDX file {path}: {error}. Check its permissions.") from None
    except OSError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"Cannot read IDX file {path}: {error}.") from error


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


def _read_gzip(path: Path, raw, max_bytes: int | None) -> np.ndarray:
    compressed = os.fstat(raw.fileno()).st_size
    try:
        with gzip_module.GzipFile(fileobj=raw, mode="rb") as stream:
            dtype, shape, header = _parse_header(path, stream)
            expected = math.prod(shape) * dtype.itemsize
            _check_cap(path, expected, max_bytes, "max_bytes")
            _check_cap(path, expected + header, compressed * _MAX_DEFLATE_RATIO,
                       f"the most a {compressed}-byte gzip file can expand to")
            # Read in chunks, one byte past the end: memory grows only with data actually
            # present, and reading to the end of the stream makes gzip check its CRC.
            chunks, received = [], 0
            while received <= expected:
                chunk = stream.read(min(_CHUNK, expected + 1 - received))
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
            counted_all = True
            if received > expected:
                chunks.clear()  # an error follows: only count (and cap) the rest
                while chunk := stream.read(_CHUNK):
                    received += len(chunk)
                    if received - expected > _EXTRA_COUNT_LIMIT:
                        counted_all = False
                        break
    except DataError:
        raise
    except (gzip_module.BadGzipFile, EOFError, zlib.error, OSError) as error:
        raise DataError(
            f"{path} is a corrupt or truncated gzip file ({type(error).__name__}: {error}). "
            f"Delete it and download it again."
        ) from None
    if received != expected:
        actual = f"{received}" if counted_all else f"more than {received}"
        problem = "truncated" if received < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} (gzip) is {problem}: the header declares "
            f"{_describe(dtype, shape)}, i.e. {expected} payload bytes, but the "
            f"decompressed file holds {actual} bytes after its {header}-byte header. "
            f"Delete the file and download it again."
        )
    data = np.frombuffer(b"".join(chunks), dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
