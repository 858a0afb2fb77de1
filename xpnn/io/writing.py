"""Writing safetensors files: :func:`save`, atomic, with xpnn's metadata header.

safetensors holds named arrays and a ``str -> str`` metadata header. :func:`save` writes:

- ``"format": "xpnn"``, ``"format_version": "1"``, ``"xpnn_version"``;
- for a Module, its architecture record and preprocessing (see :mod:`xpnn.io.records`);
- whatever the user adds with ``metadata=``. Values must be strings: anything else is
  refused with a :class:`~xpnn.errors.ConfigError` (store numbers as ``str(x)`` and
  structures as ``json.dumps(x)``), because numbers in the header make files that other
  safetensors readers cannot open.

Writing is atomic: the file is written to a temporary file in the same folder, flushed to
disk, then renamed over the target, so a crash leaves either the old file or the new one.
The temporary file is named ``.{name}.xpnn-{pid}-{random}.tmp``, and its saver holds an
exclusive ``flock`` on it until the rename. A failed save removes it; only a process killed
outright (SIGKILL, power loss) can leave one behind, and the next save to the same target
deletes those that nobody holds locked (the kernel releases a dead process's locks) and
whose PID does not name a running process. The lock decides, not the PID: savers in other
PID namespaces (containers sharing a folder) see each other's PIDs as dead, but never
delete a file whose saver still runs. Where ``flock`` is missing (Windows) nothing is
deleted.

Before anything is written, tensor names and metadata are checked completely (the name
``__metadata__`` is safetensors' own, names and metadata must be encodable as UTF-8, the
header must stay under ``MAX_HEADER_BYTES``), and the serialized bytes are read back with
the reader's own header checks: a save never replaces a good file with an unreadable one.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import numpy as np
import safetensors.numpy

import xpnn
from xpnn import backends
from xpnn.errors import ConfigError, DataError, DTypeError, WeightsError
from xpnn.io.files import fspath
from xpnn.io.reading import MAX_HEADER_BYTES, check_serialized
from xpnn.io.records import module_metadata
from xpnn.module import Module

__all__ = ["FORMAT", "FORMAT_VERSION", "RESERVED_KEYS", "SAVABLE_DTYPES", "check_writable",
           "save", "write_atomically"]

FORMAT = "xpnn"
FORMAT_VERSION = "1"
RESERVED_KEYS = ("format", "format_version", "xpnn_version")
#: dtypes safetensors stores and NumPy reads back (bfloat16 and float8 have no NumPy
#: dtype, complex128 no safetensors one).
SAVABLE_DTYPES = {"bool": "BOOL", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",
                  "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
                  "float16": "F16", "float32": "F32", "float64": "F64", "complex64": "C64"}
_TEMP_TAG = ".xpnn-"
_TEMP_NAME_LIMIT = 100  # characters of the target's name kept in the temporary file's name


def save(model_or_state: Module | dict[str, Any], path: str | os.PathLike,
         metadata: dict[str, str] | None = None) -> None:
    """Write a model's parameters and buffers (or a dict name -> array) to ``path``.

    Parameters
    ----------
    model_or_state : Module or dict
        A Module (its ``state_dict()`` is saved, with its architecture record and
        preprocessing in the metadata) or a dict ``{name: array}`` of arrays of any backend.
    path : str or os.PathLike
        Target file, conventionally ``*.safetensors``. Replaced atomically.
    metadata : dict of str to str, optional
        Extra header entries. Non-string keys or values raise ConfigError; the keys
        ``format``, ``format_version``, ``xpnn_version`` (and, when saving a Module, those
        of :func:`xpnn.io.records.module_metadata`) are written by xpnn and cannot be given.

    Raises
    ------
    ConfigError
        Bad arguments (not a Module or dict, non-string names or metadata).
    DTypeError
        An array of a dtype safetensors cannot store (see ``SAVABLE_DTYPES``).
    DataError
        The folder does not exist, the target is a folder, or writing failed (disk full,
        permissions); the previous file, if any, is unchanged.

    Examples
    --------
    >>> import os, tempfile
    >>> from xpnn.layers import Dense
    >>> path = os.path.join(tempfile.mkdtemp(), "dense.safetensors")
    >>> save(Dense(3, 2, seed=0), path, metadata={"trained_on": "nothing"})
    >>> sorted(xpnn.io.load(path))
    ['bias', 'weight']
    """
    path = fspath("xpnn.io.save", path)
    if isinstance(model_or_state, Module):
        state, written = model_or_state.state_dict(), module_metadata(model_or_state)
    elif isinstance(model_or_state, dict):
        state, written = model_or_state, {}
    else:
        raise ConfigError(
            f"xpnn.io.save expected a Module or a dict name -> array. "
            f"Received: {type(model_or_state).__name__}"
        )
    header = _header(metadata, written)
    tensors = {}
    for name, value in state.items():
        _check_name(name)
        # Host, C-contiguous arrays (safetensors' own writer stores strided arrays in
        # physical order under a C-order shape, huggingface/safetensors#825; ours copies).
        # Not np.ascontiguousarray: it turns 0-d scalars (num_batches_tracked) into (1,).
        source = backends.dtype_name(value.dtype) if hasattr(value, "dtype") else None
        if source == "bfloat16":
            # refused before the host copy, which would turn bfloat16 into float32 silently
            raise DTypeError(
                f"xpnn.io.save cannot store {name!r}: safetensors holds the dtypes "
                f"{', '.join(SAVABLE_DTYPES)}. Received: dtype={source}. Convert it, e.g. "
                f"with .float() or .astype('float32')."
            )
        try:
            host = np.asarray(backends.to_numpy(value), order="C")
        except Exception as error:
            raise DTypeError(
                f"xpnn.io.save expected {name!r} to be an array NumPy can hold (dtypes "
                f"{', '.join(SAVABLE_DTYPES)}). Received: {type(value).__name__} "
                f"{getattr(value, 'dtype', '')} ({type(error).__name__}: {error}). Convert "
                f"it, e.g. with .float() or .astype('float32')."
            ) from error
        if host.dtype.name not in SAVABLE_DTYPES:
            raise DTypeError(
                f"xpnn.io.save cannot store {name!r}: safetensors holds the dtypes "
                f"{', '.join(SAVABLE_DTYPES)}. Received: dtype={host.dtype}. Convert it, "
                f"e.g. with .astype('float32')."
            )
        tensors[name] = host
    _write_atomically(tensors, header, path)


def _check_name(name) -> None:
    """Refuse a tensor name that would make the file unreadable."""
    if not isinstance(name, str):
        raise ConfigError(f"xpnn.io.save expected str tensor names. Received: {name!r}")
    if name == "__metadata__":
        raise ConfigError(
            "xpnn.io.save expected tensor names other than '__metadata__', which "
            "safetensors reserves for the metadata header. Received: '__metadata__'. "
            "Rename the array."
        )
    if not _encodable(name):
        raise ConfigError(
            f"xpnn.io.save expected tensor names encodable as UTF-8. Received: {name!r}. "
            f"Remove the lone surrogate characters."
        )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _header(metadata, written: dict[str, str]) -> dict[str, str]:
    if metadata is not None and not isinstance(metadata, dict):
        raise ConfigError(
            f"xpnn.io.save expected metadata as a dict of str to str. "
            f"Received: {type(metadata).__name__}"
        )
    user = dict(metadata or {})
    reserved = RESERVED_KEYS + tuple(written)
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
        if not (_encodable(key) and _encodable(value)):
            raise ConfigError(
                f"xpnn.io.save expected metadata encodable as UTF-8. Received: "
                f"{key[:80]!r}: {value[:80]!r}. Remove the lone surrogate characters."
            )
    size = sum(len(key) + len(value) for key, value in user.items())
    if size > MAX_HEADER_BYTES // 2:
        raise ConfigError(
            f"xpnn.io.save expected metadata of at most {MAX_HEADER_BYTES // 2:,} "
            f"characters (safetensors headers are at most {MAX_HEADER_BYTES:,} bytes). "
            f"Received: {size:,}. Store large data as an array, or in a file of its own."
        )
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "xpnn_version": xpnn.__version__, **written, **user}


def _write_atomically(tensors: dict[str, np.ndarray], header: dict[str, str], path: str):
    check_writable(path)
    write_atomically(path, _serialize(tensors, header))


def check_writable(path: str, what: str = "weights", suffix: str = ".safetensors") -> None:
    """A DataError unless ``path`` names a file in an existing folder (not a folder), with
    ``what`` (the contents) in the message and ``suffix`` in the example file name it
    suggests. Writers call it before long work, so a typo fails fast."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(
            f"Cannot save {what} to {path!r}: the folder {folder!r} does not exist. "
            f"Create it first (os.makedirs)."
        )
    if os.path.isdir(path):
        raise DataError(
            f"Cannot save {what} to {path!r}: it is a folder. Expected a file name, e.g. "
            f"{os.path.join(path, 'model' + suffix)!r}."
        )


