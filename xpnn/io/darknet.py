"""darknet's binary ``.weights`` files, read into host NumPy arrays named as xpnn names
them (and written, for tests and tools).

Layout (darknet ``src/parser.c``, ``load_weights_upto`` and ``load_convolutional_weights``),
all little-endian:

    int32 major, int32 minor, int32 revision
    seen: int64 if major*10 + minor >= 2 and major < 1000 and minor < 1000, else int32
    then, for every convolutional layer in the order of the .cfg file, float32 arrays:
        biases[n]                                  (BatchNorm's β when batch_normalize=1)
        scales[n], rolling_mean[n], rolling_variance[n]      (only when batch_normalize=1)
        weights[n * c * size * size]               (the (n, c, size, size) kernel, C order)

Layers without weights (shortcut, avgpool, softmax) store nothing, so a file is only
readable with the list of its network's convolutional layers (:class:`ConvLayer`), which
the caller gives: :func:`xpnn.models.convert_darknet.darknet53_layers` is Darknet53's.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from xpnn.errors import ConfigError, DataError, WeightsError
from xpnn.io.files import fspath, open_regular, read_payload
from xpnn.validation import is_int

__all__ = ["ConvLayer", "Header", "read_header", "read_weights", "write_weights"]


@dataclass(frozen=True)
class ConvLayer:
    """One darknet convolutional layer and the xpnn name prefix it maps to.

    ``batch_normalize`` layers map to a ConvBNAct (``{name}.conv.weight``, ``{name}.bn.*``);
    the others to ``{name}.weight`` and ``{name}.bias``, reshaped to a Dense weight
    ``(out, in)`` when ``dense`` (a 1x1 conv applied after global pooling).

    Examples
    --------
    >>> ConvLayer("stem.conv1", 3, 32, 3).num_values  # 32 * (4 + 3 * 3 * 3)
    992
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    batch_normalize: bool = True
    dense: bool = False

    @property
    def num_values(self) -> int:
        n = self.out_channels
        weights = n * self.in_channels * self.kernel_size * self.kernel_size
        return n * (4 if self.batch_normalize else 1) + weights


@dataclass(frozen=True)
class Header:
    """The version and ``seen`` (images trained on) counter at the start of a file."""

    major: int
    minor: int
    revision: int
    seen: int
    size: int  # bytes: 16 or 20

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}"


def _long_seen(major: int, minor: int) -> bool:
    """Whether ``seen`` is stored in 8 bytes (darknet's rule for header versions >= 0.2)."""
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def read_header(data: bytes, path: str = "<bytes>", size: int | None = None) -> Header:
    """Parse the version and ``seen`` counter at the start of a .weights file (``data``
    holds at least its first 20 bytes; ``size`` is the file's size, default ``len(data)``).

    Examples
    --------
    >>> read_header(struct.pack("<3iq", 0, 2, 0, 1000)).version
    '0.2.0'
    """
    size = len(data) if size is None else size
    if len(data) < 16:
        raise WeightsError(
            f"{path!r} is not a darknet .weights file: it has {size} bytes, fewer than "
            f"the 16-byte header. The file is empty or truncated; download it again."
        )
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if _long_seen(major, minor):
        if len(data) < 20:
            raise WeightsError(
                f"{path!r}: header version {major}.{minor}.{revision} needs 20 bytes, the "
                f"file has {size}. The file is truncated; download it again."
            )
        (seen,) = struct.unpack_from("<q", data, 12)
        return Header(major, minor, revision, seen, 20)
    (seen,) = struct.unpack_from("<i", data, 12)
    return Header(major, minor, revision, seen, 16)


