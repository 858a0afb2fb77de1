"""MNIST and Fashion-MNIST: find the IDX files, download them if allowed, or use the sample.

Where files are looked for depends on which source is given; a given source is never
silently replaced by another:

1. ``root`` (an argument; ``data_dir`` of :func:`~xpnn.datasets.dataset.load_dataset`),
   when given: its subfolder ``mnist`` (digits) or ``fashion-mnist`` (fashion), then the
   folder itself. Nothing else is searched.
2. Otherwise the folder in the environment variable ``XPNN_DATA``, when set (and not
   empty), likewise. Nothing else is searched.
3. Otherwise the per-user cache, ``pooch.os_cache("xpnn")/mnist`` or
   ``.../fashion-mnist`` (``~/.cache/xpnn/...`` on Linux; see :func:`default_cache_dir`).

Each file may be gzipped as published (``train-images-idx3-ubyte.gz``) or uncompressed
(``train-images-idx3-ubyte``). Only regular files count: a FIFO, device or directory
under one of these names is an error. The headers of all four files are checked (dtype,
shape, one label per image) before any payload is read or any file hashed. A ``.gz`` file
whose SHA-256 is that of the *other* dataset is skipped, so MNIST digits are never
returned when Fashion-MNIST was asked for (only files of a plausible size are hashed).

When files are missing and ``download=True``, they are fetched with pooch into the
dataset's subfolder of the source (``root/mnist``, ``$XPNN_DATA/mnist``, or the cache's)
and checked against pinned SHA-256 hashes (a mismatch deletes the download): the
MNIST ones as published by TensorFlow Datasets' checksum list, the Fashion-MNIST ones as
pinned by Keras and TensorFlow Datasets (the Fashion-MNIST README publishes MD5s, noted
below for reference). Each file is tried from a primary mirror, then a fallback.

The package also ships a real 5,000-image MNIST sample
(:func:`xpnn.datasets.sample.load_mnist_sample`), so training works with no network and no
files; :func:`xpnn.datasets.dataset.load_dataset` falls back to it only when no source was
given and no download asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnn.datasets.download import download as download_files
from xpnn.datasets.idx import read_idx, read_idx_header
from xpnn.errors import ConfigError, DataError, DataNotFoundError
from xpnn.io.files import open_regular, refuse_non_regular

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "MnistSpec",
    "default_cache_dir",
    "load_mnist",
]


@dataclass(frozen=True)
class MnistSpec:
    """Everything xpnn knows about one MNIST-format dataset."""

    title: str
    subfolders: tuple[str, ...]
    mirrors: tuple[str, ...]
    sha256: dict[str, str]  # of the published .gz files
    md5: dict[str, str]  # as published, for reference only
    class_names: tuple[str, ...]
    licence: str


#: The four files of a MNIST-format dataset, without the ``.gz`` suffix.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS: dict[str, MnistSpec] = {
    "digits": MnistSpec(
        title="MNIST",
        subfolders=("mnist", "MNIST"),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow Datasets'
        ),
        sha256={
            "train-images-idx3-ubyte.gz":
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz":
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz":
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz":
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        class_names=tuple(str(digit) for digit in range(10)),
        licence="CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges)",
    ),
    "fashion": MnistSpec(
        title="Fashion-MNIST",
        subfolders=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's own
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras'
        ),
        sha256={
            "train-images-idx3-ubyte.gz":
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz":
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz":
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz":
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                     "Shirt", "Sneaker", "Bag", "Ankle boot"),
        licence="MIT (Zalando SE)",
    ),
}

_KIND_ALIASES = {"digits": "digits", "mnist": "digits", "fashion": "fashion",
                 "fashion-mnist": "fashion", "fashion_mnist": "fashion"}


# -- where files live ----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The per-user cache folder of xpnn: ``pooch.os_cache("xpnn")`` when pooch is
    installed, else the same platform convention (``~/.cache/xpnn`` on Linux,
    ``~/Library/Caches/xpnn`` on macOS, ``%LOCALAPPDATA%\\xpnn\\xpnn\\Cache`` on Windows)."""
    if importlib.util.find_spec("pooch") is not None:
        import pooch

        return Path(pooch.os_cache("xpnn")).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return Path(base) / "xpnn" / "xpnn" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "xpnn"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xpnn"


def _spec(kind: str) -> tuple[str, MnistSpec]:
    key = _KIND_ALIASES.get(str(kind).strip().lower())
    if key is None:
        raise ConfigError(
            f"Unknown MNIST kind {kind!r}. Expected 'digits' or 'fashion'."
        )
    return key, DATASETS[key]