def write_atomically(path: str | os.PathLike, data: bytes, *, what: str = "weights") -> None:
    """Replace ``path`` by a file holding ``data``, atomically (see the module docstring:
    a locked temporary file in the same folder, flushed, renamed over the target).

    ``what`` names the contents in error messages (``"the ONNX model"``). Every writer of
    xpnn uses this function: :func:`save`, and :func:`xpnn.onnx.export`.

    Raises
    ------
    DataError
        The folder does not exist, the target is a folder, or writing failed (disk full,
        permissions); the previous file, if any, is unchanged.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> write_atomically(path, b"hello", what="the notes")
    >>> open(path, "rb").read()
    b'hello'
    """
    path = fspath("xpnn.io.write_atomically", path)
    check_writable(path, what, os.path.splitext(path)[1] or ".safetensors")
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    _remove_stale_temp_files(folder, prefix)
    handle, tmp = _locked_temp_file(path, folder, prefix, what)
    try:
        with handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
            if os.fstat(handle.fileno()).st_size != len(data):
                raise DataError(
                    f"Cannot save {what} to {path!r}: expected the temporary file to hold "
                    f"{len(data):,} bytes. Received: {os.fstat(handle.fileno()).st_size:,}. "
                    f"Another program changed it; save again."
                )
            os.chmod(tmp, _file_mode(path))  # mkstemp made it 0600
            os.replace(tmp, path)  # still locked: a cleaner cannot take it meanwhile
    except BaseException as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(error, OSError) and not isinstance(error, DataError):
            raise DataError(
                f"Cannot save {what} to {path!r}: {error}. The previous file, if any, is "
                f"unchanged. Check the free disk space and the folder's permissions."
            ) from error
        raise
    _fsync_folder(folder)


