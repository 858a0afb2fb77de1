"""Saving and loading weights as safetensors files.

safetensors holds named arrays and a ``str -> str`` metadata header, and loading it never
runs code (unlike pickle). xpnn records in the metadata:

- ``"format": "xpnn"``, ``"format_version": "1"``, ``"xpnn_version"``;
- for a saved Module, ``"architecture"``: ``json.dumps({"type": class name, "config":
  model.config()})``, which :func:`load_model` rebuilds without the model's code;
- whatever the user adds with ``metadata=``. Values must be strings: anything else is
  refused with a :class:`~xpnn.errors.ConfigError` (store numbers as ``str(x)`` and
  structures as ``json.dumps(x)``), because numbers in the header make files that other
  safetensors readers cannot open.

Writing is atomic: the file is written to a temporary file in the same folder, flushed to
disk, then renamed over the target, so a crash leaves either the old file or the new one.

Examples
--------
>>> import os, tempfile
>>> import numpy as np
>>> from xpnn.layers import Dense, ReLU, Sequential
>>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> save(model, path, metadata={"trained_on": "nothing"})
>>> load_metadata(path)["trained_on"]
'nothing'
>>> copy = load_model(path)
>>> x = np.ones((1, 4), dtype="float32")
>>> bool((copy(x) == model(x)).all())
True
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

import xpnn
from xpnn import backends
from xpnn.errors import ConfigError, DataError, MissingFileError, WeightsError
from xpnn.module import Module
from xpnn.registry import model_from_config

__all__ = ["MissingFileError", "load", "load_metadata", "load_model", "model_from_config",
           "save"]

FORMAT = "xpnn"
FORMAT_VERSION = "1"
RESERVED_KEYS = ("format", "format_version", "xpnn_version")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header


# -- saving ---------------------------------------------------------------------------------


def save(model_or_state: Module | dict[str, Any], path: str | os.PathLike,
         metadata: dict[str, str] | None = None) -> None:
    """Write a model's parameters and buffers (or a dict name -> array) to ``path``.

    Parameters
    ----------
    model_or_state : Module or dict
        A Module (its ``state_dict()`` is saved, with its architecture in the metadata) or
        a dict ``{name: array}`` of arrays of any backend.
    path : str or os.PathLike
        Target file, conventionally ``*.safetensors``. Replaced atomically.
    metadata : dict of str to str, optional
        Extra header entries. Non-string keys or values raise ConfigError; the keys
        ``format``, ``format_version``, ``xpnn_version`` (and ``architecture`` when saving a
        Module) are written by xpnn and cannot be given.
    """
    path = os.fspath(path)
    if isinstance(model_or_state, Module):
        state = model_or_state.state_dict()
        architecture = json.dumps(
            {"type": type(model_or_state).__name__, "config": model_or_state.config()}
        )
    elif isinstance(model_or_state, dict):
        state, architecture = model_or_state, None
    else:
        raise ConfigError(
            f"xpnn.io.save expected a Module or a dict name -> array. "
            f"Received: {type(model_or_state).__name__}"
        )
    header = _header(metadata, architecture)
    tensors = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise ConfigError(f"xpnn.io.save expected str tensor names. Received: {name!r}")
        # Host, C-contiguous arrays: safetensors 0.8 writes strided arrays in physical
        # order under a C-order shape, i.e. silently wrong (huggingface/safetensors#825).
        # Not np.ascontiguousarray: it turns 0-d scalars (num_batches_tracked) into (1,).
        tensors[name] = np.asarray(backends.to_numpy(value), order="C")
    _write_atomically(tensors, header, path)


def _header(metadata, architecture: str | None) -> dict[str, str]:
    if metadata is not None and not isinstance(metadata, dict):
        raise ConfigError(
            f"xpnn.io.save expected metadata as a dict of str to str. "
            f"Received: {type(metadata).__name__}"
        )
    user = dict(metadata or {})
    reserved = RESERVED_KEYS + (("architecture",) if architecture is not None else ())
    for key, value in user.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"safetensors metadata must map str to str. Received: {key!r}: {value!r} "
                f"({type(value).__name__}). Convert it, e.g. str(value) or json.dumps(value)."
            )
        if key in reserved:
            raise ConfigError(
                f"The metadata key {key!r} is written by xpnn.io.save and cannot be given. "
                f"Rename it (reserved: {', '.join(reserved)})."
            )
    header = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "xpnn_version": xpnn.__version__}
    if architecture is not None:
        header["architecture"] = architecture
    header.update(user)
    return header


def _write_atomically(tensors: dict[str, np.ndarray], header: dict[str, str], path: str):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(
            f"Cannot save weights to {path!r}: the folder {folder!r} does not exist. "
            f"Create it first (os.makedirs)."
        )
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        safetensors.numpy.save_file(tensors, tmp, metadata=header)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _file_mode(path: str) -> int:
    """The existing file's permissions, else what a new file would get (0666 minus umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); folders cannot be opened like this on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- loading -------------------------------------------------------------------------------


def load(path: str | os.PathLike, into: Module | None = None, *, strict: bool = True):
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

    Raises
    ------
    MissingFileError
        The file does not exist (a DataError and a FileNotFoundError).
    WeightsError
        The file is not a valid safetensors file, or does not match ``into``.
    """
    path = os.fspath(path)
    host = {}
    with _open(path) as handle:
        try:
            for name in handle.keys():
                host[name] = handle.get_tensor(name)
        except Exception as error:
            raise _corrupt(path, error) from error
    if into is not None:
        return into.load_state_dict(host, strict=strict)
    backend = backends.current()
    return {name: backend.asarray(value) for name, value in host.items()}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata header of a safetensors file (an empty dict when it has none)."""
    path = os.fspath(path)
    with _open(path) as handle:
        return dict(handle.metadata() or {})


def load_model(path: str | os.PathLike) -> Module:
    """Rebuild the model recorded in a file saved by :func:`save` and load its weights.

    Layer classes are found by name through :mod:`xpnn.registry` (xpnn's own layers, or
    yours after ``xpnn.registry.register(YourLayer)``).
    """
    path = os.fspath(path)
    metadata = load_metadata(path)
    if "architecture" not in metadata:
        raise WeightsError(
            f"{path!r} records no architecture (it was saved from a dict, or by another "
            f"program). Build the model in code and use xpnn.io.load({path!r}, into=model)."
        )
    try:
        cfg = json.loads(metadata["architecture"])
    except ValueError as error:
        raise WeightsError(
            f"{path!r} has an unreadable architecture record (not JSON: {error}). "
            f"Build the model in code and use xpnn.io.load(path, into=model)."
        ) from error
    model = model_from_config(cfg)
    return load(path, into=model)


def _open(path: str):
    """``safe_open`` after cheap checks, translating every failure into an xpnn error."""
    _check_header_size(path)
    try:
        return safetensors.safe_open(path, framework="np")
    except Exception as error:
        raise _corrupt(path, error) from error


def _check_header_size(path: str) -> None:
    """Read the 8-byte little-endian header length and refuse impossible values before
    safetensors allocates anything for the header."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
    except FileNotFoundError:
        error = MissingFileError(
            f"No weights file at {path!r}. Check the path (working directory: {os.getcwd()!r})."
        )
        error.errno, error.filename = 2, path
        raise error from None
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


def _corrupt(path: str, error: Exception) -> WeightsError:
    return WeightsError(
        f"Cannot read {path!r} as safetensors: {type(error).__name__}: {error}. The file is "
        f"corrupt, truncated or not safetensors (or holds a dtype NumPy cannot read, such as "
        f"bfloat16); save or download it again."
    )
