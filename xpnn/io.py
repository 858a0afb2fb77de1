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
The temporary file is named ``.{name}.xpnn-{pid}-{random}.tmp``. A failed save removes
it; only a process killed outright (SIGKILL, power loss) can leave one behind, and the
next save to the same target deletes those whose process no longer runs.

Reading trusts nothing in the file: the header length is checked against the file size
before anything is allocated, every failure becomes a :class:`~xpnn.errors.WeightsError`
naming the file, and :func:`load_model` refuses an architecture that would need more
values than the file stores before building it. NaN and infinite values are loaded as
they are (a valid file may hold them, e.g. ``-inf`` masks); ``check_finite=True`` refuses
them.

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
import math
import os
import re
import struct
import tempfile
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

import xpnn
from xpnn import backends
from xpnn.errors import ConfigError, DataError, DTypeError, MissingFileError, WeightsError
from xpnn.module import Module
from xpnn.registry import model_from_config

__all__ = ["MissingFileError", "load", "load_metadata", "load_model", "model_from_config",
           "save"]

FORMAT = "xpnn"
FORMAT_VERSION = "1"
RESERVED_KEYS = ("format", "format_version", "xpnn_version")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit for the JSON header
#: dtypes safetensors stores and NumPy reads back (bfloat16 and float8 have no NumPy
#: dtype, complex128 no safetensors one).
SAVABLE_DTYPES = {"bool": "BOOL", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",
                  "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
                  "float16": "F16", "float32": "F32", "float64": "F64", "complex64": "C64"}
_TEMP_TAG = ".xpnn-"
_TEMP_NAME_LIMIT = 100  # characters of the target's name kept in the temporary file's name


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

    Raises
    ------
    ConfigError
        Bad arguments (not a Module or dict, non-string names or metadata).
    DTypeError
        An array of a dtype safetensors cannot store (see ``SAVABLE_DTYPES``).
    DataError
        The folder does not exist, the target is a folder, or writing failed (disk full,
        permissions); the previous file, if any, is unchanged.
    """
    path = _fspath("xpnn.io.save", path)
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
        # Host, C-contiguous arrays (safetensors' own writer stores strided arrays in
        # physical order under a C-order shape, huggingface/safetensors#825; ours copies).
        # Not np.ascontiguousarray: it turns 0-d scalars (num_batches_tracked) into (1,).
        host = np.asarray(backends.to_numpy(value), order="C")
        if host.dtype.name not in SAVABLE_DTYPES:
            raise DTypeError(
                f"xpnn.io.save cannot store {name!r}: safetensors holds the dtypes "
                f"{', '.join(SAVABLE_DTYPES)}. Received: dtype={host.dtype}. Convert it, "
                f"e.g. with .astype('float32')."
            )
        tensors[name] = host
    _write_atomically(tensors, header, path)


def _fspath(who: str, path) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise ConfigError(
            f"{who} expected a file path (str or os.PathLike). "
            f"Received: {type(path).__name__} {path!r}"
        ) from None


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
    if os.path.isdir(path):
        raise DataError(
            f"Cannot save weights to {path!r}: it is a folder. Expected a file name, e.g. "
            f"{os.path.join(path, 'model.safetensors')!r}."
        )
    prefix = _temp_prefix(path)
    _remove_stale_temp_files(folder, prefix)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{prefix}{os.getpid()}-",
                                   suffix=".tmp")
    except OSError as error:
        raise DataError(f"Cannot save weights to {path!r}: {error}") from error
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:
            _write_safetensors(handle, tensors, header)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, DataError):
            raise DataError(
                f"Cannot save weights to {path!r}: {error}. The previous file, if any, is "
                f"unchanged. Check the free disk space and the folder's permissions."
            ) from error
        raise
    _fsync_folder(folder)


def _write_safetensors(handle, tensors: dict[str, np.ndarray], metadata: dict[str, str]):
    """Serialize with safetensors' own NumPy API into memory, then write the bytes to our
    temporary file. (``safetensors.numpy.save_file`` would write through temporary files of
    its own, which a killed process leaves behind; ours are cleaned up on the next save.)"""
    little_endian = {name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
                     for name, array in tensors.items()}
    handle.write(safetensors.numpy.save(little_endian, metadata=metadata))


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)[:_TEMP_NAME_LIMIT]}{_TEMP_TAG}"


def _remove_stale_temp_files(folder: str, prefix: str) -> None:
    """Delete temporary files of earlier saves to the same target whose process is gone
    (left by SIGKILL or a power loss; a failed save removes its own)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+\.tmp\Z")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass  # another saver got there first, or no permission: harmless


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a save of ours in another thread
    if os.name != "posix":
        return True  # no cheap check: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _file_mode(path: str) -> int:
    """The existing file's permissions, else what a new file would get (0666 minus umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); folders cannot be opened like this on Windows."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is done
    finally:
        os.close(fd)


# -- loading -------------------------------------------------------------------------------


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
    path = _fspath("xpnn.io.load", path)
    if into is not None and not isinstance(into, Module):
        raise ConfigError(
            f"xpnn.io.load expected into= to be an xpnn Module. Received: {type(into).__name__}"
        )
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
    if into is not None:
        return into.load_state_dict(host, strict=strict)
    backend = backends.current()
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
    path = _fspath("xpnn.io.load_metadata", path)
    with _open(path) as handle:
        try:
            return dict(handle.metadata() or {})
        except BaseException as error:
            if not _is_failure(error):
                raise
            raise _corrupt(path, error) from error


def load_model(path: str | os.PathLike) -> Module:
    """Rebuild the model recorded in a file saved by :func:`save` and load its weights.

    Layer classes are found by name through :mod:`xpnn.registry` (xpnn's own layers, or
    yours after ``xpnn.registry.register(YourLayer)``). An architecture that needs more
    values than the file stores is refused before anything is built, so a forged header
    cannot make xpnn allocate a huge model.
    """
    path = _fspath("xpnn.io.load_model", path)
    metadata = load_metadata(path)
    if "architecture" not in metadata:
        raise WeightsError(
            f"{path!r} records no architecture (it was saved from a dict, or by another "
            f"program). Build the model in code and use xpnn.io.load({path!r}, into=model)."
        )
    try:
        cfg = json.loads(metadata["architecture"])
    except (ValueError, RecursionError) as error:
        raise WeightsError(
            f"{path!r} has an unreadable architecture record (not JSON: {error}). "
            f"Build the model in code and use xpnn.io.load(path, into=model)."
        ) from error
    model = model_from_config(cfg, max_values=stored_values(path))
    return load(path, into=model)


def stored_values(path: str | os.PathLike) -> int:
    """How many array elements the file stores, read from its header only."""
    path = _fspath("xpnn.io.stored_values", path)
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