def _serialize(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialize with safetensors' own NumPy API into memory (``save_file`` would write
    through temporary files of its own, which a killed process leaves behind), then check
    the bytes with the reader's header checks, before any file is touched."""
    little_endian = {name: np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
                     for name, array in tensors.items()}
    try:
        data = safetensors.numpy.save(little_endian, metadata=metadata)
    except Exception as error:
        raise ConfigError(
            f"xpnn.io.save expected arrays and metadata safetensors can serialize. "
            f"Received: {type(error).__name__}: {error}"
        ) from error
    (header_bytes,) = struct.unpack_from("<Q", data, 0)
    if header_bytes > MAX_HEADER_BYTES:
        raise ConfigError(
            f"xpnn.io.save expected a header of at most {MAX_HEADER_BYTES:,} bytes. "
            f"Received: {header_bytes:,} (too many arrays or too much metadata). Store "
            f"large data as arrays, or split the file."
        )
    try:
        check_serialized(data)
    except WeightsError as error:
        raise ConfigError(
            f"xpnn.io.save refused to write a file it could not read back: {error}"
        ) from error
    return data


def _write_all(handle, data: bytes) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        done += handle.write(view[done:done + (1 << 26)])


def _locked_temp_file(path: str, folder: str, prefix: str, what: str = "weights"):
    """A new temporary file next to ``path``, opened for writing and held under an
    exclusive ``flock`` (where the OS has one) until it is closed."""
    for _ in range(100):
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{prefix}{os.getpid()}-",
                                       suffix=".tmp")
        except OSError as error:
            raise DataError(f"Cannot save {what} to {path!r}: {error}") from error
        handle = os.fdopen(fd, "wb", buffering=0)
        if fcntl is None:
            return handle, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleaner may have taken the file between mkstemp and flock: keep it only if
            # the name still leads to it.
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return handle, tmp
        except FileNotFoundError:
            pass
        except OSError:
            return handle, tmp  # no locks on this file system: save unprotected
        handle.close()
    raise DataError(f"Cannot save {what} to {path!r}: its temporary files keep vanishing.")


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)[:_TEMP_NAME_LIMIT]}{_TEMP_TAG}"


def _remove_stale_temp_files(folder: str, prefix: str) -> None:
    """Delete temporary files of earlier saves to the same target that no live saver holds
    (left by SIGKILL or a power loss; a failed save removes its own).

    A file is deleted only when its exclusive lock can be taken (its saver is gone: the
    kernel dropped the lock) and its PID names no running process we can see. Without
    ``flock`` nothing is deleted."""
    if fcntl is None:
        return
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+\.tmp\Z")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        _remove_if_unlocked(os.path.join(folder, name))


def _remove_if_unlocked(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # gone already, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still the file we locked
            os.remove(path)
    except OSError:
        pass  # held by a live saver, renamed meanwhile, or no permission: keep it
    finally:
        os.close(fd)  # releases the lock


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