#: ``.gz`` files larger than this are never hashed: every published MNIST-format file is
#: far smaller (Fashion-MNIST's training images, the largest, are 26 MB), so a larger one
#: cannot match a pinned hash, and hashing it could take minutes.
MAX_HASHED_BYTES = 64 * 2**20


def given_source(root) -> tuple[Path | None, str]:
    """The folder the caller named, and how: ``root`` if given, else ``XPNN_DATA`` if set.

    Returns
    -------
    folder : Path or None
        ``None`` when neither was given (the per-user cache is used).
    label : str
        ``"root"``, ``"XPNN_DATA"`` or ``"the per-user cache"``, for messages.
    """
    if root is not None:
        return Path(root).expanduser(), "root"
    value = os.environ.get("XPNN_DATA", "")
    if value:
        return Path(value).expanduser(), "XPNN_DATA"
    return None, "the per-user cache"


def _search_folders(spec: MnistSpec, root) -> list[Path]:
    """Candidate folders of the one source in use, in lookup order, without duplicates."""
    base, _ = given_source(root)
    if base is None:
        return [default_cache_dir() / spec.subfolders[0]]
    # The dataset's own subfolder first: a folder holding MNIST files directly may also
    # hold a fashion-mnist subfolder, and the more specific place must win.
    unique = []
    for folder in (*(base / sub for sub in spec.subfolders), base):
        if folder not in unique:
            unique.append(folder)
    return unique


