"""Bad data sources: every class of hostile or mistaken input to the dataset loaders.

Each class is run over several members, and each call must either load the right data or
raise a specific :class:`~xpnn.errors.XpnnError` whose message names the problem, within a
time bound (SIGALRM) and, for the bombs, a memory bound (tracemalloc peak):

* non-regular files (FIFO, directory, character device, socket, a symlink to a FIFO) given
  to ``read_idx`` / ``read_idx_header`` or lying under one of the four MNIST names: a
  DataError naming the kind, before anything blocks;
* gzip bombs: a small ``.gz`` whose payload expands far past its header, and a consistent
  bomb whose image count disagrees with its labels: refused after reading headers only;
* files that are not IDX at all, sparse and huge, under the MNIST names: refused from
  their headers, without hashing them;
* IDX headers declaring more dimensions than NumPy allows: a DataError naming the count;
* explicit sources that are wrong: every partial subset of the four files in ``root`` /
  ``data_dir`` / ``XPNN_DATA``, a missing folder, a file instead of a folder: a
  DataNotFoundError naming the missing files, never the embedded sample and never
  another source (the cache);
* a failed download (a realistic network error from a faked pooch, never the network):
  a DataNotFoundError carrying that error, never the sample;
* only the no-argument default (no ``data_dir``, no ``XPNN_DATA``, ``download=False``)
  falls back to the sample, and says so; Fashion-MNIST then errors with the same message
  shape as MNIST.
"""

from __future__ import annotations

import gzip
import itertools
import os
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from xpnn.datasets import load_dataset, load_mnist, mnist, read_idx, write_idx
from xpnn.datasets.idx import read_idx_header
from xpnn.datasets.mnist import FILES
from xpnn.errors import DataError, DataNotFoundError, MissingFileError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and SIGALRM")

CASE_SECONDS = 10.0
PEAK_BYTES = 64 * 2**20
STEMS = list(FILES.values())


