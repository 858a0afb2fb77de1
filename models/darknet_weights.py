"""Reading darknet's binary ``.weights`` files and converting Darknet53's to safetensors.

Layout (darknet ``src/parser.c``, ``load_weights_upto`` and ``load_convolutional_weights``),
all little-endian:

    int32 major, int32 minor, int32 revision
    seen: int64 if major*10 + minor >= 2 and major < 1000 and minor < 1000, else int32
    then, for every convolutional layer in the order of the .cfg file, float32 arrays:
        biases[n]                                  (BatchNorm's β when batch_normalize=1)
        scales[n], rolling_mean[n], rolling_variance[n]      (only when batch_normalize=1)
        weights[n * c * size * size]               (the (n, c, size, size) kernel, C order)

Layers without weights (shortcut, avgpool, softmax) store nothing. darknet53.cfg
(the ImageNet classifier) lists a 3x3/32 conv, then per stage a 3x3 stride-2 conv and, per
residual block, a 1x1 conv, a 3x3 conv and a shortcut; then avgpool, a 1x1 conv with 1000
filters, bias and no BatchNorm (our ``head.fc``), and softmax.

darknet normalizes with ``sqrt(var) + 1e-6`` in its CPU code (``normalize_cpu``) and
``sqrt(var + 1e-5)`` in its cuDNN code; the converted file uses the standard
``sqrt(var + eps)`` with eps = 1e-5 and records this in its metadata.
"""

from __future__ import annotations

import array
import os
import struct
import sys
from dataclasses import dataclass

from xpnn import backends
from xpnn.errors import ConfigError, DataError, MissingFileError, WeightsError