def _file_in(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` when it exists; a non-regular one is refused."""
    for name in (stem + ".gz", stem):
        path = folder / name
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            raise DataError(f"Cannot inspect {path}: {error}. Check its permissions.") from None
        refuse_non_regular(path, mode, "MNIST file")
        return path
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open_regular(path, "MNIST file") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    except DataError:
        raise
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error}. Check its permissions.") from error
    return digest.hexdigest()


def _belongs_to_other_dataset(key: str, files: dict[str, Path]) -> str | None:
    """The title of the other dataset if one of ``files`` is byte-identical to its file.

    Only ``.gz`` files no larger than :data:`MAX_HASHED_BYTES` are hashed."""
    for other_key, other in DATASETS.items():
        if other_key == key:
            continue
        for path in files.values():
            if path.name not in other.sha256:
                continue
            try:
                size = os.stat(path).st_size
            except OSError as error:
                raise DataError(f"Cannot inspect {path}: {error}.") from None
            if size <= MAX_HASHED_BYTES and _sha256(path) == other.sha256[path.name]:
                return other.title
    return None


def _locate(key: str, spec: MnistSpec, root):
    """The four files and their headers from the first folder holding all of them (headers
    checked, then hashes), and notes on the other folders, with the files each lacks."""
    notes, best_missing = [], list(FILES.values())
    for folder in _search_folders(spec, root):
        files = {role: _file_in(folder, stem) for role, stem in FILES.items()}
        present = {role: path for role, path in files.items() if path is not None}
        missing = [FILES[role] for role in FILES if role not in present]
        if missing and len(missing) < len(best_missing):
            best_missing = missing
        if not missing:
            headers = _checked_headers(present)
            other = _belongs_to_other_dataset(key, present)
            if other is None:
                return present, headers, notes, []
            notes.append(f"{folder} (holds {other}, not {spec.title})")
        elif present:
            notes.append(f"{folder} (has {len(present)} of 4 files; missing "
                         f"{', '.join(missing)})")
        elif folder.is_dir():
            notes.append(f"{folder} (no files)")
        else:
            notes.append(f"{folder} (not a folder)" if folder.exists()
                         else f"{folder} (no folder)")
    return None, None, notes, best_missing


def _placement_help(spec: MnistSpec, root) -> str:
    names = ", ".join(stem + ".gz" for stem in FILES.values())
    return (
        f"To fix: place the 4 {spec.title} files {names} (gzipped as published, or "
        f"uncompressed without .gz) in {download_folder(spec, root)}, or in any folder DIR "
        f"given as root=DIR (load_mnist) or data_dir=DIR (load_dataset), or set as "
        f"XPNN_DATA=DIR "
        f"(DIR itself or DIR/{spec.subfolders[0]}). They are published at "
        f"{spec.mirrors[0]} (SHA-256 pinned in xpnn/datasets/mnist.py)."
    )


# -- loading -------------------------------------------------------------------------------


def _checked_headers(files: dict[str, Path]) -> dict[str, tuple[np.dtype, tuple]]:
    """Read only the four headers and check that images and labels fit together."""
    headers = {role: read_idx_header(path) for role, path in files.items()}
    for split in ("train", "test"):
        image_path, label_path = files[f"{split}_images"], files[f"{split}_labels"]
        (image_dtype, images), (label_dtype, labels) = (headers[f"{split}_images"],
                                                        headers[f"{split}_labels"])
        if image_dtype != np.uint8 or len(images) != 3 or images[1:] != (28, 28):
            raise DataError(
                f"{image_path} does not hold MNIST images: expected uint8 of shape "
                f"(N, 28, 28). Received: {image_dtype} of shape {images}."
            )
        if label_dtype != np.uint8 or len(labels) != 1:
            raise DataError(
                f"{label_path} does not hold MNIST labels: expected uint8 of shape (N,). "
                f"Received: {label_dtype} of shape {labels}."
            )
        if labels[0] != images[0]:
            raise DataError(
                f"{label_path} holds {labels[0]} labels, but {image_path} holds "
                f"{images[0]} images. Expected one label per image: are the files "
                f"from the same dataset and split?"
            )
    return headers


def _checked(files: dict[str, Path], headers) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Read the four payloads (each capped at what its checked header declares)."""
    out = []
    for split in ("train", "test"):
        arrays = []
        for part in ("images", "labels"):
            path, (dtype, shape) = files[f"{split}_{part}"], headers[f"{split}_{part}"]
            array = read_idx(path, max_bytes=int(np.prod(shape)) * dtype.itemsize)
            if array.dtype != dtype or array.shape != shape:  # replaced since its header
                raise DataError(
                    f"{path} changed while it was read: expected {dtype} of shape {shape} "
                    f"as its header said. Received: {array.dtype} of shape {array.shape}."
                )
            arrays.append(array)
        images, labels = arrays
        label_path = files[f"{split}_labels"]
        if labels.size and int(labels.max()) > 9:
            raise DataError(
                f"{label_path} holds label {int(labels.max())}. Expected labels 0 to 9."
            )
        out.append((images, labels))
    return tuple(out)


def load_mnist(kind: str = "digits", root=None, download: bool = True):
    """Load MNIST (``kind="digits"``) or Fashion-MNIST (``kind="fashion"``).

    Parameters
    ----------
    kind : {"digits", "fashion"}
        Which dataset (``"mnist"`` and ``"fashion-mnist"`` are accepted too).
    root : str or path-like, optional
        The folder holding the files (its subfolder ``mnist`` / ``fashion-mnist``, or the
        folder itself). When given, nothing else is searched. Without it, the folder in
        ``XPNN_DATA`` (when set) is the only one searched, else the per-user cache
        (:func:`default_cache_dir`). Downloads go to the dataset's subfolder of that
        same folder.
    download : bool
        Download missing files (pooch, pinned SHA-256, fallback mirror).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        uint8 images ``(N, 28, 28)`` with values 0-255 and uint8 labels ``(N,)`` 0-9
        (60,000 and 10,000 for the full sets).

    Raises
    ------
    DataNotFoundError
        The source in use (``root``, ``XPNN_DATA`` or the cache) lacks some of the four
        files and ``download=False``, or the download failed; the message names the
        missing files, the network error of each mirror tried, and where to place the
        files.
    DataError
        A file is corrupt, not a regular file (a FIFO, device or directory), the headers
        do not fit together, or a download failed its hash check (the file is deleted).

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist("digits")  # doctest: +SKIP
    >>> x_train.shape, y_train.dtype                                 # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    arrays, _ = load_with_folder(kind, root, download)
    return arrays


def load_with_folder(kind, root, download):
    """``load_mnist`` plus the folder the files came from."""
    key, spec = _spec(kind)
    files, headers, notes, missing = _locate(key, spec, root)
    if files is None:
        base, label = given_source(root)
        where = f"{label}={base}" if base is not None else label
        if not download:
            raise DataNotFoundError(
                f"{spec.title} files not found, and download=False. Expected the 4 files "
                f"in {where}. Received: missing {', '.join(missing)}; looked in: "
                f"{'; '.join(notes)}. {_placement_help(spec, root)}",
                filename=str(base) if base is not None else None,
            )
        folder = download_folder(spec, root)
        wanted = [stem + ".gz" for stem in FILES.values() if _file_in(folder, stem) is None]
        download_files(spec, wanted, folder, _placement_help(spec, root))
        files = {role: _file_in(folder, stem) for role, stem in FILES.items()}
        headers = _checked_headers(files)
        other = _belongs_to_other_dataset(key, files)
        if other is not None:
            raise DataError(
                f"{folder} holds {other} files, but {spec.title} was asked for. Move them "
                f"to a folder of their own and run again."
            )
    return _checked(files, headers), next(iter(files.values())).parent


def download_folder(spec: MnistSpec, root) -> Path:
    """Where missing files of ``spec`` are downloaded to: the dataset's subfolder of
    ``root``, else of ``XPNN_DATA``, else of the cache."""
    base, _ = given_source(root)
    return (base if base is not None else default_cache_dir()) / spec.subfolders[0]