@contextmanager
def time_bound(seconds: float = CASE_SECONDS):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""

    def alarm(signum, frame):
        raise TimeoutError(f"the case ran longer than {seconds} s (it blocked?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def memory_bound(limit: int = PEAK_BYTES):
    """Fail when the body allocates more than ``limit`` bytes at its peak (tracemalloc)."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if not was_tracing:
            tracemalloc.stop()
    assert peak <= limit, f"allocated {peak / 2**20:.0f} MiB at peak (bound {limit >> 20})"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No XPNN_DATA from the environment; a per-test cache folder (empty)."""
    monkeypatch.delenv("XPNN_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(mnist, "default_cache_dir", lambda: cache)
    return cache


def fake_mnist(folder: Path, *, n_train=6, n_test=4, seed=0, only=None):
    """Write tiny MNIST files into ``folder`` (``only``: the stems to write)."""
    rng = np.random.default_rng(seed)
    arrays = {
        FILES["train_images"]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        FILES["train_labels"]: rng.integers(0, 10, n_train, dtype=np.uint8),
        FILES["test_images"]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        FILES["test_labels"]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        if only is None or stem in only:
            write_idx(folder / f"{stem}.gz", array, gzip=True)
    return arrays


def idx_header(code: int, dims) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(int(n).to_bytes(4, "big") for n in dims)


def gzip_of_zeros(path: Path, header: bytes, zeros: int) -> Path:
    """A gzip file of ``header`` then ``zeros`` zero bytes, written in pieces."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(header)
        block = bytes(1 << 20)
        while zeros > 0:
            out.write(block[:zeros])
            zeros -= len(block)
    return path


# -- non-regular files --------------------------------------------------------------------


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_dir(path: Path) -> Path:
    path.mkdir()
    return path


def make_symlink_to_fifo(path: Path) -> Path:
    target = make_fifo(path.with_name(path.name + ".fifo-target"))
    path.symlink_to(target)
    return path


NON_REGULAR = {
    "fifo": (make_fifo, "a FIFO"),
    "directory": (make_dir, "a directory"),
    "symlink-to-fifo": (make_symlink_to_fifo, "a FIFO"),
}


@pytest.fixture
def socket_path():
    """A bound UNIX socket (in a short folder: socket paths are limited to ~100 bytes)."""
    folder = tempfile.mkdtemp(prefix="xpnn")
    path = Path(folder) / "s"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    yield path
    server.close()
    path.unlink(missing_ok=True)
    os.rmdir(folder)


@pytest.mark.parametrize("reader", [read_idx, read_idx_header], ids=["read_idx", "header"])
@pytest.mark.parametrize("kind", list(NON_REGULAR))
def test_reader_refuses_non_regular_files(tmp_path, reader, kind):
    make, words = NON_REGULAR[kind]
    path = make(tmp_path / "train-images-idx3-ubyte")
    with time_bound(), pytest.raises(DataError, match=words) as info:
        reader(path)
    assert str(path) in str(info.value) and "expected a regular file" in str(info.value)


@pytest.mark.parametrize("reader", [read_idx, read_idx_header], ids=["read_idx", "header"])
def test_reader_refuses_devices_and_sockets(reader, socket_path):
    for path, words in ((Path(os.devnull), "a character device"), (socket_path, "a socket")):
        with time_bound(), pytest.raises(DataError, match=words):
            reader(path)


@pytest.mark.parametrize("kind", list(NON_REGULAR))
@pytest.mark.parametrize("stem", STEMS)
def test_mnist_refuses_non_regular_file_under_an_mnist_name(tmp_path, kind, stem):
    make, words = NON_REGULAR[kind]
    fake_mnist(tmp_path / "d", only=[s for s in STEMS if s != stem])
    path = make(tmp_path / "d" / f"{stem}.gz")
    with time_bound(), pytest.raises(DataError, match=words) as info:
        load_mnist(root=tmp_path / "d", download=False)
    assert not isinstance(info.value, DataNotFoundError)
    assert str(path) in str(info.value)
    with time_bound(), pytest.raises(DataError, match=words):
        load_dataset("mnist", data_dir=tmp_path / "d")


def test_missing_file_is_still_a_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        read_idx(tmp_path / "absent-idx1-ubyte")
    with pytest.raises(MissingFileError, match="not found"):
        read_idx_header(tmp_path / "absent-idx1-ubyte")


# -- bombs and huge files -----------------------------------------------------------------


@pytest.mark.parametrize("declared", [0, 10, 784])
def test_gzip_stream_longer_than_header_stops_early(tmp_path, monkeypatch, declared):
    """A ~256 KB gzip whose stream holds 256 MiB past a small declared payload: at most
    the declared payload plus a 64 KiB look-ahead is ever decompressed."""
    path = gzip_of_zeros(tmp_path / "bomb.gz", idx_header(8, [declared]), 256 * 2**20)
    inflated = []
    real_read = gzip.GzipFile.read

    def counting_read(self, size=-1):
        data = real_read(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    started = time.perf_counter()
    with time_bound(), memory_bound(), pytest.raises(
            DataError, match="longer than its header says") as info:
        read_idx(path)
    assert time.perf_counter() - started < 2.0  # not 256 MiB of inflating
    assert sum(inflated) <= 8 + declared + 1 + 2**16 + 1
    assert f"{declared} payload bytes" in str(info.value)
    assert "more than" in str(info.value)


def test_consistent_bomb_is_refused_from_headers(tmp_path):
    """Images declaring 200,000 (157 MB of zeros, ~150 KB gzipped) against 6 labels:
    the counts are compared before any payload is read."""
    folder = tmp_path / "d"
    fake_mnist(folder, only=STEMS[1:])
    gzip_of_zeros(folder / f"{FILES['train_images']}.gz", idx_header(8, [200_000, 28, 28]),
                  200_000 * 784)
    with time_bound(), memory_bound(), pytest.raises(
            DataError, match="holds 6 labels, but .* holds 200000 images"):
        load_mnist(root=folder, download=False)


@pytest.mark.parametrize("names_of", ["digits", "fashion"])
def test_headers_are_checked_before_hashing(tmp_path, monkeypatch, names_of):
    """Four large sparse non-IDX files under the published names: refused from the first
    header read, and no file is hashed."""
    folder = tmp_path / "d"
    folder.mkdir()
    for stem in STEMS:
        with open(folder / f"{stem}.gz", "wb") as handle:
            handle.truncate(2**30)  # 1 GiB, sparse: zeros
    hashed = []
    real = mnist._sha256
    monkeypatch.setattr(mnist, "_sha256", lambda path: hashed.append(path) or real(path))
    kind = "fashion" if names_of == "digits" else "digits"
    with time_bound(), pytest.raises(DataError, match="not an IDX file: bad magic"):
        load_mnist(kind, root=folder, download=False)
    assert hashed == []


def test_only_plausibly_sized_files_are_hashed(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    fake_mnist(folder)
    hashed = []
    monkeypatch.setattr(mnist, "_sha256", lambda path: hashed.append(path.name) or "0")
    monkeypatch.setattr(mnist, "MAX_HASHED_BYTES", 100)  # the image files are larger
    load_mnist("fashion", root=folder, download=False)
    assert sorted(hashed) == sorted(f"{FILES[r]}.gz" for r in ("train_labels", "test_labels"))


# -- too many dimensions ------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("ndim", [65, 100, 255])
def test_too_many_dimensions(tmp_path, ndim, compress):
    content = idx_header(8, [1] * ndim) + b"\x07"
    path = tmp_path / "many-dims"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    for reader in (read_idx, read_idx_header):
        with pytest.raises(DataError, match=f"declaring {ndim} dimensions") as info:
            reader(path)
        assert "at most 64 dimensions" in str(info.value) and str(path) in str(info.value)


def test_64_dimensions_still_load(tmp_path):
    path = tmp_path / "64-dims"
    path.write_bytes(idx_header(8, [1] * 64) + b"\x07")
    assert read_idx(path).shape == (1,) * 64


# -- explicit sources that are wrong --------------------------------------------------------


PARTIAL = [subset for size in range(4) for subset in itertools.combinations(STEMS, size)]


def assert_names_missing(message: str, present) -> None:
    for stem in STEMS:
        if stem not in present:
            assert stem in message.split("Received:", 1)[1].split("looked in")[0], stem


@pytest.mark.parametrize("present", PARTIAL, ids=lambda p: f"{len(p)}-files:" + "+".join(
    s.split("-")[0] + s.split("-")[1] for s in p))
def test_partial_data_dir_is_an_error_naming_missing_files(tmp_path, isolated, present):
    fake_mnist(isolated / "mnist", seed=9)  # a complete cache must not be used instead
    fake_mnist(tmp_path / "d", only=present)
    for call in (lambda: load_mnist(root=tmp_path / "d", download=False),
                 lambda: load_dataset("mnist", data_dir=tmp_path / "d"),
                 lambda: load_dataset("fashion-mnist", data_dir=tmp_path / "d")):
        with pytest.raises(DataNotFoundError) as info:
            call()
        message = str(info.value)
        assert str(tmp_path / "d") in message
        assert_names_missing(message, present)
        assert "--" not in message  # no example flag names in library messages


@pytest.mark.parametrize("present", PARTIAL[::3], ids=lambda p: f"{len(p)}-files")
def test_partial_xpnn_data_is_an_error(tmp_path, monkeypatch, isolated, present):
    fake_mnist(isolated / "mnist", seed=9)
    fake_mnist(tmp_path / "env" / "mnist", only=present)
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError, match="XPNN_DATA") as info:
        load_dataset("mnist")
    assert_names_missing(str(info.value), present)


@pytest.mark.parametrize("bad", ["missing-folder", "a-file", "empty-folder"])
@pytest.mark.parametrize("via", ["data_dir", "XPNN_DATA"])
def test_bad_source_folder_is_an_error_for_both_datasets(tmp_path, monkeypatch, isolated,
                                                         bad, via):
    fake_mnist(isolated / "mnist", seed=9)
    folder = tmp_path / "source"
    if bad == "a-file":
        folder.write_bytes(b"not a folder")
    elif bad == "empty-folder":
        folder.mkdir()
    kwargs = {"data_dir": folder}
    if via == "XPNN_DATA":
        monkeypatch.setenv("XPNN_DATA", str(folder))
        kwargs = {}
    for name, title in (("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")):
        with pytest.raises(DataNotFoundError) as info:
            load_dataset(name, **kwargs)
        message = str(info.value)
        assert message.startswith(f"{title} files not found, and download=False. "
                                  f"Expected the 4 files in {via if via != 'data_dir' else 'root'}")
        assert str(folder) in message and "Received: missing" in message
        assert_names_missing(message, ())


def test_empty_xpnn_data_counts_as_unset(monkeypatch):
    monkeypatch.setenv("XPNN_DATA", "")
    assert load_dataset("mnist").name == "mnist-sample"


def test_explicit_source_wins_over_cache_and_xpnn_data(tmp_path, monkeypatch, isolated):
    cache = fake_mnist(isolated / "mnist", seed=1)
    env = fake_mnist(tmp_path / "env", seed=2)
    mine = fake_mnist(tmp_path / "mine", seed=3)
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "env"))
    data = load_dataset("mnist", data_dir=tmp_path / "mine")
    np.testing.assert_array_equal(data.x_train, mine[FILES["train_images"]])
    np.testing.assert_array_equal(load_dataset("mnist").x_train, env[FILES["train_images"]])
    monkeypatch.delenv("XPNN_DATA")
    np.testing.assert_array_equal(load_dataset("mnist").x_train, cache[FILES["train_images"]])


# -- failed downloads (pooch faked: never the network) ----------------------------------------


def network_error(url):
    try:
        import requests

        return requests.exceptions.ConnectionError(
            f"HTTPSConnectionPool(host='{url.split('/')[2]}', port=443): Max retries exceeded "
            f"(Caused by NameResolutionError: Failed to resolve)")
    except ImportError:  # pragma: no cover - pooch needs requests
        return OSError(f"Failed to resolve {url}")


@pytest.fixture
def offline(monkeypatch):
    pooch = pytest.importorskip("pooch")
    tried = []

    def retrieve(url, *args, **kwargs):
        tried.append(url)
        raise network_error(url)

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    return tried


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("where", ["default", "data_dir", "XPNN_DATA"])
def test_failed_download_is_an_error_with_the_network_error(tmp_path, monkeypatch, offline,
                                                            name, where):
    kwargs = {}
    if where == "data_dir":
        kwargs["data_dir"] = tmp_path / "mine"
    elif where == "XPNN_DATA":
        monkeypatch.setenv("XPNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, download=True, **kwargs)
    message = str(info.value)
    assert "Could not download" in message
    assert "ConnectionError" in message and "NameResolutionError" in message
    for stem in STEMS:
        assert stem in message
    assert offline  # it did try


def test_failed_download_into_partial_folder_names_what_is_still_missing(tmp_path, offline):
    fake_mnist(tmp_path / "mine" / "mnist", only=STEMS[:2])
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path / "mine", download=True)
    still = str(info.value).split("Still missing in", 1)[1].split(". To fix", 1)[0]
    assert all(f"{s}.gz" in still for s in STEMS[2:]) and STEMS[0] not in still
    assert {url.rsplit("/", 1)[1] for url in offline} == {f"{STEMS[2]}.gz"}


# -- the one fallback: no argument at all ---------------------------------------------------


def test_only_the_no_argument_default_falls_back_and_says_so(isolated, offline):
    data = load_dataset("mnist")
    assert data.name == "mnist-sample" and data.x_train.shape == (4000, 28, 28)
    assert "embedded" in data.source and "not found" in data.source
    assert str(isolated / "mnist") in data.source
    assert offline == []  # the default does not download
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", fallback=False)


def test_fashion_without_source_errors_with_the_same_message_shape(isolated):
    messages = {}
    for name in ("mnist", "fashion-mnist"):
        with pytest.raises(DataNotFoundError) as info:
            load_dataset(name, fallback=False)
        messages[name] = str(info.value)
    shape = ("files not found, and download=False. Expected the 4 files in the per-user "
             "cache. Received: missing ")
    assert messages["mnist"].startswith("MNIST " + shape)
    assert messages["fashion-mnist"].startswith("Fashion-MNIST " + shape)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist")  # no sample to fall back to
    assert str(info.value) == messages["fashion-mnist"]

