"""MNIST and Fashion-MNIST: find the IDX files, download them if allowed, or use the sample.

Where files are looked for, in order (the first folder holding all four files wins):

1. ``root`` (an argument; ``data_dir`` of :func:`~xpnn.datasets.dataset.load_dataset`): its
   subfolder ``mnist`` (digits) or ``fashion-mnist`` (fashion), then the folder itself;
2. the folder in the environment variable ``XPNN_DATA``, likewise;
3. the per-user cache, ``pooch.os_cache("xpnn")/mnist`` or ``.../fashion-mnist``
   (``~/.cache/xpnn/...`` on Linux; see :func:`default_cache_dir`).

Each file may be gzipped as published (``train-images-idx3-ubyte.gz``) or uncompressed
(``train-images-idx3-ubyte``). A ``.gz`` file whose SHA-256 is that of the *other* dataset
is skipped, so MNIST digits are never returned when Fashion-MNIST was asked for.

When files are missing and ``download=True``, they are fetched with pooch into the
dataset's subfolder of ``root`` (``root/mnist``; without ``root``, of the cache) and
checked against pinned SHA-256 hashes (a mismatch deletes the download): the
MNIST ones as published by TensorFlow Datasets' checksum list, the Fashion-MNIST ones as
pinned by Keras and TensorFlow Datasets (the Fashion-MNIST README publishes MD5s, noted
below for reference). Each file is tried from a primary mirror, then a fallback.

The package also ships a real 5,000-image MNIST sample
(:func:`xpnn.datasets.sample.load_mnist_sample`), so training works with no network and no
files; :func:`xpnn.datasets.dataset.load_dataset` falls back to it.
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
from xpnn.datasets.idx import read_idx
from xpnn.errors import ConfigError, DataError, DataNotFoundError

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


def _search_folders(spec: MnistSpec, root) -> list[Path]:
    """Candidate folders, in lookup order, without duplicates."""
    bases = []
    if root is not None:
        bases.append(Path(root).expanduser())
    if os.environ.get("XPNN_DATA"):
        bases.append(Path(os.environ["XPNN_DATA"]).expanduser())
    # The dataset's own subfolder first: a folder holding MNIST files directly may also
    # hold a fashion-mnist subfolder, and the more specific place must win.
    folders = [folder for base in bases
               for folder in (*(base / sub for sub in spec.subfolders), base)]
    folders.append(default_cache_dir() / spec.subfolders[0])
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error}. Check its permissions.") from error
    return digest.hexdigest()


def _belongs_to_other_dataset(key: str, files: dict[str, Path]) -> str | None:
    """The title of the other dataset if one of ``files`` is byte-identical to its file."""
    for other_key, other in DATASETS.items():
        if other_key == key:
            continue
        for path in files.values():
            if path.name in other.sha256 and _sha256(path) == other.sha256[path.name]:
                return other.title
    return None


def _locate(key: str, spec: MnistSpec, root) -> tuple[dict[str, Path] | None, list[str]]:
    """The four files from the first folder holding all of them, and notes on the rest."""
    notes = []
    for folder in _search_folders(spec, root):
        files = {role: _file_in(folder, stem) for role, stem in FILES.items()}
        present = {role: path for role, path in files.items() if path is not None}
        if len(present) == len(FILES):
            other = _belongs_to_other_dataset(key, present)
            if other is None:
                return present, notes
            notes.append(f"{folder} (holds {other}, not {spec.title})")
        elif present:
            missing = ", ".join(FILES[role] for role in FILES if role not in present)
            notes.append(f"{folder} (has {len(present)} of 4 files; missing {missing})")
        else:
            notes.append(f"{folder} (no files)" if folder.is_dir() else f"{folder} (no folder)")
    return None, notes


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


def _checked(files: dict[str, Path]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Read the four files and check that images and labels fit together."""
    out = []
    for split in ("train", "test"):
        image_path, label_path = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{image_path} does not hold MNIST images: expected uint8 of shape "
                f"(N, 28, 28). Received: {images.dtype} of shape {images.shape}."
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(
                f"{label_path} does not hold MNIST labels: expected uint8 of shape (N,). "
                f"Received: {labels.dtype} of shape {labels.shape}."
            )
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{label_path} holds {labels.shape[0]} labels, but {image_path} holds "
                f"{images.shape[0]} images. Expected one label per image: are the files "
                f"from the same dataset and split?"
            )
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
        A folder to look in first (its subfolder ``mnist`` / ``fashion-mnist``, then the
        folder itself). Downloads go to that subfolder of ``root``, or without
        ``root`` to the same subfolder of :func:`default_cache_dir`.
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
        The files are not found (and could not be downloaded); the message says which
        files to place in which folder.
    DataError
        A file is corrupt, or a download failed its hash check (the file is deleted).

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
    files, notes = _locate(key, spec, root)
    if files is None:
        if not download:
            raise DataNotFoundError(
                f"{spec.title} files not found, and download=False. Looked in: "
                f"{'; '.join(notes)}. {_placement_help(spec, root)}"
            )
        folder = download_folder(spec, root)
        missing = [stem + ".gz" for stem in FILES.values() if _file_in(folder, stem) is None]
        download_files(spec, missing, folder, _placement_help(spec, root))
        files = {role: _file_in(folder, stem) for role, stem in FILES.items()}
        other = _belongs_to_other_dataset(key, files)
        if other is not None:
            raise DataError(
                f"{folder} holds {other} files, but {spec.title} was asked for. Move them "
                f"to a folder of their own and run again."
            )
    return _checked(files), next(iter(files.values())).parent


def download_folder(spec: MnistSpec, root) -> Path:
    """Where missing files of ``spec`` are downloaded to: ``root``'s subfolder, or the
    cache's."""
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    return base / spec.subfolders[0]