def read_weights(path, layers: list[ConvLayer], what: str = "this network", *,
                 check_finite: bool = False) -> tuple[dict[str, np.ndarray], Header]:
    """Read a .weights file laid out as ``layers``; return ``(state, header)`` with
    ``state`` a dict of host float32 arrays named as xpnn names them.

    The file size must equal the header plus every layer's values exactly; otherwise a
    :class:`WeightsError` gives the expected and actual byte counts. The size is checked
    before the file is read, so a wrong file costs no memory. NaN and infinite values are
    returned as they are unless ``check_finite`` (then they are a WeightsError).

    Parameters
    ----------
    path : str or os.PathLike
    layers : list of ConvLayer
        The network's convolutional layers in the order of its .cfg file.
    what : str
        The network, as error messages name it (e.g. ``"Darknet53 (darknet53.cfg)"``).
    check_finite : bool

    Raises
    ------
    MissingFileError
        No file at ``path``.
    DataError
        ``path`` is a folder or cannot be read.
    WeightsError
        The file does not hold exactly the weights of ``layers``.
    ConfigError
        ``layers`` is not a list of :class:`ConvLayer` with positive sizes.
    """
    path = fspath("xpnn.io.darknet.read_weights", path)
    layers = _checked_layers(layers)
    count = sum(layer.num_values for layer in layers)
    try:
        with open_regular(path, "darknet weights file") as handle:
            header = read_header(handle.read(20), path, os.fstat(handle.fileno()).st_size)

            def mismatch(problem: str, actual: int, expected: int) -> WeightsError:
                return WeightsError(
                    f"{path!r} does not hold the weights of {what}: expected "
                    f"{header.size + expected:,} bytes ({header.size}-byte header of version "
                    f"{header.version} + {count:,} float32 values), but the file has "
                    f"{header.size + actual:,} bytes ({problem}). Download the file again, "
                    f"and check that it belongs to {what}."
                )

            values = read_payload(handle, "<f4", count, offset=header.size, mismatch=mismatch,
                                  longer="larger than expected")
    except OSError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"Cannot read the darknet weights file {path!r}: {error}") from error
    if check_finite and not np.isfinite(values).all():
        first = int(np.argmin(np.isfinite(values)))
        raise WeightsError(
            f"{path!r} holds NaN or infinite values (the first at byte "
            f"{header.size + 4 * first:,}). Expected finite weights: the file is corrupt or "
            f"comes from a diverged training run; download it again."
        )
    return _name_values(values, layers), header


def _name_values(values: np.ndarray, layers: list[ConvLayer]) -> dict[str, np.ndarray]:
    """Cut the flat array into each layer's arrays, in darknet's order, named for xpnn."""
    state, offset = {}, 0

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal offset
        size = int(np.prod(shape))
        chunk = values[offset:offset + size].reshape(shape)
        offset += size
        return chunk

    for layer in layers:
        n, c, k = layer.out_channels, layer.in_channels, layer.kernel_size
        biases = take((n,))
        if layer.batch_normalize:
            state[f"{layer.name}.bn.bias"] = biases
            for suffix in ("bn.weight", "bn.running_mean", "bn.running_var"):
                state[f"{layer.name}.{suffix}"] = take((n,))
            state[f"{layer.name}.conv.weight"] = take((n, c, k, k))
        else:
            state[f"{layer.name}.bias"] = biases
            state[f"{layer.name}.weight"] = take((n, c) if layer.dense and k == 1 else (n, c, k, k))
    return state


def _checked_layers(layers) -> list[ConvLayer]:
    layers = list(layers)
    for index, layer in enumerate(layers):
        sizes = (getattr(layer, "in_channels", None), getattr(layer, "out_channels", None),
                 getattr(layer, "kernel_size", None))
        if not isinstance(layer, ConvLayer) or not all(is_int(v, 1) for v in sizes):
            raise ConfigError(
                f"xpnn.io.darknet.read_weights expected a list of ConvLayer with positive "
                f"integer in_channels, out_channels and kernel_size. Received at position "
                f"{index}: {layer!r}"
            )
    return layers


def write_weights(path, arrays: list, *, major: int = 0, minor: int = 2, revision: int = 0,
                  seen: int = 0) -> None:
    """Write float32 values after a darknet header (for tests and tools): ``arrays`` is a
    list of arrays (or sequences) of numbers, written flat, in order.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.weights")
    >>> write_weights(path, [[1.0, 2.0]], seen=5)
    >>> os.path.getsize(path)  # 20-byte header + 2 float32 values
    28
    """
    header = struct.pack("<3i", major, minor, revision)
    header += struct.pack("<q" if _long_seen(major, minor) else "<i", seen)
    with open(path, "wb") as handle:
        handle.write(header)
        for values in arrays:
            handle.write(np.asarray(values, dtype="<f4").tobytes())