@dataclass(frozen=True)
class ConvLayer:
    """One darknet convolutional layer and the xpnn name prefix it maps to.

    ``batch_normalize`` layers map to a ConvBNAct (``{name}.conv.weight``, ``{name}.bn.*``);
    the others to ``{name}.weight`` and ``{name}.bias``, reshaped to a Dense weight
    ``(out, in)`` when ``dense`` (a 1x1 conv applied after global pooling).
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
    major: int
    minor: int
    revision: int
    seen: int
    size: int  # bytes: 16 or 20

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}"


def darknet53_layers(num_classes: int = 1000, depths=(1, 2, 8, 8, 4),
                     widths=(64, 128, 256, 512, 1024), stem_width: int = 32) -> list[ConvLayer]:
    """The convolutional layers of darknet53.cfg, in file order, with timm's names."""
    layers = [ConvLayer("stem.conv1", 3, stem_width, 3)]
    channels = stem_width
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        layers.append(ConvLayer(f"stages.{s}.conv_down", channels, width, 3))
        for b in range(depth):
            prefix = f"stages.{s}.blocks.{b}"
            layers.append(ConvLayer(f"{prefix}.conv1", width, width // 2, 1))
            layers.append(ConvLayer(f"{prefix}.conv2", width // 2, width, 3))
        channels = width
    layers.append(ConvLayer("head.fc", channels, num_classes, 1, batch_normalize=False,
                            dense=True))
    return layers


def read_header(data: bytes, path: str = "<bytes>", size: int | None = None) -> Header:
    """Parse the version and ``seen`` counter at the start of a .weights file (``data``
    holds at least its first 20 bytes; ``size`` is the file's size, default ``len(data)``)."""
    size = len(data) if size is None else size
    if len(data) < 16:
        raise WeightsError(
            f"{path!r} is not a darknet .weights file: it has {size} bytes, fewer than "
            f"the 16-byte header. The file is empty or truncated; download it again."
        )
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise WeightsError(
                f"{path!r}: header version {major}.{minor}.{revision} needs 20 bytes, the "
                f"file has {size}. The file is truncated; download it again."
            )
        (seen,) = struct.unpack_from("<q", data, 12)
        return Header(major, minor, revision, seen, 20)
    (seen,) = struct.unpack_from("<i", data, 12)
    return Header(major, minor, revision, seen, 16)


def read_darknet_weights(path, layers: list[ConvLayer], what: str = "this network", *,
                         check_finite: bool = False):
    """Read a .weights file laid out as ``layers``; return ``(state, header)`` with
    ``state`` a dict of arrays on the current backend named as xpnn names them.

    The file size must equal the header plus every layer's values exactly; otherwise a
    :class:`WeightsError` gives the expected and actual byte counts. The size is checked
    before the file is read, so a wrong file costs no memory. NaN and infinite values are
    returned as they are unless ``check_finite`` (then they are a WeightsError).

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
    path = os.fspath(path)
    layers = _checked_layers(layers)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(20)
            header = read_header(data, path, size)
            values = sum(layer.num_values for layer in layers)
            expected = header.size + 4 * values
            if size != expected:
                problem = "truncated" if size < expected else "larger than expected"
                raise WeightsError(
                    f"{path!r} does not hold the weights of {what}: expected {expected:,} "
                    f"bytes ({header.size}-byte header of version {header.version} + "
                    f"{values:,} float32 values), but the file has {size:,} bytes "
                    f"({problem}). Download the file again, and check that it belongs to "
                    f"this network (e.g. darknet53.weights, not yolov3.weights or "
                    f"darknet53.conv.74)."
                )
            handle.seek(0)
            data = handle.read()
    except FileNotFoundError:
        raise MissingFileError(f"No darknet weights file at {path!r}. Check the path.",
                               path) from None
    except IsADirectoryError:
        raise DataError(f"Expected a darknet .weights file, but {path!r} is a folder.") from None
    except OSError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"Cannot read the darknet weights file {path!r}: {error}") from error
    if len(data) != expected:  # the file changed while we read it
        raise WeightsError(f"{path!r} changed size while being read. Read it again.")
    backend = backends.current()
    xp = backend.xp
    offset = header.size

    def take(count: int, shape: tuple[int, ...]):
        nonlocal offset
        chunk = array.array("f")
        chunk.frombytes(data[offset:offset + 4 * count])
        if sys.byteorder == "big":
            chunk.byteswap()  # the file is little-endian
        offset += 4 * count
        values = backend.asarray(chunk, "float32")
        if check_finite and not bool(backends.to_numpy(xp.all(xp.isfinite(values)))):
            raise WeightsError(
                f"{path!r} holds NaN or infinite values (in the {count} values starting "
                f"at byte {offset - 4 * count:,}). Expected finite weights: the file is "
                f"corrupt or comes from a diverged training run; download it again."
            )
        return xp.reshape(values, shape)

    state = {}
    for layer in layers:
        n, c, k = layer.out_channels, layer.in_channels, layer.kernel_size
        biases = take(n, (n,))
        if layer.batch_normalize:
            state[f"{layer.name}.bn.bias"] = biases
            state[f"{layer.name}.bn.weight"] = take(n, (n,))
            state[f"{layer.name}.bn.running_mean"] = take(n, (n,))
            state[f"{layer.name}.bn.running_var"] = take(n, (n,))
            state[f"{layer.name}.conv.weight"] = take(n * c * k * k, (n, c, k, k))
        else:
            shape = (n, c) if layer.dense and k == 1 else (n, c, k, k)
            state[f"{layer.name}.bias"] = biases
            state[f"{layer.name}.weight"] = take(n * c * k * k, shape)
    return state, header


def _checked_layers(layers) -> list[ConvLayer]:
    layers = list(layers)
    for index, layer in enumerate(layers):
        sizes = (getattr(layer, "in_channels", None), getattr(layer, "out_channels", None),
                 getattr(layer, "kernel_size", None))
        if not isinstance(layer, ConvLayer) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
        ):
            raise ConfigError(
                f"read_darknet_weights expected a list of ConvLayer with positive integer "
                f"in_channels, out_channels and kernel_size. Received at position {index}: "
                f"{layer!r}"
            )
    return layers


def write_darknet_weights(path, arrays: list, *, major: int = 0, minor: int = 2,
                          revision: int = 0, seen: int = 0) -> None:
    """Write float32 values after a darknet header (for tests and tools): ``arrays`` is a
    flat list of sequences of floats, written in order."""
    header = struct.pack("<3i", major, minor, revision)
    if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000:
        header += struct.pack("<q", seen)
    else:
        header += struct.pack("<i", seen)
    with open(path, "wb") as handle:
        handle.write(header)
        for values in arrays:
            chunk = array.array("f", [float(v) for v in values])
            if sys.byteorder == "big":
                chunk.byteswap()
            handle.write(chunk.tobytes())


def convert_darknet53(source, target, *, eps: float = 1e-5, num_classes: int = 1000,
                      depths=(1, 2, 8, 8, 4), widths=(64, 128, 256, 512, 1024),
                      stem_width: int = 32) -> dict:
    """Convert darknet's ``darknet53.weights`` (ImageNet classifier) to safetensors with
    timm's names, the darknet preprocessing and slope 0.1 in the metadata. The file is
    checked by loading it into a Darknet53 before it is written (atomically). ``depths``,
    ``widths`` and ``stem_width`` describe reduced networks (tests)."""
    import xpnn.io
    from xpnn.models.darknet53 import DARKNET_PREPROCESSING, Darknet53

    layers = darknet53_layers(num_classes, depths, widths, stem_width)
    state, header = read_darknet_weights(source, layers, what="Darknet53 (darknet53.cfg)",
                                         check_finite=True)
    model = Darknet53(num_classes, negative_slope=0.1, eps=eps, depths=depths, widths=widths,
                      stem_width=stem_width, **DARKNET_PREPROCESSING, seed=0)
    model.load_state_dict(state)
    metadata = model.metadata()
    metadata.update({
        "source": f"darknet .weights {os.path.basename(os.fspath(source))}, "
                  f"version {header.version}, seen {header.seen}",
        "bn_eps_convention": f"sqrt(running_var + eps), eps={eps:g} (PyTorch and darknet's "
                             f"cuDNN path; darknet's CPU path uses sqrt(running_var) + 1e-6)",
    })
    xpnn.io.save(model, target, metadata=metadata)
    return {"tensors": len(state), "parameters": sum(layer.num_values for layer in layers),
            "version": header.version, "seen": header.seen}
